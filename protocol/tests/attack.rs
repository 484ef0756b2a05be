//! Attacks on the metering and ledger rules of version 2, found by an independent
//! review after it landed. Each test states the property that should hold and failed
//! on that code (the comment above each says the mechanism found then and the fix);
//! the holes the review found in the node (a manifest routing pay back to the app,
//! the escrow cap's bias, streams sharing one escrow, debits dated out of order) are
//! tested in `node/`, and those still open are listed in `docs/PROTOCOL.md` §12.
//!
//! Run: `cargo test -p relaymesh-protocol --test attack`.

mod common;

use common::*;
use relaymesh_protocol::identity::signed::Signed;
use relaymesh_protocol::ledger::{Applied, Ledger, LedgerError};
use relaymesh_protocol::messages::claim::{Claim, SignedClaim};
use relaymesh_protocol::messages::credit::CreditSlot;
use relaymesh_protocol::messages::proof::Proof;
use relaymesh_protocol::messages::session::{SessionOpen, SignedSessionOpen};
use relaymesh_protocol::params::{Allocation, MeshParams};
use relaymesh_protocol::settlement::proof::{sign_reveal, verify_proof, ProofError};
use relaymesh_protocol::{Digest, Ed25519Verifier, Keypair, Signer, PROTOCOL_VERSION};

const V: Ed25519Verifier = Ed25519Verifier;

// ---------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------

/// A key numbered by a u16 (the common fixtures only have 256).
fn wide_key(n: u16) -> Keypair {
    let mut secret = [0x5a; 32];
    secret[..2].copy_from_slice(&n.to_be_bytes());
    Keypair::from_secret(secret)
}

/// A session run honestly (`requests` requests of 8 acks of 30 bytes), claimed and
/// proven with the app's reveal: what every honest supplier gossips.
fn settled(
    o: SignedSessionOpen,
    app: &Keypair,
    supplier: &Keypair,
    params: &MeshParams,
    requests: u64,
) -> (SignedClaim, Proof) {
    let nonce = o.body.nonce;
    let ran = run_session(o, app, requests, 8, 30);
    let c = claim(&ran, supplier);
    let root = ran.mined.root().unwrap();
    let reveal = sign_reveal(ran.open.session_key(), root.hash, secret(nonce), app);
    let proof = ran
        .mined
        .sampled_proof(c.id(), reveal, params.proof_samples)
        .unwrap();
    (c, proof)
}

fn session(
    params: &MeshParams,
    app: &Keypair,
    supplier: &Keypair,
    start_ms: u64,
    nonce: u64,
    escrow: CreditSlot,
) -> SignedSessionOpen {
    open(SessionTerms {
        params,
        app,
        supplier,
        manifest: None,
        tau: 300,
        price: 2,
        start_ms,
        nonce,
        escrow,
    })
}

fn value(c: &SignedClaim) -> u128 {
    u128::from(c.body.sum) * u128::from(c.body.open.body.price_per_cu)
}

// ---------------------------------------------------------------------------------
// 1. Default parameters: no full-length session can ever be claimed.
// ---------------------------------------------------------------------------------

