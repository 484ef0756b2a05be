//! The swarm's behaviours, composed. Connections are admitted in one place: `limits`
//! and `per_ip` (how many, in all, per peer and per network address) and `blocked` (who: peers of another mesh, and later non-members of a
//! private mesh). NAT traversal: every node runs the relay client (to dial and accept
//! relayed connections), DCUtR (to hole-punch them into direct ones) and, unless it
//! is a bootstrap node, AutoNAT v2's client; nodes with `nat_services` (bootstrap
//! nodes) also answer AutoNAT dial-back requests and relay circuits, bounded.

use std::time::Duration;

use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    allow_block_list, autonat, connection_limits, dcutr, gossipsub, identify, identity, kad, mdns,
    ping, relay, request_response,
};
use relaymesh_protocol::identity::signed::Signable;
use relaymesh_protocol::messages::capability::CapabilityAd;
use relaymesh_protocol::messages::ledger::LedgerMessage;
use relaymesh_protocol::wire::WireMessage;
use relaymesh_protocol::Digest;

use crate::config::{NodeConfig, Role};
use crate::mesh::names;

/// All behaviours of a relaymesh node.
#[derive(NetworkBehaviour)]
pub struct MeshBehaviour {
    /// Caps connections in total and per peer.
    pub limits: connection_limits::Behaviour,
    /// Caps inbound connections per network address.
    pub per_ip: crate::mesh::ip_limit::IpLimit,
    /// Refuses peers we have blocked.
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    /// Exchanges addresses (each peer gets those it can use) and the mesh's protocol
    /// version.
    pub identify: crate::mesh::advertised::Identify,
    /// The addresses we dial peers at (listed first: what peers said of themselves).
    pub addresses: crate::mesh::address_book::AddressBook,
    /// Keeps connections alive and measures round trips.
    pub ping: ping::Behaviour,
    /// The mesh's DHT: peer routing and provider records per served model.
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    /// Capability ads (and, later, claims and proofs).
    pub gossipsub: gossipsub::Behaviour,
    /// LAN discovery, off unless asked for.
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    /// Hands a new peer the ads we hold.
    pub ads_sync: request_response::cbor::Behaviour<AdsRequest, AdsResponse>,
    /// Anti-entropy for the ledger.
    pub ledger_sync: request_response::cbor::Behaviour<LedgerSyncRequest, LedgerSyncResponse>,
    /// Raw streams: the inference protocol (`/relaymesh/<mesh>/infer/1`), over a direct
    /// connection when there is one.
    pub stream: crate::mesh::streams::PreferDirect,
    /// Dials and accepts relayed connections; holds our relay slots.
    pub relay_client: relay::client::Behaviour,
    /// Hole-punches relayed connections into direct ones.
    pub dcutr: dcutr::Behaviour,
    /// Asks AutoNAT servers to dial us back (all but bootstrap nodes).
    pub autonat: Toggle<crate::mesh::probe::Probe>,
    /// Dials others back (nodes with `nat_services`).
    pub autonat_server: Toggle<autonat::v2::server::Behaviour>,
    /// Relays circuits for peers behind NAT (nodes with `nat_services`), bounded.
    pub relay: Toggle<relay::Behaviour>,
}

/// Most ads one sync response carries.
pub const MAX_SYNC_ADS: usize = 256;

/// "Send me the ads you hold, at most `max`."
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AdsRequest {
    /// Most ads wanted (capped at [`MAX_SYNC_ADS`]).
    pub max: u16,
}

/// Encoded `Signed<CapabilityAd>`s, each validated by the receiver as if gossiped.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AdsResponse {
    /// The ads.
    pub ads: Vec<Vec<u8>>,
}

/// "Here are the keys of the ledger messages I hold; send me what I lack."
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct LedgerSyncRequest {
    /// Log keys (`kind ‖ epoch ‖ id`), at most `settle::MAX_SYNC_KEYS`.
    pub have: Vec<Vec<u8>>,
    /// The sender's clock when it sent this (unix ms).
    pub now_ms: u64,
    /// Where its frozen epochs end, and their checkpoint's digest.
    pub frozen: (u64, relaymesh_protocol::Digest),
}

/// Encoded `LedgerMessage`s, each validated by the receiver as if gossiped.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct LedgerSyncResponse {
    /// The messages.
    pub messages: Vec<Vec<u8>>,
    /// The request's `now_ms`, echoed: the asker times the round trip with it.
    pub echo_ms: u64,
    /// The answerer's clock when it answered (unix ms).
    pub now_ms: u64,
    /// Where its frozen epochs end, and their checkpoint's digest.
    pub frozen: (u64, relaymesh_protocol::Digest),
}

/// Largest gossip frame: a full-reveal proof; per-topic limits are lower.
pub const MAX_GOSSIP_FRAME: usize = LedgerMessage::MAX_SIZE + 4096;

