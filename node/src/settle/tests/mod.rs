//! Settlement over real sled and the protocol's real messages: the honest paths here,
//! every attack the ledger must refuse (and count) in `attacks`, and what the node
//! stores (restarts, checkpoints, debits, anti-entropy) in `store`.
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
                .ack(&vec![b'x'; bytes], bytes as u16, i + 1 == acks, signer)
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

mod attacks;
mod store;
