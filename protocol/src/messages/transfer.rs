//! `Transfer`: a payer moves credit to another account.

use serde_tuple::{Deserialize_tuple, Serialize_tuple};

use crate::identity::domain::{hash_tag, tagged_hash, Domain};
use crate::identity::signed::{Signable, Signed};
use crate::wire::to_canonical;
use crate::{Digest, PublicKey};

/// Signed by `from`. A debit like a session's escrow: it takes the slot
/// `[slot_start, slot_start + amount)` of the payer's credit line and moves `amount` in
/// `epoch` if that slot is funded (`ledger`), nothing otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct Transfer {
    /// Message version: the protocol version (`PROTOCOL_VERSION`).
    #[serde(deserialize_with = "crate::wire::current_version")]
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
    /// Where its slot starts on the payer's credit line (two transfers of the same
    /// amount differ by their slots).
    pub slot_start: u64,
}

impl Signable for Transfer {
    const NAME: &'static str = "Transfer";
    const VERSION: u16 = crate::PROTOCOL_VERSION;
    const MAX_SIZE: usize = 256;
    const DOMAIN: Domain = Domain::Transfer;
    fn version(&self) -> u16 {
        self.version
    }
}

/// A transfer with the payer's signature.
pub type SignedTransfer = Signed<Transfer>;

impl Transfer {
    /// The slot of the payer's credit line this transfer takes.
    pub fn slot(&self) -> crate::messages::credit::CreditSlot {
        crate::messages::credit::CreditSlot::new(self.slot_start, self.amount)
    }
}

impl SignedTransfer {
    /// The transfer's id: over the body only, so nobody can make a second id (and a
    /// second debit) by re-encoding the signature; ZIP-215 accepts non-canonical `R`.
    pub fn id(&self) -> Digest {
        tagged_hash(hash_tag::TRANSFER, &[&to_canonical(&self.body)])
    }
}
