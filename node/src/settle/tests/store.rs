//! What a node stores: restarts, checkpoints, its debits' order, escrows, anti-entropy.

use super::*;

/// Session `nonce` between key 1 and key 2, run, claimed, revealed and proven: the
/// ledger messages every node receives for it.
fn settled_messages(p: &MeshParams, nonce: u64) -> (SignedSessionOpen, [LedgerBody; 3]) {
    let (app, sup) = (key(1), key(2));
    let (s, secret) = session(p, &app, &sup, nonce);
    let m = mined(&s, &sup, &receipts(&s, &app, 3, 4, 100));
    let claim = claim_over(&s, &m, &sup);
    let reveal = sign_reveal(s.session_key(), claim.body.root, secret, &app);
    let proof = m
        .sampled_proof(claim.id(), reveal.clone(), p.proof_samples)
        .unwrap();
    let messages = [
        LedgerBody::Claim(claim),
        LedgerBody::Reveal(reveal),
        LedgerBody::Proof(proof),
    ];
    (s, messages)
}

#[test]
fn the_ledger_survives_a_restart_and_anti_entropy_fills_a_gap() {
    let p = params(1_000_000_000, 16);
    let now = end(&p);
    let dir = tempfile::tempdir().unwrap();
    let (_, messages) = settled_messages(&p, 20);
    let before = {
        let db = crate::testkit::open_db(dir.path());
        let n = Settlement::open(key(3), p.clone(), &db, None, Metrics::default(), START).unwrap();
        for m in &messages {
            n.ingest(LedgerMessage::new(m.clone()), now).unwrap();
        }
        db.flush().unwrap();
        n.report(now)
    };
    let db = crate::testkit::open_db(dir.path());
    let restarted =
        Settlement::open(key(3), p.clone(), &db, None, Metrics::default(), now).unwrap();
    let after = restarted.report(now);
    assert_eq!(balances(&after), balances(&before));
    assert_eq!(after.claims_settled, 1);
    // A node that missed everything asks for what it lacks and converges.
    let empty = node(key(4), &p, false, &[]);
    for bytes in restarted.sync_answer(&empty.s.sync_keys()) {
        empty.s.ingest_bytes(&bytes, now).unwrap();
    }
    assert_eq!(balances(&empty.s.report(now)), balances(&after));
    assert!(restarted.sync_answer(&empty.s.sync_keys()).is_empty());
}

/// Frozen epochs are kept as a stored checkpoint, not as messages: once a session's
/// epoch is final its messages leave the log, and a restart gives the same balances
/// from the checkpoint. (Before, the log kept every message for ever and a restart
/// replayed all of them.)
#[test]
fn frozen_epochs_are_compacted_into_a_stored_checkpoint() {
    let p = params(1_000_000_000, 16);
    let sup = key(2);
    let now = end(&p);
    let dir = tempfile::tempdir().unwrap();
    let (s, messages) = settled_messages(&p, 21);
    let final_at = START + (u64::from(p.freeze_horizon_epochs) + 2) * p.epoch_ms;
    let before = {
        let db = crate::testkit::open_db(dir.path());
        let n = Settlement::open(key(3), p.clone(), &db, None, Metrics::default(), START).unwrap();
        for m in messages {
            n.ingest(LedgerMessage::new(m), now).unwrap();
        }
        assert_eq!(n.log.len(), 3);
        let report = n.report(final_at);
        assert!(report.frozen_before > s.epoch(&p));
        assert_eq!(n.log.len(), 0, "the frozen epoch's messages left the log");
        db.flush().unwrap();
        report
    };
    assert!(balances(&before)[&sup.public_key().peer_id()] > 0);
    let db = crate::testkit::open_db(dir.path());
    let restarted =
        Settlement::open(key(3), p.clone(), &db, None, Metrics::default(), final_at).unwrap();
    assert_eq!(balances(&restarted.report(final_at)), balances(&before));
}

