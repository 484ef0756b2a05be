//! How a node is configured: which mesh, which identity, where it listens, whom it
//! bootstraps from, what it serves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use libp2p::Multiaddr;
use relaymesh_protocol::messages::capability::ModelOffer;
use relaymesh_protocol::messages::infer::MAX_PROMPT_BYTES;
use relaymesh_protocol::params::MeshParams;
use relaymesh_protocol::Keypair;

use crate::api::ApiKeys;
use crate::backend::Models;

/// What part a node plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Full node: DHT server, relays gossip, may serve models.
    Full,
    /// Light node: DHT client, sees the mesh's models, serves nothing.
    Light,
    /// Always-on bootstrap node: DHT server, gossip, no models.
    Bootstrap,
}

/// Where the node's key comes from.
#[derive(Clone, Debug)]
pub enum Identity {
    /// `identity.key` in this data dir (created on first start), plus a sled database.
    DataDir(PathBuf),
    /// A key held only in memory (embedded light nodes, tests); nothing is written.
    Ephemeral(Keypair),
}

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The mesh parameters; their hash is the mesh id.
    pub mesh: MeshParams,
    /// Identity and persistence.
    pub identity: Identity,
    /// Addresses to listen on (QUIC and TCP); port 0 lets the OS choose.
    pub listen: Vec<Multiaddr>,
    /// Bootstrap addresses, each ending in `/p2p/<peer id>`.
    pub bootstrap: Vec<Multiaddr>,
    /// Full, light or bootstrap.
    pub role: Role,
    /// Discover peers on the LAN with mDNS (multicasts on real interfaces: opt-in).
    pub mdns: bool,
    /// Models this node serves, as advertised (the serving backends feed this).
    pub offers: Vec<ModelOffer>,
    /// How long an ad stays valid; re-announced at a third of it.
    pub ad_lifetime: Duration,
    /// Most established connections.
    pub max_connections: u32,
    /// Local HTTP API address, if any.
    pub api: Option<SocketAddr>,
    /// Models served by this node's backends; when there are any, the ad lists them
    /// (with live slots and measured speed) instead of `offers`.
    pub models: Arc<Models>,
    /// API keys and quotas; `None` lets anyone who reaches the API use it.
    pub api_keys: Option<Arc<ApiKeys>>,
    /// How requests for models served elsewhere go to the mesh.
    pub routing: crate::infer::router::RoutingConfig,
    /// Help peers behind NAT (bootstrap nodes): answer AutoNAT dial-back requests and
    /// relay circuits within these limits. `None`: neither.
    pub nat_services: Option<RelayLimits>,
    /// Addresses this node is known to be reachable at besides its interfaces' (a
    /// port forwarded on a router, a DNS name): advertised as they are.
    pub external: Vec<Multiaddr>,
    /// The invite that admits this node to a private mesh (stored in the data dir, so
    /// it is needed only once). `None`: the stored one, or none in a public mesh.
    pub invite: Option<relaymesh_protocol::messages::membership::Credential>,
    /// Bounds against hostile peers and overload (`max_connections` above is one too).
    pub limits: Limits,
}

/// Bounds against hostile peers and overload, each with a safe default; what each cuts
/// off is counted in `relaymesh_limited_total{reason}`. `relaymesh node --limit
/// NAME=VALUE` (or a `[limits]` table in the config file) sets them by these names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections one peer may hold at once.
    pub connections_per_peer: u32,
    /// Inbound connections peers at one network address (an IPv4 address, an IPv6
    /// /56) may hold at once, and twice that the /56s of one IPv6 /48 together; this
    /// machine's loopback is not counted.
    pub connections_per_ip: u32,
    /// Incoming connections still in their handshakes at once.
    pub pending_connections: u32,
    /// Inference streams a supplier serves at once, for all peers.
    pub streams: usize,
    /// Inference streams from one peer at once.
    pub streams_per_peer: usize,
    /// Streams from one peer that have not sent their first frame yet.
    pub unstarted_streams_per_peer: usize,
    /// Inference streams one app (key) may hold at a supplier at once.
    pub streams_per_app: usize,
    /// New sessions one app may open at a supplier per hour.
    pub sessions_per_app: usize,
    /// Local API connections at once.
    pub http_connections: usize,
    /// Bytes of one local API request body.
    pub http_body_bytes: usize,
    /// Bytes of one inference request's prompt a supplier reads (at most the
    /// protocol's `MAX_PROMPT_BYTES`); a longer one is refused so the gateway asks
    /// another supplier.
    pub prompt_bytes: usize,
    /// Seconds an API client may take to send its request headers.
    pub http_header_timeout_secs: u64,
    /// Seconds an API response may wait for a client that reads nothing.
    pub http_write_stall_secs: u64,
    /// Requests that may wait at a gateway for each model's free slot.
    pub queue_places: usize,
    /// Gossip messages one peer may hand this node per second (bursts of twice that).
    pub gossip_per_peer: u32,
}

