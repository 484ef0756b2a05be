//! Membership of a private mesh: an owner's `Invite` (the credential a member presents),
//! an owner's `Revocation` list, and the two messages of the admission handshake every
//! connection of a private mesh starts with (`Hello`, `Verdict`). The rules that decide
//! admission are in [`crate::membership`].

use serde::{Deserialize, Serialize};
use serde_tuple::{Deserialize_tuple, Serialize_tuple};

use crate::identity::domain::Domain;
use crate::identity::signed::{Signable, Signed};
use crate::wire::WireMessage;
use crate::{BoundedString, BoundedVec, Digest, Keypair, PublicKey, Signature};

/// Most owner keys a private mesh may name.
pub const MAX_OWNERS: usize = 4;
/// Most invites one revocation list may name.
pub const MAX_REVOKED_INVITES: usize = 256;
/// Most peers one revocation list may name.
pub const MAX_REVOKED_PEERS: usize = 256;

/// May serve inference (advertise models, answer inference streams).
pub const ROLE_SUPPLIER: u8 = 1;
/// May use the mesh's suppliers (open sessions, send requests).
pub const ROLE_APP: u8 = 2;
/// Both.
pub const ROLE_BOTH: u8 = ROLE_SUPPLIER | ROLE_APP;

/// Whom an invite admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Holder {
    /// The peer with this key (the connection's handshake proves it).
    Peer(PublicKey),
    /// Whoever holds the secret key of this public key: the token's secret, which
    /// travels only inside the pasted token, never on the wire. A presenter proves it
    /// with a [`TokenProof`] signature over its own peer key, so an invite seen on the
    /// wire is worth nothing to anyone else.
    Token(PublicKey),
}

/// What a token's secret key signs to present the token: this mesh and the presenting
/// peer's key (the key its connection proved), so the proof is good for that peer only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct TokenProof {
    /// Message version: the protocol version (`PROTOCOL_VERSION`).
    #[serde(deserialize_with = "crate::wire::current_version")]
    pub version: u16,
    /// The mesh.
    pub mesh_id: Digest,
    /// The peer presenting the token.
    pub presenter: PublicKey,
}

impl Signable for TokenProof {
    const NAME: &'static str = "TokenProof";
    const VERSION: u16 = crate::PROTOCOL_VERSION;
    const MAX_SIZE: usize = 128;
    const DOMAIN: Domain = Domain::TokenProof;
    fn version(&self) -> u16 {
        self.version
    }
}

/// Signed by one of the mesh's owners: admits `holder` to the mesh in `role` until
/// `expires_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct Invite {
    /// Message version: the protocol version (`PROTOCOL_VERSION`).
    #[serde(deserialize_with = "crate::wire::current_version")]
    pub version: u16,
    /// The mesh it admits to.
    pub mesh_id: Digest,
    /// Chosen at random by the owner; what a revocation names.
    pub id: Digest,
    /// The owner that signs it (one of the mesh parameters' `owners`).
    pub owner: PublicKey,
    /// Whom it admits.
    pub holder: Holder,
    /// [`ROLE_SUPPLIER`], [`ROLE_APP`] or [`ROLE_BOTH`].
    pub role: u8,
    /// Unix ms after which it admits nobody.
    pub expires_ms: u64,
}

impl Signable for Invite {
    const NAME: &'static str = "Invite";
    const VERSION: u16 = crate::PROTOCOL_VERSION;
    const MAX_SIZE: usize = 512;
    const DOMAIN: Domain = Domain::Invite;
    fn version(&self) -> u16 {
        self.version
    }
}

/// An invite with its owner's signature: the credential a member presents.
pub type SignedInvite = Signed<Invite>;

/// The one-line form of a credential that people paste: `rminvite1` and the base58 of
/// the invite's encoding, followed for a token by `.` and the base58 of its secret key.
pub const TOKEN_PREFIX: &str = "rminvite1";

/// What a member keeps and presents: its invite and, for a token, the token's secret
/// key (never sent; it signs the [`TokenProof`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    /// The owner's invite.
    pub invite: SignedInvite,
    /// A token's secret key.
    pub token_secret: Option<[u8; 32]>,
}

impl Credential {
    /// The pasteable one-line form.
    pub fn to_token(&self) -> String {
        let bytes = self.invite.encode().expect("an invite fits its limit");
        let mut out = format!("{TOKEN_PREFIX}{}", bs58::encode(bytes).into_string());
        if let Some(secret) = &self.token_secret {
            out.push('.');
            out.push_str(&bs58::encode(secret).into_string());
        }
        out
    }