/// SEVERITY: honest party loses (every supplier, every session) / app served free.
///
/// `MeshParams::new` (params.rs:100-110) sets 5-minute epochs, H = 12 and 1-hour
/// sessions, and the gateway always proposes `max_duration_ms = max_session_ms`
/// (node/src/infer/gateway.rs:566). A session's claims count in the epoch of its
/// *start* (session.rs:205), and that epoch freezes when the clock reaches epoch
/// `start + 12` (fold.rs:325-330), i.e. at or before the session's end. The supplier
/// claims only after the end (+5 s, node/src/settle/duties.rs:85), so `apply_claim`
/// refuses every claim as `Frozen` (book.rs:311), the supplier's duties even `forget`
/// the session silently (duties.rs:78-81), and the escrow goes back to the app whole.
/// `MeshParams::validate` checks nothing of the kind.
///
/// FIX: validate `max_session_ms + claim delay + reveal_wait (2 epochs) + skew +
/// propagation < (H - 1) · epoch_ms` (e.g. default H = 24, or 20-minute sessions), or
/// date a session's claims by its end instead of its start.
#[test]
fn a_default_mesh_session_can_be_claimed_after_it_ends() {
    let (app, supplier) = (key(1), key(2));
    let params = MeshParams::new(
        "default-mesh",
        vec![Allocation {
            account: app.public_key(),
            amount: 1_000_000_000,
        }],
    )
    .unwrap();
    let start_ms = 1_000 * params.epoch_ms + 1_000;
    let mut o = session(
        &params,
        &app,
        &supplier,
        start_ms,
        7,
        CreditSlot::new(0, 10_000_000),
    );
    // As the gateway proposes it: the mesh's full session length.
    let mut body: SessionOpen = o.body.clone();
    body.max_duration_ms = params.max_session_ms;
    let mining = mining_secret(&body);
    o = Signed::sign(body, &app).countersign(&supplier, &mining);
    o.validate(&params, &V).unwrap();

    let mut ledger = Ledger::new(params.clone());
    ledger.advance(start_ms);
    assert_eq!(ledger.apply_open(&o, &V).unwrap(), Applied::Recorded);
    let (c, proof) = settled(o.clone(), &app, &supplier, &params, 3);

    // The supplier claims 5 s after the session's end (node CLAIM_DELAY_MS).
    let claim_ms = o.body.end_ms() + 5_000;
    ledger.advance(claim_ms);
    let applied = ledger.apply_claim(c, &V);
    assert!(
        applied.is_ok(),
        "the claim of a full-length session of a default mesh is refused: {applied:?}"
    );
    ledger.apply_proof(&proof, &V).unwrap();
    assert!(ledger.account(&supplier.public_key()).earned > 0);
}

// ---------------------------------------------------------------------------------
// 2. Divergence: a *fresh* conflicting debit reaches back into an epoch that is
//    freezing, so nodes on either side of the freeze end with different balances.
// ---------------------------------------------------------------------------------

/// SEVERITY: divergence (and honest party loses on part of the mesh).
///
/// A conflict excludes the payer from the *earlier* debit's epoch
/// (fold.rs:396-401), but once that epoch is frozen the same debit only counts as
/// "below frozen_top" and excludes from its *own* epoch (fold.rs:402-405). A debit
/// dated in the current epoch (no withholding needed: it is signed and gossiped
/// live) thus voids an honest supplier's settled session of epoch `e` on every node
/// that has not yet frozen `e`, and leaves it paid on every node that has. §10's
/// "divergence this leaves" assumes a message withheld for H epochs; here the
/// attacker only times a fresh message to the freeze of an *earlier* epoch.
///
/// FIX: bound the retroactive reach of an exclusion so that it can never touch an
/// epoch that may be freezing while the later debit is admissible (e.g. exclude from
/// `max(earlier, later − (H − 2))` and refuse debits dated more than one epoch before
/// the ledger clock), or anchor checkpoints.
#[test]
fn a_fresh_debit_cannot_rewrite_an_epoch_that_is_freezing() {
    let (app, honest, friend) = (key(1), key(2), key(3));
    let mut params = params(&[(&app, 20_000)]);
    // One epoch of slack, as in the default mesh (skew < epoch): not the skew issue.
    params.max_clock_skew_ms = 5_000;
    let e = params.epoch_ms;
    let o = session(&params, &app, &honest, 500, 1, CreditSlot::new(0, 12_000));
    let (c, proof) = settled(o, &app, &honest, &params, 3);
    // Signed by the payer in epoch 3, live, over the session's slot.
    let m = transfer(&params, &app, &friend, 5_000, 3, 0);

    // Node X froze epoch 0 just before M reached it.
    let mut x = Ledger::new(params.clone());
    x.apply_claim(c.clone(), &V).unwrap();
    x.apply_proof(&proof, &V).unwrap();
    x.advance(3 * e + 1);
    x.apply_transfer(&m, &V).unwrap();

    // Node Y got M a moment earlier, before its clock ticked into epoch 3.
    let mut y = Ledger::new(params.clone());
    y.apply_claim(c.clone(), &V).unwrap();
    y.apply_proof(&proof, &V).unwrap();
    y.advance(2 * e + 9_999);
    y.apply_transfer(&m, &V).unwrap();
    y.advance(3 * e + 1);

    let paid_x = x.account(&honest.public_key()).earned;
    let paid_y = y.account(&honest.public_key()).earned;
    assert_eq!(paid_x, value(&c), "X pays the honest supplier");
    assert_eq!(
        paid_x, paid_y,
        "same messages, same clock, different balances (X {paid_x}, Y {paid_y})"
    );
    assert_eq!(x.snapshot().digest(), y.snapshot().digest());
}

