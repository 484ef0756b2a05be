//! Byte-level building blocks of the wire types: fixed-size byte strings (digests,
//! keys, signatures) and containers whose length is bounded at decode time.
//!
//! serde's own `Vec<T>` visitor preallocates from the length a peer declares (up to
//! 1 MiB); these containers grow one element at a time and stop at their bound, so
//! a short message can never make the decoder allocate more than it is long.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

macro_rules! fixed_bytes {
    ($(#[$meta:meta])* $name:ident, $len:expr) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $len;

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Lower-case hex, as used in logs, file names and JSON.
            pub fn to_hex(&self) -> String {
                self.0.iter().map(|b| format!("{b:02x}")).collect()
            }

            /// Parses lower- or upper-case hex of exactly the right length.
            pub fn from_hex(text: &str) -> Option<Self> {
                let text = text.as_bytes();
                if text.len() != 2 * $len {
                    return None;
                }
                let mut out = [0u8; $len];
                for (i, pair) in text.chunks_exact(2).enumerate() {
                    let hi = (pair[0] as char).to_digit(16)?;
                    let lo = (pair[1] as char).to_digit(16)?;
                    out[i] = (hi * 16 + lo) as u8;
                }
                Some(Self(out))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Eight hex digits identify a value in logs without flooding them.
                write!(f, "{}({}…)", stringify!($name), &self.to_hex()[..8])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_bytes(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_bytes(FixedVisitor::<$len>).map(Self)
            }
        }
    };
}

struct FixedVisitor<const N: usize>;

impl<'de, const N: usize> Visitor<'de> for FixedVisitor<N> {
    type Value = [u8; N];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a byte string of exactly {N} bytes")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
        self.visit_bytes(&v)
    }
}

fixed_bytes!(
    /// A blake3 digest: model digests, session keys, tree hashes, commitments.
    Digest,
    32
);
fixed_bytes!(
    /// An ed25519 public key: a node's, an app's or a model Source's identity, and the
    /// account the ledger keeps for it.
    PublicKey,
    32
);
fixed_bytes!(
    /// An ed25519 signature (R ‖ s).
    Signature,
    64
);

impl Digest {
    /// The all-zero digest, used as the hash of an empty subtree.
    pub const ZERO: Digest = Digest([0; 32]);
}

/// A `Vec<T>` that decodes at most `N` elements and never preallocates.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BoundedVec<T, const N: usize>(Vec<T>);

/// Returned when a container would exceed its bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{len} elements exceed the limit of {limit}")]
pub struct TooLong {
    /// Length that was asked for.
    pub len: usize,
    /// The container's bound.
    pub limit: usize,
}

impl<T, const N: usize> BoundedVec<T, N> {
    /// The bound.
    pub const LIMIT: usize = N;

    /// An empty vector.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Wraps `items`, refusing more than `N`.
    pub fn try_from_vec(items: Vec<T>) -> Result<Self, TooLong> {
        if items.len() > N {
            return Err(TooLong {
                len: items.len(),
                limit: N,
            });
        }
        Ok(Self(items))
    }

    /// Appends an element, refusing the `N+1`-th.
    pub fn try_push(&mut self, item: T) -> Result<(), TooLong> {
        if self.0.len() >= N {
            return Err(TooLong {
                len: self.0.len() + 1,
                limit: N,
            });
        }
        self.0.push(item);
        Ok(())
    }

    /// The elements.
    pub fn as_slice(&self) -> &[T] {
        &self.0
    }

    /// Unwraps into the inner vector.
    pub fn into_vec(self) -> Vec<T> {
        self.0
    }
}

impl<T, const N: usize> std::ops::Deref for BoundedVec<T, N> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<T: Serialize, const N: usize> Serialize for BoundedVec<T, N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for item in &self.0 {
            seq.serialize_element(item)?;
        }
        seq.end()
    }
}

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for BoundedVec<T, N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SeqVisitor<T, const N: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for SeqVisitor<T, N> {
            type Value = BoundedVec<T, N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an array of at most {N} elements")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                if let Some(declared) = seq.size_hint() {
                    if declared > N {
                        return Err(de::Error::invalid_length(declared, &self));
                    }
                }
                // Deliberately no `with_capacity`: the declared length is the peer's word.
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    if items.len() == N {
                        return Err(de::Error::invalid_length(N + 1, &self));
                    }
                    items.push(item);
                }
                Ok(BoundedVec(items))
            }
        }
        deserializer.deserialize_seq(SeqVisitor::<T, N>(PhantomData))
    }
}

/// A UTF-8 string of at most `N` bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BoundedString<const N: usize>(String);

impl<const N: usize> BoundedString<N> {
    /// Wraps `text`, refusing more than `N` bytes.
    pub fn new(text: impl Into<String>) -> Result<Self, TooLong> {
        let text = text.into();
        if text.len() > N {
            return Err(TooLong {
                len: text.len(),
                limit: N,
            });
        }
        Ok(Self(text))
    }

    /// Wraps `text`, cut to at most `N` bytes on a character boundary.
    pub fn truncated(text: &str) -> Self {
        let mut cut = text.len().min(N);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        Self(text[..cut].to_owned())
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<const N: usize> fmt::Display for BoundedString<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<const N: usize> Serialize for BoundedString<N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de, const N: usize> Deserialize<'de> for BoundedString<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor<const N: usize>;
        impl<const N: usize> Visitor<'_> for StrVisitor<N> {
            type Value = BoundedString<N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a text string of at most {N} bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                BoundedString::new(v).map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        deserializer.deserialize_str(StrVisitor::<N>)
    }
}
