//! # relaymesh
//!
//! The embeddable face of relaymesh. An app starts a **light node** in a few lines: it
//! joins the mesh through bootstrap nodes, sees which models the mesh offers, asks one
//! and reads the answer as it streams, and shuts down cleanly. No HTTP API is needed
//! (`NodeBuilder::api` turns one on). The answer is metered as the API's would be (a
//! session with the supplier, an ack per K tokens, receipts), fails over to the next
//! supplier if one stops, and is hedged when the first is slow. Light nodes are DHT
//! clients and serve nothing.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use relaymesh::{ChatMessage, ChatRole, GenEvent, GenRequest, NodeBuilder};
//! let node = NodeBuilder::light()
//!     .bootstrap("/ip4/127.0.0.1/udp/4001/quic-v1/p2p/12D3KooWExample".parse()?)
//!     .in_memory_identity()
//!     .start()
//!     .await?;
//! for row in node.handle().models().await? {
//!     println!("{} served by {}", row.name, row.supplier);
//! }
//! if node.wait_for_model("smollm2", std::time::Duration::from_secs(30)).await {
//!     let question = ChatMessage { role: ChatRole::User, content: "Hello!".into() };
//!     let mut answer = node.generate("smollm2", GenRequest::chat(vec![question])).await?;
//!     while let Some(event) = answer.next().await {
//!         match event {
//!             GenEvent::Text(piece) => print!("{piece}"),
//!             GenEvent::Done(_) => break,
//!             GenEvent::Failed(why) => anyhow::bail!("the answer failed: {why}"),
//!             _ => {} // log probabilities, told only when the request asks
//!         }
//!     }
//! }
//! // What settled so far (a session is paid once its claim settles, after it ends).
//! println!("earned {}, spent {}", node.ledger().me.earned, node.ledger().me.spent);
//! node.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! `examples/chat.rs` is a whole app; `tests/embedding.rs` runs it against a supplier
//! process.
//!
//! The CLI (`relaymesh node`, `relaymesh id`, …) is this crate's binary; the node
//! itself is `relaymesh-node`, the rules are `relaymesh-protocol`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use libp2p::Multiaddr;
/// Model backends a node serves from (GGUF in process, Ollama, OpenAI-compatible).
pub use relaymesh_node::backend;
pub use relaymesh_node::backend::{
    BackendError, ChatMessage, Finish, FinishReason, GenEvent, GenRequest, Measured, Prompt,
    Role as ChatRole, Sampling,
};
pub use relaymesh_node::mesh::membership::make_invite;
pub use relaymesh_node::mesh::peer_table::ModelRow;
pub use relaymesh_node::settle::LedgerReport;
pub use relaymesh_node::{Identity, Node, NodeConfig, NodeError, NodeHandle, Role};
pub use relaymesh_protocol::membership::Role as MemberRole;
pub use relaymesh_protocol::messages::membership::Credential;
pub use relaymesh_protocol::params::MeshParams;
pub use relaymesh_protocol::{Keypair, PublicKey, Signer};

/// A new random key: a node's identity and account, or a private mesh's owner key.
pub fn new_key() -> Keypair {
    Keypair::generate(&mut rand_core::OsRng)
}

/// The parameters of a private mesh called `name`, owned by `owner`: only peers with an
/// invite it signed ([`make_invite`]) get a connection, and the owner's own nodes need
/// none. Share the parameters (or `relaymesh mesh init`'s file) with the members.
pub fn private_mesh(name: &str, owner: &Keypair) -> MeshParams {
    let mut params = relaymesh_node::config::named_mesh(name);
    params.owners = relaymesh_protocol::BoundedVec::try_from_vec(vec![owner.public_key()])
        .expect("one owner fits");
    params
}

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

    /// Runs with `key` as its identity (held in memory only): a private mesh's owner
    /// runs its nodes with the owner key, which needs no invite.
    pub fn identity(mut self, key: Keypair) -> Self {
        self.config.identity = Identity::Ephemeral(key);
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

    /// Serves a model from `backend` (a GGUF file in process, an Ollama or
    /// OpenAI-compatible server: see [`backend`]) at `price_per_cu`
    /// micro-credits per compute unit; a full node advertises it to the mesh. Receipts
    /// are mined and claimed in the data dir, or in a temporary database without one
    /// (what is not yet claimed is then lost when the node stops).
    pub fn serve(
        mut self,
        backend: relaymesh_node::backend::SharedBackend,
        price_per_cu: u64,
    ) -> Result<Self, String> {
        let models = std::sync::Arc::get_mut(&mut self.config.models)
            .ok_or("the builder's models are shared with a clone of it: call serve first")?;
        models.insert(relaymesh_node::backend::ServedModel::new(
            backend,
            price_per_cu,
        ))?;
        Ok(self)
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
