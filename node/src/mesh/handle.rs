//! `NodeHandle`: the cloneable way the rest of the program talks to the swarm's owner,
//! over a bounded channel with a oneshot per reply.

use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::config::Role;
use crate::mesh::peer_table::ModelRow;
use relaymesh_protocol::messages::capability::ModelOffer;
use relaymesh_protocol::PublicKey;

/// Commands the event loop serves.
#[derive(Debug)]
pub(crate) enum Command {
    Status(oneshot::Sender<NodeStatus>),
    Peers(oneshot::Sender<Vec<PeerRow>>),
    Models(oneshot::Sender<Vec<ModelRow>>),
    Dial(Multiaddr, oneshot::Sender<Result<(), String>>),
    FindProviders(String, oneshot::Sender<Vec<PeerId>>),
    Locate(PeerId, oneshot::Sender<bool>),
    Offers(String, oneshot::Sender<Vec<(PublicKey, ModelOffer)>>),
    PublishAdBytes(Vec<u8>, oneshot::Sender<Result<(), String>>),
    PublishLedger(Vec<u8>, oneshot::Sender<Result<(), String>>),
    Revoke(
        relaymesh_protocol::messages::membership::SignedRevocation,
        oneshot::Sender<Result<bool, String>>,
    ),
    Withdraw(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// What `GET /relaymesh/v1/status` reports.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    /// This node's peer id.
    pub peer_id: String,
    /// The mesh id (hex).
    pub mesh_id: String,
    /// The mesh's name.
    pub mesh_name: String,
    /// Full, light or bootstrap.
    pub role: Role,
    /// Addresses we listen on, with `/p2p/<peer id>`.
    pub listen_addrs: Vec<String>,
    /// Our addresses as peers see them, confirmed by two of them (behind a NAT, the
    /// router's), with `/p2p/<peer id>`: advertised to public peers.
    pub external_addrs: Vec<String>,
    /// Connected peers.
    pub connected_peers: usize,
    /// The `--bootstrap` nodes: how many, which are connected, and why the last
    /// round of dials reached none.
    pub bootstrap: crate::mesh::bootstrap::BootstrapStatus,
    /// Whether peers can reach this node (public, behind NAT, relayed), where, and its
    /// relay slots.
    pub reachability: crate::mesh::reachability::ReachabilityStatus,
    /// Open connections by link kind.
    pub links: LinkCounts,
    /// This node's clock against its peers' (the ledger's measure; filled in by the
    /// API, absent where the swarm reports alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock: Option<crate::settle::ClockReport>,
    /// Suppliers in the peer table.
    pub suppliers: usize,
    /// In a private mesh: this node's own membership.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub membership: Option<OwnMembership>,
    /// relaymesh version.
    pub version: String,
    /// Seconds since the node started (filled in by the API).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime_secs: Option<u64>,
}

/// This node's membership of a private mesh.
#[derive(Clone, Debug, Serialize)]
pub struct OwnMembership {
    /// What it was admitted as.
    #[serde(flatten)]
    pub member: MemberRow,
    /// Why members now refuse it (its invite expired or was revoked), if they do.
    pub ended: Option<String>,
}

/// One connected peer.
#[derive(Clone, Debug, Serialize)]
pub struct PeerRow {
    /// Peer id.
    pub peer_id: String,
    /// Remote addresses of open connections.
    pub addresses: Vec<String>,
    /// Transports in use (`quic`, `tcp`).
    pub transports: Vec<String>,
    /// How new streams reach it: `direct`, `hole-punched` or `relayed` (the best of
    /// its connections).
    pub link: LinkKind,
    /// The peer's agent string from identify.
    pub agent: Option<String>,
    /// Its gossipsub score, as we see it.
    pub gossip_score: Option<f64>,
    /// Last ping round trip over that link, milliseconds.
    pub rtt_ms: Option<f64>,
    /// In a private mesh: what the peer was admitted as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member: Option<MemberRow>,
    /// Its clock minus ours, ms, as last heard in anti-entropy (positive: ours is
    /// behind); `None` until heard.
    pub clock_offset_ms: Option<i64>,
}

/// A private mesh's member, as admitted.
#[derive(Clone, Debug, Serialize)]
pub struct MemberRow {
    /// `supplier`, `app` or `both`.
    pub role: String,
    /// The invite's id (hex); `None` for an owner.
    pub invite: Option<String>,
    /// When the invite expires, unix ms (`None`: an owner, who needs none).
    pub expires_ms: Option<u64>,
}

impl MemberRow {
    /// The row for what a peer was admitted with.
    pub fn of(admitted: &relaymesh_protocol::membership::Admitted) -> Self {
        Self {
            role: admitted.role.to_string(),
            invite: admitted.invite.map(|i| i.to_hex()),
            expires_ms: (admitted.expires_ms != u64::MAX).then_some(admitted.expires_ms),
        }
    }
}

/// How a connection reaches its peer.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum LinkKind {
    /// Dialled (or accepted) directly.
    Direct,
    /// Direct, hole-punched through NATs from a relayed connection (DCUtR).
    HolePunched,
    /// Through a relay: every byte passes the relay node, within its bounds.
    Relayed,
}

