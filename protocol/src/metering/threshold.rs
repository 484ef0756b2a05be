//! Threshold sampling: which receipts are mined, and what a mined receipt pays.
//!
//! Receipt `i` of weight `w` (CUs) is mined when `H(i)/2^128 < min(1, w/τ)`, where
//! `H(i)` is the first 16 bytes (big-endian) of its lottery hash `H(s, relay hash)`
//! (`ReceiptFacts::lottery`: `s` is the supplier's committed mining secret); a mined receipt pays
//! `max(w, τ)`. The expectation is exactly `w` for every receipt whatever the mix of
//! weights: receipts heavier than τ are always kept and pay their weight, lighter ones
//! are kept with probability `w/τ` and pay τ. POKT's single difficulty multiplier per
//! claim is biased as soon as weights vary or the target moves; this is not.
//!
//! Integer arithmetic only: `H/2^128 < w/τ  ⇔  H·τ < w·2^128  ⇔  ⌊H·τ / 2^128⌋ < w`.

use crate::Digest;

/// Whether a receipt with this lottery hash and weight is mined under threshold `tau`.
pub fn is_mined(lottery: &Digest, weight: u64, tau: u64) -> bool {
    if weight == 0 {
        return false;
    }
    if weight >= tau {
        return true;
    }
    let h = u128::from_be_bytes(lottery.0[..16].try_into().expect("16 bytes"));
    high_bits_of_product(h, tau) < u128::from(weight)
}

/// What a mined receipt of `weight` pays under threshold `tau`.
pub fn mined_value(weight: u64, tau: u64) -> u64 {
    weight.max(tau)
}

/// `⌊h·t / 2^128⌋` without overflow: `h = a·2^64 + b`, so
/// `h·t / 2^128 = (a·t + b·t/2^64) / 2^64`, and `a·t + ⌊b·t/2^64⌋ < 2^128`.
fn high_bits_of_product(h: u128, t: u64) -> u128 {
    let a = h >> 64;
    let b = h & u128::from(u64::MAX);
    let t = u128::from(t);
    (a * t + ((b * t) >> 64)) >> 64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_with_prefix(prefix: u128) -> Digest {
        let mut d = [0u8; 32];
        d[..16].copy_from_slice(&prefix.to_be_bytes());
        Digest(d)
    }

    #[test]
    fn heavy_receipts_are_always_mined() {
        let h = hash_with_prefix(u128::MAX);
        assert!(is_mined(&h, 100, 100));
        assert!(is_mined(&h, 101, 100));
        assert_eq!(mined_value(101, 100), 101);
    }

    #[test]
    fn zero_weight_is_never_mined() {
        assert!(!is_mined(&hash_with_prefix(0), 0, 100));
    }

    #[test]
    fn boundary_is_exact() {
        // w/τ = 1/4: hashes below 2^126 are mined, 2^126 itself is not.
        assert!(is_mined(&hash_with_prefix((1u128 << 126) - 1), 1, 4));
        assert!(!is_mined(&hash_with_prefix(1u128 << 126), 1, 4));
        // Large τ: the product needs all 192 bits.
        let tau = u64::MAX;
        let w = 3u64;
        let bound = (u128::from(w) << 64) + (u128::from(w) << 64) / u128::from(u64::MAX); // ≈ w·2^128/τ
        assert!(is_mined(&hash_with_prefix(bound - 1), w, tau));
        assert!(!is_mined(&hash_with_prefix(bound + 1), w, tau));
    }
}
