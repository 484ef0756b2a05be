//! Names that carry the mesh id, so two meshes never mix: protocol ids
//! (`/relaymesh/<mesh>/<proto>/1`), gossip topics and the identify version string.

use libp2p::StreamProtocol;
use relaymesh_protocol::Digest;

/// The first 16 hex digits of the mesh id: enough to keep meshes apart in names.
pub fn mesh_tag(mesh_id: &Digest) -> String {
    mesh_id.to_hex()[..16].to_string()
}

/// Kademlia protocol of this mesh: a DHT per mesh.
pub fn kad_protocol(mesh_id: &Digest) -> StreamProtocol {
    StreamProtocol::try_from_owned(format!("/relaymesh/{}/kad/1", mesh_tag(mesh_id)))
        .expect("starts with a slash")
}

/// Prefix of the gossipsub protocol ids of this mesh.
pub fn gossip_prefix(mesh_id: &Digest) -> String {
    format!("/relaymesh/{}/meshsub", mesh_tag(mesh_id))
}

/// Gossip topic for capability ads.
pub fn ads_topic(mesh_id: &Digest) -> String {
    format!("relaymesh/{}/ads/1", mesh_tag(mesh_id))
}

/// Gossip topic for ledger messages: claims, reveals, proofs, transfers, evidence.
pub fn ledger_topic(mesh_id: &Digest) -> String {
    format!("relaymesh/{}/ledger/1", mesh_tag(mesh_id))
}

/// Gossip topic of a private mesh's revocation lists.
pub fn members_topic(mesh_id: &Digest) -> String {
    format!("relaymesh/{}/members/1", mesh_tag(mesh_id))
}

/// Anti-entropy: a node sends the keys of the ledger messages it holds and gets back
/// those it lacks.
pub fn ledger_sync_protocol(mesh_id: &Digest) -> StreamProtocol {
    StreamProtocol::try_from_owned(format!("/relaymesh/{}/ledger-sync/1", mesh_tag(mesh_id)))
        .expect("starts with a slash")
}

/// Identify's protocol version: peers of another mesh are disconnected when they
/// announce a different one.
pub fn identify_version(mesh_id: &Digest) -> String {
    format!("/relaymesh/{}/1", mesh_tag(mesh_id))
}

/// The inference stream: sessions, requests, tokens and acks (`InferFrame`s).
pub fn infer_protocol(mesh_id: &Digest) -> StreamProtocol {
    StreamProtocol::try_from_owned(format!("/relaymesh/{}/infer/1", mesh_tag(mesh_id)))
        .expect("starts with a slash")
}

/// Ad synchronisation: a newcomer asks each new peer for the ads it holds, instead of
/// waiting up to a third of an ad's lifetime for the next announcement.
pub fn ads_sync_protocol(mesh_id: &Digest) -> StreamProtocol {
    StreamProtocol::try_from_owned(format!("/relaymesh/{}/ads-sync/1", mesh_tag(mesh_id)))
        .expect("starts with a slash")
}
