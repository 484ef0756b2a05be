//! A private mesh's membership as one node holds it: its own invite, the owners'
//! revocation lists (kept in sled), and the members it admitted. The rules are
//! `relaymesh_protocol::membership`; the handshake that applies them to every
//! connection is [`super::admission`].

use std::collections::HashMap;
use std::sync::Mutex;

use libp2p::PeerId;
use relaymesh_protocol::membership::{admit, Admitted, Applied, Refusal, Revocations, Role};
use relaymesh_protocol::messages::membership::{Credential, Hello, SignedRevocation};
use relaymesh_protocol::params::MeshParams;
use relaymesh_protocol::wire::WireMessage;
use relaymesh_protocol::{BoundedVec, Ed25519Verifier, PublicKey, Signer};

use crate::metrics::{Metrics, ReasonLabel};

/// The sled tree a node keeps its invite and revocation lists in.
pub const TREE: &str = "membership";
const INVITE_KEY: &[u8] = b"invite";
const REVOCATION_PREFIX: &[u8] = b"revocation/";

/// How many admitted peers are remembered: enough for every connection a node allows.
const MAX_REMEMBERED: usize = 4096;

/// A private mesh's membership at one node.
pub struct Membership {
    params: MeshParams,
    own_key: PublicKey,
    credential: Option<Credential>,
    /// For a token: its proof for this node's key (made once, sent in every hello).
    own_proof: Option<relaymesh_protocol::Signature>,
    own: Admitted,
    revocations: Mutex<Revocations>,
    /// Admitted peers, with when (unix ms) they were admitted.
    admitted: Mutex<HashMap<PeerId, (Admitted, u64)>>,
    tree: sled::Tree,
    metrics: Metrics,
}

/// An invite to the private mesh `params`, signed by its `owner`: for `peer` only, or
/// (`None`) for whoever holds the token (it gets a key of its own, whose secret travels
/// only inside the token); admitting it as `role` until `expires_ms` (unix ms).
pub fn make_invite(
    params: &MeshParams,
    owner: &relaymesh_protocol::Keypair,
    peer: Option<PublicKey>,
    role: Role,
    expires_ms: u64,
) -> Credential {
    use relaymesh_protocol::identity::signed::Signed;
    use relaymesh_protocol::messages::membership::{Holder, Invite};
    let token_key = peer
        .is_none()
        .then(|| relaymesh_protocol::Keypair::generate(&mut rand_core::OsRng));
    let holder = match (peer, &token_key) {
        (Some(peer), _) => Holder::Peer(peer),
        (None, Some(k)) => Holder::Token(k.public_key()),
        (None, None) => unreachable!("a token key is made when no peer is named"),
    };
    let mut id = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
    Credential {
        invite: Signed::sign(
            Invite {
                version: relaymesh_protocol::PROTOCOL_VERSION,
                mesh_id: params.mesh_id(),
                id: relaymesh_protocol::Digest(id),
                owner: owner.public_key(),
                holder,
                role: role.byte(),
                expires_ms,
            },
            owner,
        ),
        token_secret: token_key.map(|k| k.secret()),
    }
}

/// An invite as a person gives it: the token `relaymesh mesh invite` printed, or a file
/// holding it.
pub fn read_invite(given: &str) -> Result<Credential, String> {
    use relaymesh_protocol::messages::membership::TOKEN_PREFIX;
    let token = if given.trim().starts_with(TOKEN_PREFIX) {
        given.to_owned()
    } else {
        std::fs::read_to_string(given).map_err(|e| {
            format!("--invite {given:?}: neither an invite token ({TOKEN_PREFIX}…) nor a readable file: {e}")
        })?
    };
    Credential::from_token(&token).map_err(|e| format!("--invite: {e}"))
}

