//! Claims, challenges, proofs and the attacks they must stop.

mod common;

use common::*;
use relaymesh_protocol::identity::signed::Signed;
use relaymesh_protocol::ledger::{Applied, ClaimStatus, Ledger, LedgerError};
use relaymesh_protocol::messages::claim::Claim;
use relaymesh_protocol::messages::proof::{Proof, ProofEvidence};
use relaymesh_protocol::metering::receipt::ReceiptError;
use relaymesh_protocol::settlement::claim::{verify_claim, ClaimError};
use relaymesh_protocol::settlement::proof::{sign_reveal, verify_proof, ProofError};
use relaymesh_protocol::sumtree::{LeafEntry, MemoryStore, SumTree};
use relaymesh_protocol::{BoundedVec, Digest, Ed25519Verifier, Signature, Signer};

const V: Ed25519Verifier = Ed25519Verifier;

fn honest(nonce: u64) -> (relaymesh_protocol::params::MeshParams, RanSession) {
    let (app, supplier) = (key(1), key(2));
    let params = params(&[(&app, 1_000_000_000)]);
    let o = open(SessionTerms {
        params: &params,
        app: &app,
        supplier: &supplier,
        manifest: None,
        tau: 400,
        price: 3,
        start_ms: 1_000,
        nonce,
        escrow: relaymesh_protocol::messages::credit::CreditSlot::new(nonce * 1_000_000, 1_000_000),
    });
    let ran = run_session(o, &app, 6, 12, 40);
    (params, ran)
}

fn sampled_proof(ran: &RanSession, claim_id: Digest, samples: u16, nonce: u64) -> Proof {
    let root = ran.mined.root().unwrap();
    let reveal = sign_reveal(ran.open.session_key(), root.hash, secret(nonce), &key(1));
    ran.mined.sampled_proof(claim_id, reveal, samples).unwrap()
}

#[test]
fn honest_claim_settles_with_sampled_and_with_full_proof() {
    let (params, ran) = honest(1);
    let claim = claim(&ran, &key(2));
    let verified = verify_claim(&claim, &params, &V).unwrap();
    assert!(verified.count >= 1);
    let proof = sampled_proof(&ran, claim.id(), params.proof_samples, 1);
    verify_proof(&claim, &proof, &params, &V).unwrap();
    // The app never reveals: the full reveal settles the claim as well.
    let full = ran.mined.full_reveal(claim.id()).unwrap();
    verify_proof(&claim, &full, &params, &V).unwrap();
    let bytes = relaymesh_protocol::WireMessage::encode(&proof).unwrap();
    println!(
        "claim {} bytes, sampled proof {} bytes",
        claim.body.count,
        bytes.len()
    );
}

/// An honest claim and its sampled proof, with the first sampled receipt altered.
fn tampered_proof(
    tamper: impl FnOnce(&mut relaymesh_protocol::metering::receipt::Receipt),
) -> (
    relaymesh_protocol::params::MeshParams,
    relaymesh_protocol::messages::claim::SignedClaim,
    Proof,
) {
    let (params, ran) = honest(1);
    let claim = claim(&ran, &key(2));
    let mut proof = sampled_proof(&ran, claim.id(), params.proof_samples, 1);
    let ProofEvidence::Sampled(sampled) = &mut proof.evidence else {
        unreachable!()
    };
    let mut leaves = sampled.leaves.clone().into_vec();
    tamper(&mut leaves[0].receipt);
    sampled.leaves = BoundedVec::try_from_vec(leaves).unwrap();
    (params, claim, proof)
}

#[test]
fn forged_receipt_is_rejected() {
    let (params, claim, proof) = tampered_proof(|r| r.ack.signature = Signature([7; 64]));
    assert!(matches!(
        verify_proof(&claim, &proof, &params, &V),
        Err(ProofError::Signature(_))
    ));
}

#[test]
fn inflated_token_count_is_rejected() {
    let (params, claim, proof) = tampered_proof(|r| r.ack.body.new_bytes += 1000);
    // The inflated ack no longer matches the tree (its relay hash moved) or its signature.
    assert!(verify_proof(&claim, &proof, &params, &V).is_err());
}

