//! Who may be in a private mesh: the rules a node applies to a peer's [`Hello`] before
//! its connection may carry anything, and the revocation lists it enforces. A mesh is
//! private when its parameters name owners ([`MeshParams::owners`]); every rule here
//! depends only on signed bytes, the parameters, the peer key the connection's
//! handshake proved, and the verifier's clock.
//!
//! [`Hello`]: crate::messages::membership::Hello

use std::collections::BTreeMap;

use crate::identity::signed::Signed;
use crate::messages::membership::{
    Holder, Invite, SignedInvite, SignedRevocation, TokenProof, ROLE_APP, ROLE_BOTH, ROLE_SUPPLIER,
};
use crate::params::MeshParams;
use crate::{Digest, PublicKey, Signature, SignatureVerifier};

/// What a member may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Role(u8);

impl Role {
    /// Supplier and app: what an owner's own key is.
    pub const BOTH: Role = Role(ROLE_BOTH);
    /// Serve only.
    pub const SUPPLIER: Role = Role(ROLE_SUPPLIER);
    /// Use only.
    pub const APP: Role = Role(ROLE_APP);

    /// The role an invite's byte names, if any.
    pub fn from_byte(byte: u8) -> Option<Role> {
        matches!(byte, ROLE_SUPPLIER | ROLE_APP | ROLE_BOTH).then_some(Role(byte))
    }

    /// Parses `supplier`, `app` or `both`.
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "supplier" => Some(Role::SUPPLIER),
            "app" => Some(Role::APP),
            "both" => Some(Role::BOTH),
            _ => None,
        }
    }

    /// The invite byte.
    pub fn byte(self) -> u8 {
        self.0
    }

    /// May serve inference.
    pub fn supplies(self) -> bool {
        self.0 & ROLE_SUPPLIER != 0
    }

    /// May use suppliers.
    pub fn uses(self) -> bool {
        self.0 & ROLE_APP != 0
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            ROLE_SUPPLIER => "supplier",
            ROLE_APP => "app",
            _ => "both",
        })
    }
}

/// Why a peer is not admitted. The text is meant for the operator of either side.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No invite, and the key is not an owner's.
    #[error("this mesh is private and no invite was presented")]
    NoInvite,
    /// The hello or invite names another mesh.
    #[error("the invite is for another mesh")]
    OtherMesh,
    /// The invite's signer is not one of the mesh's owners.
    #[error("the invite is not signed by an owner of this mesh")]
    NotAnOwner,
    /// The signature does not verify.
    #[error("the invite's signature is forged or damaged")]
    BadSignature,
    /// Past its expiry.
    #[error("the invite expired at {expired_ms} (unix ms)")]
    Expired {
        /// When it expired.
        expired_ms: u64,
    },
    /// It admits another peer.
    #[error("the invite was issued to another peer ({holder})")]
    OtherHolder {
        /// The peer it admits.
        holder: String,
    },
    /// The invite or the peer is on an owner's revocation list.
    #[error("the {what} has been revoked by the mesh's owner")]
    Revoked {
        /// `invite` or `peer`.
        what: &'static str,
    },
    /// A token presented without its key's proof for this peer (an invite read off
    /// the wire, not held).
    #[error("the invite is a token and its proof is missing or made for another peer")]
    NoTokenProof,
    /// A role byte no version defines.
    #[error("the invite names an unknown role")]
    BadRole,
}

impl Refusal {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::NoInvite => "no_invite",
            Refusal::OtherMesh => "other_mesh",
            Refusal::NotAnOwner => "not_an_owner",
            Refusal::BadSignature => "bad_signature",
            Refusal::Expired { .. } => "expired",
            Refusal::OtherHolder { .. } => "other_holder",
            Refusal::Revoked { .. } => "revoked",
            Refusal::NoTokenProof => "no_token_proof",
            Refusal::BadRole => "bad_role",
        }
    }
}

/// A member as admitted: its role, the invite that admitted it (`None` for an owner)
/// and when that invite expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// What it may do.
    pub role: Role,
    /// The invite's id.
    pub invite: Option<Digest>,
    /// When it must leave (unix ms); `u64::MAX` for an owner.
    pub expires_ms: u64,
}

