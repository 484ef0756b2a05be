//! `SessionOpen`: the terms of a session, signed by the app and countersigned by the
//! supplier. It fixes everything a verifier of the session's claims will need.

use serde_tuple::{Deserialize_tuple, Serialize_tuple};

use crate::identity::domain::{hash_tag, tagged_hash, Domain};
use crate::identity::signed::{signing_bytes, Signable, Signed};
use crate::identity::verify::{SignatureError, SignatureVerifier, SignedItem, Signer};
use crate::messages::manifest::{SignedManifest, PPM};
use crate::metering::compute_units::CuFormula;
use crate::params::MeshParams;
use crate::wire::{to_canonical, WireMessage};
use crate::{Digest, PublicKey, Signature};

/// The terms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct SessionOpen {
    /// Message version (1).
    pub version: u16,
    /// The mesh (hash of its parameters).
    pub mesh_id: Digest,
    /// Who pays, signs requests and acks.
    pub app: PublicKey,
    /// Who serves and claims.
    pub supplier: PublicKey,
    /// blake3 of the GGUF file the app pins (all zero for an opaque upstream).
    pub model_digest: Digest,
    /// The Source's manifest for that file; its royalty is paid from every claim.
    pub manifest: Option<SignedManifest>,
    /// How receipts are weighed.
    pub cu: CuFormula,
    /// Micro-credits per CU.
    pub price_per_cu: u64,
    /// Threshold τ for the whole session (CUs).
    pub tau: u64,
    /// Start (unix ms); the ledger epoch derives from it.
    pub start_ms: u64,
    /// Longest the session may run.
    pub max_duration_ms: u64,
    /// `H(r)`: the app's commitment to its challenge secret.
    pub reveal_commitment: Digest,
    /// Chosen by the app so that two sessions on the same terms differ.
    pub nonce: u64,
}

impl Signable for SessionOpen {
    const NAME: &'static str = "SessionOpen";
    const VERSION: u16 = 1;
    const MAX_SIZE: usize = 1024;
    const DOMAIN: Domain = Domain::SessionOpenApp;
    fn version(&self) -> u16 {
        self.version
    }
}

/// The app's proposal, before the supplier countersigns.
pub type SessionProposal = Signed<SessionOpen>;

/// Terms with both signatures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct SignedSessionOpen {
    /// The terms.
    pub body: SessionOpen,
    /// The app's signature over the terms.
    pub app_signature: Signature,
    /// The supplier's signature over the terms and the app's signature.
    pub supplier_signature: Signature,
}

impl WireMessage for SignedSessionOpen {
    const NAME: &'static str = "SignedSessionOpen";
    const VERSION: u16 = 1;
    const MAX_SIZE: usize = 1024 + 140;
    fn version(&self) -> u16 {
        self.body.version
    }
}

/// Why terms are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// For another mesh.
    #[error("session is for mesh {found}, expected {expected}")]
    WrongMesh {
        /// This mesh.
        expected: Digest,
        /// The session's.
        found: Digest,
    },
    /// App and supplier are one key.
    #[error("app and supplier are the same key; a node does not pay itself")]
    SelfDealing,
    /// τ outside the mesh bounds.
    #[error("tau {tau} outside the mesh bounds [{min}, {max}]")]
    TauOutOfBounds {
        /// τ in the session.
        tau: u64,
        /// Mesh lower bound.
        min: u64,
        /// Mesh upper bound.
        max: u64,
    },
    /// Session longer than the mesh allows.
    #[error("max duration {0} ms exceeds the mesh's max_session_ms")]
    TooLong(u64),
    /// The pinned manifest is invalid or for another file.
    #[error("manifest: {0}")]
    Manifest(String),
    /// A signature does not verify.
    #[error("session signature: {0}")]
    Signature(#[from] SignatureError),
}

fn countersigning_bytes(body: &SessionOpen, app_signature: &Signature) -> Vec<u8> {
    let mut bytes = Domain::SessionOpenSupplier.tag().to_vec();
    bytes.extend_from_slice(&to_canonical(body));
    bytes.extend_from_slice(&app_signature.0);
    bytes
}

