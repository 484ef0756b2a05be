//! # relaymesh
//!
//! The embeddable face of relaymesh. An app starts a **light node** in a few lines: it
//! joins the mesh through bootstrap nodes, sees which models the mesh offers, and shuts
//! down cleanly. Light nodes are DHT clients and serve nothing.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! let node = relaymesh::NodeBuilder::light()
//!     .bootstrap("/ip4/127.0.0.1/udp/4001/quic-v1/p2p/12D3KooWExample".parse()?)
//!     .in_memory_identity()
//!     .start()
//!     .await?;
//! for row in node.handle().models().await? {
//!     println!("{} served by {}", row.name, row.supplier);
//! }
//! node.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The CLI (`relaymesh node`, `relaymesh id`, …) is this crate's binary; the node
//! itself is `relaymesh-node`, the rules are `relaymesh-protocol`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use libp2p::Multiaddr;
pub use relaymesh_node::mesh::peer_table::ModelRow;
pub use relaymesh_node::{Identity, Node, NodeConfig, NodeError, NodeHandle, Role};
use relaymesh_protocol::params::MeshParams;
use relaymesh_protocol::Keypair;

/// Builds and starts a node.
#[derive(Clone, Debug)]
pub struct NodeBuilder {
    config: NodeConfig,
}

impl NodeBuilder {
    fn with_role(role: Role) -> Self {
        let mut config = NodeConfig::new(
            relaymesh_node::config::public_mesh(),
            Identity::Ephemeral(Keypair::generate(&mut rand_core::OsRng)),
        );
        config.role = role;
        Self { config }
    }

    /// A light node: sees the mesh, serves nothing, DHT client. In-memory identity and
    /// loopback listeners until told otherwise.
    pub fn light() -> Self {
        Self::with_role(Role::Light)
    }

    /// A full node.
    pub fn full() -> Self {
        Self::with_role(Role::Full)
    }

    /// Adds a bootstrap address (`…/p2p/<peer id>`).
    pub fn bootstrap(mut self, addr: Multiaddr) -> Self {
        self.config.bootstrap.push(addr);
        self
    }

    /// Joins the default-parameter mesh of this name instead of the public one.
    pub fn mesh_name(mut self, name: &str) -> Self {
        self.config.mesh = relaymesh_node::config::named_mesh(name);
        self
    }

    /// Joins the mesh with these parameters.
    pub fn mesh(mut self, params: MeshParams) -> Self {
        self.config.mesh = params;
        self
    }

    /// Joins a private mesh with this invite (`relaymesh mesh invite` makes one; read a
    /// token with `Credential::from_token`). With a data dir it is kept there, so a
    /// restart needs it no more.
    pub fn invite(mut self, invite: relaymesh_protocol::messages::membership::Credential) -> Self {
        self.config.invite = Some(invite);
        self
    }

    /// Keeps the identity (and a database) in `dir`, so the peer id survives restarts.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.identity = Identity::DataDir(dir.into());
        self
    }

    /// A fresh identity held in memory only (the default).
    pub fn in_memory_identity(mut self) -> Self {
        self.config.identity = Identity::Ephemeral(Keypair::generate(&mut rand_core::OsRng));
        self
    }

    /// Replaces the listen addresses.
    pub fn listen(mut self, addrs: Vec<Multiaddr>) -> Self {
        self.config.listen = addrs;
        self
    }

    /// Serves the local HTTP API on `addr`.
    pub fn api(mut self, addr: SocketAddr) -> Self {
        self.config.api = Some(addr);
        self
    }

    /// How long capability ads (and provider records) stay valid.
    pub fn ad_lifetime(mut self, lifetime: Duration) -> Self {
        self.config.ad_lifetime = lifetime;
        self
    }

    /// The configuration built so far, to adjust what the builder does not cover.
    pub fn config_mut(&mut self) -> &mut NodeConfig {
        &mut self.config
    }

    /// Starts the node.
    pub async fn start(self) -> Result<Node, NodeError> {
        Node::start(self.config).await
    }
}
