//! `RelayRequest`: the app's signed request, and "ack 0": it bills the prompt.

use serde_tuple::{Deserialize_tuple, Serialize_tuple};

use crate::identity::domain::{hash_tag, tagged_hash, Domain};
use crate::identity::signed::{Signable, Signed};
use crate::wire::to_canonical;
use crate::Digest;

/// One inference request within a session. The prompt itself travels beside it on the
/// stream; the signature covers its digest and length.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct RelayRequest {
    /// Message version: the protocol version (`PROTOCOL_VERSION`).
    #[serde(deserialize_with = "crate::wire::current_version")]
    pub version: u16,
    /// The session (hash of its terms).
    pub session_key: Digest,
    /// The app's number for this request within the session.
    pub request_id: u64,
    /// blake3 of the canonical request payload (prompt and generation parameters).
    pub prompt_digest: Digest,
    /// UTF-8 bytes of prompt text billed, at the session's `prompt_per_byte` (or
    /// `embed_per_byte`, for an embedding request).
    pub prompt_bytes: u32,
    /// Most output bytes the app will pay for in this request; 0 makes it an
    /// embedding request (version 6), which asks for vectors, not text.
    pub max_output_bytes: u32,
    /// Head `c_0` of the ack chain whose links the app reveals one per ack.
    pub ack_chain_head: Digest,
    /// Number of links, hence most acks this request may have.
    pub ack_chain_len: u16,
}

impl RelayRequest {
    /// Whether this is an embedding request: it asks for no output, and its input is
    /// weighed at the session's `embed_per_byte`.
    pub fn is_embedding(&self) -> bool {
        self.max_output_bytes == 0
    }
}

impl Signable for RelayRequest {
    const NAME: &'static str = "RelayRequest";
    const VERSION: u16 = crate::PROTOCOL_VERSION;
    const MAX_SIZE: usize = 256;
    const DOMAIN: Domain = Domain::RelayRequest;
    fn version(&self) -> u16 {
        self.version
    }
}

/// A request with the app's signature.
pub type SignedRelayRequest = Signed<RelayRequest>;

impl RelayRequest {
    /// The request hash acks refer to. Over the body only: re-signing the same request
    /// does not make it a different request.
    pub fn hash(&self) -> Digest {
        tagged_hash(hash_tag::REQUEST, &[&to_canonical(self)])
    }
}
