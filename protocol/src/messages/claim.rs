//! `Claim`: at session end the supplier commits to the sum tree of its mined receipts.

use serde_tuple::{Deserialize_tuple, Serialize_tuple};

use crate::identity::domain::{hash_tag, tagged_hash, Domain};
use crate::identity::signed::{Signable, Signed};
use crate::messages::session::SignedSessionOpen;
use crate::wire::to_canonical;
use crate::{Digest, PublicKey};

/// Signed by the supplier named in `open`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct Claim {
    /// Message version: the protocol version (`PROTOCOL_VERSION`).
    #[serde(deserialize_with = "crate::wire::current_version")]
    pub version: u16,
    /// The countersigned terms: verifiers need nothing else about the session.
    pub open: SignedSessionOpen,
    /// Root hash of the session's sum tree.
    pub root: Digest,
    /// Root sum: CUs the mined receipts pay, `Σ max(w_i, τ)`.
    pub sum: u64,
    /// Number of mined receipts.
    pub count: u64,
}

impl Signable for Claim {
    const NAME: &'static str = "Claim";
    const VERSION: u16 = crate::PROTOCOL_VERSION;
    const MAX_SIZE: usize = 1500;
    const DOMAIN: Domain = Domain::Claim;
    fn version(&self) -> u16 {
        self.version
    }
}

/// A claim with the supplier's signature.
pub type SignedClaim = Signed<Claim>;

impl SignedClaim {
    /// The claim id: over the body only, so re-encoding the signature does not make
    /// a second claim.
    pub fn id(&self) -> Digest {
        tagged_hash(hash_tag::CLAIM, &[&to_canonical(&self.body)])
    }

    /// The session claimed.
    pub fn session_key(&self) -> Digest {
        self.body.open.session_key()
    }

    /// The claiming supplier.
    pub fn supplier(&self) -> PublicKey {
        self.body.open.body.supplier
    }
}