impl SessionProposal {
    /// The supplier accepts the terms.
    pub fn countersign(self, supplier: &impl Signer) -> SignedSessionOpen {
        let supplier_signature =
            supplier.sign_bytes(&countersigning_bytes(&self.body, &self.signature));
        SignedSessionOpen {
            body: self.body,
            app_signature: self.signature,
            supplier_signature,
        }
    }
}

impl SessionOpen {
    /// When the session ends (unix ms): `start_ms + max_duration_ms`.
    pub fn end_ms(&self) -> u64 {
        self.start_ms.saturating_add(self.max_duration_ms)
    }
}

impl SignedSessionOpen {
    /// The session key: hash of the terms. The terms name both parties, so two
    /// suppliers' sessions never share a key, and since neither signature is hashed,
    /// no party can mint a second key for the same terms by re-signing.
    pub fn session_key(&self) -> Digest {
        tagged_hash(hash_tag::SESSION_KEY, &[&to_canonical(&self.body)])
    }

    /// The ledger epoch the session's claims count in.
    pub fn epoch(&self, params: &MeshParams) -> u64 {
        params.epoch_of(self.body.start_ms)
    }

    /// The two signatures, for batch verification.
    pub fn signed_items(&self) -> [SignedItem; 2] {
        [
            SignedItem {
                key: self.body.app,
                message: signing_bytes(Domain::SessionOpenApp, &self.body),
                signature: self.app_signature,
            },
            SignedItem {
                key: self.body.supplier,
                message: countersigning_bytes(&self.body, &self.app_signature),
                signature: self.supplier_signature,
            },
        ]
    }

    /// Checks the terms against the mesh parameters and both signatures. Clock checks
    /// (start time within skew of now) are the supplier's business when it countersigns;
    /// verifiers check only what the signed bytes say.
    pub fn validate(
        &self,
        params: &MeshParams,
        verifier: &impl SignatureVerifier,
    ) -> Result<(), SessionError> {
        self.check_terms(params)?;
        // Checked one by one so the error names the party whose signature failed.
        for item in self.signed_items() {
            verifier.verify(&item.key, &item.message, &item.signature)?;
        }
        if let Some(manifest) = &self.body.manifest {
            manifest
                .verify(&manifest.body.source, verifier)
                .map_err(|e| SessionError::Manifest(e.to_string()))?;
        }
        Ok(())
    }

    /// Every rule of [`Self::validate`] except the parties' and the Source's signatures,
    /// for callers that batch those.
    pub fn check_terms(&self, params: &MeshParams) -> Result<(), SessionError> {
        let terms = &self.body;
        let mesh_id = params.mesh_id();
        if terms.mesh_id != mesh_id {
            return Err(SessionError::WrongMesh {
                expected: mesh_id,
                found: terms.mesh_id,
            });
        }
        if terms.app == terms.supplier {
            return Err(SessionError::SelfDealing);
        }
        if terms.tau < params.tau_min || terms.tau > params.tau_max {
            return Err(SessionError::TauOutOfBounds {
                tau: terms.tau,
                min: params.tau_min,
                max: params.tau_max,
            });
        }
        if terms.max_duration_ms > params.max_session_ms {
            return Err(SessionError::TooLong(terms.max_duration_ms));
        }
        if let Some(manifest) = &terms.manifest {
            if manifest.body.royalty_ppm > PPM {
                return Err(SessionError::Manifest(format!(
                    "royalty of {} ppm exceeds 100%",
                    manifest.body.royalty_ppm
                )));
            }
            if manifest.body.gguf_digest != terms.model_digest {
                return Err(SessionError::Manifest(
                    "the manifest names a different GGUF digest than the session pins".into(),
                ));
            }
        }
        Ok(())
    }

    /// Royalty share (ppm) and Source of the pinned manifest, if any.
    pub fn royalty(&self) -> Option<(PublicKey, u32)> {
        self.body
            .manifest
            .as_ref()
            .map(|m| (m.body.source, m.body.royalty_ppm))
    }
}