impl Membership {
    /// The membership of a private mesh, `None` for a public one. Takes `invite` (and
    /// stores it) or the invite stored before, loads the stored revocation lists, and
    /// checks that this node is itself a member: a node with a wrong, expired or
    /// revoked invite says so and does not start.
    pub fn open(
        params: &MeshParams,
        key: &relaymesh_protocol::Keypair,
        invite: Option<Credential>,
        tree: sled::Tree,
        metrics: Metrics,
        now_ms: u64,
    ) -> Result<Option<Self>, String> {
        if !params.is_private() {
            if invite.is_some() {
                return Err("--invite is for a private mesh, and this mesh's parameters name no owners (a public mesh needs no invite)".into());
            }
            return Ok(None);
        }
        let db = |e: sled::Error| format!("membership store: {e}");
        let mut revocations = Revocations::default();
        for item in tree.scan_prefix(REVOCATION_PREFIX) {
            let (_, bytes) = item.map_err(db)?;
            if let Ok(list) = SignedRevocation::decode(&bytes) {
                let _ = revocations.apply(params, list, &Ed25519Verifier);
            }
        }
        let credential = match invite {
            Some(credential) => {
                tree.insert(INVITE_KEY, credential.to_token().into_bytes())
                    .map_err(db)?;
                Some(credential)
            }
            None => match tree.get(INVITE_KEY).map_err(db)? {
                Some(bytes) => Some(
                    Credential::from_token(&String::from_utf8_lossy(&bytes)).map_err(|e| {
                        format!("the stored invite is unreadable ({e}); join again with --invite")
                    })?,
                ),
                None => None,
            },
        };
        let own_key = key.public_key();
        let invite = credential.as_ref().map(|c| &c.invite);
        let proof = credential.as_ref().and_then(|c| c.proof(own_key));
        let own = admit(params, invite, proof.as_ref(), &own_key, &revocations, now_ms, &Ed25519Verifier)
            .map_err(|refusal| match refusal {
                Refusal::NoInvite => format!(
                    "mesh {} is private: join with --invite TOKEN (or a file holding it), which its owner makes with `relaymesh mesh invite`",
                    params.name.as_str()
                ),
                other => format!("cannot join private mesh {}: {other}", params.name.as_str()),
            })?;
        Ok(Some(Self {
            params: params.clone(),
            own_key,
            credential,
            own_proof: proof,
            own,
            revocations: Mutex::new(revocations),
            admitted: Mutex::new(HashMap::new()),
            tree,
            metrics,
        }))
    }

    /// A membership that presents `credential` whatever it is worth, without checking
    /// it first: for `relaymesh mesh probe`, which asks a peer what it thinks of one.
    pub fn presenting(
        params: &MeshParams,
        key: &relaymesh_protocol::Keypair,
        credential: Option<Credential>,
        tree: sled::Tree,
        metrics: Metrics,
    ) -> Self {
        let invite = credential.as_ref().map(|c| &c.invite.body);
        Self {
            params: params.clone(),
            own_key: key.public_key(),
            own: Admitted {
                role: Role::BOTH,
                invite: invite.map(|i| i.id),
                expires_ms: invite.map_or(0, |i| i.expires_ms),
            },
            own_proof: credential.as_ref().and_then(|c| c.proof(key.public_key())),
            credential,
            revocations: Mutex::new(Revocations::default()),
            admitted: Mutex::new(HashMap::new()),
            tree,
            metrics,
        }
    }

    /// This node's own role and invite.
    pub fn own(&self) -> Admitted {
        self.own
    }

    /// The hello this node opens each connection with.
    pub fn hello(&self) -> Hello {
        let revocations = self.revocations.lock().expect("membership lock");
        Hello {
            version: relaymesh_protocol::PROTOCOL_VERSION,
            mesh_id: self.params.mesh_id(),
            invite: self.credential.as_ref().map(|c| c.invite.clone()),
            proof: self.own_proof,
            revocations: BoundedVec::try_from_vec(revocations.lists().cloned().collect())
                .expect("one list per owner"),
        }
    }

