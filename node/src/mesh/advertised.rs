//! Identify, telling each peer only the addresses it can use.
//!
//! libp2p's identify sends every peer the same list: all listen addresses (a node on
//! `0.0.0.0` has one per interface, loopback included) and every confirmed external
//! address. A peer on another host that stores our `127.0.0.1:4002` and dials it
//! reaches its own host (itself, when it listens on the same port), and a DHT server
//! hands what it stored to everyone who asks. This wrapper gives each connection's
//! identify handler the addresses that [`scope::usable`] allows over that connection:
//! loopback only to a peer on loopback, private ranges only to a peer met over a
//! private or loopback address, public addresses to anyone.

use std::collections::HashSet;
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::swarm::handler::ConnectionEvent;
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, ExternalAddresses,
    FromSwarm, ListenAddresses, NetworkBehaviour, SubstreamProtocol, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{identify, Multiaddr, PeerId};

use super::scope::{self, Scope};

type Inner = identify::Behaviour;
type InnerHandler = <Inner as NetworkBehaviour>::ConnectionHandler;
/// identify's handler input: its addresses changed (`AddressesChanged`), or push them.
type InnerIn = <InnerHandler as ConnectionHandler>::FromBehaviour;

/// identify with per-connection address lists.
pub struct Identify {
    inner: Inner,
    listen: ListenAddresses,
    external: ExternalAddresses,
}

impl Identify {
    /// Wraps `config`'s identify.
    pub fn new(config: identify::Config) -> Self {
        Self {
            inner: identify::Behaviour::new(config),
            listen: ListenAddresses::default(),
            external: ExternalAddresses::default(),
        }
    }

    /// Sends `peers` our addresses now (identify push), rather than when they next ask.
    pub fn push(&mut self, peers: impl IntoIterator<Item = PeerId>) {
        self.inner.push(peers);
    }

    /// Every address of ours: what identify would send everyone.
    fn all(&self) -> HashSet<Multiaddr> {
        self.listen
            .iter()
            .chain(self.external.iter())
            .cloned()
            .collect()
    }

    fn handler(&self, inner: InnerHandler, remote: &Multiaddr) -> Handler {
        let mut handler = Handler {
            inner,
            via: scope::scope_of(remote),
        };
        // The inner handler starts with every address; it gets the filtered list
        // before it can send anything.
        handler.on_behaviour_event(InnerIn::AddressesChanged(self.all()));
        handler
    }
}

/// identify's handler for one connection, holding the scope of the remote's address.
pub struct Handler {
    inner: InnerHandler,
    via: Scope,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = InnerIn;
    type ToBehaviour = <InnerHandler as ConnectionHandler>::ToBehaviour;
    type InboundProtocol = <InnerHandler as ConnectionHandler>::InboundProtocol;
    type OutboundProtocol = <InnerHandler as ConnectionHandler>::OutboundProtocol;
    type InboundOpenInfo = <InnerHandler as ConnectionHandler>::InboundOpenInfo;
    type OutboundOpenInfo = <InnerHandler as ConnectionHandler>::OutboundOpenInfo;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        self.inner.listen_protocol()
    }

    fn connection_keep_alive(&self) -> bool {
        self.inner.connection_keep_alive()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        self.inner.poll(cx)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        self.inner.poll_close(cx)
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        let event = match event {
            InnerIn::AddressesChanged(all) => InnerIn::AddressesChanged(
                all.into_iter()
                    .filter(|a| scope::usable(scope::scope_of(a), self.via))
                    .collect(),
            ),
            other => other,
        };
        self.inner.on_behaviour_event(event);
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        self.inner.on_connection_event(event);
    }
}

impl NetworkBehaviour for Identify {
    type ConnectionHandler = Handler;
    type ToSwarm = identify::Event;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner = self
            .inner
            .handle_established_inbound_connection(id, peer, local, remote)?;
        Ok(self.handler(inner, remote))
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner
            .handle_pending_outbound_connection(id, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner = self
            .inner
            .handle_established_outbound_connection(id, peer, addr, role, port_use)?;
        Ok(self.handler(inner, addr))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.listen.on_swarm_event(&event);
        self.external.on_swarm_event(&event);
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
        self.inner.poll(cx)
    }
}