impl LinkKind {
    /// As the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkKind::Direct => "direct",
            LinkKind::HolePunched => "hole-punched",
            LinkKind::Relayed => "relayed",
        }
    }
}

/// Open connections by link kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LinkCounts {
    /// Direct.
    pub direct: usize,
    /// Hole-punched.
    pub hole_punched: usize,
    /// Relayed.
    pub relayed: usize,
}

/// The node went away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the node has shut down")]
pub struct NodeGone;

/// Talks to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) peer_id: PeerId,
    pub(crate) streams: libp2p_stream::Control,
    pub(crate) membership: Option<std::sync::Arc<crate::mesh::membership::Membership>>,
    /// Where peers holding inbound direct connections come from (`ip_limit`).
    pub(crate) peer_networks: crate::mesh::ip_limit::PeerNetworks,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("peer_id", &self.peer_id)
            .finish()
    }
}

impl NodeHandle {
    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NodeGone> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| NodeGone)?;
        rx.await.map_err(|_| NodeGone)
    }

    /// Identity, mesh, addresses and counts.
    pub async fn status(&self) -> Result<NodeStatus, NodeGone> {
        self.ask(Command::Status).await
    }

    /// Connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerRow>, NodeGone> {
        self.ask(Command::Peers).await
    }

    /// Models on the mesh, one row per supplier.
    pub async fn models(&self) -> Result<Vec<ModelRow>, NodeGone> {
        self.ask(Command::Models).await
    }

    /// Suppliers of `model` in the peer table, with their current offer; those backed
    /// off after failed dials only when no other supplier of it is left.
    pub async fn offers(&self, model: &str) -> Result<Vec<(PublicKey, ModelOffer)>, NodeGone> {
        self.ask(|tx| Command::Offers(model.to_string(), tx)).await
    }

    /// Opens and accepts raw protocol streams (the inference protocol).
    pub fn streams(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    /// Dials an address.
    pub async fn dial(&self, addr: Multiaddr) -> Result<Result<(), String>, NodeGone> {
        self.ask(|tx| Command::Dial(addr, tx)).await
    }

    /// Suppliers of a model found through the DHT's provider records.
    pub async fn find_providers(&self, model: &str) -> Result<Vec<PeerId>, NodeGone> {
        self.ask(|tx| Command::FindProviders(model.to_string(), tx))
            .await
    }

    /// Whether `peer` can be reached: true when connected, or once a DHT lookup (a
    /// walk toward its id, then a dial at every address known and found) has
    /// connected to it; false when the lookup found nothing reachable, and the peer,
    /// if a supplier, is then backed off (its ad stays). Callers ask after a dial at
    /// every address known failed, or when none was known: an ad comes through gossip,
    /// its supplier's address does not, and a supplier restarted on another port is
    /// found at its new one.
    pub async fn locate(&self, peer: PeerId) -> Result<bool, NodeGone> {
        self.ask(|tx| Command::Locate(peer, tx)).await
    }

    /// Publishes raw bytes on the ads topic: for tests and tools that probe how the mesh
    /// treats bad input. Nodes publish their own ads by themselves.
    #[doc(hidden)]
    pub async fn publish_ad_bytes(&self, bytes: Vec<u8>) -> Result<Result<(), String>, NodeGone> {
        self.ask(|tx| Command::PublishAdBytes(bytes, tx)).await
    }

    /// Gossips an encoded ledger message (the node's own, already applied to its
    /// ledger). Not reaching any peer now is fine: anti-entropy carries it later.
    pub async fn publish_ledger(&self, bytes: Vec<u8>) -> Result<Result<(), String>, NodeGone> {
        self.ask(|tx| Command::PublishLedger(bytes, tx)).await
    }

    /// Takes an owner's revocation list, enforces it at once (cutting off the peers it
    /// names) and gossips it to the mesh: `Ok(true)` if it was newer than the held
    /// one, `Ok(false)` if not, `Err` if it is not a valid list for this mesh.
    pub async fn revoke(
        &self,
        list: relaymesh_protocol::messages::membership::SignedRevocation,
    ) -> Result<Result<bool, String>, NodeGone> {
        self.ask(|tx| Command::Revoke(list, tx)).await
    }

    /// A private mesh's membership at this node (`None` in a public mesh).
    pub fn membership(&self) -> Option<&std::sync::Arc<crate::mesh::membership::Membership>> {
        self.membership.as_ref()
    }

    /// Withdraws this node's ads (the node is stopping): a signed ad with no models is
    /// gossiped in their place, so apps stop choosing it at once; no ad follows.
    pub async fn withdraw(&self) -> Result<(), NodeGone> {
        self.ask(Command::Withdraw).await
    }

    /// Stops the node: the swarm closes its connections and the task ends.
    pub async fn shutdown(&self) -> Result<(), NodeGone> {
        self.ask(Command::Shutdown).await
    }
}
