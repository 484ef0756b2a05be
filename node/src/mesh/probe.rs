//! AutoNAT v2's client, asking bootstrap nodes to dial us back at the addresses where
//! peers see us: the answer says whether this node can be reached there (public, or
//! behind a NAT that lets strangers in) or not (behind NAT: a relay is needed).
//!
//! Three things differ from the plain client. Loopback and relayed addresses are not
//! worth a probe (a server on this host reaches any loopback address; a relayed one
//! is reachable by construction), so they are never handed to it. A node that listens
//! on QUIC has its QUIC addresses probed only: a QUIC dial-back fails within the
//! handshake timeout, while a TCP one to a router that drops strangers' connection
//! attempts hangs at the server for minutes, and the host's answer is the same. And a
//! verified
//! address is not made external here: the event loop does that (`observed`), so it
//! can also withdraw the address when no peer sees us at that IP any more, and make
//! it external again when they do (the client tests each address only once).

use std::task::{Context, Poll};
use std::time::Duration;

use libp2p::autonat::v2::client;
use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, ListenAddresses, NetworkBehaviour,
    NewExternalAddrCandidate, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

use super::scope::{scope_of, Scope};

type Inner = client::Behaviour;

/// How often untested addresses are sent for a dial-back (libp2p's default is 5 s,
/// which a new supplier behind a full-cone NAT would wait before being reachable).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// The AutoNAT v2 client, for addresses where a dial-back means something.
pub struct Probe {
    inner: Inner,
    listen: ListenAddresses,
}

impl Default for Probe {
    fn default() -> Self {
        Self {
            inner: client::Behaviour::new(
                rand_libp2p::make_rng::<rand_libp2p::rngs::StdRng>(),
                client::Config::default().with_probe_interval(PROBE_INTERVAL),
            ),
            listen: ListenAddresses::default(),
        }
    }
}

fn is_quic(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::QuicV1))
}

/// Whether a dial-back to `addr` tells anything about this node's reachability: an
/// IP address and port that is not loopback and not a relay's (a peer that reached us
/// through a relay sees us at `/p2p/<us>` alone).
pub fn worth_probing(addr: &Multiaddr) -> bool {
    scope_of(addr) != Scope::Loopback
        && super::scope::ip_of(addr).is_some()
        && super::scope::port_of(addr).is_some()
        && !addr.iter().any(|p| p == Protocol::P2pCircuit)
}

impl NetworkBehaviour for Probe {
    type ConnectionHandler = <Inner as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = client::Event;

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
        self.listen.on_swarm_event(&event);
        if let FromSwarm::NewExternalAddrCandidate(NewExternalAddrCandidate { addr }) = event {
            let quic_here = self.listen.iter().any(is_quic);
            if !worth_probing(addr) || (quic_here && !is_quic(addr)) {
                return;
            }
        }
        self.inner.on_swarm_event(event);
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
        loop {
            match self.inner.poll(cx) {
                // The event that comes with it (`result: Ok`) says the same; the event
                // loop decides what to advertise.
                Poll::Ready(ToSwarm::ExternalAddrConfirmed(_)) => continue,
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_relayed_addresses_are_not_probed() {
        let a = |s: &str| s.parse::<Multiaddr>().unwrap();
        assert!(!worth_probing(&a("/ip4/127.0.0.1/udp/4002/quic-v1")));
        assert!(!worth_probing(&a(
            "/ip4/198.51.100.1/udp/4002/quic-v1/p2p/12D3KooWLRDC42wxwgaKDiG7XDrcuGipDGiVF3QAjzaEEpz3NTsq/p2p-circuit"
        )));
        assert!(!worth_probing(&a(
            "/p2p/12D3KooWLRDC42wxwgaKDiG7XDrcuGipDGiVF3QAjzaEEpz3NTsq"
        )));
        assert!(worth_probing(&a("/ip4/198.51.100.7/udp/4002/quic-v1")));
        assert!(worth_probing(&a("/ip4/10.0.0.7/tcp/4002")));
    }
}