    /// Judges a peer's hello: takes the revocation lists it brings, then decides on
    /// its invite. Counts a refusal by reason.
    pub fn judge(&self, peer: &PeerId, hello: Hello, now_ms: u64) -> Result<Admitted, Refusal> {
        let verdict = (|| {
            if hello.mesh_id != self.params.mesh_id() {
                return Err(Refusal::OtherMesh);
            }
            for list in hello.revocations.into_vec() {
                let _ = self.apply_revocation(list);
            }
            let key = super::public_key_of(peer).ok_or(Refusal::NotAnOwner)?;
            let revocations = self.revocations.lock().expect("membership lock");
            admit(
                &self.params,
                hello.invite.as_ref(),
                hello.proof.as_ref(),
                &key,
                &revocations,
                now_ms,
                &Ed25519Verifier,
            )
        })();
        match &verdict {
            Ok(admitted) => {
                let mut map = self.admitted.lock().expect("membership lock");
                if map.len() >= MAX_REMEMBERED && !map.contains_key(peer) {
                    // Forget the member admitted longest ago; if it is still connected,
                    // it is cut off at the next check and admitted again when it
                    // reconnects (no connected peer goes unchecked).
                    if let Some(first) = map.iter().min_by_key(|(_, (_, at))| *at) {
                        let first = *first.0;
                        map.remove(&first);
                    }
                }
                map.insert(*peer, (*admitted, now_ms));
            }
            Err(refusal) => self.count_refusal(refusal.label()),
        }
        verdict
    }

