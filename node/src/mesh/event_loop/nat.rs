//! NAT traversal in the event loop: AutoNAT verdicts, relay slots (ours, and the
//! relay a bootstrap node runs for others), hole punching, the kind of each link, and
//! what the user is told as reachability changes.

use std::time::{Duration, Instant};

use libp2p::core::transport::ListenerId;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{autonat, dcutr, relay, Multiaddr, PeerId};
use tracing::{debug, info, warn};

use super::EventLoop;
use crate::config::Role;
use crate::mesh::handle::LinkKind;
use crate::mesh::nat_metrics::NatMetrics;
use crate::mesh::reachability::{is_relayed, Action, Reachability};
use crate::mesh::scope::{scope_of, without_peer, Scope};

/// How long a relayed connection stays once a direct one to the same peer is up: new
/// streams take the direct one at once (`streams::PreferDirect`), and an answer
/// already streaming over the relay has this long to finish before the relayed
/// connection is closed (freeing the relay's circuit).
pub const RELAYED_GRACE: Duration = Duration::from_secs(120);

impl EventLoop {
    /// Addresses declared reachable (`--external`) are advertised from the start.
    pub(super) fn start_nat(&mut self) {
        for addr in self.config.external.clone() {
            info!(%addr, "advertising an address declared external");
            self.advertise(addr);
        }
    }

    /// Makes `addr` an external address of ours (identify hands it to peers who can
    /// use it). The swarm reports only what behaviours confirm, not this.
    pub(super) fn advertise(&mut self, addr: Multiaddr) {
        self.swarm.add_external_address(addr.clone());
        self.on_external(addr, true);
    }

    /// Stops advertising `addr`.
    pub(super) fn withdraw(&mut self, addr: &Multiaddr) {
        self.swarm.remove_external_address(addr);
        self.on_external(addr.clone(), false);
    }

    /// A listener has a new address: one of ours, or a relayed one (a slot reserved).
    pub(super) fn on_new_listen_addr(&mut self, listener: ListenerId, address: Multiaddr) {
        if is_relayed(&address) {
            debug!(%address, relay = ?self.relay_listeners.get(&listener), "relayed listen address");
            return;
        }
        // A node that offers NAT services is reachable where it listens (that is why
        // others bootstrap from it); loopback leads nowhere for other hosts.
        if self.config.nat_services.is_some() && scope_of(&address) != Scope::Loopback {
            self.advertise(address.clone());
        }
        self.listen_addrs.push(address);
    }

    /// A listener closed: for one on a relay, our slot there is gone.
    pub(super) fn on_listener_closed(
        &mut self,
        listener: ListenerId,
        reason: Result<(), std::io::Error>,
    ) {
        let Some(relay) = self.relay_listeners.remove(&listener) else {
            return;
        };
        let before = self.reach.state();
        match reason {
            Ok(()) => self.reach.released(&relay),
            Err(error) => {
                warn!(%relay, %error, "the relay refused or lost this node's slot; asking again later");
                self.reach
                    .reservation_failed(&relay, error.to_string(), Instant::now());
            }
        }
        self.report_reachability(before);
    }

    /// An address of ours is advertised (`added`) or not any more: peers hear of it now.
    pub(super) fn on_external(&mut self, address: Multiaddr, added: bool) {
        let before = self.reach.state();
        if added {
            debug!(%address, "external address");
            self.reach.external_added(address);
        } else {
            self.reach.external_removed(&address);
        }
        let peers: Vec<PeerId> = self.connections.keys().copied().collect();
        self.swarm.behaviour_mut().identify.push(peers);
        self.report_reachability(before);
    }

