//! `Transfer`: a payer moves credit to another account.

use serde_tuple::{Deserialize_tuple, Serialize_tuple};

use crate::identity::domain::{hash_tag, tagged_hash, Domain};
use crate::identity::signed::{Signable, Signed};
use crate::wire::to_canonical;
use crate::{Digest, PublicKey};

/// Signed by `from`. Debited in `epoch` like a claim: pro rata if the payer's
/// debits in that epoch exceed what it carried in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct Transfer {
    /// Message version (1).
    pub version: u16,
    /// The mesh.
    pub mesh_id: Digest,
    /// Payer (signer).
    pub from: PublicKey,
    /// Payee.
    pub to: PublicKey,
    /// Micro-credits.
    pub amount: u64,
    /// Epoch in which it is debited.
    pub epoch: u64,
    /// Makes two equal transfers distinct.
    pub nonce: u64,
}

impl Signable for Transfer {
    const NAME: &'static str = "Transfer";
    const VERSION: u16 = 1;
    const MAX_SIZE: usize = 256;
    const DOMAIN: Domain = Domain::Transfer;
    fn version(&self) -> u16 {
        self.version
    }
}

/// A transfer with the payer's signature.
pub type SignedTransfer = Signed<Transfer>;

impl SignedTransfer {
    /// The transfer's id: over the body only, so nobody can make a second id (and a
    /// second debit) by re-encoding the signature; ZIP-215 accepts non-canonical `R`.
    pub fn id(&self) -> Digest {
        tagged_hash(hash_tag::TRANSFER, &[&to_canonical(&self.body)])
    }
}
