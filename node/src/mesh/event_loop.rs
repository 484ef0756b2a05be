//! The one task that owns the `Swarm`: it serves `NodeHandle` commands, validates
//! gossip with the protocol crate, keeps the peer table, and announces this node's ad.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, identify, kad, mdns, ping, request_response, Multiaddr, PeerId, Swarm};
use relaymesh_protocol::wire::WireMessage;
use relaymesh_protocol::{Digest, Keypair};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::config::{NodeConfig, Role};
use crate::mesh::behaviour::{
    AdsRequest, AdsResponse, MeshBehaviour, MeshBehaviourEvent, MAX_SYNC_ADS,
};
use crate::mesh::bootstrap::Bootstraps;
use crate::mesh::handle::{Command, LinkKind};
use crate::mesh::names;
use crate::mesh::observed::Observed;
use crate::mesh::peer_table::PeerTable;
use crate::mesh::reachability::Reach;
use crate::metrics::{Metrics, TransportLabel};
use crate::settle::Settlement;

pub(crate) use super::public_key_of;

/// Wall-clock now, in unix ms: the node is where clocks are read.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The DHT key under which suppliers of `model` provide.
pub(crate) fn provider_key(mesh_id: &Digest, model: &str) -> kad::RecordKey {
    let key =
        blake3::hash(format!("relaymesh/{}/model/{model}", names::mesh_tag(mesh_id)).as_bytes());
    kad::RecordKey::new(&key.as_bytes())
}

fn transport_of(addr: &Multiaddr) -> &'static str {
    for protocol in addr.iter() {
        match protocol {
            Protocol::QuicV1 | Protocol::Quic => return "quic",
            Protocol::Tcp(_) => return "tcp",
            _ => {}
        }
    }
    "other"
}

/// One open connection.
struct Connection {
    /// The peer's address on it (for a relayed one, the circuit's).
    addr: Multiaddr,
    /// Whether we dialled it (its address then leads to the peer).
    dialled: bool,
    /// Direct, hole-punched or relayed.
    kind: LinkKind,
    /// Its last ping round trip.
    rtt: Option<Duration>,
    /// When it was established.
    since: std::time::Instant,
}

mod ads;
mod gossip;
mod ledger;
mod members;
mod nat;
mod reach;
mod views;

pub(crate) struct EventLoop {
    swarm: Swarm<MeshBehaviour>,
    commands: mpsc::Receiver<Command>,
    config: NodeConfig,
    key: Keypair,
    mesh_id: Digest,
    ads_topic: gossipsub::IdentTopic,
    table: PeerTable,
    metrics: Metrics,
    listen_addrs: Vec<Multiaddr>,
    connections: HashMap<PeerId, BTreeMap<libp2p::swarm::ConnectionId, Connection>>,
    agents: HashMap<PeerId, String>,
    /// Whether peers can reach us, and our relay slots.
    reach: Reach,
    /// Whom we contacted (the transport notes its dials here too): an inbound
    /// connection from anyone else proves strangers reach us.
    contacts: crate::mesh::contacts::Shared,
    /// Our listeners on relays (each holds a slot), by the relay.
    relay_listeners: HashMap<libp2p::core::transport::ListenerId, PeerId>,
    /// Connections DCUtR reported hole-punched before we saw them established.
    punched: HashSet<libp2p::swarm::ConnectionId>,
    /// The configured bootstrap nodes and our dials to them.
    bootstraps: Bootstraps,
    /// Our address as peers see it, advertised once confirmed.
    observed: Observed,
    pending_providers: HashMap<kad::QueryId, (oneshot::Sender<Vec<PeerId>>, HashSet<PeerId>)>,
    /// Peers being looked up in the DHT (a dial at every known address failed, or
    /// none was known), with who waits for the outcome (see `Command::Locate`).
    lookups: HashMap<PeerId, reach::Lookup>,
    lookup_queries: HashMap<kad::QueryId, PeerId>,
    ad_seq: u64,
    /// Whether an ad of ours has reached at least one peer since start.
    announced: bool,
    /// Whether our ads were withdrawn (the node is stopping): none follows.
    withdrawn: bool,
    /// When our last ad went out, and the free slots it said.
    announced_slots: (std::time::Instant, Vec<u16>),
    /// Ad syncs asked for since start.
    syncs_requested: usize,
    /// The ledger and settlement duties (absent only in bare test setups).
    settlement: Option<std::sync::Arc<Settlement>>,
    /// The thread that applies ledger messages, with `settlement`.
    ledger: Option<ledger::LedgerWorker>,
    ledger_topic: gossipsub::IdentTopic,
    /// When the next anti-entropy round is due.
    next_ledger_sync: std::time::Instant,
    /// Rounds so far: picks the peer.
    ledger_rounds: usize,
    /// A private mesh's membership (`None`: a public mesh).
    membership: Option<std::sync::Arc<crate::mesh::membership::Membership>>,
    members_topic: gossipsub::IdentTopic,
    /// Whether this node's own invite has run out (said once).
    own_membership_ended: bool,
    /// Gossip messages each peer may hand us per second.
    gossip_budget: crate::mesh::gossip_budget::GossipBudget,
}

