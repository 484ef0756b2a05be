//! Canonical CBOR: the one encoding every signed and hashed byte of the protocol uses.
//!
//! Messages are serde structs encoded by `ciborium` (the maintained crate for the CBOR
//! that the product card's `serde_cbor` wrote). Structs encode as CBOR arrays, integers
//! in their shortest form, byte and text strings with definite lengths. A decoder
//! accepts a message only if re-encoding the decoded value reproduces the input byte for
//! byte: a non-canonical encoding of a valid message (long-form integers, indefinite
//! lengths, trailing bytes, arrays of small integers where bytes belong) would hash to a
//! different relay hash or session key, so it is refused rather than normalised.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why bytes from the network were not accepted as a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Larger than the message type's maximum; nothing was parsed.
    #[error("{name}: {len} bytes exceed the maximum of {max}")]
    TooLarge {
        /// Message type.
        name: &'static str,
        /// Input length.
        len: usize,
        /// The type's maximum encoded size.
        max: usize,
    },
    /// Not a CBOR encoding of this message type.
    #[error("{name}: malformed: {reason}")]
    Malformed {
        /// Message type.
        name: &'static str,
        /// What the parser said.
        reason: String,
    },
    /// A valid message, but not in its one canonical encoding.
    #[error("{name}: not canonical CBOR (re-encoding differs); re-encode with relaymesh-protocol")]
    NonCanonical {
        /// Message type.
        name: &'static str,
    },
    /// A version this implementation does not speak.
    #[error("{name}: version {found} is not supported (this node speaks {supported}); upgrade relaymesh")]
    UnsupportedVersion {
        /// Message type.
        name: &'static str,
        /// Version in the message.
        found: u16,
        /// Version this build speaks.
        supported: u16,
    },
}

/// Why a value could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoding exceeds the type's maximum, so peers would refuse it.
    #[error("{name}: encoding is {len} bytes, over the maximum of {max}; send less per message")]
    TooLarge {
        /// Message type.
        name: &'static str,
        /// Encoded length.
        len: usize,
        /// The type's maximum encoded size.
        max: usize,
    },
}

/// Canonical CBOR of any serialisable value. The protocol's types cannot fail to
/// serialise (no maps with non-string keys, no floats), so this is infallible.
pub fn to_canonical<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("protocol types always serialise");
    out
}

/// A message type on the wire: a name for errors, a version, and a maximum size.
pub trait WireMessage: Serialize + DeserializeOwned {
    /// Human-readable type name, used in errors and vector file names.
    const NAME: &'static str;
    /// The version this build writes and accepts.
    const VERSION: u16;
    /// Maximum encoded size in bytes; larger input is refused before parsing.
    const MAX_SIZE: usize;

    /// The version carried in this value.
    fn version(&self) -> u16;

    /// Canonical encoding, refused if over [`Self::MAX_SIZE`].
    fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let bytes = to_canonical(self);
        if bytes.len() > Self::MAX_SIZE {
            return Err(EncodeError::TooLarge {
                name: Self::NAME,
                len: bytes.len(),
                max: Self::MAX_SIZE,
            });
        }
        Ok(bytes)
    }

    /// Decodes exactly one canonical message; anything else is an error, never a panic.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > Self::MAX_SIZE {
            return Err(DecodeError::TooLarge {
                name: Self::NAME,
                len: bytes.len(),
                max: Self::MAX_SIZE,
            });
        }
        let value: Self = ciborium::from_reader(bytes).map_err(|err| DecodeError::Malformed {
            name: Self::NAME,
            reason: err.to_string(),
        })?;
        if value.version() != Self::VERSION {
            return Err(DecodeError::UnsupportedVersion {
                name: Self::NAME,
                found: value.version(),
                supported: Self::VERSION,
            });
        }
        if to_canonical(&value) != bytes {
            return Err(DecodeError::NonCanonical { name: Self::NAME });
        }
        Ok(value)
    }
}
