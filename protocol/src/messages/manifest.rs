//! `ModelManifest`: a model's Source vouches for one GGUF file and names its royalty.

use serde_tuple::{Deserialize_tuple, Serialize_tuple};

use crate::identity::domain::{hash_tag, tagged_hash, Domain};
use crate::identity::signed::{Signable, Signed};
use crate::identity::verify::{SignatureError, SignatureVerifier};
use crate::wire::to_canonical;
use crate::{BoundedString, Digest, PublicKey};

/// Parts per million: the unit of royalty shares.
pub const PPM: u32 = 1_000_000;

/// Signed by the model's Source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct ModelManifest {
    /// Message version: the protocol version (`PROTOCOL_VERSION`).
    #[serde(deserialize_with = "crate::wire::current_version")]
    pub version: u16,
    /// Model name, e.g. `SmolLM2-135M-Instruct`.
    pub name: BoundedString<128>,
    /// blake3 of the whole GGUF file.
    pub gguf_digest: Digest,
    /// File size in bytes.
    pub size_bytes: u64,
    /// Licence identifier (SPDX where one exists).
    pub licence: BoundedString<128>,
    /// The Source's share of every settled claim for this model, in ppm.
    pub royalty_ppm: u32,
    /// The Source: signs the manifest and is credited the royalty.
    pub source: PublicKey,
}

impl Signable for ModelManifest {
    const NAME: &'static str = "ModelManifest";
    const VERSION: u16 = crate::PROTOCOL_VERSION;
    const MAX_SIZE: usize = 512;
    const DOMAIN: Domain = Domain::Manifest;
    fn version(&self) -> u16 {
        self.version
    }
}

/// A manifest with the Source's signature.
pub type SignedManifest = Signed<ModelManifest>;

/// Why a manifest is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Royalty above 100%.
    #[error("royalty of {0} ppm exceeds 1,000,000 (100%)")]
    RoyaltyTooHigh(u32),
    /// Not signed by the named Source.
    #[error("manifest signature: {0}")]
    Signature(#[from] SignatureError),
}

impl SignedManifest {
    /// The hash a session pins.
    pub fn hash(&self) -> Digest {
        tagged_hash(hash_tag::MANIFEST, &[&to_canonical(self)])
    }

    /// Checks the royalty bound and the Source's signature.
    pub fn validate(&self, verifier: &impl SignatureVerifier) -> Result<(), ManifestError> {
        if self.body.royalty_ppm > PPM {
            return Err(ManifestError::RoyaltyTooHigh(self.body.royalty_ppm));
        }
        self.verify(&self.body.source, verifier)?;
        Ok(())
    }
}