/// Connections a node seeks on its own (beyond those others open to it).
const TARGET_PEERS: usize = 8;

/// DHT lookups of unaddressed peers in flight at once; beyond this, a locate answers
/// "unreachable" at once.
const MAX_LOOKUPS: usize = 32;

/// How many peers a newcomer asks for their ads.
const SYNC_PEERS: usize = 3;

impl EventLoop {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        swarm: Swarm<MeshBehaviour>,
        commands: mpsc::Receiver<Command>,
        config: NodeConfig,
        key: Keypair,
        metrics: Metrics,
        settlement: Option<std::sync::Arc<Settlement>>,
        membership: Option<std::sync::Arc<crate::mesh::membership::Membership>>,
        contacts: crate::mesh::contacts::Shared,
    ) -> Self {
        let mesh_id = config.mesh.mesh_id();
        let bootstraps = Bootstraps::new(&config.bootstrap, std::time::Instant::now());
        let gossip_budget =
            crate::mesh::gossip_budget::GossipBudget::new(config.limits.gossip_per_peer);
        Self {
            swarm,
            commands,
            ads_topic: gossipsub::IdentTopic::new(names::ads_topic(&mesh_id)),
            ledger_topic: gossipsub::IdentTopic::new(names::ledger_topic(&mesh_id)),
            members_topic: gossipsub::IdentTopic::new(names::members_topic(&mesh_id)),
            membership,
            own_membership_ended: false,
            ledger: settlement.clone().and_then(|s| {
                ledger::LedgerWorker::start(s, metrics.clone())
                    .map_err(|e| warn!(error = %e, "no ledger thread: ledger gossip ignored"))
                    .ok()
            }),
            settlement,
            next_ledger_sync: std::time::Instant::now() + Duration::from_secs(1),
            ledger_rounds: 0,
            mesh_id,
            reach: Reach::new(config.role == Role::Full),
            contacts,
            config,
            key,
            table: PeerTable::default(),
            metrics,
            listen_addrs: Vec::new(),
            connections: HashMap::new(),
            agents: HashMap::new(),
            relay_listeners: HashMap::new(),
            punched: HashSet::new(),
            bootstraps,
            observed: Observed::default(),
            pending_providers: HashMap::new(),
            lookups: HashMap::new(),
            lookup_queries: HashMap::new(),
            ad_seq: 0,
            announced: false,
            withdrawn: false,
            announced_slots: (std::time::Instant::now(), Vec::new()),
            syncs_requested: 0,
            gossip_budget,
        }
    }

    pub(crate) async fn run(mut self) {
        let announce_every = (self.config.ad_lifetime / 3).max(Duration::from_millis(500));
        let mut announce = tokio::time::interval(announce_every);
        let mut housekeeping = tokio::time::interval(Duration::from_millis(500));
        let mut republish = tokio::time::interval(Duration::from_secs(60));
        self.start_nat();
        self.dial_bootstraps();
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown(done)) => {
                        info!("shutting down");
                        if let Some(ledger) = &mut self.ledger {
                            ledger.stop().await;
                        }
                        self.close_connections().await;
                        let _ = done.send(());
                        return;
                    }
                    Some(command) => self.on_command(command),
                    // Every handle is gone: nobody can talk to us any more.
                    None => return,
                },
                _ = announce.tick() => self.announce(),
                _ = housekeeping.tick() => self.housekeeping(),
                _ = republish.tick() => self.republish_revocations(),
                done = ledger::next(&mut self.ledger) => self.on_ledger_done(done),
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.peer_rows());
            }
            Command::Models(reply) => {
                let _ = reply.send(self.table.rows(now_ms()));
            }
            Command::Offers(model, reply) => {
                // Suppliers we could not reach lately come only when nobody else does.
                let _ = reply.send(self.table.offers(&model, now_ms()));
            }
            Command::Dial(addr, reply) => {
                let _ = reply.send(self.swarm.dial(addr).map_err(|e| e.to_string()));
            }
            Command::FindProviders(model, reply) => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_providers(provider_key(&self.mesh_id, &model));
                self.pending_providers.insert(id, (reply, HashSet::new()));
            }
            Command::Locate(peer, reply) => self.locate(peer, reply),
            Command::PublishAdBytes(bytes, reply) => {
                let len = bytes.len();
                let result = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(self.ads_topic.clone(), bytes)
                    .map(|_| self.metrics.gossip("out", len))
                    .map_err(|e| e.to_string());
                let _ = reply.send(result);
            }
            Command::PublishLedger(bytes, reply) => {
                let _ = reply.send(self.publish_ledger(bytes));
            }
            Command::Revoke(list, reply) => {
                let _ = reply.send(self.on_revoke_command(list));
            }
            Command::Withdraw(done) => {
                self.withdraw_ads();
                let _ = done.send(());
            }
            Command::Shutdown(_) => unreachable!("handled in run"),
        }
    }

    fn housekeeping(&mut self) {
        self.gossip_budget.forget_idle(std::time::Instant::now());
        self.cut_members();
        self.ledger_sync();
        self.dial_bootstraps();
        self.nat_housekeeping();
        // Until our first ad reaches someone, retry every tick rather than every third
        // of the ad's lifetime: a new supplier should be seen within seconds.
        if !self.announced {
            self.announce();
        }
        self.announce_if_slots_changed();
        for supplier in self.table.expire(now_ms()) {
            info!(peer = %supplier.peer_id(), "peer expired: its ad ran out");
        }
        self.metrics.suppliers.set(self.table.len() as i64);
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<MeshBehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                let full = address
                    .clone()
                    .with(Protocol::P2p(*self.swarm.local_peer_id()));
                info!(%full, "listening on");
                self.on_new_listen_addr(listener_id, address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| *a != address);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => self.on_listener_closed(listener_id, reason),
            SwarmEvent::ExternalAddrConfirmed { address } => self.on_external(address, true),
            SwarmEvent::ExternalAddrExpired { address } => self.on_external(address, false),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let (addr, dialled) = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => (address.clone(), true),
                    ConnectedPoint::Listener { send_back_addr, .. } => {
                        (send_back_addr.clone(), false)
                    }
                };
                let transport = transport_of(&addr);
                self.metrics
                    .connections
                    .get_or_create(&TransportLabel {
                        transport: transport.into(),
                    })
                    .inc();
                if self.bootstraps.is_bootstrap(&peer_id) {
                    info!(peer = %peer_id, %addr, transport, "connected to bootstrap");
                } else {
                    debug!(peer = %peer_id, %addr, transport, "connected");
                }
                self.on_connected(peer_id, connection_id);
                self.note_contact(&peer_id, &endpoint);
                let kind = self.link_established(&peer_id, connection_id, endpoint.is_relayed());
                let conns = self.connections.entry(peer_id).or_default();
                let first = conns.is_empty();
                conns.insert(
                    connection_id,
                    Connection {
                        addr,
                        dialled,
                        kind,
                        rtt: None,
                        since: std::time::Instant::now(),
                    },
                );
                // A newcomer (or a node whose table ran empty) asks its first few peers
                // for the ads they hold; later connections rely on gossip, so connection
                // churn does not cost a full table each time.
                if first && (self.syncs_requested < SYNC_PEERS || self.table.is_empty()) {
                    self.syncs_requested += 1;
                    let request = AdsRequest {
                        max: MAX_SYNC_ADS as u16,
                    };
                    self.swarm
                        .behaviour_mut()
                        .ads_sync
                        .send_request(&peer_id, request);
                }
                self.metrics.peers.set(self.connections.len() as i64);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                self.on_closed(peer_id, connection_id, num_established);
                if let Some(conns) = self.connections.get_mut(&peer_id) {
                    if let Some(c) = conns.remove(&connection_id) {
                        // A NAT keeps its filter open a while after a connection ends.
                        crate::mesh::contacts::lock(&self.contacts)
                            .sent_to(&c.addr, std::time::Instant::now());
                        let label = TransportLabel {
                            transport: transport_of(&c.addr).into(),
                        };
                        self.metrics.connections.get_or_create(&label).dec();
                        self.metrics.nat.link(c.kind.as_str()).dec();
                    }
                    if conns.is_empty() {
                        self.connections.remove(&peer_id);
                        self.relay_gone(&peer_id);
                    }
                }
                self.metrics.peers.set(self.connections.len() as i64);
            }
            SwarmEvent::Dialing {
                peer_id: Some(peer),
                ..
            } => self.contacts().dialled(peer, std::time::Instant::now()),
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => self.on_dial_error(connection_id, peer_id, &error),
            // A connection limit (total, per peer, pending) or the block list refused
            // a peer's connection.
            SwarmEvent::IncomingConnectionError {
                error: libp2p::swarm::ListenError::Denied { cause },
                send_back_addr,
                ..
            } => {
                debug!(from = %send_back_addr, %cause, "incoming connection refused");
                let per_ip = cause
                    .downcast_ref::<crate::mesh::ip_limit::TooManyFromNetwork>()
                    .is_some();
                self.metrics.limited(if per_ip {
                    "connections_per_ip"
                } else {
                    "connections"
                });
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: MeshBehaviourEvent) {
        match event {
            MeshBehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                connection_id,
                info,
            }) => self.on_identify(peer_id, connection_id, info),
            // Bootstrap nodes make a star; gossip needs a mesh. Until a node has a few
            // peers, it connects to the ones the DHT tells it about.
            MeshBehaviourEvent::Kad(kad::Event::RoutingUpdated {
                peer,
                is_new_peer: true,
                ..
            }) if self.connections.len() < TARGET_PEERS
                && !self.connections.contains_key(&peer)
                && self.config.role != Role::Bootstrap =>
            {
                debug!(%peer, "dialling a peer the DHT found");
                let _ = self.swarm.dial(peer);
            }
            MeshBehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Ok(rtt),
            }) => {
                if let Some(c) = self
                    .connections
                    .get_mut(&peer)
                    .and_then(|c| c.get_mut(&connection))
                {
                    c.rtt = Some(rtt);
                }
            }
            MeshBehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(error),
            }) => {
                // A peer that stopped answering (killed, cut off) holds its connection
                // until the transport's idle timeout; close it now, so streams to it
                // fail at once and the next dial finds out whether it is gone.
                info!(%peer, %error, "ping failed; closing the connection");
                self.swarm.close_connection(connection);
            }
            MeshBehaviourEvent::Gossipsub(gossipsub::Event::SlowPeer {
                peer_id,
                failed_messages,
            }) => {
                let dropped = failed_messages.priority + failed_messages.non_priority;
                self.metrics.gossip_dropped.inc_by(dropped as u64);
                debug!(peer = %peer_id, dropped, "slow peer: gossip messages not sent in time");
            }
            MeshBehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                self.on_gossip(propagation_source, message_id, message);
            }
            MeshBehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetProviders(result),
                step,
                ..
            }) => {
                if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result {
                    if let Some((_, found)) = self.pending_providers.get_mut(&id) {
                        found.extend(providers);
                    }
                }
                if step.last {
                    if let Some((reply, found)) = self.pending_providers.remove(&id) {
                        let mut found: Vec<PeerId> = found.into_iter().collect();
                        found.sort();
                        let _ = reply.send(found);
                    }
                }
            }
            MeshBehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetClosestPeers(result),
                step,
                ..
            }) if step.last => {
                let found = match result {
                    Ok(ok) => ok.peers,
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                self.on_lookup_done(id, found);
            }
            MeshBehaviourEvent::AdsSync(request_response::Event::Message {
                peer, message, ..
            }) => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let now = now_ms();
                    let max = usize::from(request.max).min(MAX_SYNC_ADS);
                    let ads = self
                        .table
                        .fresh_ads(now, max)
                        .iter()
                        .filter_map(|ad| ad.encode().ok())
                        .collect();
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .ads_sync
                        .send_response(channel, AdsResponse { ads });
                }
                request_response::Message::Response { response, .. } => {
                    let count = response.ads.len();
                    for bytes in response.ads.iter().take(MAX_SYNC_ADS) {
                        self.metrics.gossip("in", bytes.len());
                        if let Err(reason) = self.on_ad(bytes, false) {
                            self.metrics.invalid(reason);
                        }
                    }
                    debug!(%peer, count, "ads synced");
                }
            },
            MeshBehaviourEvent::LedgerSync(request_response::Event::Message {
                peer,
                message,
                ..
            }) => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.on_ledger_request(peer, request, channel),
                request_response::Message::Response { response, .. } => {
                    self.on_ledger_response(peer, response)
                }
            },
            MeshBehaviourEvent::LedgerSync(request_response::Event::OutboundFailure {
                peer,
                error,
                ..
            }) => {
                debug!(%peer, %error, "ledger sync failed");
            }
            MeshBehaviourEvent::AdsSync(request_response::Event::OutboundFailure {
                peer,
                error,
                ..
            }) => {
                debug!(%peer, %error, "ads sync failed");
            }
            MeshBehaviourEvent::Relay(event) => self.on_relay_server(event),
            MeshBehaviourEvent::RelayClient(event) => self.on_relay_client(event),
            MeshBehaviourEvent::Dcutr(event) => self.on_dcutr(event),
            MeshBehaviourEvent::Autonat(event) => self.on_probe(event),
            MeshBehaviourEvent::AutonatServer(event) => self.on_dial_back(event),
            MeshBehaviourEvent::Mdns(mdns::Event::Discovered(list)) => {
                for (peer, addr) in list {
                    info!(%peer, %addr, "peer discovered on the LAN");
                    let behaviour = self.swarm.behaviour_mut();
                    behaviour.kad.add_address(&peer, addr.clone());
                    behaviour.addresses.add(peer, std::slice::from_ref(&addr));
                    let _ = self.swarm.dial(addr);
                }
            }
            _ => {}
        }
    }
}