/// Hole 11: a node whose clock disagrees with its peers' by more than the skew says so
/// and freezes nothing (before, it froze by its own clock alone, and a divergence at
/// a freeze is for good); when it agrees again it freezes as usual.
#[test]
fn a_node_whose_clock_is_off_freezes_nothing() {
    let p = params(1_000_000_000, 16);
    let n = node(key(3), &p, false, &[]);
    let frozen = n.s.report(START).frozen_before;
    let later = START + 20 * p.epoch_ms;
    // Its peers' clocks read 90 s less than its own: its clock runs ahead.
    for peer in ["a", "b", "c"] {
        n.s.observe_peer_clock(peer, later - 90_000, later);
    }
    let r = n.s.report(later);
    assert!(
        r.clock.off && r.clock.offset_ms == Some(-90_000),
        "{:?}",
        r.clock
    );
    assert_eq!(r.frozen_before, frozen, "nothing froze");
    for peer in ["a", "b", "c"] {
        n.s.observe_peer_clock(peer, later, later);
    }
    let r = n.s.report(later);
    assert!(!r.clock.off);
    assert!(r.frozen_before > frozen);
}

/// Hole found by review: the gateway read its clock before it took the credit cursor,
/// so two proposals racing at an epoch boundary (or a clock stepping back) could
/// number the later-dated debit first, which the ledger takes for a credit committed
/// twice: the honest app was locked out. Slots and dates are now given together and
/// never go back.
#[test]
fn debits_are_dated_and_numbered_in_one_order() {
    let p = params(1_000_000_000, 16);
    let n = node(key(1), &p, false, &[]);
    let epoch = p.epoch_ms;
    let (first, first_at) = n.s.take_slot(START + epoch, 1, 1_000).unwrap();
    // A clock that reads earlier now: the debit is still dated no earlier.
    let (second, second_at) = n.s.take_slot(START, 1, 1_000).unwrap();
    assert!(second.start >= first.end().unwrap());
    assert!(second_at >= first_at);
    assert_eq!(p.epoch_of(second_at), p.epoch_of(first_at));
}

/// Review: a proposal the supplier never countersigns leaves its slot unused for good,
/// and each one took an eighth of the app's free credit. A session's escrow is now
/// capped at 64 sessions' worth of mined receipts, so what a refusal costs stays small.
#[test]
fn a_sessions_escrow_is_a_share_of_free_credit_within_bounds() {
    let p = params(1_000_000_000, 16);
    let n = node(key(1), &p, false, &[]);
    let min = n.s.min_escrow(1, 64);
    assert_eq!(min, 64 * u64::from(p.tau_target_mined));
    let (escrow, _) = n.s.session_escrow(START, 1, 64).unwrap();
    assert_eq!(escrow.amount, min * crate::settle::SESSION_ESCROW_CAP);
}

/// Hole 7: anti-entropy listed keys and sent messages kind by kind up to its caps, so a
/// flood of claims crowded every proof out of reconciliation. Each kind now gets its
/// fair share of the keys and the bytes. Failed before: the proof was neither listed
/// nor sent.
#[test]
fn a_flood_of_one_kind_does_not_crowd_proofs_out_of_anti_entropy() {
    let p = params(1_000_000_000, 16);
    let n = node(key(3), &p, false, &[]);
    let epoch = n.s.report(START).frozen_before;
    // 20,000 stored claims of 300 bytes (6 MB, over both caps), and one proof.
    for i in 0..20_000u32 {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&i.to_be_bytes());
        n.s.log
            .insert(log_key(b'c', epoch, &Digest(id)), vec![1u8; 300])
            .unwrap();
    }
    let proof = log_key(b'p', epoch, &Digest([9; 32]));
    n.s.log.insert(&proof, vec![2u8; 300]).unwrap();
    let keys = n.s.sync_keys();
    assert!(keys.len() <= MAX_SYNC_KEYS);
    assert!(keys.contains(&proof), "the proof's key is listed");
    let answer = n.s.sync_answer(&[]);
    assert!(answer.iter().map(Vec::len).sum::<usize>() <= MAX_SYNC_BYTES);
    assert!(answer.contains(&vec![2u8; 300]), "the proof is sent");
}

