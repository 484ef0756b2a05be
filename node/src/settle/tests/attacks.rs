//! Attacks the ledger must refuse, and count.

use super::*;

#[test]
fn forged_replayed_and_inflated_receipts_are_refused_and_counted() {
    let p = params(1_000_000_000, 16);
    let (app, sup) = (key(1), key(2));
    let observer = node(key(3), &p, false, &[]);
    let now = end(&p);
    let (s, _) = session(&p, &app, &sup, 3);
    let honest = receipts(&s, &app, 4, 5, 100);
    let m = mined(&s, &sup, &honest);
    let claim = claim_over(&s, &m, &sup);
    observer
        .s
        .ingest(LedgerMessage::new(LedgerBody::Claim(claim.clone())), now)
        .unwrap();
    let full = |receipts: Vec<Receipt>| {
        LedgerBody::Proof(Proof {
            version: relaymesh_protocol::PROTOCOL_VERSION,
            claim: claim.id(),
            mining_secret: m.mining_secret(),
            evidence: ProofEvidence::Full(relaymesh_protocol::messages::proof::FullReveal {
                receipts: BoundedVec::try_from_vec(receipts).unwrap(),
            }),
        })
    };
    let leaves: Vec<Receipt> = m.receipts().values().cloned().collect();
    // A forged receipt: the ack re-signed by someone else.
    let mut forged = leaves.clone();
    forged[0].ack = Signed::sign(forged[0].ack.body.clone(), &key(9));
    assert_eq!(refused(&observer, full(forged), now), "proof-signature");
    // The same receipt twice.
    let mut replayed = leaves.clone();
    let last = replayed.len() - 1;
    replayed[last] = leaves[0].clone();
    assert_eq!(
        refused(&observer, full(replayed), now),
        "proof-duplicate-leaf"
    );
    // Inflated token counts: the ack's count raised after the app signed it.
    let mut inflated = leaves.clone();
    inflated[0].ack.body.new_bytes += 10_000;
    assert!(observer
        .s
        .ingest(LedgerMessage::new(full(inflated)), now)
        .is_err());
    // The honest proof still settles.
    observer
        .s
        .ingest(LedgerMessage::new(full(leaves)), now)
        .unwrap();
    assert_eq!(observer.s.report(now).claims_settled, 1);
}

#[test]
fn an_inflated_claim_and_a_proof_for_another_seed_are_refused() {
    let p = params(1_000_000_000, 16);
    let (app, sup) = (key(1), key(2));
    let observer = node(key(3), &p, false, &[]);
    let now = end(&p);
    // A claim whose sum is larger than its tree's.
    let (s, secret) = session(&p, &app, &sup, 4);
    let m = mined(&s, &sup, &receipts(&s, &app, 4, 5, 100));
    let mut body = claim_over(&s, &m, &sup).body;
    body.sum += 5_000;
    let inflated = Signed::sign(body, &sup);
    observer
        .s
        .ingest(LedgerMessage::new(LedgerBody::Claim(inflated.clone())), now)
        .unwrap();
    let reveal = sign_reveal(s.session_key(), inflated.body.root, secret, &app);
    let proof = m
        .sampled_proof(inflated.id(), reveal, p.proof_samples)
        .unwrap();
    let reason = refused(&observer, LedgerBody::Proof(proof), now);
    assert!(
        reason == "proof-bad-path" || reason == "proof-wrong-seed",
        "{reason}"
    );
    let full = m.full_reveal(inflated.id()).unwrap();
    assert_eq!(
        refused(&observer, LedgerBody::Proof(full), now),
        "proof-root-mismatch"
    );

    // A proof sampled with another seed than the app's reveal gives.
    let (s, secret) = session(&p, &app, &sup, 5);
    let m = mined(&s, &sup, &receipts(&s, &app, 8, 5, 100));
    let claim = claim_over(&s, &m, &sup);
    observer
        .s
        .ingest(LedgerMessage::new(LedgerBody::Claim(claim.clone())), now)
        .unwrap();
    let root = m.root().unwrap().hash;
    let chosen = sign_reveal(s.session_key(), root, Digest([0xee; 32]), &app);
    let mut proof = m
        .sampled_proof(claim.id(), chosen, p.proof_samples)
        .unwrap();
    let ProofEvidence::Sampled(sampled) = &mut proof.evidence else {
        unreachable!()
    };
    sampled.reveal = sign_reveal(s.session_key(), root, secret, &app);
    assert_eq!(
        refused(&observer, LedgerBody::Proof(proof), now),
        "proof-wrong-seed"
    );

    // The node keeps the refused proofs, with why, for its API and dashboard.
    let kept = observer.s.refused();
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert!(kept
        .iter()
        .all(|r| r.kind == "proof" && !r.detail.is_empty()));
    assert_eq!(kept[2].reason, "proof-wrong-seed");
}

