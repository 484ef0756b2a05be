//! The sparse Merkle sum tree: insert, bulk build, inclusion proofs and
//! weight-proportional descent.
//!
//! Written here rather than taken from a crate: no maintained crate offers a *sum*
//! tree with sparse key-addressed paths and weight-proportional sampling.
//!
//! Shape: a leaf sits at the shallowest position on its key's path that no other key
//! shares, so the tree of a key set is unique (its root does not depend on insertion
//! order) and a key can occur at most once.

use crate::sumtree::node::{key_bit, NodeSummary};
use crate::sumtree::store::{LeafEntry, MemoryStore, Position, StoredNode, TreeStore};
use crate::Digest;

/// What can go wrong in a tree operation.
#[derive(Debug, thiserror::Error)]
pub enum TreeError<E: std::error::Error + 'static> {
    /// The store failed.
    #[error("tree store: {0}")]
    Store(#[source] E),
    /// The key is already in the tree: a receipt cannot be counted twice.
    #[error("key {0} is already in the tree")]
    DuplicateKey(Digest),
    /// Leaves must weigh something.
    #[error("a leaf must have positive weight")]
    ZeroWeight,
    /// Sums overflow u64.
    #[error("tree sum overflows")]
    Overflow,
    /// No leaf with that key.
    #[error("key {0} is not in the tree")]
    NotFound(Digest),
    /// A sampling point at or beyond the root sum.
    #[error("point {point} is outside [0, {sum})")]
    PointOutOfRange {
        /// The point.
        point: u64,
        /// The root sum.
        sum: u64,
    },
    /// The store holds a shape the tree never writes.
    #[error("tree store is inconsistent at depth {0}")]
    Corrupt(u16),
}

/// A leaf with its siblings from the root down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafPath {
    /// The leaf.
    pub leaf: LeafEntry,
    /// Sibling summaries, root first.
    pub siblings: Vec<NodeSummary>,
}

/// A sparse Merkle sum tree over a node store.
#[derive(Debug, Default)]
pub struct SumTree<S = MemoryStore> {
    store: S,
}

impl SumTree<MemoryStore> {
    /// An empty in-memory tree.
    pub fn new() -> Self {
        Self {
            store: MemoryStore::default(),
        }
    }
}

