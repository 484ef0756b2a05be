//! `SessionOpen`: the terms of a session, signed by the app and countersigned by the
//! supplier. It fixes everything a verifier of the session's claims will need.

use serde_tuple::{Deserialize_tuple, Serialize_tuple};

use crate::identity::domain::{hash_tag, tagged_hash, Domain};
use crate::identity::signed::{signing_bytes, Signable, Signed};
use crate::identity::verify::{SignatureError, SignatureVerifier, SignedItem, Signer};
use crate::messages::credit::CreditSlot;
use crate::messages::manifest::{SignedManifest, PPM};
use crate::metering::compute_units::CuFormula;
use crate::params::MeshParams;
use crate::wire::{to_canonical, WireMessage};
use crate::{Digest, PublicKey, Signature};

/// The terms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct SessionOpen {
    /// Message version: the protocol version (`PROTOCOL_VERSION`).
    #[serde(deserialize_with = "crate::wire::current_version")]
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
    /// Threshold τ for the whole session (CUs); the supplier's choice.
    pub tau: u64,
    /// Most bytes one streamed token may carry: the app refuses longer ones, and signs
    /// requests for at most `max_tokens × max_token_bytes` output bytes.
    pub max_token_bytes: u32,
    /// The escrow: the slot of the app's credit line this session may spend. Claims
    /// are paid from it and from nothing else; what is left returns to the app once
    /// the session's epoch is final.
    pub escrow: CreditSlot,
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
    const VERSION: u16 = crate::PROTOCOL_VERSION;
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
    /// `H(s)`: the supplier's commitment to its secret `s` for this session. A
    /// receipt's mining is decided by `H(s, relay hash)`, so the app cannot tell which
    /// of its acks will be mined when it signs them; `s` is revealed in the proof.
    pub mining_commitment: Digest,
    /// The supplier's signature over the terms, the app's signature and the commitment.
    pub supplier_signature: Signature,
}

impl WireMessage for SignedSessionOpen {
    const NAME: &'static str = "SignedSessionOpen";
    const VERSION: u16 = crate::PROTOCOL_VERSION;
    const MAX_SIZE: usize = 1024 + 180;
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
    /// A price, CU factor or token cap beyond the mesh's bounds.
    #[error("{what} {value} exceeds the mesh's bound of {max}")]
    OutOfBounds {
        /// Which term.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The mesh bound.
        max: u64,
    },
    /// The escrow slot runs past the end of the number line.
    #[error("the escrow slot overflows")]
    EscrowOverflow,
    /// The pinned manifest is invalid, for another file, or not the registered one.
    #[error("manifest: {0}")]
    Manifest(String),
    /// A signature does not verify, or a party's key is one anyone can sign for.
    #[error("session signature: {0}")]
    Signature(#[from] SignatureError),
}

/// `H(s)`: what a supplier countersigns for its mining secret `s`.
pub fn mining_commitment(secret: &Digest) -> Digest {
    tagged_hash(hash_tag::MINING_COMMITMENT, &[&secret.0])
}

fn countersigning_bytes(body: &SessionOpen, app_signature: &Signature, mining: &Digest) -> Vec<u8> {
    let mut bytes = Domain::SessionOpenSupplier.tag().to_vec();
    bytes.extend_from_slice(&to_canonical(body));
    bytes.extend_from_slice(&app_signature.0);
    bytes.extend_from_slice(&mining.0);
    bytes
}

impl SessionProposal {
    /// The supplier accepts the terms, committing to `mining_secret` (see
    /// [`SessionOpen::mining_secret`]).
    pub fn countersign(self, supplier: &impl Signer, mining_secret: &Digest) -> SignedSessionOpen {
        let mining_commitment = mining_commitment(mining_secret);
        let supplier_signature = supplier.sign_bytes(&countersigning_bytes(
            &self.body,
            &self.signature,
            &mining_commitment,
        ));
        SignedSessionOpen {
            body: self.body,
            app_signature: self.signature,
            mining_commitment,
            supplier_signature,
        }
    }
}

impl SessionOpen {
    /// When the session ends (unix ms): `start_ms + max_duration_ms`.
    pub fn end_ms(&self) -> u64 {
        self.start_ms.saturating_add(self.max_duration_ms)
    }

    /// The debit id: hash of the terms the app signed. It names the escrow the terms
    /// commit, whoever countersigns them and however often.
    pub fn debit_id(&self) -> Digest {
        tagged_hash(hash_tag::DEBIT, &[&to_canonical(self)])
    }

    /// The mining secret a supplier with `key` uses for these terms: derived from its
    /// key, so nobody else can predict it and a restart finds the same one.
    pub fn mining_secret(&self, key: &crate::Keypair) -> Digest {
        key.derive(b"mining-secret", &to_canonical(self))
    }
}

impl SignedSessionOpen {
    /// The session key: hash of the terms and the supplier's mining commitment. The
    /// terms name both parties, so two suppliers' sessions never share a key; no
    /// signature is hashed, so nobody can mint a second key by re-signing. A supplier
    /// that countersigned the terms twice with two commitments has two keys, but the
    /// app signs requests for one of them only, so the other can never be proven.
    pub fn session_key(&self) -> Digest {
        tagged_hash(
            hash_tag::SESSION_KEY,
            &[&to_canonical(&self.body), &self.mining_commitment.0],
        )
    }

    /// The ledger epoch the session's claims count in.
    pub fn epoch(&self, params: &MeshParams) -> u64 {
        params.epoch_of(self.body.start_ms)
    }