// ---------------------------------------------------------------------------------
// 3. Divergence: whether an unfunded debit is stored depends on the node's clock
//    when the mesh's skew is longer than an epoch.
// ---------------------------------------------------------------------------------

/// SEVERITY: divergence; honest party loses on part of the mesh.
///
/// `check_funded` admits a debit unchecked when its funding epoch is not frozen yet
/// (book.rs:250-253), and `check_open` admits debits dated up to
/// `ceil(skew / epoch)` epochs ahead (book.rs:223-224). Whenever that slack is 2 or
/// more (any mesh whose `max_clock_skew_ms` exceeds `epoch_ms`: the test meshes of
/// this crate and of the node, `--epoch-secs 10` …; `validate` allows it), a debit
/// dated ahead is stored by nodes whose clock is behind and refused as `Unfunded` by
/// nodes whose clock is one epoch later. A stored unfunded debit still counts as a
/// double commitment (`payer_exclusions`, fold.rs:200-223 counts every stored debit),
/// so the payer is excluded – and the honest supplier it used goes unpaid – only on
/// the first kind of node.
///
/// FIX: require `max_clock_skew_ms ≤ epoch_ms` in `MeshParams::validate`, refuse a
/// debit whose funding line is not final as `Early` instead of admitting it, and let
/// only funded debits count in `payer_exclusions`.
#[test]
fn an_unfunded_debit_is_refused_whatever_the_nodes_clock() {
    let (app, honest, friend) = (key(1), key(2), key(3));
    let params = params(&[(&app, 20_000)]); // 10 s epochs, 30 s skew: 3 epochs of slack
    let e = params.epoch_ms;
    let o = session(
        &params,
        &app,
        &honest,
        5 * e + 500,
        1,
        CreditSlot::new(0, 12_000),
    );
    let (c, proof) = settled(o, &app, &honest, &params, 3);
    // Far beyond the app's line of 20_000: it can never be funded.
    let unfunded = transfer(&params, &app, &friend, 1_000_000, 8, 0);

    let mut x = Ledger::new(params.clone());
    x.advance(5 * e);
    x.apply_claim(c.clone(), &V).unwrap();
    x.apply_proof(&proof, &V).unwrap();
    let at_x = x.apply_transfer(&unfunded, &V);

    let mut y = Ledger::new(params.clone());
    y.advance(7 * e);
    y.apply_claim(c.clone(), &V).unwrap();
    y.apply_proof(&proof, &V).unwrap();
    let at_y = y.apply_transfer(&unfunded, &V);
    assert!(matches!(at_y, Err(LedgerError::Unfunded(_))));

    x.advance(7 * e);
    let (px, py) = (
        x.account(&honest.public_key()).earned,
        y.account(&honest.public_key()).earned,
    );
    assert_eq!(py, value(&c));
    assert_eq!(
        px, py,
        "X stored the unfunded debit ({at_x:?}) and voided the honest session; Y refused it"
    );
}

// ---------------------------------------------------------------------------------
// 4. Spam: one micro-credit backs an unbounded number of stored ledger messages.
// ---------------------------------------------------------------------------------

