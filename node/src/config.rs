//! How a node is configured: which mesh, which identity, where it listens, whom it
//! bootstraps from, what it serves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use libp2p::Multiaddr;
use relaymesh_protocol::messages::capability::ModelOffer;
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
