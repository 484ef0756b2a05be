//! Who may use this node's circuit relay, and within which bounds (bootstrap nodes
//! relay for peers behind NAT).
//!
//! Every reservation and every circuit passes [`may_use_relay`] for the peer that asks
//! (a circuit's other end must hold a reservation, so it passed too). It admits every
//! peer that reached this node: a peer whose identify names another mesh is blocked and
//! disconnected (`behaviour::MeshBehaviour::blocked`), and in a private mesh only
//! members get a connection at all (`super::admission`), so only members reserve slots
//! and open circuits.

use std::time::Duration;

use libp2p::relay;
use libp2p::{Multiaddr, PeerId};

use crate::config::RelayLimits;

/// Whether `peer` may reserve a slot on, or open a circuit through, this node's relay.
/// Every connected peer of the mesh may (a private mesh's strangers never connect).
pub fn may_use_relay(_peer: &PeerId) -> bool {
    true
}

/// [`may_use_relay`] where libp2p's relay asks: its rate limiters see every
/// reservation and circuit request before it is accepted.
struct Admission;

impl relay::RateLimiter for Admission {
    fn try_next(&mut self, peer: PeerId, _addr: &Multiaddr, _now: std::time::Instant) -> bool {
        may_use_relay(&peer)
    }
}

/// The relay's configuration for `limits`: the admission check above, libp2p's rate
/// limits (per peer and per IP address, for reservations and for circuits) and the
/// bounds.
pub fn relay_config(limits: &RelayLimits) -> relay::Config {
    let mut config = relay::Config {
        max_reservations: limits.max_reservations,
        max_reservations_per_peer: limits.max_reservations_per_peer,
        reservation_duration: Duration::from_secs(3600),
        max_circuits: limits.max_circuits,
        max_circuits_per_peer: limits.max_circuits_per_peer,
        max_circuit_duration: limits.max_circuit_duration,
        max_circuit_bytes: limits.max_circuit_bytes,
        ..Default::default()
    };
    config.reservation_rate_limiters.push(Box::new(Admission));
    config.circuit_src_rate_limiters.push(Box::new(Admission));
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_is_bounded_and_asks_who_may_use_it() {
        let limits = RelayLimits::default();
        let config = relay_config(&limits);
        assert_eq!(config.max_circuits, 64);
        assert_eq!(config.max_circuit_bytes, 16 << 20);
        assert_eq!(config.max_circuit_duration, Duration::from_secs(600));
        // libp2p's per-peer and per-IP limits, then ours.
        assert_eq!(config.reservation_rate_limiters.len(), 3);
        assert_eq!(config.circuit_src_rate_limiters.len(), 3);
        assert!(may_use_relay(&PeerId::random()));
    }
}
