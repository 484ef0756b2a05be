//! The membership handshake's first frame, as a private mesh's node reads it from a
//! stranger: a length, a `Hello`, and the judgement (revocation lists taken, the invite
//! checked against the peer's key); and the one-line invite token people paste.

use relaymesh_protocol::identity::signed::Signed;
use relaymesh_protocol::messages::membership::{
    Credential, Hello, Holder, Invite, Revocation, ROLE_BOTH,
};
use relaymesh_protocol::wire::WireMessage;
use relaymesh_protocol::{BoundedVec, Digest, Keypair, Signer, PROTOCOL_VERSION};

use super::{FuzzTarget, Mutation};
use crate::mesh::membership::Membership;

const NOW_MS: u64 = 1_750_000_000_000;

/// The target; `None` when no temporary store can be made.
pub fn target() -> Result<FuzzTarget, String> {
    let owner = Keypair::from_secret([7; 32]);
    let member = Keypair::from_secret([8; 32]);
    let mut params = crate::config::named_mesh("fuzz");
    params.owners = BoundedVec::try_from_vec(vec![owner.public_key()]).expect("one owner");
    let mesh_id = params.mesh_id();
    let invite = Signed::sign(
        Invite {
            version: PROTOCOL_VERSION,
            mesh_id,
            id: Digest([9; 32]),
            owner: owner.public_key(),
            holder: Holder::Peer(member.public_key()),
            role: ROLE_BOTH,
            expires_ms: NOW_MS + 60_000,
        },
        &owner,
    );
    let list = Signed::sign(
        Revocation {
            version: PROTOCOL_VERSION,
            mesh_id,
            owner: owner.public_key(),
            seq: 1,
            invites: BoundedVec::try_from_vec(vec![Digest([5; 32])]).expect("one"),
            peers: BoundedVec::new(),
        },
        &owner,
    );
    let hello = |revocations: Vec<_>| Hello {
        version: PROTOCOL_VERSION,
        mesh_id,
        invite: Some(invite.clone()),
        proof: None,
        revocations: BoundedVec::try_from_vec(revocations).expect("fits"),
    };
    let frame = |hello: Hello| {
        let bytes = hello.encode().expect("fits");
        let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
        out.extend(bytes);
        out
    };
    let corpus = vec![frame(hello(vec![list])), frame(hello(Vec::new()))];
    let tree = sled::Config::new()
        .temporary(true)
        .open()
        .and_then(|db| db.open_tree(crate::mesh::membership::TREE))
        .map_err(|e| e.to_string())?;
    let membership = Membership::presenting(
        &params,
        &owner,
        None,
        tree,
        crate::metrics::Metrics::default(),
    );
    let peer = crate::mesh::peer_id_of(&member);
    Ok(FuzzTarget::new(
        "membership hello",
        corpus,
        Mutation::Bytes,
        move |bytes| {
            let Some((len, rest)) = bytes.split_first_chunk::<4>() else {
                return false;
            };
            let len = u32::from_be_bytes(*len) as usize;
            if len > Hello::MAX_SIZE || rest.len() != len {
                return false;
            }
            match Hello::decode(rest) {
                Ok(hello) => membership.judge(&peer, hello, NOW_MS).is_ok(),
                Err(_) => false,
            }
        },
    ))
}

/// The invite token (`rminvite1…`, with a token's secret or without), as `--invite`
/// and `mesh probe` read it.
pub fn token_target() -> FuzzTarget {
    let owner = Keypair::from_secret([7; 32]);
    let invite = |holder| {
        Signed::sign(
            Invite {
                version: PROTOCOL_VERSION,
                mesh_id: Digest([3; 32]),
                id: Digest([9; 32]),
                owner: owner.public_key(),
                holder,
                role: ROLE_BOTH,
                expires_ms: NOW_MS,
            },
            &owner,
        )
    };
    let secret = [4; 32];
    let corpus = [
        Credential {
            invite: invite(Holder::Peer(Keypair::from_secret([8; 32]).public_key())),
            token_secret: None,
        },
        Credential {
            invite: invite(Holder::Token(Keypair::from_secret(secret).public_key())),
            token_secret: Some(secret),
        },
    ]
    .iter()
    .map(|c| c.to_token().into_bytes())
    .collect();
    FuzzTarget::new("invite token", corpus, Mutation::Bytes, |bytes| {
        std::str::from_utf8(bytes).is_ok_and(|text| Credential::from_token(text).is_ok())
    })
}
