//! Settlement over real sled and the protocol's real messages: the honest paths and
//! every attack the ledger must refuse (and count).
use super::*;
use relaymesh_protocol::identity::signed::Signed;
use relaymesh_protocol::messages::claim::{Claim, SignedClaim};
use relaymesh_protocol::messages::proof::{Proof, ProofEvidence};
use relaymesh_protocol::messages::session::SignedSessionOpen;
use relaymesh_protocol::metering::app::{RequestAcker, RequestTerms};
use relaymesh_protocol::metering::receipt::Receipt;
use relaymesh_protocol::params::Allocation;
use relaymesh_protocol::settlement::proof::sign_reveal;
use relaymesh_protocol::settlement::proof::MinedSession;
use relaymesh_protocol::wire::to_canonical;
use relaymesh_protocol::BoundedVec;

const START: u64 = 1_000_000_000;

fn key(n: u8) -> Keypair {
    Keypair::from_secret([n; 32])
}

fn params(app_credit: u64, samples: u16) -> MeshParams {
    let mut p = MeshParams::new(
        "settle-tests",
        vec![Allocation {
            account: key(1).public_key(),
            amount: app_credit,
        }],
    )
    .unwrap();
    p.epoch_ms = 5_000;
    p.max_session_ms = 10_000;
    p.proof_samples = samples;
    p
}

fn session(
    p: &MeshParams,
    app: &Keypair,
    supplier: &Keypair,
    nonce: u64,
) -> (SignedSessionOpen, Digest) {
    crate::testkit::session(p, app, supplier, p.tau_min, START, nonce)
}

/// `requests` requests of acks carrying `bytes` each, signed by `signer` (the app, or
/// a forger); returns the receipts.
fn receipts(
    s: &SignedSessionOpen,
    signer: &Keypair,
    requests: u64,
    acks: usize,
    bytes: usize,
) -> Vec<Receipt> {
    let mut out = Vec::new();
    for id in 0..requests {
        let mut acker = RequestAcker::new(
            RequestTerms {
                session_key: s.session_key(),
                request_id: id + 1000 * u64::from(signer.public_key().0[0]),
                prompt_digest: Digest([2; 32]),
                prompt_bytes: 20,
                max_output_bytes: 1 << 20,
                max_acks: 1000,
            },
            Digest([id as u8; 32]),
            signer,
        );
        for i in 0..acks {
            let ack = acker
                .ack(&vec![b'x'; bytes], i + 1 == acks, signer)
                .unwrap();
            out.push(acker.receipt(ack));
        }
    }
    out
}

struct Node {
    s: Settlement,
    metrics: Metrics,
    _dir: tempfile::TempDir,
}

fn node(
    k: Keypair,
    p: &MeshParams,
    supplier: bool,
    app_sessions: &[(SignedSessionOpen, Digest)],
) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::testkit::open_db(dir.path());
    let miner = supplier.then(|| Arc::new(Miner::new(db.open_tree("mining").unwrap(), p)));
    let sessions = db.open_tree("app_sessions").unwrap();
    for (s, secret) in app_sessions {
        sessions
            .insert(s.session_key().0, to_canonical(&(s.clone(), *secret, 1u64)))
            .unwrap();
    }
    let metrics = Metrics::default();
    let s = Settlement::open(k, p.clone(), &db, miner, metrics.clone(), START).unwrap();
    Node {
        s,
        metrics,
        _dir: dir,
    }
}

impl Node {
    fn mine(&self, session: &SignedSessionOpen, receipts: &[Receipt]) -> u64 {
        let miner = self.s.miner.as_ref().unwrap();
        let mut served = 0;
        for r in receipts {
            let facts = r.check(&session.session_key(), &session.body).unwrap();
            served += facts.weight;
            let secret = session.body.mining_secret(&self.s.key);
            miner.offer(session, &secret, r, &facts).unwrap();
        }
        served
    }

    fn rejected(&self, reason: &str) -> u64 {
        self.metrics
            .ledger_rejections
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: reason.into(),
            })
            .get()
    }
}

/// Delivers every message to every node (as gossip would); returns the messages.
fn deliver(messages: Vec<LedgerMessage>, to: &[&Node], now: u64) -> Vec<LedgerMessage> {
    for m in &messages {
        let bytes = m.encode().unwrap();
        for n in to {
            let _ = n.s.ingest_bytes(&bytes, now);
        }
    }
    messages
}

fn end(p: &MeshParams) -> u64 {
    START + p.max_session_ms + CLAIM_DELAY_MS
}