/// A proposal the supplier refused (or never answered) is withdrawn: its escrow comes
/// back to the app's line when its epoch freezes, the withdrawal survives a restart and
/// reaches a node that missed it by anti-entropy. Before, the slot's credit was lost to
/// the app for good (PROTOCOL.md §12).
#[test]
fn a_refused_proposal_is_withdrawn_and_its_escrow_comes_back() {
    let p = params(1_000_000_000, 16);
    let dir = tempfile::tempdir().unwrap();
    let db = crate::testkit::open_db(dir.path());
    let app = Settlement::open(key(1), p.clone(), &db, None, Metrics::default(), START).unwrap();
    let (slot, at) = app.take_slot(START, 1, 1_000_000).unwrap();
    let (o, _) = session(&p, &key(1), &key(2), 40);
    let mut terms = o.body.clone();
    terms.escrow = slot;
    terms.start_ms = at;
    let proposal = Signed::sign(terms, &key(1));
    let final_at = at + p.funding_lag_epochs() * p.epoch_ms;
    let line = |s: &Settlement| {
        let ledger = s.ledger.lock().unwrap();
        ledger
            .credit(&key(1).public_key(), p.epoch_of(final_at))
            .line
    };
    let before = line(&app);
    app.withdraw(&proposal, at);
    assert_eq!(app.log.len(), 1, "stored");
    // A node that missed the gossip gets it by anti-entropy.
    let other = node(key(4), &p, false, &[]);
    for bytes in app.sync_answer(&other.s.sync_keys()) {
        other.s.ingest_bytes(&bytes, at).unwrap();
    }
    // The app restarts; the withdrawal is replayed.
    drop(app);
    db.flush().unwrap();
    let app = Settlement::open(key(1), p.clone(), &db, None, Metrics::default(), at).unwrap();
    app.report(final_at);
    other.s.report(final_at);
    assert_eq!(line(&app), before + u128::from(slot.amount));
    assert_eq!(line(&other.s), line(&app));
}

/// One debit known by two kinds of message: the supplier's announcement reached one
/// node, the app's withdrawal of the same terms another. Failed before the second to
/// arrive was stored under its own key: it was a duplicate and not kept, so neither
/// node ever listed the other's key and every anti-entropy round sent both again
/// until the epoch froze.
#[test]
fn a_debit_known_by_an_open_and_a_withdrawal_settles_in_anti_entropy() {
    let p = params(1_000_000_000, 16);
    let (open, _) = session(&p, &key(1), &key(2), 30);
    let (a, b) = (node(key(3), &p, false, &[]), node(key(4), &p, false, &[]));
    a.s.ingest(LedgerMessage::new(LedgerBody::Open(open.clone())), START)
        .unwrap();
    b.s.ingest(
        LedgerMessage::new(LedgerBody::Withdraw(open.proposal())),
        START,
    )
    .unwrap();
    for (from, to) in [(&a, &b), (&b, &a)] {
        for bytes in from.s.sync_answer(&to.s.sync_keys()) {
            to.s.ingest_bytes(&bytes, START).unwrap();
        }
    }
    assert!(a.s.sync_answer(&b.s.sync_keys()).is_empty());
    assert!(b.s.sync_answer(&a.s.sync_keys()).is_empty());
    // A forged copy of a known debit is not stored for being a duplicate.
    let mut forged = open.clone();
    forged.mining_commitment = Digest([9; 32]);
    let c = node(key(5), &p, false, &[]);
    c.s.ingest(
        LedgerMessage::new(LedgerBody::Withdraw(open.proposal())),
        START,
    )
    .unwrap();
    assert!(c
        .s
        .ingest(LedgerMessage::new(LedgerBody::Open(forged)), START)
        .is_err());
}