#[test]
fn replayed_receipt_cannot_be_counted_twice() {
    let (params, ran) = honest(1);
    let receipt = ran.receipts[0].clone();
    let mut tree = SumTree::new();
    let facts = receipt
        .check(&ran.open.session_key(), &ran.open.body)
        .unwrap();
    let leaf = LeafEntry {
        key: facts.relay_hash,
        value: facts.digest,
        weight: facts.mined_value(400),
    };
    tree.insert(leaf).unwrap();
    assert!(tree.insert(leaf).is_err());
    // In a full reveal the duplicate is named.
    let mut receipts: Vec<_> = ran.mined.receipts().values().cloned().collect();
    let last = receipts.len() - 1;
    receipts[last] = receipts[0].clone();
    let claim = claim(&ran, &key(2));
    let full = Proof {
        version: relaymesh_protocol::PROTOCOL_VERSION,
        claim: claim.id(),
        mining_secret: ran.mined.mining_secret(),
        evidence: ProofEvidence::Full(relaymesh_protocol::messages::proof::FullReveal {
            receipts: BoundedVec::try_from_vec(receipts).unwrap(),
        }),
    };
    assert!(matches!(
        verify_proof(&claim, &full, &params, &V),
        Err(ProofError::DuplicateLeaf(_))
    ));
    // A receipt from another session does not check against this one.
    let (_, other) = honest(2);
    assert_eq!(
        other.receipts[0].check(&ran.open.session_key(), &ran.open.body),
        Err(ReceiptError::WrongSession)
    );
}

#[test]
fn proof_for_a_different_seed_is_rejected() {
    let (params, ran) = honest(1);
    let claim = claim(&ran, &key(2));
    // The supplier samples from a seed of its choosing, then attaches the real reveal.
    let root = ran.mined.root().unwrap();
    let fake_reveal = sign_reveal(ran.open.session_key(), root.hash, Digest([9; 32]), &key(1));
    let mut proof = ran
        .mined
        .sampled_proof(claim.id(), fake_reveal, params.proof_samples)
        .unwrap();
    let real = sign_reveal(ran.open.session_key(), root.hash, secret(1), &key(1));
    let ProofEvidence::Sampled(sampled) = &mut proof.evidence else {
        unreachable!()
    };
    // With the fake reveal itself the commitment does not open.
    let fake = Proof {
        version: relaymesh_protocol::PROTOCOL_VERSION,
        claim: claim.id(),
        mining_secret: ran.mined.mining_secret(),
        evidence: ProofEvidence::Sampled(sampled.clone()),
    };
    assert!(matches!(
        verify_proof(&claim, &fake, &params, &V),
        Err(ProofError::BadReveal(_))
    ));
    sampled.reveal = real;
    assert!(matches!(
        verify_proof(&claim, &proof, &params, &V),
        Err(ProofError::WrongLeaf { .. })
    ));
}

#[test]
fn claim_for_a_session_that_never_existed_is_rejected() {
    let (params, ran) = honest(1);
    let claim_over = |open, sum, count, signer: &relaymesh_protocol::Keypair| {
        Signed::sign(
            Claim {
                version: relaymesh_protocol::PROTOCOL_VERSION,
                open,
                root: Digest([1; 32]),
                sum,
                count,
            },
            signer,
        )
    };
    let mut open = ran.open.clone();
    open.app_signature = Signature([1; 64]);
    let forged = claim_over(open, 10_000, 3, &key(2));
    assert!(matches!(
        verify_claim(&forged, &params, &V),
        Err(ClaimError::Session(_))
    ));
    // A claim by someone who is not the session's supplier.
    let stranger = claim_over(ran.open.clone(), 10_000, 3, &key(9));
    assert!(matches!(
        verify_claim(&stranger, &params, &V),
        Err(ClaimError::Signature(_))
    ));
    // An impossible shape: more leaves than the sum can pay at τ.
    let impossible = claim_over(ran.open.clone(), 10, 3, &key(2));
    assert!(matches!(
        verify_claim(&impossible, &params, &V),
        Err(ClaimError::BadShape { .. })
    ));
}