    /// A connection to `peer` is up: its link kind, counted. A direct connection that
    /// comes up while the peer is reached through a relay is the hole punch's: with
    /// QUIC, each side's attempt can open one (one side's arrives as an inbound
    /// connection, which DCUtR does not report).
    pub(super) fn link_established(
        &mut self,
        peer: &PeerId,
        conn: ConnectionId,
        relayed: bool,
    ) -> LinkKind {
        let via_relay = self
            .connections
            .get(peer)
            .is_some_and(|c| c.values().any(|c| c.kind == LinkKind::Relayed));
        let kind = if relayed {
            LinkKind::Relayed
        } else if self.punched.remove(&conn) || via_relay {
            LinkKind::HolePunched
        } else {
            LinkKind::Direct
        };
        self.metrics.nat.link(kind.as_str()).inc();
        kind
    }

    /// A connected peer offers relay slots (its identify lists the hop protocol).
    pub(super) fn relay_offered(&mut self, relay: PeerId) {
        // The address we dialled it at leads to it; one it dialled us from may not.
        let addr = self
            .connections
            .get(&relay)
            .and_then(|conns| {
                conns
                    .values()
                    .find(|c| c.dialled && c.kind != LinkKind::Relayed)
            })
            .map(|c| without_peer(&c.addr))
            .or_else(|| {
                self.swarm
                    .behaviour()
                    .addresses
                    .get(&relay)
                    .into_iter()
                    .find(|a| !is_relayed(a))
            });
        if let Some(addr) = addr {
            self.reach
                .relay_offered(relay, addr.with(Protocol::P2p(relay)));
        }
    }