impl Default for Limits {
    fn default() -> Self {
        use crate::infer::{app_limits, queue, stream_slots};
        Self {
            connections_per_peer: 4,
            connections_per_ip: crate::mesh::ip_limit::DEFAULT_PER_IP,
            pending_connections: 64,
            streams: stream_slots::MAX_STREAMS,
            streams_per_peer: stream_slots::MAX_STREAMS_PER_PEER,
            unstarted_streams_per_peer: stream_slots::MAX_UNSTARTED_PER_PEER,
            streams_per_app: app_limits::MAX_STREAMS_PER_APP,
            sessions_per_app: app_limits::MAX_SESSIONS_PER_APP,
            http_connections: crate::api::MAX_CONNECTIONS,
            http_body_bytes: crate::api::body::MAX_BODY,
            prompt_bytes: MAX_PROMPT_BYTES,
            http_header_timeout_secs: crate::api::HEADER_TIMEOUT.as_secs(),
            http_write_stall_secs: crate::api::WRITE_STALL.as_secs(),
            queue_places: queue::MAX_WAITING,
            gossip_per_peer: crate::mesh::gossip_budget::DEFAULT_PER_PEER,
        }
    }
}

impl Limits {
    /// The names `set` takes, with what each bounds.
    pub const NAMES: &'static [(&'static str, &'static str)] = &[
        ("connections", "established connections in all"),
        ("connections_per_peer", "connections one peer may hold"),
        (
            "connections_per_ip",
            "inbound connections from one IPv4 address or IPv6 /56",
        ),
        (
            "pending_connections",
            "incoming connections still in their handshakes",
        ),
        ("streams", "inference streams a supplier serves at once"),
        ("streams_per_peer", "inference streams from one peer"),
        (
            "unstarted_streams_per_peer",
            "streams from one peer that sent nothing yet",
        ),
        (
            "streams_per_app",
            "inference streams of one app at a supplier",
        ),
        (
            "sessions_per_app",
            "new sessions of one app at a supplier per hour",
        ),
        ("http_connections", "local API connections"),
        ("http_body_bytes", "bytes of one local API request body"),
        (
            "prompt_bytes",
            "bytes of one inference request's prompt a supplier reads",
        ),
        (
            "http_header_timeout_secs",
            "seconds to send request headers",
        ),
        (
            "http_write_stall_secs",
            "seconds a response waits on a client reading nothing",
        ),
        ("queue_places", "requests waiting at a gateway per model"),
        (
            "gossip_per_peer",
            "gossip messages one peer may hand this node per second",
        ),
    ];

    /// Sets the limit `name` (one of [`Self::NAMES`] but `connections`, which is
    /// [`NodeConfig::max_connections`]) to `value`, at least 1.
    pub fn set(&mut self, name: &str, value: u64) -> Result<(), String> {
        if value == 0 {
            return Err(format!("limit {name} must be at least 1"));
        }
        let small =
            |v: u64| u32::try_from(v).map_err(|_| format!("limit {name}: {v} is too large"));
        let size =
            |v: u64| usize::try_from(v).map_err(|_| format!("limit {name}: {v} is too large"));
        match name {
            "connections_per_peer" => self.connections_per_peer = small(value)?,
            "connections_per_ip" => self.connections_per_ip = small(value)?,
            "pending_connections" => self.pending_connections = small(value)?,
            "streams" => self.streams = size(value)?,
            "streams_per_peer" => self.streams_per_peer = size(value)?,
            "unstarted_streams_per_peer" => self.unstarted_streams_per_peer = size(value)?,
            "streams_per_app" => self.streams_per_app = size(value)?,
            "sessions_per_app" => self.sessions_per_app = size(value)?,
            "http_connections" => self.http_connections = size(value)?,
            "http_body_bytes" => self.http_body_bytes = size(value)?,
            "prompt_bytes" => {
                let bytes = size(value)?;
                if bytes > MAX_PROMPT_BYTES {
                    return Err(format!(
                        "limit prompt_bytes: {bytes} is over the protocol's {MAX_PROMPT_BYTES}-byte prompt"
                    ));
                }
                self.prompt_bytes = bytes;
            }
            "http_header_timeout_secs" => self.http_header_timeout_secs = value,
            "http_write_stall_secs" => self.http_write_stall_secs = value,
            "queue_places" => self.queue_places = size(value)?,
            "gossip_per_peer" => self.gossip_per_peer = small(value)?,
            other => {
                return Err(format!(
                    "no limit is called {other:?}; the limits: {}",
                    Self::NAMES
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        }
        Ok(())
    }
}

/// The bounds of the circuit relay a node offers to peers behind NAT. A relay carries
/// other people's traffic over its owner's uplink, so every dimension is capped:
/// slots, circuits, and each circuit's bytes and lifetime (a circuit that reaches a
/// bound is closed; the peers dial again, which opens a new one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayLimits {
    /// Reservations (relay slots) held at once, for all peers.
    pub max_reservations: usize,
    /// Reservations one peer may hold at once.
    pub max_reservations_per_peer: usize,
    /// Circuits relayed at once.
    pub max_circuits: usize,
    /// Circuits one peer may be an end of at once.
    pub max_circuits_per_peer: usize,
    /// Longest life of one circuit.
    pub max_circuit_duration: Duration,
    /// Most bytes one circuit carries (both directions together).
    pub max_circuit_bytes: u64,
}

impl Default for RelayLimits {
    /// Enough for a small community's home suppliers, little enough for a volunteer's
    /// uplink: 128 slots, 64 circuits (8 per peer), each closed after 10 minutes or
    /// 16 MiB (a thousand short answers; a hole-punched link replaces most circuits
    /// within seconds).
    fn default() -> Self {
        Self {
            max_reservations: 128,
            max_reservations_per_peer: 2,
            max_circuits: 64,
            max_circuits_per_peer: 8,
            max_circuit_duration: Duration::from_secs(600),
            max_circuit_bytes: 16 << 20,
        }
    }
}

impl NodeConfig {
    /// A full node in `mesh`, listening on QUIC and TCP on loopback with OS-chosen ports.
    pub fn new(mesh: MeshParams, identity: Identity) -> Self {
        Self {
            mesh,
            identity,
            listen: vec![
                "/ip4/127.0.0.1/udp/0/quic-v1"
                    .parse()
                    .expect("valid multiaddr"),
                "/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr"),
            ],
            bootstrap: Vec::new(),
            role: Role::Full,
            mdns: false,
            offers: Vec::new(),
            ad_lifetime: Duration::from_secs(300),
            max_connections: 256,
            api: None,
            models: Arc::default(),
            api_keys: None,
            routing: Default::default(),
            nat_services: None,
            external: Vec::new(),
            invite: None,
            limits: Limits::default(),
        }
    }
}