/// SEVERITY: DoS (storage, gossip, anti-entropy, and every O(n) fold / credit /
/// slot_conflict / claim_status call the node makes per proposal and per duty tick).
///
/// §10 says "every claim a node stores is backed by locked credit". `check_funded`
/// (book.rs:241-269) only checks that a slot *ends within* the payer's final line, not
/// that it is still free, and `apply_transfer` / `apply_open` never refuse a payer
/// that is already excluded. So a key with a line of 1 µcredit signs any number of
/// transfers on the slot [0, 1) (to distinct payees, in any open epoch): each is new,
/// funded and stored. Once the payer is excluded they move nothing, but they are kept,
/// gossiped, synced and folded.
///
/// FIX: refuse (not store) a debit of a payer already excluded at its epoch and a debit
/// whose slot overlaps one already stored (keep the first as the evidence); count a
/// payer's stored debits and bound them by its line.
#[test]
fn one_micro_credit_cannot_back_unbounded_ledger_messages() {
    let (spammer, other) = (key(1), key(2));
    let params = params(&[(&spammer, 1), (&other, 1_000)]);
    let mut ledger = Ledger::new(params.clone());
    let mut stored = 0;
    for n in 0..400u16 {
        let t = transfer(&params, &spammer, &wide_key(n), 1, u64::from(n % 3), 0);
        if matches!(ledger.apply_transfer(&t, &V), Ok(Applied::Settled)) {
            stored += 1;
        }
    }
    assert!(ledger.credit(&spammer.public_key(), 0).excluded);
    assert!(
        stored <= 2,
        "{stored} transfers stored on the strength of one micro-credit"
    );
}

/// SEVERITY: DoS (as above, for claims; a supplier needs one app-signed proposal).
///
/// A supplier may countersign one proposal with any number of mining commitments
/// (session.rs:156): each gives a new session key with the same debit, so claims on
/// them are not equivocation (book.rs:327-331 keys rivals by session key) and each is
/// stored as Pending for ever (until its epoch freezes). One funded escrow – or a
/// colluding app's single signature – backs unboundedly many stored claims.
///
/// FIX: key the ledger's claims (and equivocation) by debit id, not by session key:
/// one escrow, one claim (per supplier); a second claim on the same debit is evidence.
#[test]
fn one_escrow_cannot_back_unbounded_claims() {
    let (app, supplier) = (key(1), key(2));
    let params = params(&[(&app, 10_000)]);
    let proposal = Signed::sign(
        session(&params, &app, &supplier, 500, 1, CreditSlot::new(0, 1_000)).body,
        &app,
    );
    let mut ledger = Ledger::new(params.clone());
    for n in 0..300u64 {
        let mining = Digest(*blake3::hash(&n.to_be_bytes()).as_bytes());
        let o = proposal.clone().countersign(&supplier, &mining);
        let c = Signed::sign(
            Claim {
                version: PROTOCOL_VERSION,
                open: o,
                root: mining,
                sum: 300,
                count: 1,
            },
            &supplier,
        );
        let _ = ledger.apply_claim(c, &V);
    }
    // The second claim on one debit is equivocation; later ones are not even kept.
    assert!(ledger.is_excluded(&supplier.public_key()));
    let stored = ledger.claims().len();
    assert!(
        stored <= 2,
        "{stored} claims stored against one escrow of 1_000 µcredits"
    );
}

// ---------------------------------------------------------------------------------
// 10. The snapshot digest does not cover supplier exclusions.
// ---------------------------------------------------------------------------------