    /// Reads a token written by [`Self::to_token`] (surrounding white space ignored).
    pub fn from_token(token: &str) -> Result<Self, String> {
        let token = token.trim();
        let Some(body) = token.strip_prefix(TOKEN_PREFIX) else {
            return Err(format!("an invite token starts with {TOKEN_PREFIX}"));
        };
        // Base58 decoding takes time quadratic in the length: refuse what no invite is.
        if body.len() > 2 * Invite::MAX_SIZE + 64 {
            return Err("the invite token is too long".into());
        }
        let (invite, secret) = match body.split_once('.') {
            Some((invite, secret)) => (invite, Some(secret)),
            None => (body, None),
        };
        let damaged =
            |e: &dyn std::fmt::Display| format!("the invite token is damaged ({e}); copy it whole");
        let bytes = bs58::decode(invite).into_vec().map_err(|e| damaged(&e))?;
        let invite = SignedInvite::decode(&bytes).map_err(|e| damaged(&e))?;
        let token_secret = secret
            .map(|s| {
                let bytes = bs58::decode(s).into_vec().map_err(|e| damaged(&e))?;
                <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| damaged(&"its secret is cut"))
            })
            .transpose()?;
        match (&invite.body.holder, &token_secret) {
            (Holder::Token(key), Some(secret)) => {
                use crate::Signer;
                if Keypair::from_secret(*secret).public_key() != *key {
                    return Err(damaged(&"its secret does not match it"));
                }
            }
            (Holder::Token(_), None) => return Err(damaged(&"its secret is missing")),
            (Holder::Peer(_), Some(_)) => {
                return Err(damaged(&"a peer's invite carries no secret"))
            }
            (Holder::Peer(_), None) => {}
        }
        Ok(Self {
            invite,
            token_secret,
        })
    }

    /// The proof that the peer with key `presenter` holds this token (`None` for an
    /// invite issued to one peer, which needs none).
    pub fn proof(&self, presenter: PublicKey) -> Option<Signature> {
        let secret = self.token_secret?;
        let proof = TokenProof {
            version: crate::PROTOCOL_VERSION,
            mesh_id: self.invite.body.mesh_id,
            presenter,
        };
        Some(Signed::sign(proof, &Keypair::from_secret(secret)).signature)
    }
}

/// Signed by one owner: the invites and peers that owner has revoked. Each list replaces
/// the same owner's lists of lower `seq`, so it names everything still revoked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct Revocation {
    /// Message version: the protocol version (`PROTOCOL_VERSION`).
    #[serde(deserialize_with = "crate::wire::current_version")]
    pub version: u16,
    /// The mesh.
    pub mesh_id: Digest,
    /// The owner (signer).
    pub owner: PublicKey,
    /// Higher replaces lower.
    pub seq: u64,
    /// Revoked invites (every peer admitted by one of them is cut off).
    pub invites: BoundedVec<Digest, MAX_REVOKED_INVITES>,
    /// Revoked peers, whatever invite they present.
    pub peers: BoundedVec<PublicKey, MAX_REVOKED_PEERS>,
}

impl Signable for Revocation {
    const NAME: &'static str = "Revocation";
    const VERSION: u16 = crate::PROTOCOL_VERSION;
    // Two full lists of 34-byte entries and the header.
    const MAX_SIZE: usize = 18 * 1024;
    const DOMAIN: Domain = Domain::Revocation;
    fn version(&self) -> u16 {
        self.version
    }
}

/// A revocation list with its owner's signature.
pub type SignedRevocation = Signed<Revocation>;

/// The first message each side of a private mesh's connection sends: its credential
/// and the revocation lists it holds (so a node that was away learns them on its next
/// connection). Not signed: the connection's own handshake (Noise or TLS) has already
/// proven which key the peer holds, and the credential names that key or is a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct Hello {
    /// Message version: the protocol version (`PROTOCOL_VERSION`).
    #[serde(deserialize_with = "crate::wire::current_version")]
    pub version: u16,
    /// The mesh the sender means to be in.
    pub mesh_id: Digest,
    /// The sender's invite; `None` for an owner's own key, which needs none.
    pub invite: Option<SignedInvite>,
    /// For a token: the token key's signature over a [`TokenProof`] naming the sender.
    pub proof: Option<Signature>,
    /// The newest revocation list the sender holds from each owner.
    pub revocations: BoundedVec<SignedRevocation, MAX_OWNERS>,
}

impl WireMessage for Hello {
    const NAME: &'static str = "Hello";
    const VERSION: u16 = crate::PROTOCOL_VERSION;
    const MAX_SIZE: usize = Invite::MAX_SIZE + MAX_OWNERS * Revocation::MAX_SIZE + 256 + 72;
    fn version(&self) -> u16 {
        self.version
    }
}

/// The answer to a [`Hello`]: admitted, or refused and why (in words for the operator).
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct Verdict {
    /// Message version: the protocol version (`PROTOCOL_VERSION`).
    #[serde(deserialize_with = "crate::wire::current_version")]
    pub version: u16,
    /// `None`: admitted.
    pub refusal: Option<BoundedString<256>>,
}

impl WireMessage for Verdict {
    const NAME: &'static str = "Verdict";
    const VERSION: u16 = crate::PROTOCOL_VERSION;
    const MAX_SIZE: usize = 300;
    fn version(&self) -> u16 {
        self.version
    }
}

impl Verdict {
    /// Admitted.
    pub fn admitted() -> Self {
        Self {
            version: crate::PROTOCOL_VERSION,
            refusal: None,
        }
    }

    /// Refused, with the reason cut to fit.
    pub fn refused(reason: &str) -> Self {
        let mut end = reason.len().min(256);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            version: crate::PROTOCOL_VERSION,
            refusal: Some(BoundedString::new(&reason[..end]).expect("cut to fit")),
        }
    }
}
