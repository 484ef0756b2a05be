//! `Signed<T>`: a message body and one signature over `tag ‖ canonical body`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::identity::domain::Domain;
use crate::identity::verify::{SignatureError, SignatureVerifier, SignedItem, Signer};
use crate::wire::{to_canonical, WireMessage};
use crate::{PublicKey, Signature};

/// A message body that is signed as a whole.
pub trait Signable: Serialize + DeserializeOwned {
    /// Type name for errors and vector files.
    const NAME: &'static str;
    /// Version this build writes and accepts.
    const VERSION: u16;
    /// Maximum encoded size of the signed message.
    const MAX_SIZE: usize;
    /// Selects the signature's tag.
    const DOMAIN: Domain;
    /// The version carried in the body.
    fn version(&self) -> u16;
}

/// The exact bytes a signature over `body` covers.
pub fn signing_bytes<T: Serialize>(domain: Domain, body: &T) -> Vec<u8> {
    let mut bytes = domain.tag().to_vec();
    bytes.extend_from_slice(&to_canonical(body));
    bytes
}

/// A body with one signature. Who must have signed is known from context (the
/// body's own key field, or the session's app); `verify` takes it as an argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed<T> {
    /// The signed content.
    pub body: T,
    /// Signature over `T::DOMAIN.tag() ‖ canonical(body)`.
    pub signature: Signature,
}

// Encoded as the 2-element array `[body, signature]`, like every struct on the wire.
impl<T: Serialize> Serialize for Signed<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (&self.body, &self.signature).serialize(serializer)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Signed<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (body, signature) = <(T, Signature)>::deserialize(deserializer)?;
        Ok(Self { body, signature })
    }
}

impl<T: Signable> Signed<T> {
    /// Signs `body` with `signer`.
    pub fn sign(body: T, signer: &impl Signer) -> Self {
        let signature = signer.sign_bytes(&signing_bytes(T::DOMAIN, &body));
        Self { body, signature }
    }

    /// The signed bytes, for batch verification.
    pub fn signed_item(&self, key: PublicKey) -> SignedItem {
        SignedItem {
            key,
            message: signing_bytes(T::DOMAIN, &self.body),
            signature: self.signature,
        }
    }

    /// Checks that `key` signed this body.
    pub fn verify(
        &self,
        key: &PublicKey,
        verifier: &impl SignatureVerifier,
    ) -> Result<(), SignatureError> {
        verifier.verify(key, &signing_bytes(T::DOMAIN, &self.body), &self.signature)
    }
}

impl<T: Signable> WireMessage for Signed<T> {
    const NAME: &'static str = T::NAME;
    const VERSION: u16 = T::VERSION;
    const MAX_SIZE: usize = T::MAX_SIZE;

    fn version(&self) -> u16 {
        self.body.version()
    }
}
