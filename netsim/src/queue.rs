//! The event queue: events in order of time, then of scheduling.
//!
//! A single binary heap held every pending event, most of them far ahead (each
//! session's close, half an hour out), and each pop walked that whole heap's depth
//! through cold memory. Here only the events of the current window of virtual time are
//! in the heap; later ones wait in per-window buckets and enter it when their window
//! comes. The order of pops is exactly a single heap's: by time, then by sequence.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// Virtual time one bucket spans (µs).
const WINDOW: u64 = 1_000_000;

/// Pending items ordered by `(time, sequence)`.
pub(crate) struct EventQueue<T: Ord> {
    /// Every item due before `horizon`.
    near: BinaryHeap<Reverse<(u64, u64, T)>>,
    /// Items due at or after `horizon`, by window.
    far: BTreeMap<u64, Vec<(u64, u64, T)>>,
    horizon: u64,
}

impl<T: Ord> EventQueue<T> {
    pub fn new() -> Self {
        Self {
            near: BinaryHeap::new(),
            far: BTreeMap::new(),
            horizon: 0,
        }
    }

    /// Adds `item` due at `at`; `seq` orders items due at the same time.
    pub fn push(&mut self, at: u64, seq: u64, item: T) {
        if at < self.horizon {
            self.near.push(Reverse((at, seq, item)));
        } else {
            self.far
                .entry(at / WINDOW)
                .or_default()
                .push((at, seq, item));
        }
    }

    /// The earliest item, with its time.
    pub fn pop(&mut self) -> Option<(u64, T)> {
        loop {
            if let Some(Reverse((at, _, item))) = self.near.pop() {
                return Some((at, item));
            }
            let (window, items) = self.far.pop_first()?;
            self.horizon = (window + 1) * WINDOW;
            self.near.extend(items.into_iter().map(Reverse));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::{RngCore, SeedableRng};

    #[test]
    fn pops_in_the_order_of_one_heap() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut queue = EventQueue::new();
        let mut heap = BinaryHeap::new();
        let (mut now, mut seq) = (0u64, 0u64);
        for round in 0..20_000u64 {
            // Schedule a few items from now: same time, soon, or far ahead.
            for _ in 0..rng.next_u32() % 3 {
                let ahead = match rng.next_u32() % 4 {
                    0 => 0,
                    1 => u64::from(rng.next_u32()) % 2_000,
                    2 => u64::from(rng.next_u32()) % (3 * WINDOW),
                    _ => u64::from(rng.next_u32()) % (1800 * WINDOW),
                };
                seq += 1;
                queue.push(now + ahead, seq, round);
                heap.push(Reverse((now + ahead, seq, round)));
            }
            if rng.next_u32() % 2 == 0 {
                let expected = heap.pop().map(|Reverse((at, _, item))| (at, item));
                assert_eq!(queue.pop(), expected);
                if let Some((at, _)) = expected {
                    now = at;
                }
            }
        }
        while let Some(Reverse((at, _, item))) = heap.pop() {
            assert_eq!(queue.pop(), Some((at, item)));
        }
        assert_eq!(queue.pop(), None);
    }
}
