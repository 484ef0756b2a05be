//! The sparse Merkle sum tree: proofs verify, tampering fails, sampling is by weight.

use proptest::prelude::*;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use relaymesh_protocol::sumtree::{
    verify_path, LeafEntry, LeafPath, MemoryStore, NodeSummary, PathVerifier, SumTree,
};
use relaymesh_protocol::Digest;

fn leaves(n: usize, seed: u64) -> Vec<LeafEntry> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let mut key = [0u8; 32];
            rng.fill_bytes(&mut key);
            let mut value = [0u8; 32];
            rng.fill_bytes(&mut value);
            LeafEntry {
                key: Digest(key),
                value: Digest(value),
                weight: 1 + rng.next_u64() % 1000,
            }
        })
        .collect()
}

fn tree_of(leaves: &[LeafEntry]) -> SumTree {
    let mut tree = SumTree::new();
    for leaf in leaves {
        tree.insert(*leaf).unwrap();
    }
    tree
}

#[test]
fn every_leaf_proves_and_sums_add_up() {
    let leaves = leaves(300, 1);
    let tree = tree_of(&leaves);
    let root = tree.root().unwrap();
    assert_eq!(root.count, 300);
    assert_eq!(root.sum, leaves.iter().map(|l| l.weight).sum::<u64>());
    for leaf in &leaves {
        let path = tree.prove(&leaf.key).unwrap();
        assert_eq!(path.leaf, *leaf);
        verify_path(&leaf.key, leaf.weight, &leaf.value, &path.siblings, &root).unwrap();
    }
    assert!(tree.prove(&Digest([0x5a; 32])).is_err());
}

#[test]
fn a_single_leaf_is_the_root() {
    let leaf = leaves(1, 2)[0];
    let tree = tree_of(&[leaf]);
    assert_eq!(tree.root().unwrap(), leaf.summary());
    let path = tree.prove(&leaf.key).unwrap();
    assert!(path.siblings.is_empty());
    assert_eq!(SumTree::new().root().unwrap(), NodeSummary::EMPTY);
}

#[test]
fn keys_sharing_long_prefixes() {
    // Keys equal in all but their last bit force the deepest possible paths.
    let mut a = [0x11u8; 32];
    a[31] &= 0xfe;
    let mut b = a;
    b[31] |= 1;
    let mut c = a;
    c[0] ^= 0x80;
    let leaves: Vec<LeafEntry> = [a, b, c]
        .iter()
        .map(|k| LeafEntry {
            key: Digest(*k),
            value: Digest([1; 32]),
            weight: 5,
        })
        .collect();
    let tree = tree_of(&leaves);
    let root = tree.root().unwrap();
    let path = tree.prove(&Digest(b)).unwrap();
    assert_eq!(path.siblings.len(), 256);
    verify_path(&Digest(b), 5, &Digest([1; 32]), &path.siblings, &root).unwrap();
}

#[test]
fn tampering_fails_verification() {
    let leaves = leaves(64, 3);
    let tree = tree_of(&leaves);
    let root = tree.root().unwrap();
    let leaf = leaves[17];
    let path = tree.prove(&leaf.key).unwrap();
    let ok =
        |key: &Digest, weight: u64, value: &Digest, sibs: &[NodeSummary], root: &NodeSummary| {
            verify_path(key, weight, value, sibs, root).is_ok()
        };
    assert!(ok(
        &leaf.key,
        leaf.weight,
        &leaf.value,
        &path.siblings,
        &root
    ));
    // Any flipped bit of the key, value or any sibling hash.
    for bit in 0..256 {
        let mut key = leaf.key;
        key.0[bit / 8] ^= 1 << (bit % 8);
        assert!(!ok(&key, leaf.weight, &leaf.value, &path.siblings, &root));
        let mut value = leaf.value;
        value.0[bit / 8] ^= 1 << (bit % 8);
        assert!(!ok(&leaf.key, leaf.weight, &value, &path.siblings, &root));
    }
    for i in 0..path.siblings.len() {
        let mut sibs = path.siblings.clone();
        sibs[i].hash.0[0] ^= 1;
        assert!(!ok(&leaf.key, leaf.weight, &leaf.value, &sibs, &root));
        // Changed sum or count.
        let mut sibs = path.siblings.clone();
        sibs[i].sum += 1;
        assert!(!ok(&leaf.key, leaf.weight, &leaf.value, &sibs, &root));
        let mut sibs = path.siblings.clone();
        sibs[i].count += 1;
        assert!(!ok(&leaf.key, leaf.weight, &leaf.value, &sibs, &root));
    }
    // Changed leaf weight; changed claimed root sum.
    assert!(!ok(
        &leaf.key,
        leaf.weight + 1,
        &leaf.value,
        &path.siblings,
        &root
    ));
    let inflated = NodeSummary {
        sum: root.sum + 1,
        ..root
    };
    assert!(!ok(
        &leaf.key,
        leaf.weight,
        &leaf.value,
        &path.siblings,
        &inflated
    ));
    // Swapped siblings.
    let mut sibs = path.siblings.clone();
    sibs.swap(0, 1);
    assert!(!ok(&leaf.key, leaf.weight, &leaf.value, &sibs, &root));
    // A leaf cannot be presented under another key's path.
    let other = tree.prove(&leaves[3].key).unwrap();
    assert!(!ok(
        &leaf.key,
        leaf.weight,
        &leaf.value,
        &other.siblings,
        &root
    ));
}