#[test]
fn fake_leaves_are_caught_at_the_rate_the_samples_imply() {
    // Half the leaves are fake and a proof samples 2: caught with probability 3/4.
    let p = params(1_000_000_000, 2);
    let (app, sup) = (key(1), key(2));
    let observer = node(key(3), &p, false, &[]);
    let now = end(&p);
    let trials = 60;
    let mut caught = 0;
    for nonce in 0..trials {
        let (s, secret) = session(&p, &app, &sup, 100 + nonce);
        let mut all = receipts(&s, &app, 4, 4, 200);
        all.extend(receipts(&s, &key(9), 4, 4, 200));
        let m = mined(&s, &sup, &all);
        let claim = claim_over(&s, &m, &sup);
        observer
            .s
            .ingest(LedgerMessage::new(LedgerBody::Claim(claim.clone())), now)
            .unwrap();
        let reveal = sign_reveal(s.session_key(), claim.body.root, secret, &app);
        let proof = m
            .sampled_proof(claim.id(), reveal, p.proof_samples)
            .unwrap();
        if observer
            .s
            .ingest(LedgerMessage::new(LedgerBody::Proof(proof)), now)
            .is_err()
        {
            caught += 1;
        }
    }
    println!("caught {caught} of {trials} claims half made of fake leaves (expected 45)");
    assert_eq!(observer.rejected("proof-signature"), caught);
    // 45 expected, σ ≈ 3.4: ±4σ.
    assert!((31..=59).contains(&caught), "{caught}");
}

#[test]
fn two_claims_for_one_session_exclude_the_supplier_everywhere() {
    let p = params(1_000_000_000, 16);
    let (app, sup) = (key(1), key(2));
    let (a, b) = (node(key(3), &p, false, &[]), node(key(4), &p, false, &[]));
    let now = end(&p);
    let (s, _) = session(&p, &app, &sup, 6);
    let all = receipts(&s, &app, 6, 5, 100);
    let first = claim_over(&s, &mined(&s, &sup, &all), &sup);
    let second = claim_over(&s, &mined(&s, &sup, &all[..all.len() - 5]), &sup);
    assert_ne!(first.id(), second.id());
    a.s.ingest(LedgerMessage::new(LedgerBody::Claim(first)), now)
        .unwrap();
    let Ingested::New { publish } =
        a.s.ingest(LedgerMessage::new(LedgerBody::Claim(second)), now)
            .unwrap()
    else {
        panic!("new")
    };
    assert!(a.s.is_excluded(&sup.public_key()));
    assert_eq!(a.s.report(now).claims_void, 2);
    // The evidence alone convinces another node.
    let [evidence] = &publish[..] else {
        panic!("one piece of evidence")
    };
    b.s.ingest(evidence.clone(), now).unwrap();
    assert!(b.s.is_excluded(&sup.public_key()));
    // Forged evidence is refused: two claims of different sessions (at a node that
    // has not excluded the supplier yet: one that has ignores more evidence at once).
    let c = node(key(5), &p, false, &[]);
    let (s2, _) = session(&p, &app, &sup, 7);
    let other = claim_over(
        &s2,
        &mined(&s2, &sup, &receipts(&s2, &app, 1, 5, 100)),
        &sup,
    );
    let LedgerBody::Evidence(mut e) = evidence.body.clone() else {
        unreachable!()
    };
    e.second = other;
    if e.first.id() > e.second.id() {
        std::mem::swap(&mut e.first, &mut e.second);
    }
    assert_eq!(refused(&c, LedgerBody::Evidence(e), now), "bad-evidence");
}

