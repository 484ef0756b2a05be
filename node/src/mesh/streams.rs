//! Raw protocol streams (the inference protocol) that take a direct connection over a
//! relayed one.
//!
//! libp2p-stream opens a new stream on a connection to the peer chosen at random. A
//! peer behind NAT is first reached through a relay, and a moment later, once hole
//! punching succeeds, directly as well: a random choice would keep sending every
//! other answer through the relay (slower, and counted against the relay's bounds).
//! This wrapper shows libp2p-stream only the connections a new stream should use: a
//! peer's direct connections when it has any, its relayed ones otherwise. Every
//! connection keeps its handler, so streams already open, and streams the peer opens
//! to us, carry on over whichever connection they are on.

use std::collections::HashMap;
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::swarm::behaviour::ConnectionEstablished;
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

type Inner = libp2p_stream::Behaviour;

struct Conn {
    id: ConnectionId,
    endpoint: ConnectedPoint,
    /// Whether libp2p-stream may open new streams on it.
    shown: bool,
}

/// libp2p-stream, preferring direct connections for new streams.
#[derive(Default)]
pub struct PreferDirect {
    inner: Inner,
    conns: HashMap<PeerId, Vec<Conn>>,
}

impl PreferDirect {
    /// Opens and accepts streams.
    pub fn new_control(&self) -> libp2p_stream::Control {
        self.inner.new_control()
    }

    /// Connections to `peer` that new streams may use now.
    #[cfg(test)]
    fn shown(&self, peer: &PeerId) -> Vec<ConnectionId> {
        self.conns
            .get(peer)
            .map(|cs| cs.iter().filter(|c| c.shown).map(|c| c.id).collect())
            .unwrap_or_default()
    }

    /// Makes what libp2p-stream sees of `peer` match the rule: direct connections if
    /// any, else relayed ones.
    fn settle(&mut self, peer: PeerId) {
        let Some(conns) = self.conns.get_mut(&peer) else {
            return;
        };
        let direct = conns.iter().any(|c| !c.endpoint.is_relayed());
        for c in conns.iter_mut() {
            let show = direct != c.endpoint.is_relayed();
            if show == c.shown {
                continue;
            }
            c.shown = show;
            if show {
                self.inner.on_swarm_event(FromSwarm::ConnectionEstablished(
                    ConnectionEstablished {
                        peer_id: peer,
                        connection_id: c.id,
                        endpoint: &c.endpoint,
                        failed_addresses: &[],
                        other_established: 0,
                    },
                ));
            } else {
                self.inner
                    .on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
                        peer_id: peer,
                        connection_id: c.id,
                        endpoint: &c.endpoint,
                        cause: None,
                        remaining_established: 0,
                    }));
            }
        }
    }
}

impl NetworkBehaviour for PreferDirect {
    type ConnectionHandler = <Inner as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = <Inner as NetworkBehaviour>::ToSwarm;

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner
            .handle_established_inbound_connection(id, peer, local, remote)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner
            .handle_established_outbound_connection(id, peer, addr, role, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                self.conns.entry(e.peer_id).or_default().push(Conn {
                    id: e.connection_id,
                    endpoint: e.endpoint.clone(),
                    shown: false,
                });
                self.settle(e.peer_id);
            }
            FromSwarm::ConnectionClosed(e) => {
                let Some(conns) = self.conns.get_mut(&e.peer_id) else {
                    return;
                };
                let Some(i) = conns.iter().position(|c| c.id == e.connection_id) else {
                    return;
                };
                let closed = conns.remove(i);
                if conns.is_empty() {
                    self.conns.remove(&e.peer_id);
                }
                if closed.shown {
                    self.inner.on_swarm_event(event);
                }
                self.settle(e.peer_id);
            }
            other => self.inner.on_swarm_event(other),
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner.on_connection_handler_event(peer, id, event);
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::multiaddr::Protocol;

    fn established(b: &mut PreferDirect, peer: PeerId, id: usize, endpoint: &ConnectedPoint) {
        b.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
            peer_id: peer,
            connection_id: ConnectionId::new_unchecked(id),
            endpoint,
            failed_addresses: &[],
            other_established: 0,
        }));
    }

    fn closed(b: &mut PreferDirect, peer: PeerId, id: usize, endpoint: &ConnectedPoint) {
        b.on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
            peer_id: peer,
            connection_id: ConnectionId::new_unchecked(id),
            endpoint,
            cause: None,
            remaining_established: 0,
        }));
    }

    fn dialer(addr: Multiaddr) -> ConnectedPoint {
        ConnectedPoint::Dialer {
            address: addr,
            role_override: Endpoint::Dialer,
            port_use: PortUse::Reuse,
        }
    }

    /// Without the wrapper libp2p-stream picks any connection, relayed ones included,
    /// for every new stream.
    #[test]
    fn new_streams_take_the_direct_connection_once_there_is_one() {
        let mut b = PreferDirect::default();
        let peer = PeerId::random();
        let relay = PeerId::random();
        let relayed = dialer(
            "/ip4/198.51.100.1/udp/4002/quic-v1"
                .parse::<Multiaddr>()
                .unwrap()
                .with(Protocol::P2p(relay))
                .with(Protocol::P2pCircuit)
                .with(Protocol::P2p(peer)),
        );
        let direct = dialer("/ip4/198.51.100.9/udp/4002/quic-v1".parse().unwrap());
        let id = ConnectionId::new_unchecked;

        established(&mut b, peer, 1, &relayed);
        assert_eq!(
            b.shown(&peer),
            [id(1)],
            "alone, the relayed link carries streams"
        );
        established(&mut b, peer, 2, &direct);
        assert_eq!(b.shown(&peer), [id(2)], "the hole-punched link takes over");
        closed(&mut b, peer, 2, &direct);
        assert_eq!(
            b.shown(&peer),
            [id(1)],
            "the relay again when it is all there is"
        );
        established(&mut b, peer, 3, &direct);
        closed(&mut b, peer, 1, &relayed);
        assert_eq!(b.shown(&peer), [id(3)]);
        closed(&mut b, peer, 3, &direct);
        assert!(b.conns.is_empty());
    }
}
