//! `CapabilityAd`: what a supplier serves, how fast, and at what price.

use serde_tuple::{Deserialize_tuple, Serialize_tuple};

use crate::identity::domain::Domain;
use crate::identity::signed::{Signable, Signed};
use crate::identity::verify::{SignatureError, SignatureVerifier};
use crate::messages::manifest::{ManifestError, SignedManifest};
use crate::metering::compute_units::CuFormula;
use crate::{BoundedString, BoundedVec, Digest, PublicKey};

/// Most models one ad may list.
pub const MAX_OFFERS: usize = 16;
/// Longest an ad may claim to stay valid; suppliers re-announce well before.
pub const MAX_AD_LIFETIME_MS: u64 = 10 * 60 * 1000;

/// One model a supplier serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct ModelOffer {
    /// Name clients ask for.
    pub name: BoundedString<128>,
    /// blake3 of the GGUF file, when the back end can tell (opaque upstreams cannot).
    pub gguf_digest: Option<Digest>,
    /// The Source's manifest for that file, if it has one.
    pub manifest: Option<SignedManifest>,
    /// Context length in tokens.
    pub context_length: u32,
    /// Slots free when the ad was made.
    pub free_slots: u16,
    /// Slots in all.
    pub total_slots: u16,
    /// Measured generation speed, thousandths of a token per second.
    pub tokens_per_sec_milli: u32,
    /// Measured time to first token, milliseconds.
    pub ttft_ms: u32,
    /// Price per CU, in micro-credits.
    pub price_per_cu: u64,
    /// How CUs are counted for this model.
    pub cu: CuFormula,
    /// The threshold τ the supplier will put in its next session.
    pub tau: u64,
    /// Most bytes one streamed token carries (the model vocabulary's longest token, or
    /// a bound for an opaque upstream): the cap the app puts in the session's terms.
    pub max_token_bytes: u32,
    /// What the model is, as the supplier's backend read it from the file.
    pub details: OfferDetails,
    /// The length of the vectors the supplier makes from this model for embedding
    /// requests; `None`: it serves no embeddings with it (version 6).
    pub embedding_dims: Option<u32>,
}

/// What a model is, for clients that show it (Ollama's `/api/show` and `/api/tags`):
/// each field empty where the backend cannot tell (an opaque upstream). The supplier's
/// word, like the rest of an ad: nothing is paid or routed by it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct OfferDetails {
    /// Architecture (GGUF `general.architecture`: `llama`).
    pub family: BoundedString<32>,
    /// Size label (`135M`).
    pub parameter_size: BoundedString<16>,
    /// Quantisation (`Q4_1`).
    pub quantization: BoundedString<16>,
}

impl OfferDetails {
    /// Details from free text, each field cut to its bound on a character boundary.
    pub fn new(family: &str, parameter_size: &str, quantization: &str) -> Self {
        Self {
            family: BoundedString::truncated(family),
            parameter_size: BoundedString::truncated(parameter_size),
            quantization: BoundedString::truncated(quantization),
        }
    }
}

/// Signed by the supplier; gossiped when it changes and before it expires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct CapabilityAd {
    /// Message version: the protocol version (`PROTOCOL_VERSION`).
    #[serde(deserialize_with = "crate::wire::current_version")]
    pub version: u16,
    /// The mesh this ad is for.
    pub mesh_id: Digest,
    /// Who serves.
    pub supplier: PublicKey,
    /// Increases with every new ad; older ones are ignored.
    pub seq: u64,
    /// When the ad was made (unix ms).
    pub issued_ms: u64,
    /// When it stops being valid (unix ms).
    pub expires_ms: u64,
    /// The models served.
    pub models: BoundedVec<ModelOffer, MAX_OFFERS>,
}

impl Signable for CapabilityAd {
    const NAME: &'static str = "CapabilityAd";
    const VERSION: u16 = crate::PROTOCOL_VERSION;
    const MAX_SIZE: usize = 12 * 1024;
    const DOMAIN: Domain = Domain::CapabilityAd;
    fn version(&self) -> u16 {
        self.version
    }
}

/// A supplier's signed ad.
pub type SignedCapabilityAd = Signed<CapabilityAd>;

/// Why an ad is dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdError {
    /// For another mesh.
    #[error("ad is for mesh {found}, this node is in mesh {expected}")]
    WrongMesh {
        /// Mesh of this node.
        expected: Digest,
        /// Mesh in the ad.
        found: Digest,
    },
    /// Expired, or valid for longer than allowed.
    #[error("ad validity [{issued_ms}, {expires_ms}] does not contain now ({now_ms}) or exceeds {MAX_AD_LIFETIME_MS} ms")]
    Expired {
        /// Issue time.
        issued_ms: u64,
        /// Expiry.
        expires_ms: u64,
        /// The checker's clock.
        now_ms: u64,
    },
    /// A listed manifest is invalid or names another file.
    #[error("offer {name}: {reason}")]
    BadOffer {
        /// Offer name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Not signed by the supplier it names.
    #[error("ad signature: {0}")]
    Signature(#[from] SignatureError),
}

impl SignedCapabilityAd {
    /// Checks mesh, validity window (against the caller's clock, `skew_ms` of slack),
    /// manifests and the supplier's signature.
    pub fn validate(
        &self,
        mesh_id: &Digest,
        now_ms: u64,
        skew_ms: u64,
        verifier: &impl SignatureVerifier,
    ) -> Result<(), AdError> {
        let ad = &self.body;
        if ad.mesh_id != *mesh_id {
            return Err(AdError::WrongMesh {
                expected: *mesh_id,
                found: ad.mesh_id,
            });
        }
        let window_ok = ad.issued_ms <= now_ms.saturating_add(skew_ms)
            && now_ms < ad.expires_ms
            && ad.expires_ms.saturating_sub(ad.issued_ms) <= MAX_AD_LIFETIME_MS;
        if !window_ok {
            return Err(AdError::Expired {
                issued_ms: ad.issued_ms,
                expires_ms: ad.expires_ms,
                now_ms,
            });
        }
        for offer in ad.models.iter() {
            if let Some(manifest) = &offer.manifest {
                let bad = |reason: String| AdError::BadOffer {
                    name: offer.name.to_string(),
                    reason,
                };
                manifest
                    .validate(verifier)
                    .map_err(|e: ManifestError| bad(e.to_string()))?;
                if offer.gguf_digest != Some(manifest.body.gguf_digest) {
                    return Err(bad("manifest names a different GGUF digest".into()));
                }
            }
        }
        self.verify(&ad.supplier, verifier)?;
        Ok(())
    }
}