/// SEVERITY: divergence goes undetected (minor).
///
/// `LedgerSnapshot::digest` hashes only `(frozen_before, checkpoint)`
/// (checkpoint.rs:111-116), not the excluded suppliers, which decide every later claim
/// of those suppliers. Evidence for a frozen epoch is refused (book.rs:428-429), so a
/// node that missed it before the freeze never learns it: two nodes with equal digests
/// settle the supplier's later claims differently.
///
/// FIX: include the excluded suppliers (key, epoch) in the digest, and accept
/// equivocation evidence whose epoch is frozen (it then excludes from the first
/// unfrozen epoch on, the same on every node that has it).
#[test]
fn equal_snapshot_digests_mean_equal_futures() {
    let (app, supplier) = (key(1), key(2));
    let params = params(&[(&app, 100_000)]);
    let e = params.epoch_ms;
    let o = session(&params, &app, &supplier, 500, 1, CreditSlot::new(0, 10_000));
    let (c1, _) = settled(o, &app, &supplier, &params, 1);
    let mut body = c1.body.clone();
    body.sum += 1;
    let c2 = Signed::sign(body, &supplier);

    let mut a = Ledger::new(params.clone());
    let mut b = Ledger::new(params.clone());
    a.apply_claim(c1.clone(), &V).unwrap();
    assert!(matches!(
        a.apply_claim(c2, &V).unwrap(),
        Applied::Equivocation(_)
    ));
    b.apply_claim(c1, &V).unwrap();
    a.advance(3 * e);
    b.advance(3 * e);
    let same_digest = a.snapshot().digest() == b.snapshot().digest();

    // A later, honest-looking session of the same supplier.
    let o = session(
        &params,
        &app,
        &supplier,
        3 * e + 500,
        2,
        CreditSlot::new(10_000, 10_000),
    );
    let (c, p) = settled(o, &app, &supplier, &params, 1);
    for l in [&mut a, &mut b] {
        // The excluded supplier's claim is not even kept where it is excluded.
        let _ = l.apply_claim(c.clone(), &V);
        let _ = l.apply_proof(&p, &V);
    }
    assert!(!same_digest, "the exclusion is part of the frozen state");
    let (sa, sb) = (a.claim_status(&c.id()), b.claim_status(&c.id()));
    assert!(
        !same_digest || sa == sb,
        "equal snapshot digests, yet the supplier's next claim is {sa:?} on one node and {sb:?} on the other"
    );
}

// ---------------------------------------------------------------------------------
// 11. A full reveal is checked receipt by receipt before its size is compared.
// ---------------------------------------------------------------------------------

/// SEVERITY: DoS (minor: CPU per byte of a 1 MiB proof).
///
/// `verify_proof` walks every receipt's ack chain (up to 1,024 hashes each) and builds
/// the whole tree (proof.rs:222-246) before it notices that a full reveal holds more
/// receipts than the claim's `count`; `Full` accepts up to 1,024 receipts whatever
/// `max_claim_leaves` is. Whoever knows the session's mining secret (the supplier, or
/// anyone once any proof of the claim was published) can make every node do ~10^6
/// hashes per proof message.
///
/// FIX: refuse a full reveal whose length differs from `claim.count` (and one over
/// `max_claim_leaves`) before checking any receipt.
#[test]
fn a_full_reveal_of_the_wrong_size_is_refused_before_any_receipt_is_checked() {
    let (app, supplier) = (key(1), key(2));
    let params = params(&[(&app, 100_000)]);
    let mut body = session(&params, &app, &supplier, 500, 1, CreditSlot::new(0, 50_000)).body;
    body.tau = 1; // every receipt mined
    let mining = mining_secret(&body);
    let o = Signed::sign(body, &app).countersign(&supplier, &mining);
    let ran = run_session(o, &app, 4, 16, 8);
    let all = ran.mined.full_reveal(Digest::ZERO).unwrap();
    let n = ran.receipts.len() as u64;
    // The supplier's own claim of one leaf.
    let c: SignedClaim = Signed::sign(
        Claim {
            version: PROTOCOL_VERSION,
            open: ran.open.clone(),
            root: Digest([1; 32]),
            sum: 1_000,
            count: 1,
        },
        &supplier,
    );
    let proof = Proof {
        claim: c.id(),
        ..all
    };
    let err = verify_proof(&c, &proof, &params, &V).unwrap_err();
    assert!(
        !matches!(err, ProofError::RootMismatch { found_count, .. } if found_count == n),
        "all {n} receipts were checked and a tree of {n} leaves built before refusing: {err}"
    );
}

// ---------------------------------------------------------------------------------
// 12. Stale or duplicate claims are signature-checked before they are refused.
// ---------------------------------------------------------------------------------

/// Counts signature checks.
#[derive(Default)]
struct Counting(std::cell::Cell<usize>);

