//! How many gossip messages each peer may hand this node per second.
//!
//! Every gossip message is checked before it is forwarded (signatures, the ledger's
//! rules), and that work is the node's: a peer relaying a torrent of valid messages
//! (or of messages only the ledger can refuse) would keep the event loop busy. Each
//! peer gets a bucket of `rate` messages a second, holding at most two seconds' worth;
//! a message past it is dropped unchecked and not forwarded (`Ignore`, which costs
//! the peer no score: it may only be relaying others' traffic), and counted
//! (`relaymesh_limited_total{reason="gossip_per_peer"}`). What is dropped comes back
//! through ad sync and the ledger's anti-entropy.

use std::collections::HashMap;
use std::time::Instant;

use libp2p::PeerId;

/// Messages a second one peer may hand us by default (`--limit gossip_per_peer=N`).
pub const DEFAULT_PER_PEER: u32 = 200;

/// Per-peer token buckets.
#[derive(Debug)]
pub struct GossipBudget {
    rate: f64,
    peers: HashMap<PeerId, (f64, Instant)>,
}

impl GossipBudget {
    /// `per_sec` messages a second per peer (at least 1), bursts of twice that.
    pub fn new(per_sec: u32) -> Self {
        Self {
            rate: f64::from(per_sec.max(1)),
            peers: HashMap::new(),
        }
    }

    fn burst(&self) -> f64 {
        2.0 * self.rate
    }

    /// Whether one more message from `peer` fits now (and takes it if so).
    pub fn take(&mut self, peer: PeerId, now: Instant) -> bool {
        let (rate, burst) = (self.rate, self.burst());
        let (tokens, at) = self.peers.entry(peer).or_insert((burst, now));
        *tokens = (*tokens + rate * now.saturating_duration_since(*at).as_secs_f64()).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets peers whose bucket has filled up again (they owe nothing).
    pub fn forget_idle(&mut self, now: Instant) {
        let (rate, burst) = (self.rate, self.burst());
        self.peers.retain(|_, (tokens, at)| {
            *tokens + rate * now.saturating_duration_since(*at).as_secs_f64() < burst
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_peer_gets_its_rate_and_a_burst_of_two_seconds() {
        let mut budget = GossipBudget::new(10);
        let (peer, other) = (PeerId::random(), PeerId::random());
        let start = Instant::now();
        let taken = (0..100).filter(|_| budget.take(peer, start)).count();
        assert_eq!(taken, 20, "a burst of two seconds' worth");
        assert!(budget.take(other, start), "each peer has its own bucket");
        let later = start + Duration::from_millis(500);
        let taken = (0..100).filter(|_| budget.take(peer, later)).count();
        assert_eq!(taken, 5, "then the rate");
        // A bucket that filled again is forgotten; a drained one is kept.
        budget.forget_idle(start + Duration::from_secs(1));
        assert!(budget.peers.contains_key(&peer));
        budget.forget_idle(start + Duration::from_secs(10));
        assert!(budget.peers.is_empty());
    }
}
