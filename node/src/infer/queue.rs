//! The gateway's own queue: when every supplier of a model is busy, a client's request
//! waits here for a free slot, in arrival order and for a bounded time, instead of
//! being refused at once.
//!
//! A request is sent to a supplier only while this node has fewer requests in flight
//! there than the supplier advertises slots (at most the streams one app may keep open
//! at a supplier): past that, the supplier would only queue it or refuse it, and a
//! request waiting here can still go to whichever supplier frees a slot first. A
//! request that finds the line empty and a slot free goes at once; every other one
//! takes a place at the back of its model's line ([`MAX_WAITING`] places; the next is
//! refused at once), and only the head of the line is sent on. The head is sent when
//! one of this node's requests to a supplier ends, or, where a supplier refused it as
//! busy (other apps hold its slots, which this node cannot see), after the refusal's
//! hint (half a second to five seconds). A request still waiting after the configured
//! wait is refused with `503` and `Retry-After`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relaymesh_protocol::messages::capability::ModelOffer;
use relaymesh_protocol::PublicKey;

use super::app_limits::MAX_STREAMS_PER_APP;
use super::router::Router;
use crate::backend::BackendError;

/// Requests that may wait for one model at once.
pub const MAX_WAITING: usize = 256;
/// The shortest and longest waits before the head of a line asks again after a busy
/// refusal.
pub const RETRY_MIN: Duration = Duration::from_millis(500);
/// See [`RETRY_MIN`].
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// How many of this node's requests `supplier` may have at once for `model`, by its ad.
pub fn room(offer: &ModelOffer) -> u32 {
    u32::from(offer.total_slots.max(1)).min(MAX_STREAMS_PER_APP as u32)
}

/// Whether any of `candidates` has a slot free for this node's next request.
pub fn any_room(router: &Router, model: &str, candidates: &[(PublicKey, ModelOffer)]) -> bool {
    candidates
        .iter()
        .any(|(k, o)| router.in_flight(*k, model) < room(o))
}

#[derive(Default)]
struct Line {
    next_ticket: u64,
    waiting: VecDeque<u64>,
}

/// The lines of every model, shared by the node's mesh requests.
pub struct Queue {
    lines: Mutex<HashMap<String, Line>>,
    /// Woken when a line moves (a place is given up).
    moved: tokio::sync::Notify,
    /// Places in each model's line.
    places: usize,
}

impl Default for Queue {
    fn default() -> Self {
        Self::new(MAX_WAITING)
    }
}

/// A place in a model's line; given up when dropped.
pub struct Place {
    queue: Arc<Queue>,
    model: String,
    ticket: u64,
}

impl Queue {
    /// Lines of `places` places each.
    pub fn new(places: usize) -> Self {
        Self {
            lines: Mutex::new(HashMap::new()),
            moved: tokio::sync::Notify::new(),
            places,
        }
    }

    /// Whether nobody waits for `model`.
    pub fn is_empty(&self, model: &str) -> bool {
        self.lines
            .lock()
            .expect("queue lock")
            .get(model)
            .is_none_or(|l| l.waiting.is_empty())
    }

    /// Requests waiting for `model`.
    pub fn waiting(&self, model: &str) -> usize {
        self.lines
            .lock()
            .expect("queue lock")
            .get(model)
            .map_or(0, |l| l.waiting.len())
    }

    /// A place at the back of `model`'s line, or a refusal when it is full.
    pub fn join(self: &Arc<Self>, model: &str, slots: usize) -> Result<Place, BackendError> {
        let mut lines = self.lines.lock().expect("queue lock");
        let line = lines.entry(model.to_owned()).or_default();
        if line.waiting.len() >= self.places {
            return Err(BackendError::Busy {
                slots,
                queued: line.waiting.len(),
                retry_after: RETRY_MAX,
            });
        }
        let ticket = line.next_ticket;
        line.next_ticket += 1;
        line.waiting.push_back(ticket);
        Ok(Place {
            queue: self.clone(),
            model: model.to_owned(),
            ticket,
        })
    }

    /// A future that completes when a line moves; `enable` it before checking.
    pub fn moved(&self) -> tokio::sync::futures::Notified<'_> {
        self.moved.notified()
    }
}

impl Place {
    /// Whether this place is at the head of its line.
    pub fn is_head(&self) -> bool {
        self.queue
            .lines
            .lock()
            .expect("queue lock")
            .get(&self.model)
            .and_then(|l| l.waiting.front())
            == Some(&self.ticket)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut lines = self.queue.lines.lock().expect("queue lock");
        if let Some(line) = lines.get_mut(&self.model) {
            line.waiting.retain(|t| *t != self.ticket);
            if line.waiting.is_empty() {
                lines.remove(&self.model);
            }
        }
        drop(lines);
        self.queue.moved.notify_waiters();
    }
}

/// The wait before the head of a line asks a supplier again after busy refusals that
/// hinted `hint`.
pub fn retry_after_busy(hint: Duration) -> Duration {
    hint.clamp(RETRY_MIN, RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_served_in_arrival_order_and_given_up_when_dropped() {
        let queue = Arc::new(Queue::default());
        assert!(queue.is_empty("m"));
        let a = queue.join("m", 2).unwrap();
        let b = queue.join("m", 2).unwrap();
        let other = queue.join("n", 2).unwrap();
        assert!(a.is_head() && !b.is_head() && other.is_head());
        drop(a);
        assert!(b.is_head());
        assert_eq!(queue.waiting("m"), 1);
        drop(b);
        assert!(queue.is_empty("m"));
    }

    #[test]
    fn a_full_line_refuses_with_a_retry_hint() {
        let queue = Arc::new(Queue::default());
        let places: Vec<_> = (0..MAX_WAITING)
            .map(|_| queue.join("m", 2).unwrap())
            .collect();
        match queue.join("m", 2) {
            Err(BackendError::Busy {
                queued,
                retry_after,
                ..
            }) => {
                assert_eq!(queued, MAX_WAITING);
                assert!(retry_after > Duration::ZERO);
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        drop(places);
        assert!(queue.join("m", 2).is_ok());
    }

    #[tokio::test]
    async fn giving_up_a_place_wakes_the_line() {
        let queue = Arc::new(Queue::default());
        let a = queue.join("m", 1).unwrap();
        let b = queue.join("m", 1).unwrap();
        let moved = queue.moved();
        tokio::pin!(moved);
        moved.as_mut().enable();
        drop(a);
        tokio::time::timeout(Duration::from_secs(1), moved)
            .await
            .expect("woken");
        assert!(b.is_head());
    }
}