/// A claim whose sum is padded with fake leaves worth fraction `f` is caught by each
/// sample with probability `f`.
#[test]
fn fake_leaves_are_caught_at_their_weight_fraction() {
    let (_, ran) = honest(1);
    let real: Vec<LeafEntry> = ran
        .mined
        .receipts()
        .values()
        .map(|r| {
            let f = r.check(&ran.open.session_key(), &ran.open.body).unwrap();
            LeafEntry {
                key: f.relay_hash,
                value: f.digest,
                weight: f.mined_value(400),
            }
        })
        .collect();
    let real_sum: u64 = real.iter().map(|l| l.weight).sum();
    // Fake leaves worth a quarter of the padded sum: f = 0.25.
    let fake_total = real_sum / 3;
    let fakes: Vec<LeafEntry> = (0..4u8)
        .map(|i| LeafEntry {
            key: Digest([0xf0 | i; 32]),
            value: Digest([i; 32]),
            weight: fake_total / 4,
        })
        .collect();
    let fake_sum: u64 = fakes.iter().map(|l| l.weight).sum();
    let f = fake_sum as f64 / (real_sum + fake_sum) as f64;
    let mut all = real.clone();
    all.extend(fakes.iter().copied());
    let tree = SumTree::build(MemoryStore::default(), all).unwrap();
    let root = tree.root().unwrap();
    let trials = 2000u64;
    let mut caught = 0;
    for t in 0..trials {
        // One sample per trial, from a fresh seed.
        let seed = Digest(*blake3::hash(&t.to_be_bytes()).as_bytes());
        let point = relaymesh_protocol::settlement::challenge::sample_point(&seed, 0, root.sum);
        let path = tree.sample(point).unwrap();
        if fakes.iter().any(|l| l.key == path.leaf.key) {
            caught += 1;
        }
    }
    let rate = caught as f64 / trials as f64;
    println!("fake fraction {f:.3}, caught per sample {rate:.3}");
    // Binomial standard deviation at n = 2000 is about 0.01; allow 4 sigma.
    assert!((rate - f).abs() < 0.04, "rate {rate} vs f {f}");
}

#[test]
fn equivocation_produces_evidence_and_excludes_the_supplier() {
    let (params, ran) = honest(1);
    let mut ledger = Ledger::new(params.clone());
    let first = claim(&ran, &key(2));
    let mut body = first.body.clone();
    body.sum += 400;
    body.count += 1;
    let second = Signed::sign(body, &key(2));
    assert_eq!(
        ledger.apply_claim(first.clone(), &V).unwrap(),
        Applied::Pending
    );
    let Applied::Equivocation(evidence) = ledger.apply_claim(second, &V).unwrap() else {
        panic!("expected equivocation")
    };
    assert_eq!(
        evidence.verify(&params, &params.mesh_id(), &V).unwrap(),
        (key(2).public_key(), 0)
    );
    assert!(ledger.is_excluded(&key(2).public_key()));
    // Its proof no longer moves credit.
    let proof = sampled_proof(&ran, first.id(), params.proof_samples, 1);
    assert_eq!(ledger.apply_proof(&proof, &V).unwrap(), Applied::Void);
    assert_eq!(ledger.claim_status(&first.id()), Some(ClaimStatus::Void));
    assert_eq!(ledger.account(&key(2).public_key()).balance, 0);
    // Another node that only sees the evidence reaches the same verdict.
    let mut other = Ledger::new(params);
    other.apply_evidence(*evidence, &V).unwrap();
    assert!(other.is_excluded(&key(2).public_key()));
}

#[test]
fn frozen_epochs_refuse_late_messages() {
    let (params, ran) = honest(1);
    let mut ledger = Ledger::new(params.clone());
    // Session started in epoch 0; at epoch 3 (horizon 3) epoch 0 freezes.
    assert_eq!(ledger.advance(30_000), 1);
    let late = claim(&ran, &key(2));
    assert!(matches!(
        ledger.apply_claim(late, &V),
        Err(LedgerError::Frozen { epoch: 0, .. })
    ));
}

