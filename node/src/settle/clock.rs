//! Is this node's clock sane, and do its frozen epochs match its peers'?
//!
//! Freezing follows the local clock, and once an epoch is frozen a divergence is for
//! good. So every anti-entropy exchange also carries both sides' clocks and the digest
//! of their frozen checkpoint: a node whose clock is off from the median of its peers'
//! by more than the mesh's skew says so loudly (log, metric, ledger report) and stops
//! freezing until it agrees again; a node whose checkpoint differs from a peer's at the
//! same frozen epoch says so too, since their ledgers will never converge by themselves.

use std::collections::BTreeMap;
use std::sync::Mutex;

use relaymesh_protocol::Digest;
use tracing::{info, warn};

/// Peers whose clock offsets are remembered (the most recent ones).
pub const CLOCK_PEERS: usize = 32;
/// Peers that must have been heard before a clock is judged.
pub const CLOCK_QUORUM: usize = 3;

/// What this node knows of its clock and checkpoint against its peers'.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClockReport {
    /// Median of the peers' clocks minus ours, ms (positive: ours is behind).
    pub offset_ms: Option<i64>,
    /// Peers heard.
    pub peers: usize,
    /// Whether the offset is beyond the mesh's skew (then no epoch freezes here).
    pub off: bool,
    /// Peers whose frozen checkpoint at our frozen epoch differed from ours.
    pub checkpoint_mismatches: u64,
}

#[derive(Default)]
struct State {
    /// Offset per peer, and the order they were heard in (oldest first).
    offsets: BTreeMap<String, (u64, i64)>,
    heard: u64,
    off: bool,
    mismatches: u64,
}

/// The clock watch of one node.
pub struct ClockWatch {
    skew_ms: u64,
    state: Mutex<State>,
}

impl ClockWatch {
    /// A watch that tolerates `skew_ms` (the mesh's `max_clock_skew_ms`).
    pub fn new(skew_ms: u64) -> Self {
        Self {
            skew_ms,
            state: Mutex::new(State::default()),
        }
    }

    /// A peer's clock read `peer_ms` when ours read `our_ms` (the midpoint of a round
    /// trip, or the arrival of a one-way message: its delay is well inside the skew).
    /// Returns whether our clock is now judged off.
    pub fn observe(&self, peer: &str, peer_ms: u64, our_ms: u64) -> bool {
        // A peer's clock is whatever its message says (any u64): the difference
        // saturates instead of overflowing, which panics the event loop (overflow
        // checks are on in release builds too).
        let offset = (i128::from(peer_ms) - i128::from(our_ms))
            .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        let mut state = self.state.lock().expect("clock lock");
        state.heard += 1;
        let heard = state.heard;
        state.offsets.insert(peer.to_owned(), (heard, offset));
        if state.offsets.len() > CLOCK_PEERS {
            let oldest = state
                .offsets
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(p, _)| p.clone());
            if let Some(oldest) = oldest {
                state.offsets.remove(&oldest);
            }
        }
        let Some(median) = median(&state.offsets) else {
            return false;
        };
        let off = median.unsigned_abs() > self.skew_ms;
        if off != state.off {
            state.off = off;
            if off {
                warn!(
                    offset_ms = median,
                    peers = state.offsets.len(),
                    skew_ms = self.skew_ms,
                    "this node's clock is off from its peers' by more than the mesh allows: no epoch freezes here until it is set right (check NTP)"
                );
            } else {
                info!(
                    offset_ms = median,
                    "this node's clock agrees with its peers' again"
                );
            }
        }
        off
    }

    /// Whether the clock is judged off (then the ledger must not freeze).
    pub fn is_off(&self) -> bool {
        self.state.lock().expect("clock lock").off
    }

    /// A peer froze the epochs before `frozen_before` into `digest`; ours, at `ours`.
    /// Returns whether they differ at the same epoch.
    pub fn compare_checkpoint(
        &self,
        peer: &str,
        frozen_before: u64,
        digest: Digest,
        ours: (u64, Digest),
    ) -> bool {
        if frozen_before != ours.0 || digest == ours.1 {
            return false;
        }
        self.state.lock().expect("clock lock").mismatches += 1;
        warn!(
            %peer,
            frozen_before,
            ours = %ours.1,
            theirs = %digest,
            "this node's frozen ledger differs from a peer's: one of them missed messages before they froze"
        );
        true
    }

    /// The last offset heard from `peer` (its clock minus ours, ms), if it is among
    /// the [`CLOCK_PEERS`] remembered.
    pub fn offset_of(&self, peer: &str) -> Option<i64> {
        let state = self.state.lock().expect("clock lock");
        state.offsets.get(peer).map(|(_, offset)| *offset)
    }

    /// The report.
    pub fn report(&self) -> ClockReport {
        let state = self.state.lock().expect("clock lock");
        ClockReport {
            offset_ms: median(&state.offsets).filter(|_| state.offsets.len() >= CLOCK_QUORUM),
            peers: state.offsets.len(),
            off: state.off,
            checkpoint_mismatches: state.mismatches,
        }
    }
}

