//! Node summaries and how they hash.

use serde_tuple::{Deserialize_tuple, Serialize_tuple};

use crate::identity::domain::{hash_tag, tagged_hash};
use crate::Digest;

/// What a parent needs to know about a child: its hash, CU sum and leaf count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct NodeSummary {
    /// Node hash.
    pub hash: Digest,
    /// CUs under the node.
    pub sum: u64,
    /// Leaves under the node.
    pub count: u64,
}

impl NodeSummary {
    /// An empty subtree.
    pub const EMPTY: NodeSummary = NodeSummary {
        hash: Digest::ZERO,
        sum: 0,
        count: 0,
    };

    /// A leaf: `H(leaf-tag ‖ key ‖ weight ‖ value)`.
    pub fn leaf(key: &Digest, weight: u64, value: &Digest) -> Self {
        let hash = tagged_hash(
            hash_tag::TREE_LEAF,
            &[&key.0, &weight.to_be_bytes(), &value.0],
        );
        NodeSummary {
            hash,
            sum: weight,
            count: 1,
        }
    }

    /// An internal node over two children: `H(node-tag ‖ left ‖ right)` with each child
    /// as `hash ‖ sum ‖ count`. `None` when the sums overflow.
    pub fn parent(left: &NodeSummary, right: &NodeSummary) -> Option<Self> {
        let sum = left.sum.checked_add(right.sum)?;
        let count = left.count.checked_add(right.count)?;
        let hash = tagged_hash(
            hash_tag::TREE_NODE,
            &[
                &left.hash.0,
                &left.sum.to_be_bytes(),
                &left.count.to_be_bytes(),
                &right.hash.0,
                &right.sum.to_be_bytes(),
                &right.count.to_be_bytes(),
            ],
        );
        Some(NodeSummary { hash, sum, count })
    }
}

/// Bit `index` of a key, most significant bit of byte 0 first.
pub fn key_bit(key: &Digest, index: usize) -> u8 {
    (key.0[index / 8] >> (7 - index % 8)) & 1
}