/// Checks an invite on its own: mesh, owner, signature, role, expiry and whom it admits:
/// for an invite issued to one peer, that peer; for a token, a peer that proves it
/// holds the token's key (`proof`, over this mesh and its own key). `presenter` is the
/// key the connection proved.
pub fn check_invite(
    params: &MeshParams,
    invite: &SignedInvite,
    proof: Option<&Signature>,
    presenter: &PublicKey,
    now_ms: u64,
    verifier: &impl SignatureVerifier,
) -> Result<Admitted, Refusal> {
    let body: &Invite = &invite.body;
    if body.mesh_id != params.mesh_id() {
        return Err(Refusal::OtherMesh);
    }
    if !params.is_owner(&body.owner) {
        return Err(Refusal::NotAnOwner);
    }
    invite
        .verify(&body.owner, verifier)
        .map_err(|_| Refusal::BadSignature)?;
    let role = Role::from_byte(body.role).ok_or(Refusal::BadRole)?;
    if now_ms >= body.expires_ms {
        return Err(Refusal::Expired {
            expired_ms: body.expires_ms,
        });
    }
    match body.holder {
        Holder::Peer(holder) if holder != *presenter => {
            return Err(Refusal::OtherHolder {
                holder: holder.peer_id(),
            });
        }
        Holder::Peer(_) => {}
        Holder::Token(key) => {
            let proof = proof.ok_or(Refusal::NoTokenProof)?;
            let signed = Signed {
                body: TokenProof {
                    version: crate::PROTOCOL_VERSION,
                    mesh_id: body.mesh_id,
                    presenter: *presenter,
                },
                signature: *proof,
            };
            signed
                .verify(&key, verifier)
                .map_err(|_| Refusal::NoTokenProof)?;
        }
    }
    Ok(Admitted {
        role,
        invite: Some(body.id),
        expires_ms: body.expires_ms,
    })
}

/// The revocation lists a node enforces: the newest from each owner.
#[derive(Clone, Debug, Default)]
pub struct Revocations {
    lists: BTreeMap<PublicKey, SignedRevocation>,
}

/// What [`Revocations::apply`] did with a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Newer than the one held: it replaces it.
    New,
    /// Not newer: nothing changed.
    Old,
}

impl Revocations {
    /// Takes a list if it is valid and newer than the same owner's held list.
    pub fn apply(
        &mut self,
        params: &MeshParams,
        list: SignedRevocation,
        verifier: &impl SignatureVerifier,
    ) -> Result<Applied, Refusal> {
        let body = &list.body;
        if body.mesh_id != params.mesh_id() {
            return Err(Refusal::OtherMesh);
        }
        if !params.is_owner(&body.owner) {
            return Err(Refusal::NotAnOwner);
        }
        if let Some(held) = self.lists.get(&body.owner) {
            if held.body.seq >= body.seq {
                return Ok(Applied::Old);
            }
        }
        list.verify(&body.owner, verifier)
            .map_err(|_| Refusal::BadSignature)?;
        self.lists.insert(body.owner, list);
        Ok(Applied::New)
    }

    /// Whether a member admitted by `invite` (if any) under key `peer` is revoked.
    pub fn check(&self, invite: Option<&Digest>, peer: &PublicKey) -> Result<(), Refusal> {
        for list in self.lists.values() {
            if invite.is_some_and(|id| list.body.invites.contains(id)) {
                return Err(Refusal::Revoked { what: "invite" });
            }
            if list.body.peers.contains(peer) {
                return Err(Refusal::Revoked { what: "peer" });
            }
        }
        Ok(())
    }

    /// The held lists, one per owner.
    pub fn lists(&self) -> impl Iterator<Item = &SignedRevocation> {
        self.lists.values()
    }

    /// The held list of one owner.
    pub fn of(&self, owner: &PublicKey) -> Option<&SignedRevocation> {
        self.lists.get(owner)
    }
}

/// Decides whether the peer that proved key `peer` and presented `invite` (with
/// `proof`, for a token) is a member: an owner's key needs no invite; anyone else needs
/// a valid, unexpired, unrevoked invite for this mesh, signed by an owner, issued to it
/// or a token it proves it holds.
pub fn admit(
    params: &MeshParams,
    invite: Option<&SignedInvite>,
    proof: Option<&Signature>,
    peer: &PublicKey,
    revocations: &Revocations,
    now_ms: u64,
    verifier: &impl SignatureVerifier,
) -> Result<Admitted, Refusal> {
    if params.is_owner(peer) {
        return Ok(Admitted {
            role: Role::BOTH,
            invite: None,
            expires_ms: u64::MAX,
        });
    }
    let invite = invite.ok_or(Refusal::NoInvite)?;
    let admitted = check_invite(params, invite, proof, peer, now_ms, verifier)?;
    revocations.check(admitted.invite.as_ref(), peer)?;
    Ok(admitted)
}
