//! The wire format: canonical CBOR, bounded containers, size limits, and a mutation
//! harness that throws garbage at every decoder.

pub mod bytes;
pub mod codec;
pub mod fuzz;

pub use bytes::{BoundedString, BoundedVec, Digest, PublicKey, Signature, TooLong};
pub use codec::{
    canonical_len, current_version, to_canonical, DecodeError, EncodeError, WireMessage,
};
