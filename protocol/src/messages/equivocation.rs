//! `EquivocationEvidence`: one supplier signed two different claims for one session.

use serde_tuple::{Deserialize_tuple, Serialize_tuple};

use crate::identity::verify::{SignatureError, SignatureVerifier};
use crate::messages::claim::SignedClaim;
use crate::params::MeshParams;
use crate::wire::WireMessage;
use crate::{Digest, PublicKey};

/// Two claims, ordered by claim id so the same pair has one encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct EquivocationEvidence {
    /// Message version: the protocol version (`PROTOCOL_VERSION`).
    #[serde(deserialize_with = "crate::wire::current_version")]
    pub version: u16,
    /// The claim with the smaller id.
    pub first: SignedClaim,
    /// The claim with the larger id.
    pub second: SignedClaim,
}

impl WireMessage for EquivocationEvidence {
    const NAME: &'static str = "EquivocationEvidence";
    const VERSION: u16 = crate::PROTOCOL_VERSION;
    const MAX_SIZE: usize = 3200;
    fn version(&self) -> u16 {
        self.version
    }
}

/// Why evidence does not prove equivocation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    /// The claims are for different sessions.
    #[error("the two claims are for different terms")]
    DifferentSessions,
    /// The claims are for a session of another mesh.
    #[error("the claims are for a session of another mesh")]
    WrongMesh,
    /// Not two distinct claims in id order.
    #[error("the claims are identical or not in claim-id order")]
    NotDistinct,
    /// A claim is not signed by the session's supplier.
    #[error("claim signature: {0}")]
    Signature(#[from] SignatureError),
}

impl EquivocationEvidence {
    /// Orders two claims into evidence; `None` if they are the same claim.
    pub fn new(a: SignedClaim, b: SignedClaim) -> Option<Self> {
        let (first, second) = match a.id().cmp(&b.id()) {
            std::cmp::Ordering::Less => (a, b),
            std::cmp::Ordering::Greater => (b, a),
            std::cmp::Ordering::Equal => return None,
        };
        Some(Self {
            version: crate::PROTOCOL_VERSION,
            first,
            second,
        })
    }

    /// The epoch of the session both claims are for.
    pub fn epoch(&self, params: &MeshParams) -> u64 {
        self.first.body.open.epoch(params)
    }

    /// The equivocating supplier and the epoch from which it is excluded, if the
    /// evidence holds: the same app-signed terms (hence mesh and supplier), in this
    /// mesh, distinct claim bodies, both signed by it. The epoch is the session's,
    /// so evidence changes no epoch before it, and none that is frozen (the ledger
    /// refuses evidence for a frozen epoch like any other message).
    pub fn verify(
        &self,
        params: &MeshParams,
        mesh_id: &Digest,
        verifier: &impl SignatureVerifier,
    ) -> Result<(PublicKey, u64), EvidenceError> {
        // One debit (the same app-signed terms), whatever mining commitments the
        // supplier countersigned: a second commitment gives a second session key, not a
        // licence to claim the same escrow twice.
        if self.first.body.open.body != self.second.body.open.body {
            return Err(EvidenceError::DifferentSessions);
        }
        if self.first.body.open.body.mesh_id != *mesh_id {
            return Err(EvidenceError::WrongMesh);
        }
        if self.first.id() >= self.second.id() {
            return Err(EvidenceError::NotDistinct);
        }
        let supplier = self.first.supplier();
        self.first.verify(&supplier, verifier)?;
        self.second.verify(&supplier, verifier)?;
        Ok((supplier, self.epoch(params)))
    }
}
