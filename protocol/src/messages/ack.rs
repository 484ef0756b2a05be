//! `Ack`: the app acknowledges one increment of streamed output. Each ack is a relay
//! receipt for its own increment only.

use serde_tuple::{Deserialize_tuple, Serialize_tuple};

use crate::identity::domain::{hash_tag, tagged_hash, Domain};
use crate::identity::signed::{Signable, Signed};
use crate::wire::to_canonical;
use crate::Digest;

/// Signed by the app for output bytes `(prev_bytes, new_bytes]` of one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct Ack {
    /// Message version: the protocol version (`PROTOCOL_VERSION`).
    #[serde(deserialize_with = "crate::wire::current_version")]
    pub version: u16,
    /// The session; it binds mesh id, supplier and model digest.
    pub session_key: Digest,
    /// Hash of the request this increment answers.
    pub request: Digest,
    /// 1-based number of this ack within the request; selects the chain link.
    pub index: u16,
    /// Cumulative output bytes acknowledged before this increment.
    pub prev_bytes: u32,
    /// Cumulative output bytes acknowledged with it.
    pub new_bytes: u32,
    /// Tokens (the supplier's output frames) in this increment: K, or up to K on the
    /// last ack. The increment is paid for at most `tokens × cu.token_bytes` bytes.
    pub tokens: u16,
    /// blake3 of all output bytes of the request so far.
    pub stream_digest: Digest,
    /// Link `c_index` of the request's ack chain.
    pub chain_secret: Digest,
    /// Set on the ack of the request's final increment.
    pub last: bool,
}

impl Signable for Ack {
    const NAME: &'static str = "Ack";
    const VERSION: u16 = crate::PROTOCOL_VERSION;
    const MAX_SIZE: usize = 256;
    const DOMAIN: Domain = Domain::Ack;
    fn version(&self) -> u16 {
        self.version
    }
}

/// An ack with the app's signature.
pub type SignedAck = Signed<Ack>;

impl Ack {
    /// The relay hash: decides whether this receipt is mined, and is its key in the sum
    /// tree. It covers the ack body, never a signature: every field is fixed by the
    /// session, by the supplier's output before the ack, or by the app's chain link
    /// committed before that output existed (see `metering::ack_chain`).
    pub fn relay_hash(&self) -> Digest {
        tagged_hash(hash_tag::RELAY, &[&to_canonical(self)])
    }
}