#[test]
fn a_claim_for_a_session_that_never_existed_is_refused() {
    let p = params(1_000_000_000, 16);
    let (app, sup) = (key(1), key(2));
    let observer = node(key(3), &p, false, &[]);
    let now = end(&p);
    // The supplier makes up terms "signed" by the app with its own key.
    let (real, _) = session(&p, &app, &sup, 8);
    let fake =
        Signed::sign(real.body.clone(), &sup).countersign(&sup, &real.body.mining_secret(&sup));
    let receipts = receipts(&fake, &app, 2, 3, 100);
    let claim = claim_over(&fake, &mined(&fake, &sup, &receipts), &sup);
    assert_eq!(
        refused(&observer, LedgerBody::Claim(claim), now),
        "claim-session"
    );
    // Garbage bytes too.
    let r = observer
        .s
        .ingest_bytes(b"\xa1\x00garbage", now)
        .unwrap_err();
    assert_eq!(r.reason, "malformed");
    // The refused claim is kept with its supplier; the garbage names no kind.
    let kept = observer.s.refused();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!((kept[0].kind, kept[0].reason), ("claim", "claim-session"));
    assert_eq!(kept[0].supplier, Some(sup.public_key().peer_id()));
}

/// Each session is paid from its own escrow, and a supplier refuses an escrow that
/// runs past the app's credit line (or overlaps one it knows), saying why.
#[test]
fn escrows_pay_their_own_claims_and_one_past_the_credit_line_is_refused() {
    // The app holds 2.5 escrows' worth: sessions 0 and 1 are funded, 2 is not.
    let escrow = u128::from(crate::testkit::ESCROW);
    let p = params(2 * crate::testkit::ESCROW + crate::testkit::ESCROW / 2, 16);
    let app = key(1);
    let observer = node(key(3), &p, false, &[]);
    let now = end(&p);
    let mut paid = 0u128;
    for (n, sup) in [(0, key(5)), (1, key(6))] {
        let (s, secret) = session(&p, &app, &sup, n);
        assert_eq!(observer.s.admit_escrow(&s.body), Ok(()));
        let m = mined(&s, &sup, &receipts(&s, &app, 4, 5, 200));
        let claim = claim_over(&s, &m, &sup);
        paid += u128::from(claim.body.sum).min(escrow);
        observer
            .s
            .ingest(LedgerMessage::new(LedgerBody::Claim(claim.clone())), now)
            .unwrap();
        let reveal = sign_reveal(s.session_key(), claim.body.root, secret, &app);
        let proof = m
            .sampled_proof(claim.id(), reveal, p.proof_samples)
            .unwrap();
        observer
            .s
            .ingest(LedgerMessage::new(LedgerBody::Proof(proof)), now)
            .unwrap();
    }
    let r = observer.s.report(now);
    assert_eq!(r.claims_settled, 2);
    assert_eq!(r.total_balance, 2 * escrow + escrow / 2, "nothing minted");
    assert_eq!(observer.s.account(&app.public_key()).spent, paid);
    // Session 2's escrow runs past the line; session 1's slot again is taken.
    let (s, _) = session(&p, &app, &key(5), 2);
    let why = observer.s.admit_escrow(&s.body).unwrap_err();
    assert!(why.contains("insufficient credit"), "{why}");
    let (again, _) = session(&p, &app, &key(7), 1);
    let why = observer.s.admit_escrow(&again.body).unwrap_err();
    assert!(why.contains("committed elsewhere"), "{why}");
}