    /// The app's proposal inside, with its signature.
    pub fn proposal(&self) -> SessionProposal {
        Signed {
            body: self.body.clone(),
            signature: self.app_signature,
        }
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
                message: countersigning_bytes(
                    &self.body,
                    &self.app_signature,
                    &self.mining_commitment,
                ),
                signature: self.supplier_signature,
            },
        ]
    }

    /// Checks the terms against the mesh parameters, the parties' keys and both
    /// signatures. Clock checks (start time within skew of now) are the supplier's
    /// business when it countersigns; verifiers check only what the signed bytes say.
    pub fn validate(
        &self,
        params: &MeshParams,
        verifier: &impl SignatureVerifier,
    ) -> Result<(), SessionError> {
        self.validate_in(params, &params.mesh_id(), verifier)
    }

    /// [`Self::validate`] with the mesh id computed once by the caller.
    pub fn validate_in(
        &self,
        params: &MeshParams,
        mesh_id: &Digest,
        verifier: &impl SignatureVerifier,
    ) -> Result<(), SessionError> {
        self.body.check_terms(params, mesh_id)?;
        self.body.check_keys(verifier)?;
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

    /// Every rule of [`Self::validate`] except the parties' keys and signatures, for
    /// callers that batch those. `mesh_id` is `params.mesh_id()`, which callers that
    /// check many sessions compute once.
    pub fn check_terms(&self, params: &MeshParams, mesh_id: &Digest) -> Result<(), SessionError> {
        self.body.check_terms(params, mesh_id)
    }

    /// Royalty share (ppm) and Source of the pinned manifest, if any.
    pub fn royalty(&self) -> Option<(PublicKey, u32)> {
        self.body
            .manifest
            .as_ref()
            .map(|m| (m.body.source, m.body.royalty_ppm))
    }
}

impl SessionOpen {
    /// The parties' keys must be keys only their owners can sign for.
    pub fn check_keys(&self, verifier: &impl SignatureVerifier) -> Result<(), SessionError> {
        verifier.check_key(&self.app)?;
        verifier.check_key(&self.supplier)?;
        if let Some(manifest) = &self.manifest {
            verifier.check_key(&manifest.body.source)?;
        }
        Ok(())
    }

    /// The rules on the terms alone. Every number a party chooses is bounded by the
    /// mesh: a price or CU factor past its bound could make amounts overflow, a token
    /// cap past its bound would let a supplier bill junk bytes, and a registered model
    /// must pin its registered Source's manifest, so royalties cannot be dropped or
    /// redirected.
    pub fn check_terms(&self, params: &MeshParams, mesh_id: &Digest) -> Result<(), SessionError> {
        if self.mesh_id != *mesh_id {
            return Err(SessionError::WrongMesh {
                expected: *mesh_id,
                found: self.mesh_id,
            });
        }
        if self.app == self.supplier {
            return Err(SessionError::SelfDealing);
        }
        if self.tau < params.tau_min || self.tau > params.tau_max {
            return Err(SessionError::TauOutOfBounds {
                tau: self.tau,
                min: params.tau_min,
                max: params.tau_max,
            });
        }
        if self.max_duration_ms > params.max_session_ms {
            return Err(SessionError::TooLong(self.max_duration_ms));
        }
        let bounded = [
            ("price per CU", self.price_per_cu, params.max_price_per_cu),
            (
                "CUs per prompt byte",
                u64::from(self.cu.prompt_per_byte),
                u64::from(params.max_cu_per_byte),
            ),
            (
                "CUs per output byte",
                u64::from(self.cu.output_per_byte),
                u64::from(params.max_cu_per_byte),
            ),
            (
                "CUs per embedding input byte",
                u64::from(self.cu.embed_per_byte),
                u64::from(params.max_cu_per_byte),
            ),
            (
                "bytes per token",
                u64::from(self.max_token_bytes),
                u64::from(params.max_token_bytes),
            ),
            (
                "bytes paid per token",
                u64::from(self.cu.token_bytes),
                u64::from(params.max_paid_token_bytes),
            ),
        ];
        for (what, value, max) in bounded {
            if value > max {
                return Err(SessionError::OutOfBounds { what, value, max });
            }
        }
        if self.max_token_bytes == 0 {
            return Err(SessionError::OutOfBounds {
                what: "bytes per token (at least 1)",
                value: 0,
                max: u64::from(params.max_token_bytes),
            });
        }
        if self.cu.token_bytes == 0 {
            return Err(SessionError::OutOfBounds {
                what: "bytes paid per token (at least 1)",
                value: 0,
                max: u64::from(params.max_paid_token_bytes),
            });
        }
        if self.escrow.end().is_none() {
            return Err(SessionError::EscrowOverflow);
        }
        if let Some(manifest) = &self.manifest {
            if manifest.body.royalty_ppm > PPM {
                return Err(SessionError::Manifest(format!(
                    "royalty of {} ppm exceeds 100%",
                    manifest.body.royalty_ppm
                )));
            }
            if manifest.body.gguf_digest != self.model_digest {
                return Err(SessionError::Manifest(
                    "the manifest names a different GGUF digest than the session pins".into(),
                ));
            }
        }
        if let Some(registered) = params.registered_source(&self.model_digest) {
            let pinned = self
                .manifest
                .as_ref()
                .map(|m| (m.body.source, m.body.royalty_ppm));
            if pinned != Some((registered.source, registered.royalty_ppm)) {
                return Err(SessionError::Manifest(format!(
                    "the mesh registers this model's Source {} at {} ppm; the session must pin that Source's manifest",
                    registered.source.peer_id(),
                    registered.royalty_ppm
                )));
            }
        }
        Ok(())
    }
}
