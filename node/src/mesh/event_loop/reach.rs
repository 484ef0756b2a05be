//! Reaching peers: what the event loop does with addresses (identify's, observed
//! ones), failed dials, DHT lookups of peers no known address reaches, back-off of
//! unreachable suppliers, and the bootstrap nodes.

use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, DialError};
use libp2p::{identify, kad, Multiaddr, PeerId, TransportError};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::{now_ms, public_key_of, EventLoop, MAX_LOOKUPS};
use crate::mesh::bootstrap::Report;
use crate::mesh::names;
use crate::mesh::observed::Change;
use crate::mesh::scope::{self, without_peer};

/// A DHT lookup of a peer, and who waits for its outcome.
pub(super) struct Lookup {
    waiters: Vec<oneshot::Sender<bool>>,
    /// The walk has ended and its addresses are being dialled: a failed dial now means
    /// the peer cannot be reached. (Dials that fail during the walk are the walk's.)
    walked: bool,
}

impl EventLoop {
    /// Dials the bootstrap nodes when a round is due (none connected, back-off over).
    pub(super) fn dial_bootstraps(&mut self) {
        for opts in self.bootstraps.due(std::time::Instant::now()) {
            let conn = opts.connection_id();
            if let Err(error) = self.swarm.dial(opts) {
                let why = reason(&error);
                let report = self
                    .bootstraps
                    .dial_failed(conn, why, std::time::Instant::now());
                self.report_bootstrap(report);
            }
        }
    }

