//! Identities for simulated nodes. Every node has a real ed25519 public key (derived
//! from the seed), so sessions, relay hashes and sampling are the same whichever
//! signatures a run uses; only the signature bytes and their cost differ.

use relaymesh_protocol::identity::verify::{SignatureError, SignatureVerifier, SignedItem};
use relaymesh_protocol::{Digest, Keypair, PublicKey, Signature, Signer};

use crate::scenario::Signatures;

/// A simulated node's signing key.
#[derive(Clone, Debug)]
pub enum SimKey {
    /// Signs with a keyed xxh3 hash (cheap, forgeable: see [`SimVerifier`]).
    Sim(PublicKey),
    /// Signs with ed25519.
    Real(Keypair),
}

impl SimKey {
    /// Key number `index` of a run with `seed`.
    pub fn derive(seed: u64, index: u32, mode: Signatures) -> Self {
        let secret = blake3::hash(&[&seed.to_be_bytes()[..], &index.to_be_bytes()].concat());
        let pair = Keypair::from_secret(*secret.as_bytes());
        match mode {
            Signatures::Sim => SimKey::Sim(pair.public_key()),
            Signatures::Ed25519 => SimKey::Real(pair),
        }
    }
}

/// The stand-in signature: the key itself and a 128-bit xxh3 hash of the message
/// seeded by the key. A changed message or another key gives other bytes; nothing in
/// the simulation forges (adversaries alter bodies and keep the old signature, which
/// then fails), and the bytes never steer a run (`real-signatures.toml` agrees with
/// ed25519), so a fast non-cryptographic hash is enough. A blake3 keyed hash cost a
/// tenth of the 1,000,000-request benchmark.
fn sim_signature(key: &PublicKey, message: &[u8]) -> Signature {
    let seed = key.0.chunks_exact(8).fold(0u64, |acc, c| {
        acc ^ u64::from_le_bytes(c.try_into().expect("8 bytes"))
    });
    let h = xxhash_rust::xxh3::xxh3_128_with_seed(message, seed).to_le_bytes();
    let mut sig = [0u8; 64];
    sig[..16].copy_from_slice(&h);
    sig[16..48].copy_from_slice(&key.0);
    sig[48..].copy_from_slice(&h);
    Signature(sig)
}

impl Signer for SimKey {
    fn public_key(&self) -> PublicKey {
        match self {
            SimKey::Sim(key) => *key,
            SimKey::Real(pair) => pair.public_key(),
        }
    }

    fn sign_bytes(&self, message: &[u8]) -> Signature {
        match self {
            SimKey::Sim(key) => sim_signature(key, message),
            SimKey::Real(pair) => pair.sign_bytes(message),
        }
    }
}

/// Checks the signatures a run makes: the stand-in hash, or ed25519.
#[derive(Clone, Copy, Debug)]
pub struct SimVerifier(pub Signatures);

impl SignatureVerifier for SimVerifier {
    fn verify(
        &self,
        key: &PublicKey,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), SignatureError> {
        match self.0 {
            Signatures::Sim if sim_signature(key, message) == *signature => Ok(()),
            Signatures::Sim => Err(SignatureError::Invalid(*key)),
            Signatures::Ed25519 => {
                relaymesh_protocol::Ed25519Verifier.verify(key, message, signature)
            }
        }
    }

    fn verify_batch(&self, items: &[SignedItem]) -> Result<(), SignatureError> {
        match self.0 {
            Signatures::Sim => items
                .iter()
                .try_for_each(|i| self.verify(&i.key, &i.message, &i.signature)),
            Signatures::Ed25519 => relaymesh_protocol::Ed25519Verifier.verify_batch(items),
        }
    }
}

/// A digest drawn from a counter (secrets, chain seeds): deterministic per run.
pub fn digest_of(tag: &str, parts: &[u64]) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(tag.as_bytes());
    for p in parts {
        h.update(&p.to_be_bytes());
    }
    Digest(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_modes_sign_and_reject_tampering_under_one_public_key() {
        for mode in [Signatures::Sim, Signatures::Ed25519] {
            let key = SimKey::derive(7, 3, mode);
            let sig = key.sign_bytes(b"hello");
            let v = SimVerifier(mode);
            assert!(v.verify(&key.public_key(), b"hello", &sig).is_ok());
            assert!(v.verify(&key.public_key(), b"hellp", &sig).is_err());
        }
        assert_eq!(
            SimKey::derive(7, 3, Signatures::Sim).public_key(),
            SimKey::derive(7, 3, Signatures::Ed25519).public_key()
        );
    }
}
