//! `Proof`: evidence that a claim's sum is backed by real receipts.

use serde::{Deserialize, Serialize};
use serde_tuple::{Deserialize_tuple, Serialize_tuple};

use crate::messages::reveal::SignedReveal;
use crate::metering::receipt::Receipt;
use crate::params::{MAX_CLAIM_LEAVES, MAX_PROOF_SAMPLES};
use crate::sumtree::NodeSummary;
use crate::wire::WireMessage;
use crate::{BoundedVec, Digest};

/// A sampled leaf with its path: sibling summaries from the root down.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct LeafProof {
    /// The receipt in the leaf.
    pub receipt: Receipt,
    /// Siblings along the path, root first.
    pub siblings: BoundedVec<NodeSummary, 256>,
}

/// The leaves the challenge seed selects, after the app revealed `r`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct SampledProof {
    /// The app's reveal for this claim's root.
    pub reveal: SignedReveal,
    /// One leaf per sampling point, in point order.
    pub leaves: BoundedVec<LeafProof, { MAX_PROOF_SAMPLES as usize }>,
}

/// Every mined receipt, for when the app never reveals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct FullReveal {
    /// All mined receipts of the session, any order.
    pub receipts: BoundedVec<Receipt, { MAX_CLAIM_LEAVES as usize }>,
}

/// Either kind of evidence settles a claim; neither is better for the supplier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProofEvidence {
    /// Weight-proportional samples from the revealed seed.
    Sampled(SampledProof),
    /// All mined leaves.
    Full(FullReveal),
}

/// Not signed: its validity is intrinsic, so any node may relay it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct Proof {
    /// Message version: the protocol version (`PROTOCOL_VERSION`).
    #[serde(deserialize_with = "crate::wire::current_version")]
    pub version: u16,
    /// Id of the claim proven.
    pub claim: Digest,
    /// The supplier's mining secret `s` for the session: it must open the session's
    /// `mining_commitment`, and decides which receipts were mined.
    pub mining_secret: Digest,
    /// The evidence.
    pub evidence: ProofEvidence,
}

impl WireMessage for Proof {
    const NAME: &'static str = "Proof";
    const VERSION: u16 = crate::PROTOCOL_VERSION;
    const MAX_SIZE: usize = 1024 * 1024;
    fn version(&self) -> u16 {
        self.version
    }
}