impl MeshBehaviour {
    /// Builds the behaviours for `config`, with the relay client the transport was
    /// built with.
    pub fn new(
        key: &identity::Keypair,
        config: &NodeConfig,
        relay_client: relay::client::Behaviour,
    ) -> Result<Self, String> {
        let mesh_id: Digest = config.mesh.mesh_id();
        let peer_id = key.public().to_peer_id();

        let limits = connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_established(Some(config.max_connections))
                .with_max_established_per_peer(Some(config.limits.connections_per_peer))
                .with_max_pending_incoming(Some(config.limits.pending_connections)),
        );

        let identify = crate::mesh::advertised::Identify::new(
            identify::Config::new(names::identify_version(&mesh_id), key.public())
                .with_agent_version(format!("relaymesh/{}", env!("CARGO_PKG_VERSION")))
                // identify's own cache would hand dials every address a peer listed,
                // loopback included; the address book keeps the usable ones.
                .with_cache_size(0)
                // A relayed address (a slot reserved behind NAT) reaches peers at once.
                .with_push_listen_addr_updates(true),
        );

        let mut kad_config = kad::Config::new(names::kad_protocol(&mesh_id));
        // Provider records live as long as an ad, not the 48 h default.
        kad_config.set_provider_record_ttl(Some(config.ad_lifetime));
        kad_config.set_provider_publication_interval(Some(config.ad_lifetime / 2));
        kad_config.set_query_timeout(Duration::from_secs(30));
        let mut kad =
            kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
        // Auto mode stays client on loopback, where no external address is confirmed;
        // full nodes say what they are.
        kad.set_mode(Some(match config.role {
            Role::Light => kad::Mode::Client,
            Role::Full | Role::Bootstrap => kad::Mode::Server,
        }));

        let ads_topic = gossipsub::IdentTopic::new(names::ads_topic(&mesh_id));
        let ledger_topic = gossipsub::IdentTopic::new(names::ledger_topic(&mesh_id));
        let gossip_config = gossipsub::ConfigBuilder::default()
            .protocol_id_prefix(names::gossip_prefix(&mesh_id))
            .validation_mode(gossipsub::ValidationMode::Strict)
            // Every message waits for the protocol crate's verdict before it is forwarded.
            .validate_messages()
            .message_id_fn(|m: &gossipsub::Message| {
                gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec())
            })
            .max_transmit_size(MAX_GOSSIP_FRAME)
            // Oversized frames are otherwise dropped silently; a per-topic bound makes an
            // oversized ad a counted invalid message instead.
            .max_transmit_size_for_topic(CapabilityAd::MAX_SIZE + 1024, ads_topic.hash())
            .max_transmit_size_for_topic(LedgerMessage::MAX_SIZE + 1024, ledger_topic.hash())
            .heartbeat_interval(Duration::from_millis(700))
            .build()
            .map_err(|e| format!("gossipsub config: {e}"))?;
        let mut gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossip_config,
        )
        .map_err(|e| format!("gossipsub: {e}"))?;
        gossipsub
            .with_peer_score(
                peer_score_params(&[
                    &ads_topic,
                    &ledger_topic,
                    &gossipsub::IdentTopic::new(names::members_topic(&mesh_id)),
                ]),
                gossipsub::PeerScoreThresholds::default(),
            )
            .map_err(|e| format!("gossipsub scoring: {e}"))?;
        let members_topic = gossipsub::IdentTopic::new(names::members_topic(&mesh_id));
        let mut topics = vec![&ads_topic, &ledger_topic];
        if config.mesh.is_private() {
            topics.push(&members_topic);
        }
        for topic in topics {
            gossipsub
                .subscribe(topic)
                .map_err(|e| format!("subscribe: {e}"))?;
        }

        let mdns = if config.mdns {
            Some(
                mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
                    .map_err(|e| format!("mdns: {e}"))?,
            )
        } else {
            None
        };

        let ads_sync = request_response::Behaviour::with_codec(
            ads_sync_codec(),
            [(
                names::ads_sync_protocol(&mesh_id),
                request_response::ProtocolSupport::Full,
            )],
            request_response::Config::default().with_request_timeout(Duration::from_secs(20)),
        );

        let ledger_sync = request_response::Behaviour::with_codec(
            ledger_sync_codec(),
            [(
                names::ledger_sync_protocol(&mesh_id),
                request_response::ProtocolSupport::Full,
            )],
            request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
        );

        Ok(Self {
            limits,
            // A network may hold an eighth of the pending places at most.
            per_ip: crate::mesh::ip_limit::IpLimit::new(
                config.limits.connections_per_ip,
                (config.limits.pending_connections as usize / 8).max(1),
            ),
            blocked: Default::default(),
            identify,
            addresses: Default::default(),
            ping: ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(5)),
            ),
            kad,
            gossipsub,
            mdns: mdns.into(),
            ads_sync,
            ledger_sync,
            stream: Default::default(),
            relay_client,
            dcutr: dcutr::Behaviour::new(peer_id),
            autonat: (config.role != Role::Bootstrap)
                .then(crate::mesh::probe::Probe::default)
                .into(),
            autonat_server: config
                .nat_services
                .as_ref()
                .map(|_| autonat::v2::server::Behaviour::default())
                .into(),
            relay: config
                .nat_services
                .as_ref()
                .map(|limits| {
                    let mut relay = relay::Behaviour::new(
                        peer_id,
                        crate::mesh::relay_policy::relay_config(limits),
                    );
                    // Offered whether or not an address of ours is confirmed yet: a
                    // bootstrap node is reachable by definition.
                    relay.set_status(Some(relay::Status::Enable));
                    relay
                })
                .into(),
        })
    }
}