impl relaymesh_protocol::SignatureVerifier for Counting {
    fn verify(
        &self,
        key: &relaymesh_protocol::PublicKey,
        message: &[u8],
        signature: &relaymesh_protocol::Signature,
    ) -> Result<(), relaymesh_protocol::identity::verify::SignatureError> {
        self.0.set(self.0.get() + 1);
        V.verify(key, message, signature)
    }
    fn check_key(
        &self,
        key: &relaymesh_protocol::PublicKey,
    ) -> Result<(), relaymesh_protocol::identity::verify::SignatureError> {
        V.check_key(key)
    }
}

/// SEVERITY: DoS (minor: CPU, free for the attacker).
///
/// `apply_claim` runs `verify_claim_in` – a batch of 3–4 ed25519 signatures – before
/// `check_open` and before the duplicate check (book.rs:310-314); `apply_evidence`
/// likewise verifies two claims before `check_open` (book.rs:428-429). Claims are
/// public, so any peer can replay every claim of the mesh's history (frozen: gossip
/// verdict "ignore", no score penalty, node settle/ingest.rs:84) or of the open epochs
/// (duplicate: "ignore" too) once gossipsub's seen-cache has forgotten them, and each
/// costs every node a signature batch.
///
/// FIX: compute the epoch and claim id from the bytes first and refuse frozen, early
/// and known claims (and evidence) before any signature is checked.
#[test]
fn stale_and_duplicate_claims_cost_no_signature_checks() {
    let (app, supplier) = (key(1), key(2));
    let params = params(&[(&app, 100_000)]);
    let o = session(&params, &app, &supplier, 500, 1, CreditSlot::new(0, 10_000));
    let (c, _) = settled(o, &app, &supplier, &params, 1);
    let mut ledger = Ledger::new(params.clone());
    ledger.apply_claim(c.clone(), &V).unwrap();
    let counting = Counting::default();
    assert_eq!(
        ledger.apply_claim(c.clone(), &counting).unwrap(),
        Applied::Duplicate
    );
    let on_duplicate = counting.0.get();
    ledger.advance(10 * params.epoch_ms);
    let counting = Counting::default();
    assert!(matches!(
        ledger.apply_claim(c, &counting),
        Err(LedgerError::Frozen { .. })
    ));
    let on_frozen = counting.0.get();
    assert_eq!(
        (on_duplicate, on_frozen),
        (0, 0),
        "signature checks spent on a duplicate claim and on a claim of a frozen epoch"
    );
}

// ---------------------------------------------------------------------------------
// 13. A refused proposal burns its escrow slot (open after the review; now closed).
// ---------------------------------------------------------------------------------

/// SEVERITY: honest party loses (the app: up to an escrow per refusal).
///
/// An app signs its terms, escrow slot included, before the supplier answers. A
/// supplier that refuses still holds the signed terms and could countersign them
/// later, so the app can never give that slot to another debit (two debits on one slot
/// exclude their payer); and since no debit was ever recorded for it, no escrow came
/// back: each refusal cost the app the slot's credit for good.
///
/// FIX: `LedgerBody::Withdraw` — the app publishes the refused terms; the ledger
/// records them as a debit with no claims, whose escrow returns to the app's line when
/// its epoch freezes (and whose claims, if the supplier countersigns after all, are
/// paid from that one debit for what it can prove).
#[test]
fn a_withdrawn_proposal_gives_its_escrow_back() {
    let (app, refuser, friend) = (key(1), key(2), key(3));
    let params = params(&[(&app, 10_000)]);
    let e = params.epoch_ms;
    let lag = params.funding_lag_epochs();
    // The app proposes its whole line in the first epoch genesis funds; refused.
    let start = lag + 1;
    let proposal = session(
        &params,
        &app,
        &refuser,
        start * e,
        1,
        CreditSlot::new(0, 10_000),
    )
    .proposal();
    // Later, from its next slot, it pays a friend: funded only if the escrow came back.
    let later = start + lag;
    let pay = transfer(&params, &app, &friend, 4_000, later, 10_000);
    let run = |withdraw: bool| {
        let mut ledger = Ledger::new(params.clone());
        ledger.advance(start * e);
        if withdraw {
            assert_eq!(
                ledger.apply_withdraw(&proposal, &V).unwrap(),
                Applied::Recorded
            );
        }
        ledger.advance(later * e);
        let paid = ledger.apply_transfer(&pay, &V).is_ok();
        ledger.advance((later + lag) * e);
        (paid, ledger.account(&friend.public_key()).balance)
    };
    assert_eq!(run(true), (true, 4_000));
    assert_eq!(
        run(false),
        (false, 0),
        "without the withdrawal the refused slot's credit is gone"
    );
}

