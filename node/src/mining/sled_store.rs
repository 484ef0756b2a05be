//! A session's tree nodes in sled: their keys and their encoding (a node is a tag, then
//! its fields big-endian: 73 bytes for a leaf, 49 for an internal node).

use std::collections::BTreeMap;

use relaymesh_protocol::sumtree::{LeafEntry, NodeSummary, Position, StoredNode, TreeStore};
use relaymesh_protocol::Digest;

use super::{key, MiningError};

pub(super) fn node_key(session: &Digest, position: &Position) -> Vec<u8> {
    let mut rest = [0u8; 34];
    rest[..2].copy_from_slice(&position.depth.to_be_bytes());
    rest[2..].copy_from_slice(&position.prefix.0);
    key(b'n', session, &rest)
}

pub(super) fn encode_node(node: &StoredNode) -> Vec<u8> {
    let mut out = Vec::with_capacity(73);
    match node {
        StoredNode::Leaf(leaf) => {
            out.push(0);
            out.extend_from_slice(&leaf.key.0);
            out.extend_from_slice(&leaf.value.0);
            out.extend_from_slice(&leaf.weight.to_be_bytes());
        }
        StoredNode::Internal(s) => {
            out.push(1);
            out.extend_from_slice(&s.hash.0);
            out.extend_from_slice(&s.sum.to_be_bytes());
            out.extend_from_slice(&s.count.to_be_bytes());
        }
    }
    out
}

pub(super) fn decode_node(bytes: &[u8]) -> Option<StoredNode> {
    let digest = |b: &[u8]| -> Option<Digest> { Some(Digest(b.try_into().ok()?)) };
    let number = |b: &[u8]| -> Option<u64> { Some(u64::from_be_bytes(b.try_into().ok()?)) };
    match (bytes.first()?, bytes.len()) {
        (0, 73) => Some(StoredNode::Leaf(LeafEntry {
            key: digest(&bytes[1..33])?,
            value: digest(&bytes[33..65])?,
            weight: number(&bytes[65..73])?,
        })),
        (1, 49) => Some(StoredNode::Internal(NodeSummary {
            hash: digest(&bytes[1..33])?,
            sum: number(&bytes[33..41])?,
            count: number(&bytes[41..49])?,
        })),
        _ => None,
    }
}

/// One session's tree nodes in sled, with the writes of the current insert held back
/// (and read back) until the miner takes them.
pub struct SledStore {
    tree: sled::Tree,
    pub(super) session: Digest,
    /// Writes of the current insert, until the miner takes them.
    pub(super) pending: BTreeMap<Position, StoredNode>,
}

impl SledStore {
    /// The nodes of `session` in `tree`.
    pub fn new(tree: sled::Tree, session: Digest) -> Self {
        Self {
            tree,
            session,
            pending: BTreeMap::new(),
        }
    }
}

impl TreeStore for SledStore {
    type Error = MiningError;

    fn get(&self, position: &Position) -> Result<Option<StoredNode>, MiningError> {
        if let Some(node) = self.pending.get(position) {
            return Ok(Some(*node));
        }
        match self.tree.get(node_key(&self.session, position))? {
            None => Ok(None),
            Some(bytes) => decode_node(&bytes).map(Some).ok_or(MiningError::Corrupt),
        }
    }

    fn put(&mut self, position: Position, node: StoredNode) -> Result<(), MiningError> {
        self.pending.insert(position, node);
        Ok(())
    }
}
