//! Where a sum tree's nodes live. The tree addresses nodes by position (depth and key
//! prefix), so a store is a plain key-value map: in memory here, sled in the node.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use crate::sumtree::node::NodeSummary;
use crate::Digest;

/// A node's place in the tree: its depth and the first `depth` bits of every key below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Distance from the root.
    pub depth: u16,
    /// Key prefix of length `depth`, remaining bits zero.
    pub prefix: Digest,
}

impl Position {
    /// The root.
    pub const ROOT: Position = Position {
        depth: 0,
        prefix: Digest::ZERO,
    };

    /// The position at `depth` on the path to `key`.
    pub fn on_path(key: &Digest, depth: u16) -> Self {
        let mut prefix = Digest::ZERO;
        let full = usize::from(depth / 8);
        prefix.0[..full].copy_from_slice(&key.0[..full]);
        let rest = depth % 8;
        if rest > 0 {
            prefix.0[full] = key.0[full] & (0xffu8 << (8 - rest));
        }
        Position { depth, prefix }
    }

    /// The child on side `bit` (0 left, 1 right).
    pub fn child(&self, bit: u8) -> Self {
        let mut prefix = self.prefix;
        let d = usize::from(self.depth);
        if bit == 1 {
            prefix.0[d / 8] |= 1 << (7 - d % 8);
        }
        Position {
            depth: self.depth + 1,
            prefix,
        }
    }
}

/// A leaf as stored: its key, the receipt digest and the CUs it pays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeafEntry {
    /// Relay hash of the receipt; its bits are the leaf's path.
    pub key: Digest,
    /// Digest of the receipt.
    pub value: Digest,
    /// CUs the mined receipt pays.
    pub weight: u64,
}

impl LeafEntry {
    /// The leaf's summary.
    pub fn summary(&self) -> NodeSummary {
        NodeSummary::leaf(&self.key, self.weight, &self.value)
    }
}

/// A stored node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredNode {
    /// A subtree holding exactly one leaf is that leaf.
    Leaf(LeafEntry),
    /// A node with two non-empty subtrees.
    Internal(NodeSummary),
}

impl StoredNode {
    /// The node's summary.
    pub fn summary(&self) -> NodeSummary {
        match self {
            StoredNode::Leaf(leaf) => leaf.summary(),
            StoredNode::Internal(summary) => *summary,
        }
    }

    /// The node's sum, without hashing a leaf.
    pub fn sum(&self) -> u64 {
        match self {
            StoredNode::Leaf(leaf) => leaf.weight,
            StoredNode::Internal(summary) => summary.sum,
        }
    }
}

/// Storage for tree nodes.
pub trait TreeStore {
    /// What can go wrong in the store (nothing, in memory).
    type Error: std::error::Error + 'static;
    /// The node at `position`, if any.
    fn get(&self, position: &Position) -> Result<Option<StoredNode>, Self::Error>;
    /// Writes the node at `position`.
    fn put(&mut self, position: Position, node: StoredNode) -> Result<(), Self::Error>;
}

/// Hashes a [`Position`] for [`MemoryStore`]'s map by its depth and first eight prefix
/// bytes, mixed: prefixes are key bits, already uniform, so a keyed hash (SipHash, the
/// map's default) would buy nothing and cost most of a lookup. Positions that share
/// those bytes and depth still differ in the map's full comparison.
#[derive(Clone, Copy, Debug, Default)]
struct PositionHasher(u64);

impl Hasher for PositionHasher {
    fn finish(&self) -> u64 {
        // The finaliser of MurmurHash3: every input bit reaches every output bit.
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `Position`'s own `Hash` writes here; any other input still hashes.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(29) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A position as [`MemoryStore`]'s map key: hashed once, as one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PositionKey(Position);

impl Hash for PositionKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let head = u64::from_le_bytes(
            self.0.prefix.0[..8]
                .try_into()
                .expect("a digest has eight bytes"),
        );
        state.write_u64(head ^ u64::from(self.0.depth).rotate_right(16));
    }
}

/// Nodes in a hash map (the tree reads them by position only, never in order).
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    nodes: HashMap<PositionKey, StoredNode, BuildHasherDefault<PositionHasher>>,
}

impl MemoryStore {
    /// An empty store with room for the tree of `leaves` leaves (about 2.5 nodes per
    /// leaf for random keys), so building it never regrows the map.
    pub fn for_leaves(leaves: usize) -> Self {
        Self {
            nodes: HashMap::with_capacity_and_hasher(leaves * 3, Default::default()),
        }
    }

    /// Number of stored nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

impl TreeStore for MemoryStore {
    type Error = Infallible;

    fn get(&self, position: &Position) -> Result<Option<StoredNode>, Infallible> {
        Ok(self.nodes.get(&PositionKey(*position)).copied())
    }

    fn put(&mut self, position: Position, node: StoredNode) -> Result<(), Infallible> {
        self.nodes.insert(PositionKey(position), node);
        Ok(())
    }
}
