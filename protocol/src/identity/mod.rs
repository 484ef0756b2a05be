//! Identities: ed25519 keys that are at once a node's libp2p identity, its ledger
//! account and its signing key, plus the signing and verification rules.

pub mod domain;
pub mod signed;
pub mod verify;

use rand_core::CryptoRngCore;

use crate::identity::verify::Signer;
use crate::{PublicKey, Signature};

/// An ed25519 secret key and its public key.
///
/// The same 32-byte secret is a libp2p ed25519 identity: the node derives its `PeerId`
/// from [`PublicKey::peer_id_bytes`], so a peer on the mesh and an account in the
/// ledger are one and the same.
#[derive(Clone)]
pub struct Keypair {
    signing: ed25519_dalek::SigningKey,
}

impl Keypair {
    /// A fresh key from the caller's cryptographic RNG.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self {
            signing: ed25519_dalek::SigningKey::generate(rng),
        }
    }

    /// The key with this 32-byte secret (seed).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        Self {
            signing: ed25519_dalek::SigningKey::from_bytes(&secret),
        }
    }

    /// The 32-byte secret, for key files and libp2p.
    pub fn secret(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// A secret only this key can compute, for one purpose and input: a supplier's
    /// mining secret for a session is derived from its key and the terms, so it needs
    /// no storage and survives restarts, and nobody else can predict it.
    pub fn derive(&self, purpose: &[u8], input: &[u8]) -> crate::Digest {
        use crate::identity::domain::{hash_tag, tagged_hash};
        let key = tagged_hash(hash_tag::DERIVE, &[&self.secret(), purpose]);
        crate::Digest(*blake3::keyed_hash(&key.0, input).as_bytes())
    }
}

impl std::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        write!(f, "Keypair({})", self.public_key().peer_id())
    }
}

impl Signer for Keypair {
    fn public_key(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key().to_bytes())
    }

    fn sign_bytes(&self, message: &[u8]) -> Signature {
        use ed25519_dalek::Signer as _;
        Signature(self.signing.sign(message).to_bytes())
    }
}

/// Prefix of a libp2p `PeerId` for an ed25519 key: identity multihash (0x00) of length
/// 36 (0x24) over the protobuf `PublicKey { Type: Ed25519 (0x08 0x01), Data: 32 bytes
/// (0x12 0x20) }`.
const PEER_ID_PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];

/// The longest base58 text of 38 bytes: ⌈38 · log 256 / log 58⌉ (a leading zero byte
/// takes one character, never more).
const PEER_ID_TEXT_MAX: usize = 52;

impl PublicKey {
    /// The libp2p `PeerId` bytes for this key (identity multihash of the protobuf key).
    pub fn peer_id_bytes(&self) -> [u8; 38] {
        let mut out = [0u8; 38];
        out[..6].copy_from_slice(&PEER_ID_PREFIX);
        out[6..].copy_from_slice(&self.0);
        out
    }

    /// The `PeerId` as libp2p prints it (base58btc, `12D3KooW…`).
    pub fn peer_id(&self) -> String {
        bs58::encode(self.peer_id_bytes()).into_string()
    }

    /// The key inside an ed25519 `PeerId`, given as bytes or base58 text.
    pub fn from_peer_id(text: &str) -> Option<Self> {
        // Base58 decoding takes time quadratic in the length: text longer than any
        // 38-byte peer id (a 2 MiB API body, say) is refused before it is decoded.
        if text.len() > PEER_ID_TEXT_MAX {
            return None;
        }
        let bytes = bs58::decode(text).into_vec().ok()?;
        Self::from_peer_id_bytes(&bytes)
    }

    /// The key inside ed25519 `PeerId` bytes.
    pub fn from_peer_id_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 38 || bytes[..6] != PEER_ID_PREFIX {
            return None;
        }
        Some(PublicKey(bytes[6..].try_into().ok()?))
    }
}
