//! Signing and verification behind traits, so the simulator can swap ed25519 for a
//! cheap deterministic scheme while running the same validation code.
//!
//! The ed25519 verifier follows ZIP-215 (`ed25519-consensus`): single and batch
//! verification accept exactly the same signatures. With dalek's cofactorless batch
//! check a crafted signature could pass in one node's batch and fail another node's
//! single check, and their ledgers would diverge.

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::identity::domain::{hash_tag, tagged_hash};
use crate::{PublicKey, Signature};

/// A signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The key bytes are not a valid curve point.
    #[error("public key {0} is not a valid ed25519 key")]
    BadKey(PublicKey),
    /// The signature does not match the key and message.
    #[error("signature by {0} does not verify")]
    Invalid(PublicKey),
    /// At least one signature of a batch does not verify.
    #[error("a signature in a batch of {0} does not verify")]
    BatchInvalid(usize),
    /// A key of small order: anyone can make signatures that verify under it, so it
    /// cannot own an account or sign terms.
    #[error("public key {0} has small order: anyone can sign for it; use a real key")]
    WeakKey(PublicKey),
}

/// One (key, message, signature) triple to check.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SignedItem {
    /// Claimed signer.
    pub key: PublicKey,
    /// The exact signed bytes (tag included).
    pub message: Vec<u8>,
    /// The signature.
    pub signature: Signature,
}

/// Produces signatures: an ed25519 keypair, or the simulator's stand-in.
pub trait Signer {
    /// The key others verify with.
    fn public_key(&self) -> PublicKey;
    /// Signs `message` (already tagged by the caller).
    fn sign_bytes(&self, message: &[u8]) -> Signature;
}

/// Checks signatures. Implementations must accept the same set in `verify` and
/// `verify_batch`.
pub trait SignatureVerifier {
    /// Checks one signature.
    fn verify(
        &self,
        key: &PublicKey,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), SignatureError>;

    /// Whether `key` may own an account or be a party to terms: only its owner can make
    /// signatures that verify under it. The simulator's stand-in accepts every key.
    fn check_key(&self, key: &PublicKey) -> Result<(), SignatureError> {
        let _ = key;
        Ok(())
    }

    /// Checks all of `items`; `Ok` only if every one verifies.
    fn verify_batch(&self, items: &[SignedItem]) -> Result<(), SignatureError> {
        for item in items {
            self.verify(&item.key, &item.message, &item.signature)?;
        }
        Ok(())
    }

    /// Which of `items` verify: one batch check, and single checks only if it fails.
    fn verify_each(&self, items: &[SignedItem]) -> Vec<bool> {
        if self.verify_batch(items).is_ok() {
            return vec![true; items.len()];
        }
        items
            .iter()
            .map(|item| {
                self.verify(&item.key, &item.message, &item.signature)
                    .is_ok()
            })
            .collect()
    }
}

/// ZIP-215 ed25519 verification.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ed25519Verifier;

impl SignatureVerifier for Ed25519Verifier {
    /// Refuses bytes that are not a curve point, and points of small order: under
    /// ZIP-215 (cofactored verification) `[8]·A` vanishes for them, so `S·B = R`
    /// verifies for any message, a signature anyone can make.
    fn check_key(&self, key: &PublicKey) -> Result<(), SignatureError> {
        let point = ed25519_dalek::VerifyingKey::from_bytes(&key.0)
            .map_err(|_| SignatureError::BadKey(*key))?;
        if point.is_weak() {
            return Err(SignatureError::WeakKey(*key));
        }
        Ok(())
    }

    fn verify(
        &self,
        key: &PublicKey,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), SignatureError> {
        let vk = ed25519_consensus::VerificationKey::try_from(key.0)
            .map_err(|_| SignatureError::BadKey(*key))?;
        vk.verify(&ed25519_consensus::Signature::from(signature.0), message)
            .map_err(|_| SignatureError::Invalid(*key))
    }

    fn verify_batch(&self, items: &[SignedItem]) -> Result<(), SignatureError> {
        if items.len() < 2 {
            return items
                .iter()
                .try_for_each(|i| self.verify(&i.key, &i.message, &i.signature));
        }
        // The batch equation's random coefficients come from a hash of the whole batch:
        // the crate stays free of OS randomness, two nodes checking the same batch do the
        // same work, and a forger cannot choose signatures after seeing the coefficients.
        let mut transcript = blake3::Hasher::new();
        let mut verifier = ed25519_consensus::batch::Verifier::new();
        for item in items {
            transcript.update(&item.key.0);
            transcript.update(&item.signature.0);
            transcript.update(blake3::hash(&item.message).as_bytes());
            let vk_bytes = ed25519_consensus::VerificationKeyBytes::from(item.key.0);
            let sig = ed25519_consensus::Signature::from(item.signature.0);
            verifier.queue((vk_bytes, sig, &item.message));
        }
        let seed = tagged_hash(hash_tag::BATCH, &[transcript.finalize().as_bytes()]);
        verifier
            .verify(ChaCha20Rng::from_seed(seed.0))
            .map_err(|_| SignatureError::BatchInvalid(items.len()))
    }
}