/// The median offset, once enough peers were heard.
fn median(offsets: &BTreeMap<String, (u64, i64)>) -> Option<i64> {
    if offsets.len() < CLOCK_QUORUM {
        return None;
    }
    let mut values: Vec<i64> = offsets.values().map(|(_, o)| *o).collect();
    values.sort_unstable();
    Some(values[values.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hole 11: freezing followed the local clock with no check, so a node whose clock
    /// ran ahead froze epochs its peers still took messages for, and diverged for
    /// good. Now the clock is compared with the peers' and judged off beyond the skew.
    #[test]
    fn a_clock_off_from_the_peers_median_is_caught() {
        let watch = ClockWatch::new(30_000);
        let now = 1_000_000_000;
        // Two peers are not a quorum.
        assert!(!watch.observe("a", now + 90_000, now));
        assert!(!watch.observe("b", now + 91_000, now));
        assert!(watch.observe("c", now + 89_000, now));
        assert_eq!(watch.report().offset_ms, Some(90_000));
        assert_eq!(watch.offset_of("b"), Some(91_000));
        assert_eq!(watch.offset_of("nobody"), None);
        // One liar among honest peers does not move the median.
        let fine = ClockWatch::new(30_000);
        fine.observe("a", now + 10, now);
        fine.observe("b", now - 20, now);
        assert!(!fine.observe("liar", now + 10_000_000, now));
        assert!(!fine.is_off());
    }

    /// Found by the node's fuzz run: a sync request with `now_ms` of 2^63 or more
    /// overflowed the offset's subtraction and panicked the event loop; one message
    /// from any peer stopped the node.
    #[test]
    fn clocks_at_the_ends_of_u64_do_not_overflow() {
        let watch = ClockWatch::new(30_000);
        let now = 1_700_000_000_000;
        for (i, peer_ms) in [1 << 63, u64::MAX, 0, (1 << 63) + now]
            .into_iter()
            .enumerate()
        {
            watch.observe(&format!("p{i}"), peer_ms, now);
            watch.observe(&format!("q{i}"), now, peer_ms);
        }
        let liars = ClockWatch::new(30_000);
        for peer in ["a", "b", "c"] {
            liars.observe(peer, u64::MAX, now);
        }
        assert!(liars.is_off());
        assert_eq!(liars.report().offset_ms, Some(i64::MAX));
    }

    #[test]
    fn a_different_checkpoint_at_the_same_epoch_is_reported() {
        let watch = ClockWatch::new(30_000);
        let ours = (7, Digest([1; 32]));
        assert!(!watch.compare_checkpoint("p", 7, Digest([1; 32]), ours));
        assert!(!watch.compare_checkpoint("p", 6, Digest([2; 32]), ours));
        assert!(watch.compare_checkpoint("p", 7, Digest([2; 32]), ours));
        assert_eq!(watch.report().checkpoint_mismatches, 1);
    }
}