/// The public mesh's parameters: no genesis, default rules. A community mesh shares
/// its own parameters file instead.
pub fn public_mesh() -> MeshParams {
    named_mesh("public")
}

/// Default parameters under another name: a different mesh id, hence a separate mesh.
pub fn named_mesh(name: &str) -> MeshParams {
    MeshParams::new(name, Vec::new()).expect("default parameters are valid")
}

/// The mesh parameters file (TOML) that every node of a community mesh shares: the same
/// fields as [`MeshParams`], by name, in seconds where people think in seconds. Its
/// parameters' hash is the mesh id, so nodes with different files are in different
/// meshes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshFile {
    /// The mesh's name.
    pub name: String,
    /// Ledger epoch length, seconds.
    pub epoch_secs: u64,
    /// Epochs after which an epoch's ledger is frozen.
    pub freeze_horizon_epochs: u32,
    /// The app acks every K output tokens.
    pub ack_every_tokens: u32,
    /// The supplier pauses with more than W tokens unacknowledged.
    pub max_unacked_tokens: u32,
    /// Lower bound on a session's τ (CUs).
    pub tau_min: u64,
    /// Upper bound on a session's τ (CUs).
    pub tau_max: u64,
    /// Mined receipts per session the τ rule aims for.
    pub tau_target_mined: u32,
    /// Claims worth less (micro-credits) are refused as spam.
    pub min_claim_value: u64,
    /// Leaves sampled by a proof.
    pub proof_samples: u16,
    /// Most mined leaves per claim.
    pub max_claim_leaves: u32,
    /// Longest session, seconds.
    pub max_session_secs: u64,
    /// Tolerated clock difference, milliseconds.
    pub max_clock_skew_ms: u64,
    /// Highest price per CU a session may name, micro-credits.
    #[serde(default = "defaults::max_price_per_cu")]
    pub max_price_per_cu: u64,
    /// Highest CUs per byte a session's formula may name.
    #[serde(default = "defaults::max_cu_per_byte")]
    pub max_cu_per_byte: u32,
    /// Highest per-token byte cap a session may name.
    #[serde(default = "defaults::max_token_bytes")]
    pub max_token_bytes: u32,
    /// Most bytes a token is paid for, on average over an increment (honest text runs
    /// about 4; padded junk is paid no more than this).
    #[serde(default = "defaults::max_paid_token_bytes")]
    pub max_paid_token_bytes: u32,
    /// Genesis credit.
    #[serde(default)]
    pub genesis: Vec<GenesisEntry>,
    /// Models whose royalty the mesh enforces (their sessions must pin this Source's
    /// manifest at this royalty).
    #[serde(default)]
    pub sources: Vec<SourceEntry>,
    /// Owners of a private mesh (peer ids): only the peers they invite may join.
    /// Absent or empty: a public mesh.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<String>,
}