    /// The contacts, locked (the transport notes its dials there too).
    pub(super) fn contacts(&self) -> std::sync::MutexGuard<'_, crate::mesh::contacts::Contacts> {
        crate::mesh::contacts::lock(&self.contacts)
    }

    /// A connection with `peer` came up at `endpoint` (before it is added to
    /// `connections`): an inbound direct one from a stranger tells that our NAT, if
    /// any, lets strangers in (`contacts`); its address is a contact from now on (our
    /// replies open a NAT's filter like a dial).
    pub(super) fn note_contact(&mut self, peer: &PeerId, endpoint: &ConnectedPoint) {
        let now = Instant::now();
        let remote = endpoint.get_remote_address();
        if endpoint.is_relayed() {
            self.contacts().relayed(*peer, now);
            return;
        }
        if let ConnectedPoint::Listener { send_back_addr, .. } = endpoint {
            let ip = self.contacts().stranger(peer, send_back_addr, now);
            // Not a stranger: a peer we hold a connection with, or one at an address
            // we hold a connection to (however long ago it was made).
            let known = ip.is_some_and(|ip| {
                self.connections.contains_key(peer)
                    || self
                        .connections
                        .values()
                        .flat_map(|c| c.values())
                        .any(|c| crate::mesh::contacts::ip_of(&c.addr) == Some(ip))
            });
            if let Some(ip) = ip.filter(|_| !known) {
                let before = self.reach.confirmed();
                self.reach.stranger_reached(ip);
                if !before && self.reach.confirmed() {
                    info!(%peer, from = %ip, "reachability: a peer this node never contacted reached it directly, so its router lets strangers in; relay slots are no longer needed");
                }
            }
        }
        self.contacts().sent_to(remote, now);
    }

    /// The last connection to `peer` closed: a slot on it went with it.
    pub(super) fn relay_gone(&mut self, peer: &PeerId) {
        let before = self.reach.state();
        if self.reach.relay_gone(peer) {
            let listeners: Vec<ListenerId> = self
                .relay_listeners
                .iter()
                .filter(|(_, r)| *r == peer)
                .map(|(l, _)| *l)
                .collect();
            for listener in listeners {
                self.relay_listeners.remove(&listener);
                self.swarm.remove_listener(listener);
            }
            info!(relay = %peer, "lost the connection to a relay holding this node's slot");
        }
        self.report_reachability(before);
    }

    /// Every half second: reserve or give back relay slots, and close relayed
    /// connections that a direct one has replaced.
    pub(super) fn nat_housekeeping(&mut self) {
        let now = Instant::now();
        for action in self.reach.next(now) {
            match action {
                Action::Reserve { relay, addr } => match self.swarm.listen_on(addr.clone()) {
                    Ok(listener) => {
                        info!(%relay, "behind NAT: asking a relay for a slot");
                        self.relay_listeners.insert(listener, relay);
                    }
                    Err(error) => self
                        .reach
                        .reservation_failed(&relay, error.to_string(), now),
                },
                Action::Release { relay } => {
                    let listeners: Vec<ListenerId> = self
                        .relay_listeners
                        .iter()
                        .filter(|(_, r)| **r == relay)
                        .map(|(l, _)| *l)
                        .collect();
                    for listener in listeners {
                        info!(%relay, "reachable directly: giving the relay slot back");
                        self.swarm.remove_listener(listener);
                    }
                }
            }
        }
        let superseded: Vec<ConnectionId> = self
            .connections
            .values()
            .filter(|conns| {
                conns.values().any(|c| {
                    c.kind != LinkKind::Relayed && now.duration_since(c.since) >= RELAYED_GRACE
                })
            })
            .flat_map(|conns| {
                conns
                    .iter()
                    .filter(|(_, c)| c.kind == LinkKind::Relayed)
                    .map(|(id, _)| *id)
            })
            .collect();
        for conn in superseded {
            debug!(?conn, "closing a relayed connection a direct one replaced");
            self.swarm.close_connection(conn);
        }
    }

    /// Events of the relay client: our slots and the circuits through them.
    pub(super) fn on_relay_client(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            } => {
                let before = self.reach.state();
                self.reach.reserved(&relay_peer_id);
                if !renewal {
                    info!(relay = %relay_peer_id, "the relay granted this node a slot");
                }
                self.report_reachability(before);
            }
            relay::client::Event::InboundCircuitEstablished { src_peer_id, .. } => {
                debug!(peer = %src_peer_id, "a peer reached us through a relay");
            }
            relay::client::Event::OutboundCircuitEstablished { relay_peer_id, .. } => {
                debug!(relay = %relay_peer_id, "reached a peer through a relay");
            }
        }
    }

    /// DCUtR: a relayed connection became a direct one, or could not.
    pub(super) fn on_dcutr(&mut self, event: dcutr::Event) {
        let peer = event.remote_peer_id;
        match event.result {
            Ok(conn) => {
                NatMetrics::count(&self.metrics.nat.hole_punches, "ok");
                info!(%peer, "hole punched: a direct link replaces the relayed one");
                match self
                    .connections
                    .get_mut(&peer)
                    .and_then(|c| c.get_mut(&conn))
                {
                    Some(c) if c.kind == LinkKind::Direct => {
                        c.kind = LinkKind::HolePunched;
                        self.metrics.nat.link("direct").dec();
                        self.metrics.nat.link("hole-punched").inc();
                    }
                    Some(_) => {}
                    None => {
                        self.punched.insert(conn);
                    }
                }
            }
            Err(error) => {
                NatMetrics::count(&self.metrics.nat.hole_punches, "failed");
                info!(%peer, %error, "hole punching failed (one of the NATs maps each destination to its own port); the link stays relayed");
            }
        }
    }

    /// AutoNAT: a dial-back reached us at an address, or did not.
    pub(super) fn on_probe(&mut self, event: autonat::v2::client::Event) {
        let before = self.reach.state();
        let addr = event.tested_addr;
        match event.result {
            Ok(()) => {
                NatMetrics::count(&self.metrics.nat.probes, "ok");
                info!(%addr, server = %event.server, "a dial-back reached this node");
                self.reach.probed(Ok(()));
                for change in self.observed.verified(addr) {
                    self.apply(change);
                }
            }
            Err(error) => {
                NatMetrics::count(&self.metrics.nat.probes, "failed");
                info!(%addr, server = %event.server, %error, "a dial-back could not reach this node there");
                self.reach
                    .probed(Err(format!("{addr}: {}", error.to_string().trim())));
            }
        }
        self.report_reachability(before);
    }

    /// AutoNAT server: we dialled a peer back for its probe.
    pub(super) fn on_dial_back(&mut self, event: autonat::v2::server::Event) {
        let outcome = if event.result.is_ok() { "ok" } else { "failed" };
        NatMetrics::count(&self.metrics.nat.dial_backs, outcome);
        debug!(client = %event.client, addr = %event.tested_addr, outcome, "dial-back");
    }

    /// The relay this node runs for others: its use, counted against its bounds.
    pub(super) fn on_relay_server(&mut self, event: relay::Event) {
        let nat = &self.metrics.nat;
        match event {
            relay::Event::ReservationReqAccepted {
                src_peer_id,
                renewed,
            } => {
                NatMetrics::count(&nat.relay_reservations, "accepted");
                if !renewed {
                    nat.relay_slots.inc();
                    info!(peer = %src_peer_id, "relay: slot granted");
                }
            }
            relay::Event::ReservationReqDenied {
                src_peer_id,
                status,
            } => {
                NatMetrics::count(&nat.relay_reservations, "denied");
                info!(peer = %src_peer_id, ?status, "relay: slot refused (limits)");
            }
            relay::Event::ReservationClosed { .. } | relay::Event::ReservationTimedOut { .. } => {
                NatMetrics::count(&nat.relay_reservations, "closed");
                nat.relay_slots.dec();
            }
            relay::Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            } => {
                NatMetrics::count(&nat.relay_circuits, "accepted");
                nat.relay_circuits_open.inc();
                debug!(src = %src_peer_id, dst = %dst_peer_id, "relay: circuit opened");
            }
            relay::Event::CircuitReqDenied {
                src_peer_id,
                dst_peer_id,
                status,
            } => {
                NatMetrics::count(&nat.relay_circuits, "denied");
                info!(src = %src_peer_id, dst = %dst_peer_id, ?status, "relay: circuit refused");
            }
            relay::Event::CircuitClosed {
                src_peer_id,
                dst_peer_id,
                error,
            } => {
                NatMetrics::count(&nat.relay_circuits, "closed");
                nat.relay_circuits_open.dec();
                // A circuit that reached a bound is a cut-off like any other limit's.
                // (libp2p's relay ends such a circuit with these errors.)
                match &error {
                    Some(e) if e.to_string().contains("Max circuit bytes") => {
                        self.metrics.limited("relay_circuit_bytes")
                    }
                    Some(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                        self.metrics.limited("relay_circuit_duration")
                    }
                    _ => {}
                }
                debug!(src = %src_peer_id, dst = %dst_peer_id, ?error, "relay: circuit closed");
            }
            _ => {}
        }
    }

    /// Tells the user when reachability changed since `before`, in plain words.
    fn report_reachability(&self, before: Reachability) {
        let now = self.reach.state();
        if now == before {
            return;
        }
        let status = self.reach.status(|a| a.to_string());
        match now {
            Reachability::Public => info!(
                addrs = %status.public_addrs.join(", "),
                "reachability: public (peers can dial this node directly)"
            ),
            Reachability::Relayed => info!(
                addrs = %status.relayed_addrs.join(", "),
                "reachability: behind NAT, reachable through a relay (direct links are hole-punched where both NATs allow)"
            ),
            Reachability::BehindNat if self.config.role != Role::Full => info!(
                "reachability: behind NAT (peers cannot dial this node; a light node needs no more)"
            ),
            Reachability::BehindNat if status.relays.is_empty() => warn!(
                "reachability: behind NAT and no relay is known, so peers cannot reach this node; bootstrap nodes offer relay slots (check --bootstrap), or forward port(s) on your router"
            ),
            Reachability::BehindNat => info!(
                "reachability: behind NAT (peers cannot dial this node); asking a relay for a slot"
            ),
            Reachability::Unknown => {}
        }
    }
}
