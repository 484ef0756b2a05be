//! Verifying a leaf against a root: what a verifier of a proof runs.

use crate::sumtree::node::{key_bit, NodeSummary};
use crate::Digest;

/// Why a path does not prove a leaf.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// More siblings than key bits.
    #[error("path of {0} siblings is longer than 256")]
    TooLong(usize),
    /// Sums overflow.
    #[error("sums along the path overflow")]
    Overflow,
    /// The recomputed root differs from the claimed one.
    #[error("path does not lead to the claimed root")]
    RootMismatch,
}

/// Recomputes the root from a leaf (key, weight, value) and its siblings (root first),
/// taking left or right at each level from the key's bits, so a leaf can only sit on
/// its own key's path. Returns the CU offset of the leaf: the sum of everything to its
/// left, so a sampler can check the leaf covers its point.
pub fn verify_path(
    key: &Digest,
    weight: u64,
    value: &Digest,
    siblings: &[NodeSummary],
    root: &NodeSummary,
) -> Result<u64, PathError> {
    if siblings.len() > 256 {
        return Err(PathError::TooLong(siblings.len()));
    }
    let mut acc = NodeSummary::leaf(key, weight, value);
    let mut offset: u64 = 0;
    for (depth, sibling) in siblings.iter().enumerate().rev() {
        acc = if key_bit(key, depth) == 0 {
            NodeSummary::parent(&acc, sibling)
        } else {
            offset = offset.checked_add(sibling.sum).ok_or(PathError::Overflow)?;
            NodeSummary::parent(sibling, &acc)
        }
        .ok_or(PathError::Overflow)?;
    }
    if acc != *root {
        return Err(PathError::RootMismatch);
    }
    Ok(offset)
}
