//! The challenge: which leaves a proof must show.
//!
//! `seed = H(r, root)`. The app committed to `H(r)` in `SessionOpen` before any
//! receipt existed and reveals `r` only after the supplier published the root, signed
//! together with that root; so the supplier cannot predict the seed when it builds the
//! tree, the app cannot pick it (r is fixed by the commitment), and the supplier cannot
//! grind it (changing the root needs a new reveal, which the app signs for one root
//! only). Sampling points are `H(seed, i) mod sum`: proportional to weight.

use crate::identity::domain::{hash_tag, tagged_hash};
use crate::Digest;

/// The seed from the app's secret and the claimed root.
pub fn seed(secret: &Digest, root: &Digest) -> Digest {
    tagged_hash(hash_tag::SEED, &[&secret.0, &root.0])
}

/// The `i`-th sampling point in `[0, sum)`. The bias of reducing a 128-bit value
/// modulo a 64-bit sum is below 2^-64. A zero sum (no valid claim has one: every leaf
/// pays at least τ ≥ 1) has no point to draw; 0 is returned, which no leaf covers, so
/// a proof for it fails instead of the verifier panicking on a caller's input.
pub fn sample_point(seed: &Digest, index: u16, sum: u64) -> u64 {
    if sum == 0 {
        return 0;
    }
    let h = tagged_hash(hash_tag::SAMPLE, &[&seed.0, &index.to_be_bytes()]);
    let x = u128::from_be_bytes(h.0[..16].try_into().expect("16 bytes"));
    (x % u128::from(sum)) as u64
}
