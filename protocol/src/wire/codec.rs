//! Canonical CBOR: the one encoding every signed and hashed byte of the protocol uses.
//!
//! Messages are serde structs encoded by `ciborium` (the maintained crate for the CBOR
//! that the product card's `serde_cbor` wrote). Structs encode as CBOR arrays, integers
//! in their shortest form, byte and text strings with definite lengths. A decoder
//! accepts a message only if re-encoding the decoded value reproduces the input byte for
//! byte: a non-canonical encoding of a valid message (long-form integers, indefinite
//! lengths, trailing bytes, arrays of small integers where bytes belong) would hash to a
//! different relay hash or session key, so it is refused rather than normalised.

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize};

/// The marker a refused nested version leaves in the parser's error, so that
/// [`WireMessage::decode`] can name it.
const VERSION_MARKER: &str = "relaymesh-version:";

/// Reads a message's `version` field, refusing any version but this build's. Every
/// message struct's version field goes through it, so a version is checked wherever a
/// message sits (a session inside a claim, a receipt inside a proof), not only at the
/// top: a verifier never applies this version's rules to bytes written under another version.
pub fn current_version<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u16, D::Error> {
    let version = u16::deserialize(deserializer)?;
    if version != crate::PROTOCOL_VERSION {
        return Err(D::Error::custom(format!("{VERSION_MARKER}{version}")));
    }
    Ok(version)
}

/// The version a parser error says was refused, if that is what it says.
fn refused_version(reason: &str) -> Option<u16> {
    let at = reason.find(VERSION_MARKER)? + VERSION_MARKER.len();
    let digits: String = reason[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

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
///
/// The encoder writes a few bytes at a time, so encoding into a fresh `Vec` grows it
/// (reallocating) about ten times for a receipt: each thread encodes into one reused
/// buffer and the result is copied out at its exact size, one allocation.
pub fn to_canonical<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    /// Buffers grown past this (a large proof) are not kept.
    const KEEP: usize = 64 << 10;
    let encode = |out: &mut Vec<u8>| {
        ciborium::into_writer(value, out).expect("protocol types always serialise")
    };
    BUFFER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => {
            buffer.clear();
            encode(&mut buffer);
            let out = buffer.to_vec();
            if buffer.capacity() > KEEP {
                *buffer = Vec::new();
            }
            out
        }
        // Encoding from inside an encoding (a type that embeds another's bytes).
        Err(_) => {
            let mut out = Vec::new();
            encode(&mut out);
            out
        }
    })
}

/// The length of `value`'s canonical CBOR, counted without keeping the bytes (what a
/// message would cost on the wire).
pub fn canonical_len<T: Serialize + ?Sized>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    ciborium::into_writer(value, &mut count).expect("protocol types always serialise");
    count.0
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
        let value: Self = ciborium::from_reader(bytes).map_err(|err| {
            let reason = err.to_string();
            match refused_version(&reason) {
                Some(found) => DecodeError::UnsupportedVersion {
                    name: Self::NAME,
                    found,
                    supported: Self::VERSION,
                },
                None => DecodeError::Malformed {
                    name: Self::NAME,
                    reason,
                },
            }
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