/// Defaults of the bounds a mesh file may leave out (those of [`MeshParams::new`]).
mod defaults {
    fn params() -> relaymesh_protocol::params::MeshParams {
        super::named_mesh("defaults")
    }
    pub fn max_price_per_cu() -> u64 {
        params().max_price_per_cu
    }
    pub fn max_cu_per_byte() -> u32 {
        params().max_cu_per_byte
    }
    pub fn max_token_bytes() -> u32 {
        params().max_token_bytes
    }
    pub fn max_paid_token_bytes() -> u32 {
        params().max_paid_token_bytes
    }
}

/// One registered model in a [`MeshFile`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceEntry {
    /// blake3 of the GGUF file, hex.
    pub model_digest: String,
    /// The Source's peer id.
    pub source: String,
    /// Its royalty, ppm of every settled claim.
    pub royalty_ppm: u32,
}

/// One genesis allocation in a [`MeshFile`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisEntry {
    /// The account's peer id.
    pub account: String,
    /// Micro-credits.
    pub amount: u64,
}

impl MeshFile {
    /// The file for `params`.
    pub fn from_params(params: &MeshParams) -> Self {
        Self {
            name: params.name.as_str().to_owned(),
            epoch_secs: params.epoch_ms / 1000,
            freeze_horizon_epochs: params.freeze_horizon_epochs,
            ack_every_tokens: params.ack_every_tokens,
            max_unacked_tokens: params.max_unacked_tokens,
            tau_min: params.tau_min,
            tau_max: params.tau_max,
            tau_target_mined: params.tau_target_mined,
            min_claim_value: params.min_claim_value,
            proof_samples: params.proof_samples,
            max_claim_leaves: params.max_claim_leaves,
            max_session_secs: params.max_session_ms / 1000,
            max_clock_skew_ms: params.max_clock_skew_ms,
            max_price_per_cu: params.max_price_per_cu,
            max_cu_per_byte: params.max_cu_per_byte,
            max_token_bytes: params.max_token_bytes,
            max_paid_token_bytes: params.max_paid_token_bytes,
            sources: params
                .sources
                .iter()
                .map(|s| SourceEntry {
                    model_digest: s.model_digest.to_hex(),
                    source: s.source.peer_id(),
                    royalty_ppm: s.royalty_ppm,
                })
                .collect(),
            genesis: params
                .genesis
                .iter()
                .map(|a| GenesisEntry {
                    account: a.account.peer_id(),
                    amount: a.amount,
                })
                .collect(),
            owners: params.owners.iter().map(|k| k.peer_id()).collect(),
        }
    }

