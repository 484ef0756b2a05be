//! The admission rules of a private mesh: who is let in, and what each forged, expired,
//! misdirected or revoked credential gets instead.

mod common;

#[path = "common/vectors.rs"]
mod vectors;

use common::key;
use relaymesh_protocol::identity::signed::Signed;
use relaymesh_protocol::membership::{admit, Applied, Refusal, Revocations, Role};
use relaymesh_protocol::messages::membership::{Credential, Revocation, SignedInvite};
use relaymesh_protocol::{BoundedVec, Digest, Ed25519Verifier, Signer, PROTOCOL_VERSION};
use vectors::{invite, private_params, token};

const NOW: u64 = 1_750_000_000_000;
const LATER: u64 = NOW + 60_000;

fn check(invite: Option<&SignedInvite>, peer: u8, revoked: &Revocations) -> Result<Role, Refusal> {
    // A token is presented with its proof for the presenting peer, as a holder does.
    let proof = invite.and_then(|i| {
        Credential {
            invite: i.clone(),
            token_secret: Some(vectors::TOKEN_SECRET),
        }
        .proof(key(peer).public_key())
    });
    admit(
        &private_params(),
        invite,
        proof.as_ref(),
        &key(peer).public_key(),
        revoked,
        NOW,
        &Ed25519Verifier,
    )
    .map(|a| a.role)
}

#[test]
fn members_and_owners_are_admitted() {
    let none = Revocations::default();
    assert_eq!(
        check(Some(&invite(Some(&key(2)), LATER)), 2, &none),
        Ok(Role::BOTH)
    );
    // A token admits whoever presents it.
    assert_eq!(check(Some(&invite(None, LATER)), 5, &none), Ok(Role::BOTH));
    // The owner's own key needs no invite.
    assert_eq!(check(None, 7, &none), Ok(Role::BOTH));
}

#[test]
fn every_bad_credential_is_refused_with_its_reason() {
    let none = Revocations::default();
    assert_eq!(check(None, 2, &none), Err(Refusal::NoInvite));
    // Issued to another peer.
    assert!(matches!(
        check(Some(&invite(Some(&key(2)), LATER)), 3, &none),
        Err(Refusal::OtherHolder { .. })
    ));
    // Expired (the expiry itself is already too late).
    assert_eq!(
        check(Some(&invite(Some(&key(2)), NOW)), 2, &none),
        Err(Refusal::Expired { expired_ms: NOW })
    );
    // Forged: a changed body under the owner's signature.
    let mut forged = invite(Some(&key(2)), LATER);
    forged.body.role = 1;
    assert_eq!(check(Some(&forged), 2, &none), Err(Refusal::BadSignature));
    // Signed by a key that names itself owner but is not one of the mesh's.
    let mut self_made = invite(Some(&key(2)), LATER).body;
    self_made.owner = key(2).public_key();
    let self_made = Signed::sign(self_made, &key(2));
    assert_eq!(check(Some(&self_made), 2, &none), Err(Refusal::NotAnOwner));
    // Another mesh's invite (same owner, other parameters).
    let mut other = invite(Some(&key(2)), LATER).body;
    other.mesh_id = Digest([1; 32]);
    let other = Signed::sign(other, &key(7));
    assert_eq!(check(Some(&other), 2, &none), Err(Refusal::OtherMesh));
    // A role byte nobody defined.
    let mut odd = invite(Some(&key(2)), LATER).body;
    odd.role = 4;
    let odd = Signed::sign(odd, &key(7));
    assert_eq!(check(Some(&odd), 2, &none), Err(Refusal::BadRole));
}

fn revocation(seq: u64, invites: Vec<Digest>, peers: Vec<u8>, signer: u8) -> Signed<Revocation> {
    Signed::sign(
        Revocation {
            version: PROTOCOL_VERSION,
            mesh_id: private_params().mesh_id(),
            owner: key(7).public_key(),
            seq,
            invites: BoundedVec::try_from_vec(invites).unwrap(),
            peers: BoundedVec::try_from_vec(
                peers.into_iter().map(|p| key(p).public_key()).collect(),
            )
            .unwrap(),
        },
        &key(signer),
    )
}

