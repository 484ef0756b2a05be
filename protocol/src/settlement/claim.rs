//! Where claims are verified: the rules every full node applies before a claim may
//! enter its ledger.

use crate::identity::verify::{SignatureError, SignatureVerifier};
use crate::messages::claim::SignedClaim;
use crate::messages::credit::CreditSlot;
use crate::messages::session::SessionError;
use crate::params::MeshParams;
use crate::{Digest, PublicKey};

/// A claim that passed every check; what the ledger keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedClaim {
    /// Claim id.
    pub id: Digest,
    /// Session key.
    pub session_key: Digest,
    /// Who claims.
    pub supplier: PublicKey,
    /// Who pays.
    pub app: PublicKey,
    /// Epoch of the session's start.
    pub epoch: u64,
    /// Root summary of the claimed tree.
    pub root: Digest,
    /// CUs claimed.
    pub sum: u64,
    /// Mined receipts claimed.
    pub count: u64,
    /// Micro-credits per CU.
    pub price_per_cu: u64,
    /// The model Source and its royalty (ppm), if the session pinned a manifest.
    pub royalty: Option<(PublicKey, u32)>,
    /// The debit the session's terms commit (hash of the app-signed terms).
    pub debit: Digest,
    /// The escrow the claim is paid from.
    pub escrow: CreditSlot,
}

impl VerifiedClaim {
    /// What the claim is worth: `sum × price`, micro-credits.
    pub fn value(&self) -> u128 {
        u128::from(self.sum) * u128::from(self.price_per_cu)
    }
}

/// Why a claim is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// The session terms are invalid (never opened, or not by these parties).
    #[error("claim's session: {0}")]
    Session(#[from] SessionError),
    /// Not signed by the session's supplier.
    #[error("claim signature: {0}")]
    Signature(#[from] SignatureError),
    /// Empty, too many leaves, or a sum no set of mined leaves can have.
    #[error("claim of {count} leaves summing to {sum} CUs is impossible at tau {tau} (at most {max_leaves} leaves, each paying at least tau)")]
    BadShape {
        /// Leaves claimed.
        count: u64,
        /// Sum claimed.
        sum: u64,
        /// The session's τ.
        tau: u64,
        /// Mesh bound on leaves.
        max_leaves: u32,
    },
    /// Worth less than the mesh's minimum claim value.
    #[error("claim worth {value} micro-credits is below the mesh minimum of {min}")]
    BelowMinimum {
        /// `sum × price`.
        value: u128,
        /// The mesh minimum.
        min: u64,
    },
}

/// Checks a claim: the countersigned terms, the supplier's signature, the claim's
/// shape (`1 ≤ count ≤ max_claim_leaves`, `sum ≥ count·τ` since every mined leaf pays at
/// least τ) and the minimum value.
pub fn verify_claim(
    claim: &SignedClaim,
    params: &MeshParams,
    verifier: &impl SignatureVerifier,
) -> Result<VerifiedClaim, ClaimError> {
    verify_claim_in(claim, params, &params.mesh_id(), verifier)
}

/// [`verify_claim`] with the mesh id computed once by the caller (hashing the
/// parameters encodes all of them, genesis included).
pub fn verify_claim_in(
    claim: &SignedClaim,
    params: &MeshParams,
    mesh_id: &Digest,
    verifier: &impl SignatureVerifier,
) -> Result<VerifiedClaim, ClaimError> {
    let open = &claim.body.open;
    open.body.check_keys(verifier)?;
    // All four signatures (manifest, app, supplier's countersignature, claim) in one
    // batch; only if it fails does `validate` check them one by one to name the culprit.
    let mut items = open.signed_items().to_vec();
    items.push(claim.signed_item(open.body.supplier));
    if let Some(manifest) = &open.body.manifest {
        items.push(manifest.signed_item(manifest.body.source));
    }
    if verifier.verify_batch(&items).is_err() {
        open.validate(params, verifier)?;
        claim.verify(&open.body.supplier, verifier)?;
    }
    open.check_terms(params, mesh_id)?;
    let body = &claim.body;
    let tau = open.body.tau;
    let shape_ok = body.count >= 1
        && body.count <= u64::from(params.max_claim_leaves)
        && u128::from(body.sum) >= u128::from(body.count) * u128::from(tau);
    if !shape_ok {
        return Err(ClaimError::BadShape {
            count: body.count,
            sum: body.sum,
            tau,
            max_leaves: params.max_claim_leaves,
        });
    }
    let verified = VerifiedClaim {
        id: claim.id(),
        session_key: open.session_key(),
        supplier: open.body.supplier,
        app: open.body.app,
        epoch: open.epoch(params),
        root: body.root,
        sum: body.sum,
        count: body.count,
        price_per_cu: open.body.price_per_cu,
        royalty: open.royalty(),
        debit: open.body.debit_id(),
        escrow: open.body.escrow,
    };
    if verified.value() < u128::from(params.min_claim_value) {
        return Err(ClaimError::BelowMinimum {
            value: verified.value(),
            min: params.min_claim_value,
        });
    }
    Ok(verified)
}
