//! Identities: libp2p compatibility, domain separation, batch = single.

use proptest::prelude::*;
use relaymesh_protocol::identity::domain::Domain;
use relaymesh_protocol::identity::signed::Signed;
use relaymesh_protocol::identity::verify::SignedItem;
use relaymesh_protocol::messages::reveal::Reveal;
use relaymesh_protocol::{
    Digest, Ed25519Verifier, Keypair, PublicKey, Signature, SignatureVerifier, Signer,
};

#[test]
fn peer_id_matches_libp2p() {
    for n in 0..20u8 {
        let key = Keypair::from_secret([n; 32]);
        let libp2p = libp2p_identity::Keypair::ed25519_from_bytes([n; 32]).unwrap();
        let peer = libp2p.public().to_peer_id();
        assert_eq!(key.public_key().peer_id(), peer.to_string());
        assert_eq!(key.public_key().peer_id_bytes().to_vec(), peer.to_bytes());
        assert_eq!(
            PublicKey::from_peer_id(&peer.to_string()),
            Some(key.public_key())
        );
    }
    assert!(PublicKey::from_peer_id("not a peer id").is_none());
}

/// Found by the node's fuzz run: base58 decoding is quadratic, and a transfer body whose
/// `to` was 2 MiB of base58 digits held an API thread for hours. Text longer than any
/// peer id is now refused before decoding; every 38-byte value still fits.
#[test]
fn peer_id_text_longer_than_any_peer_id_is_refused_undecoded() {
    for bytes in [[0u8; 38], [0xff; 38]] {
        assert!(bs58::encode(bytes).into_string().len() <= 52);
    }
    let longest = bs58::encode([0xff; 38]).into_string();
    assert_eq!(longest.len(), 52);
    assert!(PublicKey::from_peer_id(&longest).is_none());
    let key = Keypair::from_secret([7; 32]).public_key();
    assert_eq!(PublicKey::from_peer_id(&key.peer_id()), Some(key));
    assert!(PublicKey::from_peer_id(&"z".repeat(2 << 20)).is_none());
}

#[test]
fn a_signature_for_one_domain_is_invalid_in_another() {
    let key = Keypair::from_secret([1; 32]);
    let reveal = Reveal {
        version: relaymesh_protocol::PROTOCOL_VERSION,
        session_key: Digest([1; 32]),
        root: Digest([2; 32]),
        secret: Digest([3; 32]),
    };
    let signed = Signed::sign(reveal.clone(), &key);
    signed.verify(&key.public_key(), &Ed25519Verifier).unwrap();
    let mut other_domain = Domain::Ack.tag().to_vec();
    other_domain.extend_from_slice(&relaymesh_protocol::wire::to_canonical(&reveal));
    assert!(Ed25519Verifier
        .verify(&key.public_key(), &other_domain, &signed.signature)
        .is_err());
    assert!(signed
        .verify(
            &Keypair::from_secret([2; 32]).public_key(),
            &Ed25519Verifier
        )
        .is_err());
}

fn items(n: usize, corrupt: &[usize]) -> Vec<SignedItem> {
    (0..n)
        .map(|i| {
            let key = Keypair::from_secret([(i % 7) as u8; 32]);
            let message = format!("message {i}").into_bytes();
            let mut signature = key.sign_bytes(&message);
            if corrupt.contains(&i) {
                signature.0[(i * 13) % 64] ^= 1 << (i % 8);
            }
            SignedItem {
                key: key.public_key(),
                message,
                signature,
            }
        })
        .collect()
}

proptest! {
    #[test]
    fn batch_and_single_verification_agree(n in 1usize..40, corrupt in proptest::collection::vec(0usize..40, 0..3)) {
        let items = items(n, &corrupt);
        let single_ok = items.iter().all(|i| Ed25519Verifier.verify(&i.key, &i.message, &i.signature).is_ok());
        prop_assert_eq!(Ed25519Verifier.verify_batch(&items).is_ok(), single_ok);
        let each = Ed25519Verifier.verify_each(&items);
        for (i, ok) in each.iter().enumerate() {
            prop_assert_eq!(*ok, Ed25519Verifier.verify(&items[i].key, &items[i].message, &items[i].signature).is_ok());
        }
    }
}

#[test]
fn small_order_and_garbage_keys_are_handled_alike() {
    // The identity point as a key and an all-zero signature: ZIP-215 accepts it for
    // every message, singly and in a batch, so no two nodes can disagree on it.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let mut sig = [0u8; 64];
    sig[0] = 1;
    let key = PublicKey(identity);
    let signature = Signature(sig);
    let single = Ed25519Verifier
        .verify(&key, b"anything", &signature)
        .is_ok();
    let batch = Ed25519Verifier
        .verify_batch(&[
            SignedItem {
                key,
                message: b"anything".to_vec(),
                signature,
            },
            items(1, &[]).remove(0),
        ])
        .is_ok();
    assert_eq!(single, batch);
    // Bytes that are no curve point at all are an error, never a panic.
    assert!(Ed25519Verifier
        .verify(&PublicKey([0xff; 32]), b"x", &signature)
        .is_err());
}