/// A supplier that countersigns withdrawn terms after all is paid from the one debit
/// for what it proves; the withdrawal of terms already known changes nothing.
#[test]
fn withdrawn_terms_countersigned_later_are_one_debit() {
    let (app, supplier) = (key(1), key(2));
    let params = params(&[(&app, 100_000)]);
    let o = session(&params, &app, &supplier, 500, 1, CreditSlot::new(0, 10_000));
    let (c, proof) = settled(o.clone(), &app, &supplier, &params, 1);
    let mut ledger = Ledger::new(params.clone());
    assert_eq!(
        ledger.apply_withdraw(&o.proposal(), &V).unwrap(),
        Applied::Recorded
    );
    ledger.apply_claim(c.clone(), &V).unwrap();
    ledger.apply_proof(&proof, &V).unwrap();
    assert_eq!(
        ledger.apply_withdraw(&o.proposal(), &V).unwrap(),
        Applied::Duplicate
    );
    ledger.advance(10 * params.epoch_ms);
    assert_eq!(ledger.account(&supplier.public_key()).earned, value(&c));
    // A withdrawal signed by anyone but the app is refused.
    let mut forged = o.proposal();
    forged.body.nonce += 1;
    assert!(ledger.apply_withdraw(&forged, &V).is_err());
}

/// A withdrawal gives an escrow back; in a mesh without credit, or of a proposal that
/// escrows nothing, it gives nothing back, yet it was stored and gossiped like any
/// other. Failed before such withdrawals were refused: both were `Recorded`.
#[test]
fn a_withdrawal_with_nothing_to_give_back_is_refused() {
    let (app, supplier) = (key(1), key(2));
    for (params, escrow) in [
        (params(&[]), CreditSlot::new(0, 10_000)),
        (params(&[(&app, 100_000)]), CreditSlot::new(0, 0)),
    ] {
        // Dated where its funding line is not final yet: only the rule refuses it.
        let start = (params.funding_lag_epochs() + 1) * params.epoch_ms;
        let o = session(&params, &app, &supplier, start, 1, escrow);
        let refused = Ledger::new(params.clone()).apply_withdraw(&o.proposal(), &V);
        assert!(
            matches!(refused, Err(LedgerError::Withdraw(_))),
            "{refused:?}"
        );
    }
}

/// An excluded payer's debit dated after its exclusion is stored by a ledger that got
/// it before the clash, and refused by one that got it after: the frozen checkpoint's
/// `slot_top` of the payer counted it on the first only. Failed before `slot_top`
/// left out an excluded payer's debits from its exclusion on: the two arrival orders
/// froze different snapshot digests.
#[test]
fn an_excluded_payers_checkpoint_does_not_depend_on_arrival_order() {
    let (app, a, b, c) = (key(1), key(2), key(3), key(4));
    let params = params(&[(&app, 100_000)]);
    let first = transfer(&params, &app, &a, 1_000, 2, 0);
    let clash = transfer(&params, &app, &b, 1_000, 2, 500);
    let later = transfer(&params, &app, &c, 1_000, 3, 5_000);
    let run = |order: [&_; 3]| {
        let mut ledger = Ledger::new(params.clone());
        for t in order {
            let _ = ledger.apply_transfer(t, &V);
        }
        assert!(ledger.credit(&app.public_key(), 3).excluded);
        let h = u64::from(params.freeze_horizon_epochs);
        ledger.advance((4 + h) * params.epoch_ms);
        assert!(ledger.frozen_before() > 3);
        ledger.snapshot().digest()
    };
    assert_eq!(run([&later, &first, &clash]), run([&first, &clash, &later]));
}