impl<S: TreeStore> SumTree<S> {
    /// A tree over an existing store (empty or previously written by a `SumTree`).
    pub fn with_store(store: S) -> Self {
        Self { store }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Gives the store back.
    pub fn into_store(self) -> S {
        self.store
    }

    fn get(&self, position: &Position) -> Result<Option<StoredNode>, TreeError<S::Error>> {
        self.store.get(position).map_err(TreeError::Store)
    }

    fn put(&mut self, position: Position, node: StoredNode) -> Result<(), TreeError<S::Error>> {
        self.store.put(position, node).map_err(TreeError::Store)
    }

    fn summary_at(&self, position: &Position) -> Result<NodeSummary, TreeError<S::Error>> {
        Ok(self
            .get(position)?
            .map_or(NodeSummary::EMPTY, |n| n.summary()))
    }

    /// Root hash, sum and count.
    pub fn root(&self) -> Result<NodeSummary, TreeError<S::Error>> {
        self.summary_at(&Position::ROOT)
    }

    /// Adds a leaf and returns the new root.
    pub fn insert(&mut self, leaf: LeafEntry) -> Result<NodeSummary, TreeError<S::Error>> {
        if leaf.weight == 0 {
            return Err(TreeError::ZeroWeight);
        }
        let key = leaf.key;
        let mut depth: u16 = 0;
        // Find the first free position on the key's path, pushing down a leaf that
        // sits there until the two keys part.
        let deepest_internal = loop {
            let position = Position::on_path(&key, depth);
            match self.get(&position)? {
                None => {
                    self.put(position, StoredNode::Leaf(leaf))?;
                    break depth.checked_sub(1);
                }
                Some(StoredNode::Internal(_)) => depth += 1,
                Some(StoredNode::Leaf(existing)) => {
                    if existing.key == key {
                        return Err(TreeError::DuplicateKey(key));
                    }
                    let mut split = depth;
                    while key_bit(&key, usize::from(split))
                        == key_bit(&existing.key, usize::from(split))
                    {
                        split += 1;
                    }
                    let child_depth = split + 1;
                    self.put(
                        Position::on_path(&existing.key, child_depth),
                        StoredNode::Leaf(existing),
                    )?;
                    self.put(Position::on_path(&key, child_depth), StoredNode::Leaf(leaf))?;
                    break Some(split);
                }
            }
        };
        // Recompute summaries from the deepest internal node up to the root.
        if let Some(deepest) = deepest_internal {
            for d in (0..=deepest).rev() {
                let position = Position::on_path(&key, d);
                let left = self.summary_at(&position.child(0))?;
                let right = self.summary_at(&position.child(1))?;
                let summary = NodeSummary::parent(&left, &right).ok_or(TreeError::Overflow)?;
                self.put(position, StoredNode::Internal(summary))?;
            }
        }
        self.root()
    }

    /// Builds the tree of `leaves` into an empty store in one pass (`O(n log n)` for the
    /// sort, one hash per node). Same root as inserting them one by one.
    pub fn build(store: S, mut leaves: Vec<LeafEntry>) -> Result<Self, TreeError<S::Error>> {
        leaves.sort_unstable_by_key(|l| l.key);
        if let Some(pair) = leaves.windows(2).find(|w| w[0].key == w[1].key) {
            return Err(TreeError::DuplicateKey(pair[0].key));
        }
        if leaves.iter().any(|l| l.weight == 0) {
            return Err(TreeError::ZeroWeight);
        }
        let mut tree = Self { store };
        tree.build_at(Position::ROOT, &leaves)?;
        Ok(tree)
    }

    fn build_at(
        &mut self,
        position: Position,
        leaves: &[LeafEntry],
    ) -> Result<NodeSummary, TreeError<S::Error>> {
        match leaves {
            [] => Ok(NodeSummary::EMPTY),
            [leaf] => {
                self.put(position, StoredNode::Leaf(*leaf))?;
                Ok(leaf.summary())
            }
            _ => {
                let bit = usize::from(position.depth);
                let split = leaves.partition_point(|l| key_bit(&l.key, bit) == 0);
                let left = self.build_at(position.child(0), &leaves[..split])?;
                let right = self.build_at(position.child(1), &leaves[split..])?;
                // When every key shares this bit one side is empty and the node still
                // exists: insertion makes the same chain, so both give one root.
                let summary = NodeSummary::parent(&left, &right).ok_or(TreeError::Overflow)?;
                self.put(position, StoredNode::Internal(summary))?;
                Ok(summary)
            }
        }
    }

    /// The leaf with `key` and its siblings.
    pub fn prove(&self, key: &Digest) -> Result<LeafPath, TreeError<S::Error>> {
        let mut siblings = Vec::new();
        let mut position = Position::ROOT;
        loop {
            match self.get(&position)? {
                None => return Err(TreeError::NotFound(*key)),
                Some(StoredNode::Leaf(leaf)) => {
                    return if leaf.key == *key {
                        Ok(LeafPath { leaf, siblings })
                    } else {
                        Err(TreeError::NotFound(*key))
                    };
                }
                Some(StoredNode::Internal(_)) => {
                    let bit = key_bit(key, usize::from(position.depth));
                    siblings.push(self.summary_at(&position.child(1 - bit))?);
                    position = position.child(bit);
                }
            }
        }
    }

    /// The leaf whose CU interval contains `point`, descending by the children's sums:
    /// each leaf is found by a share of points equal to its share of the root sum.
    pub fn sample(&self, point: u64) -> Result<LeafPath, TreeError<S::Error>> {
        let mut paths = self.sample_many(&[point])?;
        Ok(paths.pop().expect("one path per point"))
    }

    /// [`sample`](Self::sample) at each of `points`, in their order, walking the tree
    /// once: every node on the paths is read once and every sibling summarised (a
    /// leaf's summary is a hash) once, however many paths share it. A proof's samples
    /// of a small session mostly share their upper nodes and often their leaf.
    pub fn sample_many(&self, points: &[u64]) -> Result<Vec<LeafPath>, TreeError<S::Error>> {
        let root = self.get(&Position::ROOT)?;
        let total = root.as_ref().map_or(0, StoredNode::sum);
        if let Some(&point) = points.iter().find(|&&p| p >= total) {
            return Err(TreeError::PointOutOfRange { point, sum: total });
        }
        // (point within the current node, its index in `points`), sorted by point.
        let mut order: Vec<(u64, usize)> = points.iter().copied().zip(0..).collect();
        order.sort_unstable();
        let mut out: Vec<Option<LeafPath>> = vec![None; points.len()];
        let mut siblings = Vec::new();
        self.sample_under(Position::ROOT, root, &mut order, &mut siblings, &mut out)?;
        Ok(out
            .into_iter()
            .map(|path| path.expect("every point reaches a leaf"))
            .collect())
    }

    /// Descends from `node` at `position` with `points` (relative to the node, sorted),
    /// `siblings` holding the path's siblings above it.
    fn sample_under(
        &self,
        position: Position,
        node: Option<StoredNode>,
        points: &mut [(u64, usize)],
        siblings: &mut Vec<NodeSummary>,
        out: &mut [Option<LeafPath>],
    ) -> Result<(), TreeError<S::Error>> {
        let summary =
            |n: &Option<StoredNode>| n.as_ref().map_or(NodeSummary::EMPTY, StoredNode::summary);
        match node {
            None => Err(TreeError::Corrupt(position.depth)),
            Some(StoredNode::Leaf(leaf)) => {
                for &(_, index) in points.iter() {
                    out[index] = Some(LeafPath {
                        leaf,
                        siblings: siblings.clone(),
                    });
                }
                Ok(())
            }
            Some(StoredNode::Internal(_)) => {
                let left = self.get(&position.child(0))?;
                let right = self.get(&position.child(1))?;
                let left_sum = left.as_ref().map_or(0, StoredNode::sum);
                let split = points.partition_point(|&(p, _)| p < left_sum);
                let (to_left, to_right) = points.split_at_mut(split);
                if !to_left.is_empty() {
                    siblings.push(summary(&right));
                    self.sample_under(position.child(0), left, to_left, siblings, out)?;
                    siblings.pop();
                }
                if !to_right.is_empty() {
                    for (p, _) in to_right.iter_mut() {
                        *p -= left_sum;
                    }
                    siblings.push(summary(&left));
                    self.sample_under(position.child(1), right, to_right, siblings, out)?;
                    siblings.pop();
                }
                Ok(())
            }
        }
    }
}