/// The ads sync codec, with the sizes it reads bounded.
pub fn ads_sync_codec() -> request_response::cbor::codec::Codec<AdsRequest, AdsResponse> {
    request_response::cbor::codec::Codec::default()
        .set_request_size_maximum(256)
        // Each byte of an ad costs about two in this encoding.
        .set_response_size_maximum((MAX_SYNC_ADS * (2 * CapabilityAd::MAX_SIZE + 16)) as u64)
}

/// The ledger sync codec, with the sizes it reads bounded.
pub fn ledger_sync_codec(
) -> request_response::cbor::codec::Codec<LedgerSyncRequest, LedgerSyncResponse> {
    request_response::cbor::codec::Codec::default()
        // Keys of 41 bytes, about twice that in this encoding.
        .set_request_size_maximum((crate::settle::MAX_SYNC_KEYS * 96) as u64)
        .set_response_size_maximum((2 * crate::settle::MAX_SYNC_BYTES + 4096) as u64)
}

/// Invalid messages cost their sender more than any honest record can earn: the positive
/// terms (time in the mesh, first deliveries) are capped at 13.2 per topic, and each
/// topic's penalty is `-5 × count²`, so three invalid messages in a short while put
/// any peer below zero and five below the graylist threshold (-80), however
/// long it has been a good mesh peer. (gossipsub's defaults let an hour in the mesh earn
/// +1800 per topic, which hid a peer sending a few invalid messages a second.) The
/// delivery-count penalties are off: ads are low-rate and every honest peer would fall
/// short of them.
fn peer_score_params(topics: &[&gossipsub::IdentTopic]) -> gossipsub::PeerScoreParams {
    let mut params = gossipsub::PeerScoreParams::default();
    for t in topics {
        params.topics.insert(t.hash(), topic_score_params());
    }
    // Many peers behind one address cost score (sybil resistance), but nodes on this
    // very machine are not strangers: without this, eleven local nodes graylist each
    // other.
    params.ip_colocation_factor_whitelist.extend([
        std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST),
        std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ]);
    params
}

fn topic_score_params() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        // An hour in the mesh earns at most 0.002 × 3600 s = 7.2.
        time_in_mesh_weight: 0.002,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 3600.0,
        // First deliveries earn at most 0.1 × 60 = 6.
        first_message_deliveries_weight: 0.1,
        first_message_deliveries_cap: 60.0,
        invalid_message_deliveries_weight: -5.0,
        invalid_message_deliveries_decay: 0.9,
        // The default expects every mesh peer to deliver 20 messages per window and
        // penalises the square of the shortfall. Ads are a low-rate topic (one per
        // supplier per re-announcement), so honest peers would all fall short and be
        // graylisted: the mesh collapses as it grows. Delivery counts are not a signal
        // here; invalid messages are.
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The most score a peer may earn on one topic by behaving well.
    const MAX_EARNED_PER_TOPIC: f64 = 14.0;

    /// Failed with gossipsub's default positive terms: a peer an hour in the mesh could
    /// send 26 invalid messages and stay above zero (the flaky end of
    /// `invalid_ledger_gossip_is_dropped_and_counted`).
    #[test]
    fn a_few_invalid_messages_outweigh_any_good_record() {
        let t = topic_score_params();
        t.validate().unwrap();
        let earned = t.topic_weight
            * (t.time_in_mesh_weight * t.time_in_mesh_cap
                + t.first_message_deliveries_weight * t.first_message_deliveries_cap);
        assert!(earned <= MAX_EARNED_PER_TOPIC, "{earned}");
        // Both topics at their best, invalid messages on one of them.
        let score = |invalid: f64| {
            2.0 * earned + t.topic_weight * t.invalid_message_deliveries_weight * invalid * invalid
        };
        let thresholds = gossipsub::PeerScoreThresholds::default();
        // One slip (an ad that expired on the way) does not cut off a new peer.
        assert!(t.invalid_message_deliveries_weight > thresholds.gossip_threshold);
        assert!(score(3.0) < 0.0);
        assert!(score(5.0) < thresholds.graylist_threshold);
    }
}