#[test]
fn revocation_lists_cut_off_invites_and_peers_and_only_newer_lists_count() {
    let p = private_params();
    let mut revoked = Revocations::default();
    let token = invite(None, LATER);
    // Revoking the invite cuts off everyone who presents it.
    let first = revocation(1, vec![token.body.id], vec![], 7);
    assert_eq!(revoked.apply(&p, first, &Ed25519Verifier), Ok(Applied::New));
    assert_eq!(
        check(Some(&token), 5, &revoked),
        Err(Refusal::Revoked { what: "invite" })
    );
    // A later list replaces it: the invite is back, one peer is out.
    let second = revocation(2, vec![], vec![5], 7);
    assert_eq!(
        revoked.apply(&p, second, &Ed25519Verifier),
        Ok(Applied::New)
    );
    assert_eq!(
        check(Some(&token), 5, &revoked),
        Err(Refusal::Revoked { what: "peer" })
    );
    assert_eq!(check(Some(&token), 6, &revoked), Ok(Role::BOTH));
    // A replayed older list changes nothing.
    let replay = revocation(1, vec![token.body.id], vec![], 7);
    assert_eq!(
        revoked.apply(&p, replay, &Ed25519Verifier),
        Ok(Applied::Old)
    );
    assert_eq!(check(Some(&token), 6, &revoked), Ok(Role::BOTH));
    // A list not signed by the owner it names is refused.
    let forged = revocation(3, vec![], vec![6], 2);
    assert_eq!(
        revoked.apply(&p, forged, &Ed25519Verifier),
        Err(Refusal::BadSignature)
    );
    assert_eq!(check(Some(&token), 6, &revoked), Ok(Role::BOTH));
    // The owner itself cannot be revoked out of its own mesh.
    let owner_out = revocation(4, vec![], vec![7], 7);
    assert_eq!(
        revoked.apply(&p, owner_out, &Ed25519Verifier),
        Ok(Applied::New)
    );
    assert_eq!(check(None, 7, &revoked), Ok(Role::BOTH));
}

#[test]
fn tokens_round_trip_and_damaged_ones_say_so() {
    let token = token(LATER);
    let text = token.to_token();
    assert!(!text.contains(char::is_whitespace));
    assert_eq!(
        Credential::from_token(&format!(" {text}\n")),
        Ok(token.clone())
    );
    let cut = &text[..text.len() - 3];
    assert!(Credential::from_token(cut).unwrap_err().contains("damaged"));
    let without_secret = text.split('.').next().unwrap();
    assert!(Credential::from_token(without_secret)
        .unwrap_err()
        .contains("secret is missing"));
    assert!(Credential::from_token("hello")
        .unwrap_err()
        .contains("starts with"));
    let long = format!("rminvite1{}", "1".repeat(100_000));
    assert!(Credential::from_token(&long)
        .unwrap_err()
        .contains("too long"));
    // A peer's invite has no secret part.
    let bound = Credential {
        invite: invite(Some(&key(2)), LATER),
        token_secret: None,
    };
    assert_eq!(Credential::from_token(&bound.to_token()), Ok(bound));
}

/// Failed before tokens were proven: a member sends its invite in every hello, so a
/// stranger that a member dialled (or that dialled one) read a token off the wire and
/// joined with it under any key. Now the token's secret never travels: a presenter
/// signs its own key with it, and an invite without that proof admits nobody.
#[test]
fn a_token_read_off_the_wire_admits_nobody() {
    let none = Revocations::default();
    let (p, stranger) = (private_params(), key(6).public_key());
    let token = token(LATER);
    let verify = |proof: Option<&relaymesh_protocol::Signature>| {
        admit(
            &p,
            Some(&token.invite),
            proof,
            &stranger,
            &none,
            NOW,
            &Ed25519Verifier,
        )
        .map(|a| a.role)
    };
    // The holder's own proof, replayed by the stranger.
    let holders = token.proof(key(5).public_key()).unwrap();
    assert_eq!(verify(Some(&holders)), Err(Refusal::NoTokenProof));
    assert_eq!(verify(None), Err(Refusal::NoTokenProof));
    // With the secret, the stranger would be a holder.
    assert_eq!(verify(token.proof(stranger).as_ref()), Ok(Role::BOTH));
    assert_eq!(check(Some(&token.invite), 5, &none), Ok(Role::BOTH));
}

#[test]
fn roles_parse_and_say_what_they_allow() {
    assert_eq!(Role::parse("supplier"), Some(Role::SUPPLIER));
    assert!(Role::SUPPLIER.supplies() && !Role::SUPPLIER.uses());
    assert!(Role::APP.uses() && !Role::APP.supplies());
    assert_eq!(
        Role::parse("both").map(|r| r.to_string()),
        Some("both".into())
    );
    assert_eq!(Role::parse("admin"), None);
}