    /// Counts a connection refused, by reason (`by_peer` when a peer refused us).
    pub fn count_refusal(&self, reason: &str) {
        self.metrics
            .membership_refused
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// The role a connected peer was admitted with.
    pub fn role_of(&self, peer: &PeerId) -> Option<Role> {
        self.admitted
            .lock()
            .expect("membership lock")
            .get(peer)
            .map(|(a, _)| a.role)
    }

    /// What a peer was admitted with.
    pub fn admitted(&self, peer: &PeerId) -> Option<Admitted> {
        self.admitted
            .lock()
            .expect("membership lock")
            .get(peer)
            .map(|(a, _)| *a)
    }

    /// Takes a revocation list (from gossip, a hello or the API) if it is an owner's
    /// and newer than the one held; a new one is stored.
    pub fn apply_revocation(&self, list: SignedRevocation) -> Result<Applied, Refusal> {
        let owner = list.body.owner;
        let bytes = list.encode().map_err(|_| Refusal::BadSignature)?;
        // Stored under the lock, so a list and a newer one applied at once are stored
        // in the order they were taken (the newer last).
        let mut revocations = self.revocations.lock().expect("membership lock");
        let applied = revocations.apply(&self.params, list, &Ed25519Verifier)?;
        if applied == Applied::New {
            let mut key = REVOCATION_PREFIX.to_vec();
            key.extend_from_slice(owner.as_bytes());
            if let Err(e) = self.tree.insert(key, bytes) {
                tracing::warn!(error = %e, "could not store a revocation list");
            }
        }
        Ok(applied)
    }

    /// Whether an owner has revoked this peer key (whatever its invite).
    pub fn is_revoked_peer(&self, key: &PublicKey) -> bool {
        !self.params.is_owner(key)
            && self
                .revocations
                .lock()
                .expect("membership lock")
                .check(None, key)
                .is_err()
    }

    /// The revocation lists held, one per owner.
    pub fn revocations(&self) -> Vec<SignedRevocation> {
        self.revocations
            .lock()
            .expect("membership lock")
            .lists()
            .cloned()
            .collect()
    }

    /// Peers among `connected` that must be cut off now: their invite expired, they
    /// were revoked since they were admitted, or no admission of theirs is on record.
    /// Forgets admitted peers that are not connected once their handshake is long over
    /// (a peer is admitted before the swarm reports its connection).
    pub fn to_cut(&self, connected: &[PeerId], now_ms: u64) -> Vec<(PeerId, Refusal)> {
        let revocations = self.revocations.lock().expect("membership lock");
        let mut admitted = self.admitted.lock().expect("membership lock");
        let settle_ms = super::CONNECTION_TIMEOUT.as_millis() as u64;
        let is_connected: std::collections::HashSet<&PeerId> = connected.iter().collect();
        admitted.retain(|peer, (_, at)| {
            is_connected.contains(peer) || now_ms < at.saturating_add(settle_ms)
        });
        let mut cut = Vec::new();
        for peer in connected {
            let Some((member, _)) = admitted.get(peer) else {
                cut.push((*peer, Refusal::NoInvite));
                continue;
            };
            let key = super::public_key_of(peer);
            if let Some(refusal) = self.ended(member, key.as_ref(), &revocations, now_ms) {
                cut.push((*peer, refusal));
            }
        }
        for (peer, _) in &cut {
            admitted.remove(peer);
        }
        cut
    }

    /// Whether this node's own membership has ended (its invite expired or revoked).
    pub fn own_refusal(&self, now_ms: u64) -> Option<Refusal> {
        let revocations = self.revocations.lock().expect("membership lock");
        self.ended(&self.own, Some(&self.own_key), &revocations, now_ms)
    }

    /// Why a member admitted as `member` under `key` may stay no longer, if it may not:
    /// its invite expired, or it or its invite was revoked (an owner never is).
    fn ended(
        &self,
        member: &Admitted,
        key: Option<&PublicKey>,
        revocations: &Revocations,
        now_ms: u64,
    ) -> Option<Refusal> {
        if now_ms >= member.expires_ms {
            return Some(Refusal::Expired {
                expired_ms: member.expires_ms,
            });
        }
        let key = key.filter(|k| !self.params.is_owner(k))?;
        revocations.check(member.invite.as_ref(), key).err()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaymesh_protocol::identity::signed::Signed;
    use relaymesh_protocol::messages::membership::{Holder, Invite, ROLE_APP};
    use relaymesh_protocol::{Digest, Keypair};

    const NOW: u64 = 1_750_000_000_000;

    fn membership() -> (Membership, Hello, PeerId) {
        let owner = Keypair::from_secret([7; 32]);
        let member = Keypair::from_secret([8; 32]);
        let mut params = crate::config::named_mesh("membership-tests");
        params.owners = BoundedVec::try_from_vec(vec![owner.public_key()]).unwrap();
        let invite = Signed::sign(
            Invite {
                version: relaymesh_protocol::PROTOCOL_VERSION,
                mesh_id: params.mesh_id(),
                id: Digest([9; 32]),
                owner: owner.public_key(),
                holder: Holder::Peer(member.public_key()),
                role: ROLE_APP,
                expires_ms: NOW + 3_600_000,
            },
            &owner,
        );
        let hello = Hello {
            version: relaymesh_protocol::PROTOCOL_VERSION,
            mesh_id: params.mesh_id(),
            invite: Some(invite),
            proof: None,
            revocations: BoundedVec::new(),
        };
        let tree = sled::Config::new()
            .temporary(true)
            .open()
            .unwrap()
            .open_tree(TREE)
            .unwrap();
        let m = Membership::presenting(&params, &owner, None, tree, Metrics::default());
        (m, hello, crate::mesh::peer_id_of(&member))
    }

    /// Failed before: a check that ran between a peer's admission and the swarm's
    /// report of its connection forgot the admission, and the connection then ran with
    /// no role (refused as an app) and escaped later revocation and expiry checks.
    #[test]
    fn an_admission_outlives_the_moment_before_its_connection_is_reported() {
        let (m, hello, peer) = membership();
        m.judge(&peer, hello, NOW).unwrap();
        assert!(m.to_cut(&[], NOW + 100).is_empty());
        assert_eq!(m.role_of(&peer), Some(Role::APP));
        // Connected now, and checked as a member.
        assert!(m.to_cut(&[peer], NOW + 200).is_empty());
        // Expired: cut off.
        let cut = m.to_cut(&[peer], NOW + 3_600_000);
        assert!(matches!(cut.as_slice(), [(p, Refusal::Expired { .. })] if *p == peer));
    }

    /// A connected peer with no admission on record is cut off, not left unchecked.
    #[test]
    fn a_connection_without_an_admission_is_cut_off() {
        let (m, _, peer) = membership();
        let cut = m.to_cut(&[peer], NOW);
        assert!(matches!(cut.as_slice(), [(p, Refusal::NoInvite)] if *p == peer));
    }
}
