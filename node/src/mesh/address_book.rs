//! The addresses this node dials a peer at, whoever asks for the dial (an inference
//! stream, a DHT walk, gossip): what the peer last said in identify, filtered by
//! [`scope`](super::scope) for the connection it came over, plus the addresses we
//! reached it at. A peer's new identify replaces what it said before, so a node
//! restarted on another port is dialled at its new port, not at the old one; an
//! address whose dial failed, or where another node answered, is dropped. Our own
//! addresses are never dialled: a stale address that is ours now would only reach
//! ourselves.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::swarm::behaviour::ConnectionEstablished;
use libp2p::swarm::{
    dummy, ConnectionClosed, ConnectionDenied, ConnectionId, DialError, DialFailure,
    ExternalAddresses, FromSwarm, ListenAddresses, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

use super::scope::without_peer;

/// Peers whose addresses are kept; beyond it, the least recently updated is forgotten.
pub const MAX_PEERS: usize = 4096;
/// Addresses kept per peer.
pub const MAX_ADDRS: usize = 16;

#[derive(Debug, Default)]
struct Entry {
    addrs: Vec<Multiaddr>,
    touched: u64,
}

/// Known addresses by peer, bounded.
#[derive(Debug, Default)]
pub struct AddressBook {
    peers: HashMap<PeerId, Entry>,
    /// Live connections we dialled, with the address that worked.
    dialled: HashMap<ConnectionId, (PeerId, Multiaddr)>,
    listen: ListenAddresses,
    external: ExternalAddresses,
    clock: u64,
}

impl AddressBook {
    /// What `peer` says its addresses are now (already filtered for where it spoke
    /// from). Replaces what it said before, keeping addresses we are connected to it
    /// over; an empty list changes nothing. Returns the addresses dropped.
    pub fn replace(&mut self, peer: PeerId, addrs: &[Multiaddr]) -> Vec<Multiaddr> {
        if addrs.is_empty() {
            return Vec::new();
        }
        let mut new: Vec<Multiaddr> = Vec::new();
        let connected = self
            .dialled
            .values()
            .filter(|(p, _)| *p == peer)
            .map(|(_, a)| a.clone());
        for addr in addrs.iter().map(without_peer).chain(connected) {
            if !new.contains(&addr) && new.len() < MAX_ADDRS {
                new.push(addr);
            }
        }
        let entry = self.entry(peer);
        let dropped = entry
            .addrs
            .iter()
            .filter(|a| !new.contains(a))
            .cloned()
            .collect();
        entry.addrs = new;
        dropped
    }

    /// Adds addresses learnt elsewhere (a DHT lookup) to what we know of `peer`.
    pub fn add(&mut self, peer: PeerId, addrs: &[Multiaddr]) {
        let entry = self.entry(peer);
        for addr in addrs.iter().map(without_peer) {
            if !entry.addrs.contains(&addr) {
                if entry.addrs.len() >= MAX_ADDRS {
                    entry.addrs.remove(0);
                }
                entry.addrs.push(addr);
            }
        }
    }

    /// Forgets one address of `peer`.
    pub fn remove(&mut self, peer: &PeerId, addr: &Multiaddr) {
        let addr = without_peer(addr);
        if let Some(entry) = self.peers.get_mut(peer) {
            entry.addrs.retain(|a| *a != addr);
            if entry.addrs.is_empty() {
                self.peers.remove(peer);
            }
        }
    }

    /// The addresses we would dial `peer` at, our own left out.
    pub fn get(&self, peer: &PeerId) -> Vec<Multiaddr> {
        let own: HashSet<&Multiaddr> = self.listen.iter().chain(self.external.iter()).collect();
        self.peers
            .get(peer)
            .map(|e| {
                e.addrs
                    .iter()
                    .filter(|a| !own.contains(a))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    fn entry(&mut self, peer: PeerId) -> &mut Entry {
        self.clock += 1;
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_PEERS {
            if let Some(oldest) = self
                .peers
                .iter()
                .min_by_key(|(_, e)| e.touched)
                .map(|(p, _)| *p)
            {
                self.peers.remove(&oldest);
            }
        }
        let entry = self.peers.entry(peer).or_default();
        entry.touched = self.clock;
        entry
    }
}

impl NetworkBehaviour for AddressBook {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        Ok(peer.map(|p| self.get(&p)).unwrap_or_default())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.listen.on_swarm_event(&event);
        self.external.on_swarm_event(&event);
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint: ConnectedPoint::Dialer { address, .. },
                failed_addresses,
                ..
            }) => {
                for addr in failed_addresses {
                    self.remove(&peer_id, addr);
                }
                let address = without_peer(address);
                self.add(peer_id, std::slice::from_ref(&address));
                self.dialled.insert(connection_id, (peer_id, address));
            }
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => {
                self.dialled.remove(&connection_id);
            }
            FromSwarm::DialFailure(DialFailure {
                peer_id: Some(peer),
                error,
                ..
            }) => match error {
                DialError::Transport(failed) => {
                    for (addr, _) in failed {
                        self.remove(&peer, addr);
                    }
                }
                // Another node answers there (the address is stale, or loopback on
                // another host): nothing of this peer's.
                DialError::WrongPeerId { address, .. } => self.remove(&peer, address),
                _ => {}
            },
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_new_identify_replaces_the_old_addresses() {
        let mut book = AddressBook::default();
        let peer = PeerId::random();
        book.replace(
            peer,
            &[
                a("/ip4/127.0.0.1/udp/1000/quic-v1"),
                a("/ip4/127.0.0.1/tcp/1000"),
            ],
        );
        let dropped = book.replace(peer, &[a("/ip4/127.0.0.1/udp/2000/quic-v1")]);
        assert_eq!(dropped.len(), 2);
        assert_eq!(book.get(&peer), [a("/ip4/127.0.0.1/udp/2000/quic-v1")]);
        assert!(
            book.replace(peer, &[]).is_empty(),
            "an empty list changes nothing"
        );
        assert_eq!(book.get(&peer).len(), 1);
        book.add(peer, &[a("/ip4/10.0.0.1/tcp/1")]);
        assert_eq!(book.get(&peer).len(), 2);
        book.remove(&peer, &a("/ip4/10.0.0.1/tcp/1"));
        book.remove(&peer, &a("/ip4/127.0.0.1/udp/2000/quic-v1"));
        assert!(book.get(&peer).is_empty());
    }

    #[test]
    fn the_book_is_bounded() {
        let mut book = AddressBook::default();
        let first = PeerId::random();
        book.add(first, &[a("/ip4/10.0.0.1/tcp/1")]);
        for _ in 0..MAX_PEERS {
            book.add(PeerId::random(), &[a("/ip4/10.0.0.2/tcp/1")]);
        }
        assert_eq!(book.peers.len(), MAX_PEERS);
        assert!(
            book.get(&first).is_empty(),
            "the least recently updated went first"
        );
        let many: Vec<Multiaddr> = (0..40)
            .map(|p| a(&format!("/ip4/10.0.0.3/tcp/{p}")))
            .collect();
        book.replace(first, &many);
        assert_eq!(book.get(&first).len(), MAX_ADDRS);
    }
}