#[test]
fn supplier_checks_each_link_against_the_previous_one() {
    let (_, ran) = honest(1);
    let key = ran.open.session_key();
    let first = &ran.receipts[0];
    let second = &ran.receipts[1];
    let head = first.request.body.ack_chain_head;
    let by_walk = second.check(&key, &ran.open.body).unwrap();
    assert_eq!(
        first.check_next(&key, &ran.open.body, &head).unwrap(),
        first.check(&key, &ran.open.body).unwrap()
    );
    assert_eq!(
        second
            .check_next(&key, &ran.open.body, &first.ack.body.chain_secret)
            .unwrap(),
        by_walk
    );
    // Skipping a link, or replaying the previous one, fails.
    assert_eq!(
        second.check_next(&key, &ran.open.body, &head),
        Err(ReceiptError::BadChainLink)
    );
    let mut forged = second.clone();
    forged.ack.body.chain_secret = Digest([3; 32]);
    assert_eq!(
        forged.check(&key, &ran.open.body),
        Err(ReceiptError::BadChainLink)
    );
}

#[test]
fn claim_with_a_forged_manifest_is_rejected_by_name() {
    let (app, supplier, source) = (key(1), key(2), key(3));
    let params = params(&[(&app, 1)]);
    let mut m = manifest(&source, 10_000);
    m.body.royalty_ppm = 900_000; // the supplier raises the royalty it pays its friend
    let o = open(SessionTerms {
        params: &params,
        app: &app,
        supplier: &supplier,
        manifest: Some(m),
        tau: 400,
        price: 1,
        start_ms: 0,
        nonce: 3,
        escrow: relaymesh_protocol::messages::credit::CreditSlot::new(0, 1 << 40),
    });
    let ran = run_session(o, &app, 1, 4, 40);
    let c = claim(&ran, &supplier);
    let err = verify_claim(&c, &params, &V).unwrap_err();
    assert!(err.to_string().contains("manifest"), "{err}");
}

/// Hole 8: the gateway copied whatever manifest an ad carried and a session without
/// one was valid, so anyone could name itself a model's Source, or a supplier drop the
/// royalty. A mesh that registers a model's Source now refuses every session for that
/// file that does not pin exactly that Source's manifest and royalty. Failed before the
/// registry: both sessions below were valid.
#[test]
fn a_registered_model_must_pin_its_registered_source() {
    let (app, supplier, source, impostor) = (key(1), key(2), key(3), key(4));
    let mut params = params(&[(&app, 1_000_000)]);
    let real = manifest(&source, 50_000);
    params.sources = BoundedVec::try_from_vec(vec![relaymesh_protocol::params::RegisteredSource {
        model_digest: real.body.gguf_digest,
        source: source.public_key(),
        royalty_ppm: 50_000,
    }])
    .unwrap();
    let with = |manifest| {
        open(SessionTerms {
            params: &params,
            app: &app,
            supplier: &supplier,
            manifest,
            tau: 400,
            price: 1,
            start_ms: 0,
            nonce: 9,
            escrow: relaymesh_protocol::messages::credit::CreditSlot::new(0, 100_000),
        })
    };
    assert!(with(Some(real.clone())).validate(&params, &V).is_ok());
    for wrong in [
        None,
        Some(manifest(&impostor, 50_000)),
        Some(manifest(&source, 10_000)),
    ] {
        let err = with(wrong).validate(&params, &V).unwrap_err();
        assert!(err.to_string().contains("registers"), "{err}");
    }
}

/// Hole 12: `sample_point` asserted a positive sum, which a caller's input decides; it
/// now answers 0 (a point no leaf covers) instead of panicking.
#[test]
fn a_zero_sum_has_no_sampling_point_and_no_panic() {
    let point = relaymesh_protocol::settlement::challenge::sample_point(&Digest([1; 32]), 0, 0);
    assert_eq!(point, 0);
}