#[test]
fn repeated_leaf_is_refused() {
    let leaves = leaves(10, 4);
    let mut tree = tree_of(&leaves);
    assert!(tree.insert(leaves[4]).is_err());
    let mut twice = leaves.clone();
    twice.push(leaves[0]);
    assert!(SumTree::build(MemoryStore::default(), twice).is_err());
}

#[test]
fn sampling_frequency_is_proportional_to_weight() {
    // Weights 1, 2, 4, …, 128: each leaf should be drawn in proportion.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let leaves: Vec<LeafEntry> = (0..8)
        .map(|i| {
            let mut key = [0u8; 32];
            rng.fill_bytes(&mut key);
            LeafEntry {
                key: Digest(key),
                value: Digest([i; 32]),
                weight: 1 << i,
            }
        })
        .collect();
    let tree = tree_of(&leaves);
    let root = tree.root().unwrap();
    let draws = 51_000u64;
    let mut counts = [0u64; 8];
    for d in 0..draws {
        let seed = Digest(*blake3::hash(&d.to_le_bytes()).as_bytes());
        let point = relaymesh_protocol::settlement::challenge::sample_point(&seed, 0, root.sum);
        let path = tree.sample(point).unwrap();
        let offset = verify_path(
            &path.leaf.key,
            path.leaf.weight,
            &path.leaf.value,
            &path.siblings,
            &root,
        )
        .unwrap();
        assert!(offset <= point && point < offset + path.leaf.weight);
        counts[path.leaf.value.0[0] as usize] += 1;
    }
    // Pearson chi-square with 7 degrees of freedom; 24.3 is the 0.1% critical value.
    let chi2: f64 = (0..8)
        .map(|i| {
            let expected = draws as f64 * (1u64 << i) as f64 / root.sum as f64;
            (counts[i] as f64 - expected).powi(2) / expected
        })
        .sum();
    println!("counts {counts:?}, chi-square {chi2:.2}");
    assert!(chi2 < 24.3);
}

proptest! {
    #[test]
    fn root_is_independent_of_insertion_order_and_matches_bulk_build(seed in any::<u64>(), n in 1usize..80) {
        let mut leaves = leaves(n, seed);
        let forward = tree_of(&leaves).root().unwrap();
        leaves.reverse();
        let backward = tree_of(&leaves).root().unwrap();
        let built = SumTree::build(MemoryStore::default(), leaves).unwrap().root().unwrap();
        prop_assert_eq!(forward, backward);
        prop_assert_eq!(forward, built);
    }
}

/// One path of a proof as a sampler might tamper with it: `how` picks the change.
fn tampered(path: &LeafPath, how: u8, at: usize) -> (LeafEntry, Vec<NodeSummary>) {
    let (mut leaf, mut siblings) = (path.leaf, path.siblings.clone());
    let d = at % siblings.len().max(1);
    match how % 6 {
        0 => {}
        1 => leaf.weight += 1,
        2 if !siblings.is_empty() => siblings[d].sum += 1,
        3 if !siblings.is_empty() => siblings[d].hash.0[0] ^= 1,
        4 if !siblings.is_empty() => {
            siblings.remove(d);
        }
        5 => siblings.push(NodeSummary::EMPTY),
        _ => leaf.value.0[0] ^= 1,
    }
    (leaf, siblings)
}

proptest! {
    /// The proof verifier's shortcut (stop hashing where a path meets one accepted
    /// before) gives, path by path, what verifying each path alone gives.
    #[test]
    fn paths_verified_together_get_the_verdicts_of_each_alone(
        seed in any::<u64>(),
        n in 1usize..40,
        picks in proptest::collection::vec((any::<u64>(), any::<u8>(), any::<usize>()), 1..24),
    ) {
        let leaves = leaves(n, seed);
        let tree = SumTree::build(MemoryStore::default(), leaves).unwrap();
        let root = tree.root().unwrap();
        let paths: Vec<(LeafEntry, Vec<NodeSummary>)> = picks
            .iter()
            .map(|&(point, how, at)| tampered(&tree.sample(point % root.sum).unwrap(), how, at))
            .collect();
        let mut together = PathVerifier::new(root);
        for (leaf, siblings) in &paths {
            let alone = verify_path(&leaf.key, leaf.weight, &leaf.value, siblings, &root);
            prop_assert_eq!(together.verify(&leaf.key, leaf.weight, &leaf.value, siblings), alone);
        }
    }
}

proptest! {
    /// Sampling many points in one walk gives, point by point, what sampling each
    /// gives alone.
    #[test]
    fn sampling_many_points_at_once_matches_one_at_a_time(
        seed in any::<u64>(),
        n in 1usize..60,
        raw_points in proptest::collection::vec(any::<u64>(), 0..40),
    ) {
        let tree = SumTree::build(MemoryStore::default(), leaves(n, seed)).unwrap();
        let sum = tree.root().unwrap().sum;
        let points: Vec<u64> = raw_points.iter().map(|p| p % sum).collect();
        let alone: Vec<LeafPath> = points.iter().map(|&p| tree.sample(p).unwrap()).collect();
        prop_assert_eq!(tree.sample_many(&points).unwrap(), alone);
        // A point past the sum is refused as `sample` refuses it.
        let mut beyond = points.clone();
        beyond.push(sum);
        prop_assert!(tree.sample_many(&beyond).is_err());
    }
}
