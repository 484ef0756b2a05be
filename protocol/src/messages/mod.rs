//! Every message of the protocol, one file each. `docs/PROTOCOL.md` describes their
//! fields and the rules verifiers apply.

pub mod ack;
pub mod capability;
pub mod claim;
pub mod credit;
pub mod equivocation;
pub mod infer;
pub mod ledger;
pub mod manifest;
pub mod membership;
pub mod proof;
pub mod request;
pub mod reveal;
pub mod session;
pub mod transfer;

use crate::wire::fuzz::{fuzz_decoder, FuzzStats};
use crate::wire::DecodeError;

/// One message type a node decodes from network bytes.
#[derive(Clone, Copy)]
pub struct WireDecoder {
    /// Wire name; golden vectors in `protocol/tests/vectors/` are named after it.
    pub name: &'static str,
    /// Largest accepted encoding.
    pub max_size: usize,
    /// Decodes and drops the value: for property tests.
    pub decode: fn(&[u8]) -> Result<(), DecodeError>,
    /// Fuzzes the decoder: corpus, iterations, seed.
    pub fuzz: fn(&[Vec<u8>], u64, u64) -> FuzzStats,
}

/// Every message type a node decodes from network bytes.
pub fn wire_decoders() -> Vec<WireDecoder> {
    use crate::identity::signed::Signed;
    use crate::wire::WireMessage;
    fn entry<T: WireMessage>() -> WireDecoder {
        WireDecoder {
            name: T::NAME,
            max_size: T::MAX_SIZE,
            decode: |bytes| T::decode(bytes).map(drop),
            fuzz: fuzz_decoder::<T>,
        }
    }
    vec![
        entry::<Signed<manifest::ModelManifest>>(),
        entry::<Signed<capability::CapabilityAd>>(),
        entry::<Signed<session::SessionOpen>>(),
        entry::<session::SignedSessionOpen>(),
        entry::<Signed<request::RelayRequest>>(),
        entry::<Signed<ack::Ack>>(),
        entry::<Signed<claim::Claim>>(),
        entry::<Signed<reveal::Reveal>>(),
        entry::<proof::Proof>(),
        entry::<equivocation::EquivocationEvidence>(),
        entry::<Signed<transfer::Transfer>>(),
        entry::<crate::params::MeshParams>(),
        entry::<infer::InferFrame>(),
        entry::<ledger::LedgerMessage>(),
        entry::<Signed<membership::Invite>>(),
        entry::<Signed<membership::Revocation>>(),
        entry::<membership::Hello>(),
        entry::<membership::Verdict>(),
    ]
}