#[test]
fn an_honest_session_is_claimed_revealed_proven_and_settled_everywhere() {
    let p = params(1_000_000_000, 16);
    let (app, sup) = (key(1), key(2));
    let (s, secret) = session(&p, &app, &sup, 1);
    let supplier = node(sup.clone(), &p, true, &[]);
    let gateway = node(app.clone(), &p, false, &[(s.clone(), secret)]);
    let observer = node(key(3), &p, false, &[]);
    // Small increments (12 CU against τ = 64): τ samples them.
    let served = supplier.mine(&s, &receipts(&s, &app, 40, 20, 3));
    let all = [&supplier, &gateway, &observer];
    // Nothing is claimed before the session ended.
    assert!(supplier.s.tick(START + 1000).is_empty());
    let now = end(&p);
    let claim = deliver(supplier.s.tick(now), &all, now);
    assert!(matches!(
        claim[..],
        [LedgerMessage {
            body: LedgerBody::Claim(_),
            ..
        }]
    ));
    let reveal = deliver(gateway.s.tick(now), &all, now);
    assert!(matches!(
        reveal[..],
        [LedgerMessage {
            body: LedgerBody::Reveal(_),
            ..
        }]
    ));
    // The app reveals once.
    assert!(gateway.s.tick(now).is_empty());
    let proof = deliver(supplier.s.tick(now), &all, now);
    assert!(matches!(
        &proof[..],
        [LedgerMessage {
            body: LedgerBody::Proof(Proof {
                evidence: ProofEvidence::Sampled(_),
                ..
            }),
            ..
        }]
    ));
    let reports: Vec<LedgerReport> = all.iter().map(|n| n.s.report(now)).collect();
    for r in &reports {
        assert_eq!(r.claims_settled, 1, "{r:?}");
        assert_eq!(balances(r), balances(&reports[0]));
        assert_eq!(r.total_balance, 1_000_000_000);
    }
    let claimed = supplier.s.account(&sup.public_key()).earned;
    assert_eq!(gateway.s.account(&app.public_key()).spent, claimed);
    // Threshold mining is unbiased; here its error is small against what was served.
    let error = (claimed as f64 - served as f64) / served as f64;
    println!(
        "served {served} CU, credited {claimed} CU: error {:.2}%",
        error * 100.0
    );
    let sigma = ((p.tau_min * served) as f64).sqrt();
    assert!((claimed as f64 - served as f64).abs() <= 5.0 * sigma);
    // Nothing more to do; the claim was made once.
    assert!(supplier.s.tick(now + 60_000).is_empty());
}

#[test]
fn the_app_forgets_a_final_session_with_the_acks_it_sent() {
    let p = params(1_000_000_000, 16);
    let (app, sup) = (key(1), key(2));
    let (old, old_secret) = session(&p, &app, &sup, 3);
    // A session opened once the first one's epoch is final.
    let later_start = START + p.epoch_ms * (u64::from(p.freeze_horizon_epochs) + 2);
    let (new, new_secret) = crate::testkit::session(&p, &app, &sup, p.tau_min, later_start, 4);
    let gateway = node(
        app.clone(),
        &p,
        false,
        &[(old.clone(), old_secret), (new.clone(), new_secret)],
    );
    let app_store = gateway.s.app_store();
    for s in [&old, &new] {
        for r in receipts(s, &app, 2, 3, 10) {
            app_store.keep_ack(&r);
        }
    }
    let held = |s: &SignedSessionOpen| app_store.acks_of(&s.session_key());
    gateway.s.tick(end(&p));
    assert_eq!((held(&old), held(&new)), (6, 6), "nothing is final yet");
    gateway.s.tick(later_start + 1);
    assert_eq!((held(&old), held(&new)), (0, 6));
    assert!(app_store.secret(&old.session_key()).is_none());
    assert!(app_store.secret(&new.session_key()).is_some());
}

#[test]
fn an_app_that_never_reveals_is_settled_by_the_full_reveal() {
    let p = params(1_000_000_000, 16);
    let (app, sup) = (key(1), key(2));
    let (s, _) = session(&p, &app, &sup, 2);
    let supplier = node(sup, &p, true, &[]);
    let observer = node(key(3), &p, false, &[]);
    supplier.mine(&s, &receipts(&s, &app, 5, 6, 30));
    let now = end(&p);
    deliver(supplier.s.tick(now), &[&observer], now);
    assert!(
        supplier.s.tick(now + 1000).is_empty(),
        "waits for the reveal"
    );
    let later = now + reveal_wait_ms(&p);
    let proof = deliver(supplier.s.tick(later), &[&observer], later);
    assert!(matches!(
        &proof[..],
        [LedgerMessage {
            body: LedgerBody::Proof(Proof {
                evidence: ProofEvidence::Full(_),
                ..
            }),
            ..
        }]
    ));
    assert_eq!(observer.s.report(later).claims_settled, 1);
}

/// A supplier's claim over `mined` (its own tree, honest or not), signed.
fn claim_over<S: relaymesh_protocol::sumtree::TreeStore>(
    s: &SignedSessionOpen,
    mined: &MinedSession<S>,
    sup: &Keypair,
) -> SignedClaim {
    let root = mined.root().ok().unwrap();
    Signed::sign(
        Claim {
            version: relaymesh_protocol::PROTOCOL_VERSION,
            open: s.clone(),
            root: root.hash,
            sum: root.sum,
            count: root.count,
        },
        sup,
    )
}

fn mined(s: &SignedSessionOpen, sup: &Keypair, receipts: &[Receipt]) -> MinedSession {
    let mut m = MinedSession::new(s.body.mining_secret(sup));
    for r in receipts {
        let facts = r.check(&s.session_key(), &s.body).unwrap();
        m.offer(r.clone(), &facts, s.body.tau).unwrap();
    }
    m
}

fn refused(n: &Node, m: LedgerBody, now: u64) -> &'static str {
    let r = n.s.ingest(LedgerMessage::new(m), now).unwrap_err();
    assert!(r.invalid, "{r:?}");
    assert_eq!(n.rejected(r.reason), 1, "{r:?} is counted");
    r.reason
}

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