    fn report_bootstrap(&mut self, report: Option<Report>) {
        match report {
            Some(Report::Unreachable {
                errors,
                rounds,
                retry_in,
            }) => {
                let failed = errors
                    .iter()
                    .map(|(addr, why)| format!("{addr}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                warn!(
                    rounds,
                    peers = self.connections.len(),
                    %failed,
                    "cannot reach any bootstrap node, so this node may see no mesh; check \
                     --bootstrap (address, port and /p2p/ id) and that the bootstrap node runs \
                     and is reachable from here; retrying in {} s",
                    retry_in.as_secs()
                );
            }
            Some(Report::Reached { addr, after }) => {
                let addr = addr.map(|a| a.to_string()).unwrap_or_default();
                info!(%addr, failed_rounds = after, "reached a bootstrap node at last");
                // The DHT walk at start found nobody; walk again now.
                let _ = self.swarm.behaviour_mut().kad.bootstrap();
            }
            None => {}
        }
    }

    /// A connection is up: a lookup waiting for the peer is answered, a supplier
    /// marked unreachable is not any more, a bootstrap node is counted.
    pub(super) fn on_connected(&mut self, peer: PeerId, conn: ConnectionId) {
        let report = self.bootstraps.connected(conn, peer);
        self.report_bootstrap(report);
        if let Some(lookup) = self.lookups.remove(&peer) {
            info!(%peer, "found through the DHT");
            for waiter in lookup.waiters {
                let _ = waiter.send(true);
            }
        }
        if let Some(key) = public_key_of(&peer) {
            self.table.met(key, super::now_ms());
            if self.table.reachable(&key) {
                info!(%peer, "supplier reachable again");
            }
        }
    }

    /// A connection closed (`remaining` to that peer are still open).
    pub(super) fn on_closed(&mut self, peer: PeerId, conn: ConnectionId, remaining: u32) {
        for change in self.observed.closed(conn) {
            self.apply(change);
        }
        if remaining == 0 {
            self.bootstraps
                .disconnected(&peer, std::time::Instant::now());
        }
    }

    /// A dial failed. One failed dial says little: a lookup waiting on it answers only
    /// once its walk has ended; a bootstrap dial is reported with its round.
    pub(super) fn on_dial_error(
        &mut self,
        conn: ConnectionId,
        peer: Option<PeerId>,
        error: &DialError,
    ) {
        let report = self
            .bootstraps
            .dial_failed(conn, reason(error), std::time::Instant::now());
        self.report_bootstrap(report);
        let Some(peer) = peer else { return };
        debug!(%peer, error = %describe(error), "dial failed");
        if self.lookups.get(&peer).is_some_and(|l| l.walked) {
            self.unreachable(
                peer,
                &format!("dial failed after a DHT lookup: {}", describe(error)),
            );
        }
    }

    /// identify from `peer` over `conn`: its mesh, its agent, the addresses it listens
    /// on that can be used from here (they replace what it said before), and where
    /// it sees us.
    pub(super) fn on_identify(&mut self, peer: PeerId, conn: ConnectionId, info: identify::Info) {
        // A relaymesh node of another mesh is cut off; other libp2p software may stay
        // (it cannot speak this mesh's protocols anyway, whose names carry the mesh id).
        let ours = names::identify_version(&self.mesh_id);
        if info.protocol_version.starts_with("/relaymesh/") && info.protocol_version != ours {
            info!(%peer, theirs = %info.protocol_version, "peer is in another mesh; disconnecting");
            self.swarm.behaviour_mut().blocked.block_peer(peer);
            return;
        }
        self.agents.insert(peer, info.agent_version.clone());
        let Some(via) = self
            .connections
            .get(&peer)
            .and_then(|c| c.get(&conn))
            .map(|c| c.addr.clone())
        else {
            return; // closed meanwhile
        };
        // Loopback addresses from a peer on another host lead back to this host (to
        // this very node, when it listens on the same port); private ones from a peer
        // met over a public address lead nowhere useful.
        let usable: Vec<Multiaddr> = scope::usable_over(&info.listen_addrs, &via)
            .map(without_peer)
            .collect();
        if usable.len() < info.listen_addrs.len() {
            debug!(%peer, %via, listed = info.listen_addrs.len(), usable = usable.len(),
                "left out addresses of the peer that cannot be used from here");
        }
        let behaviour = self.swarm.behaviour_mut();
        let stale = behaviour.addresses.replace(peer, &usable);
        // Only DHT servers belong in routing tables: a light node answers no lookups,
        // and others' walks would only dial it in vain.
        if info.protocols.contains(&names::kad_protocol(&self.mesh_id)) {
            for addr in &usable {
                behaviour.kad.add_address(&peer, addr.clone());
            }
            if !usable.is_empty() {
                // What it listed before and not now (a restart on another port) would
                // be handed to everyone who looks it up.
                for addr in &stale {
                    behaviour.kad.remove_address(&peer, addr);
                }
            }
        }
        // Where the peer sees us: behind a NAT, the router's address, advertised once a
        // dial-back reached us there.
        let observed = without_peer(&info.observed_addr);
        debug!(%peer, %via, %observed, "the peer sees us at");
        for change in self.observed.report(conn, &observed) {
            self.apply(change);
        }
        let behind_nat = scope::scope_of(&observed) == scope::Scope::Public
            && scope::ip_of(&observed).is_some_and(|ip| {
                !self
                    .listen_addrs
                    .iter()
                    .any(|l| scope::ip_of(l) == Some(ip))
            });
        if behind_nat {
            self.reach.nat_seen();
        }
        if info.protocols.contains(&libp2p::relay::HOP_PROTOCOL_NAME) {
            self.relay_offered(peer);
        }
    }

    pub(super) fn apply(&mut self, change: Change) {
        match change {
            Change::Confirmed(addr) => {
                info!(%addr, "a dial-back reached this node there; advertising it");
                self.advertise(addr);
            }
            Change::Expired(addr) => {
                info!(%addr, "no peer sees us at this IP address any more; no longer advertising it");
                self.withdraw(&addr);
            }
        }
    }

    /// A peer we could not reach, after a DHT lookup: whoever waits on the lookup
    /// hears so, and a supplier is marked and backed off; its ad stays.
    fn unreachable(&mut self, peer: PeerId, why: &str) {
        if let Some(lookup) = self.lookups.remove(&peer) {
            for waiter in lookup.waiters {
                let _ = waiter.send(false);
            }
        }
        if let Some(key) = public_key_of(&peer) {
            if let Some(backoff) = self.table.mark_unreachable(&key, now_ms()) {
                info!(%peer, why, backoff_ms = backoff,
                    "supplier unreachable; backing off (its ad is kept)");
            }
        }
    }

    /// Whether `peer` can be reached: at once when connected; otherwise after a DHT
    /// walk toward its id (which usually reaches it, and so connects) and a dial of
    /// every address known and found. Callers ask when a dial at every known address
    /// failed, or none was known: ads come through gossip and addresses do not, and a
    /// peer restarted on another port is at an address the DHT knows and we do not.
    pub(super) fn locate(&mut self, peer: PeerId, reply: oneshot::Sender<bool>) {
        if self.connections.contains_key(&peer) {
            let _ = reply.send(true);
            return;
        }
        if let Some(lookup) = self.lookups.get_mut(&peer) {
            lookup.waiters.push(reply);
            return;
        }
        if self.lookups.len() >= MAX_LOOKUPS {
            let _ = reply.send(false);
            return;
        }
        debug!(%peer, "no known address reaches the peer; looking it up in the DHT");
        let kad = &mut self.swarm.behaviour_mut().kad;
        // What our routing table holds of it failed (the caller's dial tried it): a walk
        // that started from it would try it again, fail, and never ask it at the
        // addresses others know now (a restart on another port).
        kad.remove_peer(&peer);
        let query = kad.get_closest_peers(peer);
        self.lookup_queries.insert(query, peer);
        self.lookups.insert(
            peer,
            Lookup {
                waiters: vec![reply],
                walked: false,
            },
        );
    }

    /// The DHT walk toward a peer ended without connecting to it: dial every address
    /// it found and every one we know, or give up on the peer.
    pub(super) fn on_lookup_done(&mut self, query: kad::QueryId, found: Vec<kad::PeerInfo>) {
        let Some(peer) = self.lookup_queries.remove(&query) else {
            return;
        };
        if self.connections.contains_key(&peer) {
            return; // settled on connecting
        }
        let Some(lookup) = self.lookups.get_mut(&peer) else {
            return;
        };
        lookup.walked = true;
        // The walk's addresses come from DHT servers, each of which kept what it could
        // use itself: a loopback address is ours to use only if such a server is on
        // this host (we meet one over loopback), a private one only if we meet one
        // over a private or loopback address.
        let nearest = self
            .connections
            .values()
            .flat_map(|conns| conns.values())
            .map(|c| scope::scope_of(&c.addr))
            .min()
            .unwrap_or(scope::Scope::Public);
        let addrs: Vec<Multiaddr> = found
            .into_iter()
            .find(|p| p.peer_id == peer)
            .map(|p| p.addrs)
            .unwrap_or_default()
            .into_iter()
            .filter(|a| scope::usable(scope::scope_of(a), nearest))
            .collect();
        debug!(%peer, ?addrs, "the DHT walk ended; dialling every address found and known");
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .extend_addresses_through_behaviour()
            .build();
        match self.swarm.dial(opts) {
            // A dial of the walk's is still under way: its outcome answers.
            Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => {}
            Err(DialError::NoAddresses) => self.unreachable(peer, "not found in the DHT"),
            Err(e) => self.unreachable(peer, &format!("dial failed: {}", describe(&e))),
        }
    }
}

/// Why a dial failed, each address named.
fn describe(error: &DialError) -> String {
    match error {
        DialError::Transport(failed) => failed
            .iter()
            .map(|(addr, e)| format!("{}: {}", without_peer(addr), transport_reason(e)))
            .collect::<Vec<_>>()
            .join("; "),
        DialError::WrongPeerId { address, .. } | DialError::LocalPeerId { address } => {
            format!("{}: {}", without_peer(address), reason(error))
        }
        _ => reason(error),
    }
}

/// Why a dial of one address failed, in words a user can act on.
fn reason(error: &DialError) -> String {
    match error {
        DialError::Transport(failed) => failed
            .iter()
            .map(|(_, e)| transport_reason(e))
            .collect::<Vec<_>>()
            .join("; "),
        DialError::WrongPeerId { obtained, .. } => {
            format!("another node answers there ({obtained}): is the /p2p/ id right?")
        }
        DialError::LocalPeerId { .. } => "that is this node itself".into(),
        DialError::NoAddresses => "no address to dial".into(),
        DialError::Aborted => "the dial was aborted".into(),
        DialError::DialPeerConditionFalse(_) => "a dial is already under way".into(),
        DialError::Denied { cause } => format!("refused here: {cause}"),
    }
}

fn transport_reason(error: &TransportError<std::io::Error>) -> String {
    match error {
        TransportError::MultiaddrNotSupported(_) => "no transport for this address".into(),
        TransportError::Other(e) => chain(e),
    }
}

/// An error and its sources, each once, on one line (the DNS transport wraps every
/// error in a "Multiple dial errors occurred:" list).
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        for line in e.to_string().lines() {
            let line = line.trim().trim_start_matches("- ").trim_end_matches('.');
            if !line.is_empty()
                && line != "Multiple dial errors occurred:"
                && !parts.iter().any(|p| p.contains(line))
            {
                parts.push(line.to_owned());
            }
        }
        next = e.source();
    }
    parts.join(": ")
}
