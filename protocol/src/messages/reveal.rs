//! `Reveal`: the app opens its commitment `H(r)` for exactly one claimed root.

use serde_tuple::{Deserialize_tuple, Serialize_tuple};

use crate::identity::domain::{hash_tag, tagged_hash, Domain};
use crate::identity::signed::{Signable, Signed};
use crate::Digest;

/// Signed by the app after it sees the supplier's claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct Reveal {
    /// Message version: the protocol version (`PROTOCOL_VERSION`).
    #[serde(deserialize_with = "crate::wire::current_version")]
    pub version: u16,
    /// The session.
    pub session_key: Digest,
    /// The claimed root the app answers.
    pub root: Digest,
    /// The secret `r` whose hash the session pins.
    pub secret: Digest,
}

impl Signable for Reveal {
    const NAME: &'static str = "Reveal";
    const VERSION: u16 = crate::PROTOCOL_VERSION;
    const MAX_SIZE: usize = 256;
    const DOMAIN: Domain = Domain::Reveal;
    fn version(&self) -> u16 {
        self.version
    }
}

/// A reveal with the app's signature.
pub type SignedReveal = Signed<Reveal>;

/// `H(r)`, put in `SessionOpen` when the session opens.
pub fn commitment(secret: &Digest) -> Digest {
    tagged_hash(hash_tag::COMMITMENT, &[&secret.0])
}