    /// The parameters it describes, checked.
    pub fn to_params(&self) -> Result<MeshParams, String> {
        let genesis = self
            .genesis
            .iter()
            .map(|g| {
                Ok(relaymesh_protocol::params::Allocation {
                    account: relaymesh_protocol::PublicKey::from_peer_id(&g.account).ok_or_else(
                        || format!("genesis account {:?} is not a peer id", g.account),
                    )?,
                    amount: g.amount,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut params = MeshParams::new(&self.name, genesis).map_err(|e| e.to_string())?;
        params.epoch_ms = self.epoch_secs.saturating_mul(1000);
        params.freeze_horizon_epochs = self.freeze_horizon_epochs;
        params.ack_every_tokens = self.ack_every_tokens;
        params.max_unacked_tokens = self.max_unacked_tokens;
        params.tau_min = self.tau_min;
        params.tau_max = self.tau_max;
        params.tau_target_mined = self.tau_target_mined;
        params.min_claim_value = self.min_claim_value;
        params.proof_samples = self.proof_samples;
        params.max_claim_leaves = self.max_claim_leaves;
        params.max_session_ms = self.max_session_secs.saturating_mul(1000);
        params.max_clock_skew_ms = self.max_clock_skew_ms;
        params.max_price_per_cu = self.max_price_per_cu;
        params.max_cu_per_byte = self.max_cu_per_byte;
        params.max_token_bytes = self.max_token_bytes;
        params.max_paid_token_bytes = self.max_paid_token_bytes;
        let mut sources = self
            .sources
            .iter()
            .map(|s| {
                Ok(relaymesh_protocol::params::RegisteredSource {
                    model_digest: relaymesh_protocol::Digest::from_hex(&s.model_digest)
                        .ok_or_else(|| {
                            format!(
                                "source model_digest {:?} is not 64 hex digits",
                                s.model_digest
                            )
                        })?,
                    source: relaymesh_protocol::PublicKey::from_peer_id(&s.source)
                        .ok_or_else(|| format!("source {:?} is not a peer id", s.source))?,
                    royalty_ppm: s.royalty_ppm,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        sources.sort_by_key(|s| s.model_digest);
        params.sources = relaymesh_protocol::BoundedVec::try_from_vec(sources)
            .map_err(|e| format!("sources: {e}"))?;
        let mut owners = self
            .owners
            .iter()
            .map(|o| {
                relaymesh_protocol::PublicKey::from_peer_id(o)
                    .ok_or_else(|| format!("owner {o:?} is not a peer id"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        owners.sort();
        owners.dedup();
        params.owners = relaymesh_protocol::BoundedVec::try_from_vec(owners).map_err(|e| {
            format!(
                "owners: {e} (a mesh names at most {})",
                relaymesh_protocol::messages::membership::MAX_OWNERS
            )
        })?;
        params.validate().map_err(|e| e.to_string())?;
        params
            .check_accounts(&relaymesh_protocol::Ed25519Verifier)
            .map_err(|e| e.to_string())?;
        Ok(params)
    }

    /// Reads and checks a mesh file.
    pub fn load(path: &std::path::Path) -> Result<MeshParams, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("mesh file {}: {e}", path.display()))?;
        let file: MeshFile =
            toml::from_str(&text).map_err(|e| format!("mesh file {}: {e}", path.display()))?;
        file.to_params()
            .map_err(|e| format!("mesh file {}: {e}", path.display()))
    }

    /// The file as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("plain fields serialise")
    }
}

#[cfg(test)]
mod mesh_file_tests {
    use super::*;

    #[test]
    fn a_mesh_file_round_trips_and_bad_values_are_refused() {
        let mut params = named_mesh("community");
        params.epoch_ms = 5000;
        params.max_session_ms = 10_000;
        params.genesis = relaymesh_protocol::BoundedVec::try_from_vec(vec![
            relaymesh_protocol::params::Allocation {
                account: relaymesh_protocol::Signer::public_key(
                    &relaymesh_protocol::Keypair::from_secret([1; 32]),
                ),
                amount: 1_000_000,
            },
        ])
        .unwrap();
        let file = MeshFile::from_params(&params);
        let back: MeshFile = toml::from_str(&file.to_toml()).unwrap();
        assert_eq!(back.to_params().unwrap(), params);
        let mut bad = file.clone();
        bad.tau_min = 0;
        assert!(bad.to_params().unwrap_err().contains("tau_min"));
        let mut bad = file;
        bad.genesis[0].account = "nobody".into();
        assert!(bad.to_params().unwrap_err().contains("not a peer id"));
        assert!(toml::from_str::<MeshFile>("name = \"x\"\nunknown = 1").is_err());
    }
}
