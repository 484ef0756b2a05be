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

/// Bits the two keys share before they first differ (256 when equal).
fn shared_bits(a: &Digest, b: &Digest) -> usize {
    for (i, (x, y)) in a.0.iter().zip(&b.0).enumerate() {
        let differ = x ^ y;
        if differ != 0 {
            return i * 8 + differ.leading_zeros() as usize;
        }
    }
    256
}

/// A path this verifier accepted: its key, its siblings and the node it computed at
/// each depth (root first, the leaf last).
struct Accepted<'a> {
    key: Digest,
    siblings: &'a [NodeSummary],
    nodes: Vec<NodeSummary>,
}

/// Verifies several paths against one root, as [`verify_path`] does each, with the
/// same verdicts and offsets, but hashing only below where a path meets one already
/// accepted: paths of one tree share their upper nodes, and the samples of a proof
/// mostly walk the same ones.
///
/// A path meets an accepted one at the deepest position both keys lead through. If
/// the node it computes there equals the accepted path's, and its siblings above are
/// the accepted path's siblings, every hash [`verify_path`] would compute above that
/// point is one the accepted path computed, ending at the root: the path is accepted
/// without them. Otherwise it is verified in full, so a proof is accepted exactly when
/// each of its paths would be accepted alone.
pub struct PathVerifier<'a> {
    root: NodeSummary,
    accepted: Vec<Accepted<'a>>,
}

impl<'a> PathVerifier<'a> {
    /// A verifier of paths to `root`.
    pub fn new(root: NodeSummary) -> Self {
        Self {
            root,
            accepted: Vec::new(),
        }
    }

    /// What [`verify_path`] returns for this path.
    pub fn verify(
        &mut self,
        key: &Digest,
        weight: u64,
        value: &Digest,
        siblings: &'a [NodeSummary],
    ) -> Result<u64, PathError> {
        let n = siblings.len();
        if n > 256 {
            return Err(PathError::TooLong(n));
        }
        // The accepted path this one shares the most upper nodes with, and the depth
        // of the deepest node they share.
        let meeting = self
            .accepted
            .iter()
            .enumerate()
            .map(|(i, p)| (shared_bits(key, &p.key).min(n).min(p.siblings.len()), i))
            .max();
        let stop = meeting.map_or(0, |(depth, _)| depth);
        // Bottom-up to the meeting depth, keeping each node.
        let mut nodes = vec![NodeSummary::EMPTY; n + 1];
        let mut acc = NodeSummary::leaf(key, weight, value);
        nodes[n] = acc;
        let mut offset: u64 = 0;
        let mut depth = n;
        let climb = |depth: usize, acc: &NodeSummary, offset: &mut u64| {
            let sibling = &siblings[depth];
            if key_bit(key, depth) == 0 {
                NodeSummary::parent(acc, sibling)
            } else {
                *offset = offset.checked_add(sibling.sum)?;
                NodeSummary::parent(sibling, acc)
            }
        };
        while depth > stop {
            depth -= 1;
            acc = climb(depth, &acc, &mut offset).ok_or(PathError::Overflow)?;
            nodes[depth] = acc;
        }
        if let Some((meet, i)) = meeting {
            let met = &self.accepted[i];
            if met.nodes[meet] == acc && met.siblings[..meet] == siblings[..meet] {
                // Above the meeting point every step is the accepted path's: only the
                // offset, from the siblings on the left, is left to add.
                for (d, sibling) in siblings[..meet].iter().enumerate() {
                    if key_bit(key, d) == 1 {
                        offset = offset.checked_add(sibling.sum).ok_or(PathError::Overflow)?;
                    }
                }
                nodes[..meet].copy_from_slice(&met.nodes[..meet]);
                self.accepted.push(Accepted {
                    key: *key,
                    siblings,
                    nodes,
                });
                return Ok(offset);
            }
        }
        while depth > 0 {
            depth -= 1;
            acc = climb(depth, &acc, &mut offset).ok_or(PathError::Overflow)?;
            nodes[depth] = acc;
        }
        if acc != self.root {
            return Err(PathError::RootMismatch);
        }
        self.accepted.push(Accepted {
            key: *key,
            siblings,
            nodes,
        });
        Ok(offset)
    }
}
