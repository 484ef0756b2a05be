//! The ledger: conservation, royalties, escrow, order independence, and the attacks a
//! rational payer or supplier would try on it.

mod common;

use std::sync::OnceLock;

use common::*;
use proptest::prelude::*;
use relaymesh_protocol::identity::signed::Signed;
use relaymesh_protocol::ledger::{Applied, ClaimStatus, Ledger, LedgerError};
use relaymesh_protocol::messages::claim::SignedClaim;
use relaymesh_protocol::messages::credit::CreditSlot;
use relaymesh_protocol::messages::proof::Proof;
use relaymesh_protocol::messages::session::SessionError;
use relaymesh_protocol::messages::transfer::SignedTransfer;
use relaymesh_protocol::params::MeshParams;
use relaymesh_protocol::settlement::proof::sign_reveal;
use relaymesh_protocol::{Ed25519Verifier, Keypair, PublicKey, Signer};

const V: Ed25519Verifier = Ed25519Verifier;

#[derive(Clone, Debug)]
enum Message {
    Claim(Box<SignedClaim>),
    Proof(Box<Proof>),
    Transfer(SignedTransfer),
}

struct Scenario {
    params: MeshParams,
    messages: Vec<Message>,
}

/// A session run honestly, claimed and proven (sampled if `reveal`, else in full).
#[allow(clippy::too_many_arguments)]
fn settled_session(
    params: &MeshParams,
    app: &Keypair,
    supplier: &Keypair,
    royalty_source: Option<&Keypair>,
    start_ms: u64,
    nonce: u64,
    reveal: bool,
    escrow: CreditSlot,
) -> (SignedClaim, Proof, RanSession) {
    let o = open(SessionTerms {
        params,
        app,
        supplier,
        manifest: royalty_source.map(|s| manifest(s, 100_000)),
        tau: 300,
        price: 2,
        start_ms,
        nonce,
        escrow,
    });
    let ran = run_session(o, app, 3, 8, 30);
    let claim = claim(&ran, supplier);
    let proof = if reveal {
        let root = ran.mined.root().unwrap();
        let r = sign_reveal(ran.open.session_key(), root.hash, secret(nonce), app);
        ran.mined
            .sampled_proof(claim.id(), r, params.proof_samples)
            .unwrap()
    } else {
        ran.mined.full_reveal(claim.id()).unwrap()
    };
    (claim, proof, ran)
}

/// Two apps, each numbering its slots in order (one with too little credit for all
/// of its sessions, one whose escrows are smaller than what its sessions claim),
/// three suppliers, a royalty-earning Source, three epochs, transfers, and a supplier
/// that equivocates.
fn scenario() -> &'static Scenario {
    static SCENARIO: OnceLock<Scenario> = OnceLock::new();
    SCENARIO.get_or_init(|| {
        let (rich, poor) = (key(1), key(2));
        let suppliers = [key(10), key(11), key(12)];
        let source = key(20);
        let params = params(&[(&rich, 10_000_000), (&poor, 5_000)]);
        let mut messages = Vec::new();
        let mut nonce = 100;
        let mut cursor = [0u64, 0];
        for epoch in 0..3u64 {
            for (i, supplier) in suppliers.iter().enumerate() {
                for (a, app) in [&rich, &poor].into_iter().enumerate() {
                    nonce += 1;
                    let amount = if a == 0 { 50_000 } else { 1_000 };
                    let escrow = CreditSlot::new(cursor[a], amount);
                    cursor[a] += amount;
                    let royalty = (i == 0).then_some(&source);
                    let (claim, proof, _) = settled_session(
                        &params,
                        app,
                        supplier,
                        royalty,
                        epoch * params.epoch_ms + 500,
                        nonce,
                        nonce % 2 == 0,
                        escrow,
                    );
                    messages.push(Message::Claim(Box::new(claim)));
                    messages.push(Message::Proof(Box::new(proof)));
                }
            }
            messages.push(Message::Transfer(transfer(
                &params, &rich, &poor, 2_000, epoch, cursor[0],
            )));
            cursor[0] += 2_000;
        }
        // Supplier 12 equivocates in its last session with the rich app.
        let Message::Claim(c) = &messages[messages.len() - 5] else {
            unreachable!()
        };
        assert_eq!(c.supplier(), suppliers[2].public_key());
        let mut body = c.body.clone();
        body.sum += 1;
        messages.push(Message::Claim(Box::new(Signed::sign(body, &suppliers[2]))));
        Scenario { params, messages }
    })
}

fn apply(ledger: &mut Ledger, message: &Message) -> Result<Applied, LedgerError> {
    match message {
        Message::Claim(c) => ledger.apply_claim((**c).clone(), &V),
        Message::Proof(p) => ledger.apply_proof(p, &V),
        Message::Transfer(t) => ledger.apply_transfer(t, &V),
    }
}

fn apply_all(params: &MeshParams, order: &[usize], messages: &[Message]) -> Ledger {
    let mut ledger = Ledger::new(params.clone());
    let mut queue: std::collections::VecDeque<usize> = order.iter().copied().collect();
    let mut stalls = 0;
    let mut unfunded = std::collections::BTreeSet::new();
    while let Some(i) = queue.pop_front() {
        match apply(&mut ledger, &messages[i]) {
            // The proof of a claim refused as unfunded never finds its claim.
            Err(LedgerError::UnknownClaim(id)) if unfunded.contains(&id) => {}
            // A proof before its claim waits, as a node keeps it until the claim arrives.
            Err(LedgerError::UnknownClaim(_)) => {
                queue.push_back(i);
                stalls += 1;
                assert!(stalls < 10_000, "proof without claim");
            }
            // Refused whatever the order: the payer's final line does not cover it. Or
            // refused once its supplier is excluded: it would have been void anyway.
            Err(LedgerError::Unfunded(_) | LedgerError::SupplierExcluded { .. }) => {
                if let Message::Claim(c) = &messages[i] {
                    unfunded.insert(c.id());
                }
            }
            Err(e) => panic!("valid message refused: {e}"),
            Ok(_) => {}
        }
    }
    ledger
}

fn genesis_total(params: &MeshParams) -> u128 {
    params.genesis.iter().map(|a| u128::from(a.amount)).sum()
}

#[test]
fn conservation_royalty_and_escrow() {
    let s = scenario();
    let order: Vec<usize> = (0..s.messages.len()).collect();
    let ledger = apply_all(&s.params, &order, &s.messages);
    let accounts = ledger.accounts();
    assert_eq!(
        accounts.values().map(|a| a.balance).sum::<u128>(),
        genesis_total(&s.params),
        "credit was minted or lost"
    );
    let earned: u128 = accounts.values().map(|a| a.earned).sum();
    let spent: u128 = accounts.values().map(|a| a.spent).sum();
    assert_eq!(earned, spent, "credits != debits");
    // The poor app's escrows of 1,000 are smaller than what its sessions claim: each
    // settled claim is paid exactly its escrow, and its sixth session (slot 5,000 to
    // 6,000) was refused as unfunded: it paid 5 × 1,000.
    let poor = ledger.account(&key(2).public_key());
    assert_eq!(poor.spent, 5_000, "{poor:?}");
    // Every claim of the rich app is paid in full (its escrow covers it).
    for (claim, status, paid) in ledger.claims() {
        if claim.app == key(1).public_key() && status == ClaimStatus::Settled {
            assert_eq!(paid, claim.value());
        }
    }
    // The equivocating supplier earned nothing from its last epoch on.
    assert!(ledger.is_excluded(&key(12).public_key()));
    // The Source earned royalties: 10% of what supplier 10 was paid in total.
    let source = ledger.account(&key(20).public_key()).earned;
    let supplier = ledger.account(&key(10).public_key()).earned;
    assert!(source > 0);
    let share = source as f64 / (source + supplier) as f64;
    assert!((share - 0.1).abs() < 0.001, "royalty share {share}");
}

#[test]
fn royalty_is_exactly_its_share_of_one_claim() {
    let (app, supplier, source) = (key(1), key(2), key(3));
    let params = params(&[(&app, u64::MAX / 4)]);
    let escrow = CreditSlot::new(0, 1 << 40);
    let (claim, proof, _) = settled_session(
        &params,
        &app,
        &supplier,
        Some(&source),
        500,
        7,
        true,
        escrow,
    );
    let mut ledger = Ledger::new(params);
    ledger.apply_claim(claim.clone(), &V).unwrap();
    assert_eq!(ledger.apply_proof(&proof, &V).unwrap(), Applied::Settled);
    let value = u128::from(claim.body.sum) * 2;
    assert_eq!(ledger.account(&source.public_key()).earned, value / 10);
    assert_eq!(
        ledger.account(&supplier.public_key()).earned,
        value - value / 10
    );
    assert_eq!(ledger.account(&app.public_key()).spent, value);
}

/// An honest session of app 1 at supplier 2 with an escrow of 12,000 on a line of
/// 20,000, claimed and proven: what the attacks below try to take back.
fn honest_session(params: &MeshParams, start_ms: u64) -> (SignedClaim, Proof) {
    let (claim, proof, _) = settled_session(
        params,
        &key(1),
        &key(2),
        None,
        start_ms,
        1,
        true,
        CreditSlot::new(0, 12_000),
    );
    (claim, proof)
}

/// Hole 3 (self-dealing dilutes honest suppliers): with pro-rata payment per (payer,
/// epoch), an app that also settled a huge claim to its own supplier key in the same
/// epoch paid the honest supplier ≈ 0 and moved its balance to itself. Failed on the
/// pro-rata ledger (the honest supplier got ~3% of its claim); now each claim is paid
/// from its own session's escrow and the honest one is paid in full.
#[test]
fn a_self_dealt_claim_cannot_dilute_an_honest_supplier() {
    let (app, honest, sybil) = (key(1), key(2), key(3));
    let params = params(&[(&app, 20_000)]);
    let mut ledger = Ledger::new(params.clone());
    let (h_claim, h_proof) = honest_session(&params, 500);
    // The app's own supplier key claims a session worth far more than the balance.
    let o = open(SessionTerms {
        params: &params,
        app: &app,
        supplier: &sybil,
        manifest: None,
        tau: 300,
        price: 2,
        start_ms: 600,
        nonce: 2,
        escrow: CreditSlot::new(12_000, 8_000),
    });
    let ran = run_session(o, &app, 4, 10, 3_000);
    let s_claim = claim(&ran, &sybil);
    let s_proof = ran.mined.full_reveal(s_claim.id()).unwrap();
    assert!(
        s_claim.body.sum * 2 > 40 * 20_000,
        "the sybil claim must dwarf the balance"
    );
    for message in [
        Message::Claim(Box::new(h_claim.clone())),
        Message::Proof(Box::new(h_proof)),
        Message::Claim(Box::new(s_claim)),
        Message::Proof(Box::new(s_proof)),
    ] {
        apply(&mut ledger, &message).unwrap();
    }
    let h_value = u128::from(h_claim.body.sum) * 2;
    assert!(h_value <= 12_000);
    assert_eq!(ledger.account(&honest.public_key()).earned, h_value);
    // The sybil got its escrow and nothing more.
    assert_eq!(ledger.account(&sybil.public_key()).earned, 8_000);
    assert_eq!(ledger.total_balance(), 20_000);
}

/// A payer that gives two debits the same credit proves it committed that credit
/// twice: it is excluded from the earlier debit's epoch, so neither moves anything and
/// what it holds stays locked; it loses at least what it could have been served.
#[test]
fn committing_one_credit_twice_locks_the_payer() {
    let (app, sybil) = (key(1), key(3));
    let params = params(&[(&app, 20_000)]);
    let mut ledger = Ledger::new(params.clone());
    let (h_claim, h_proof) = honest_session(&params, 500);
    apply(&mut ledger, &Message::Claim(Box::new(h_claim.clone()))).unwrap();
    apply(&mut ledger, &Message::Proof(Box::new(h_proof))).unwrap();
    // A supplier offered an overlapping slot sees the clash before it countersigns.
    assert!(ledger
        .slot_conflict(&app.public_key(), 0, CreditSlot::new(5_000, 15_000))
        .is_some());
    // The app moves the same credit to its friend.
    let t = transfer(&params, &app, &sybil, 20_000, 0, 0);
    ledger.apply_transfer(&t, &V).unwrap();
    assert_eq!(ledger.claim_status(&h_claim.id()), Some(ClaimStatus::Void));
    assert_eq!(ledger.account(&sybil.public_key()).earned, 0);
    assert_eq!(ledger.account(&app.public_key()).balance, 20_000);
    assert!(ledger.credit(&app.public_key(), 0).excluded);
}

/// Hole 4 (backdating): a transfer dated into an earlier unfrozen epoch was folded
/// before a settled session of a later epoch and took its payment back (pro rata).
/// Failed on the pro-rata ledger (the friend received the balance, the honest supplier
/// nothing); now a debit dated earlier but numbered later proves a double commitment
/// and moves nothing, and a backdated debit funded by its own slot changes no other.
#[test]
fn a_backdated_debit_takes_back_no_payment() {
    let (app, honest, friend) = (key(1), key(2), key(3));
    let params = params(&[(&app, 20_000)]);
    let epoch_ms = params.epoch_ms;
    let (h_claim, h_proof) = honest_session(&params, 2 * epoch_ms + 500);
    let h_value = u128::from(h_claim.body.sum) * 2;
    // Backdated to epoch 1 and over the session's credit.
    let mut ledger = Ledger::new(params.clone());
    apply(&mut ledger, &Message::Claim(Box::new(h_claim.clone()))).unwrap();
    apply(&mut ledger, &Message::Proof(Box::new(h_proof.clone()))).unwrap();
    ledger
        .apply_transfer(&transfer(&params, &app, &friend, 20_000, 1, 0), &V)
        .unwrap();
    assert_eq!(ledger.account(&friend.public_key()).earned, 0);
    assert_eq!(ledger.total_balance(), 20_000);
    // A later transfer on its own slot: the session is paid in full, the transfer
    // moves what is left.
    let mut ledger = Ledger::new(params.clone());
    apply(&mut ledger, &Message::Claim(Box::new(h_claim))).unwrap();
    apply(&mut ledger, &Message::Proof(Box::new(h_proof))).unwrap();
    ledger
        .apply_transfer(&transfer(&params, &app, &friend, 8_000, 3, 12_000), &V)
        .unwrap();
    assert_eq!(ledger.account(&honest.public_key()).earned, h_value);
    assert_eq!(ledger.account(&friend.public_key()).earned, 8_000);
}

/// Hole 1 (credit minting by overflow): terms with a huge price and huge CU factors
/// made the pro-rata fold's per-payer total wrap to zero (release) or panic (debug).
/// Failed before the mesh bounded price and factors; such terms are refused now.
#[test]
fn terms_beyond_the_mesh_bounds_are_refused() {
    let (app, supplier) = (key(1), key(2));
    let params = params(&[(&app, 10_000)]);
    let mut o = open(SessionTerms {
        params: &params,
        app: &app,
        supplier: &supplier,
        manifest: None,
        tau: 300,
        price: u64::MAX,
        start_ms: 500,
        nonce: 1,
        escrow: CreditSlot::new(0, 1),
    });
    assert!(matches!(
        o.validate(&params, &V),
        Err(SessionError::OutOfBounds {
            what: "price per CU",
            ..
        })
    ));
    o.body.price_per_cu = 1;
    o.body.cu.output_per_byte = u32::MAX;
    assert!(matches!(
        o.validate(&params, &V),
        Err(SessionError::OutOfBounds {
            what: "CUs per output byte",
            ..
        })
    ));
    o.body.cu.output_per_byte = 1;
    o.body.escrow = CreditSlot::new(u64::MAX, 2);
    assert!(matches!(
        o.validate(&params, &V),
        Err(SessionError::EscrowOverflow)
    ));
}

/// Hole 12: a small-order key can be signed for by anyone; as an account, whatever it
/// held could be spent by anyone. Failed before keys were checked: the transfer was
/// booked.
#[test]
fn a_small_order_key_cannot_own_credit_or_sign_terms() {
    let app = key(1);
    let params = params(&[(&app, 10_000)]);
    let mut identity = [0u8; 32];
    identity[0] = 1; // the neutral point: order 1
    let weak = PublicKey(identity);
    let mut t = transfer(&params, &app, &key(2), 10, 0, 0);
    t.body.to = weak;
    let t = Signed::sign(t.body, &app);
    let mut ledger = Ledger::new(params.clone());
    assert!(matches!(
        ledger.apply_transfer(&t, &V),
        Err(LedgerError::Transfer(_))
    ));
    let mut o = open(SessionTerms {
        params: &params,
        app: &app,
        supplier: &key(2),
        manifest: None,
        tau: 300,
        price: 1,
        start_ms: 500,
        nonce: 1,
        escrow: CreditSlot::new(0, 1_000),
    });
    o.body.supplier = weak;
    assert!(o.validate(&params, &V).is_err());
}

/// Hole 10: equivocation evidence named no mesh or epoch: evidence from another mesh
/// excluded a key here, and at a restart it voided claims of epochs that had frozen
/// before it arrived. Failed before evidence was bound to the mesh and its session's
/// epoch: now other-mesh evidence is refused, and an excluded supplier's claims of
/// earlier epochs still pay.
#[test]
fn equivocation_evidence_is_bound_to_its_mesh_and_epoch() {
    let (app, supplier) = (key(1), key(2));
    let params = params(&[(&app, 1_000_000)]);
    let epoch_ms = params.epoch_ms;
    // An honest early session, settled.
    let (early, early_proof, _) = settled_session(
        &params,
        &app,
        &supplier,
        None,
        500,
        1,
        true,
        CreditSlot::new(0, 100_000),
    );
    // A later one, claimed twice.
    let (late, _, _) = settled_session(
        &params,
        &app,
        &supplier,
        None,
        2 * epoch_ms + 500,
        2,
        true,
        CreditSlot::new(100_000, 100_000),
    );
    let mut body = late.body.clone();
    body.sum += 1;
    let late_twin = Signed::sign(body, &supplier);
    let mut ledger = Ledger::new(params.clone());
    ledger.apply_claim(early.clone(), &V).unwrap();
    ledger.apply_proof(&early_proof, &V).unwrap();
    ledger.apply_claim(late.clone(), &V).unwrap();
    let Applied::Equivocation(evidence) = ledger.apply_claim(late_twin, &V).unwrap() else {
        panic!("expected equivocation")
    };
    assert_eq!(ledger.claim_status(&early.id()), Some(ClaimStatus::Settled));
    assert_eq!(
        ledger.account(&supplier.public_key()).earned,
        u128::from(early.body.sum) * 2
    );
    // The same evidence in another mesh is refused.
    let mut other_params = params.clone();
    other_params.name = relaymesh_protocol::BoundedString::new("another-mesh").unwrap();
    let mut other = Ledger::new(other_params);
    assert!(matches!(
        other.apply_evidence((*evidence).clone(), &V),
        Err(LedgerError::Evidence(_))
    ));
    // Evidence for an epoch that froze here is refused, not applied to the past.
    let mut frozen = Ledger::new(params);
    frozen.advance(10 * epoch_ms);
    assert!(matches!(
        frozen.apply_evidence(*evidence, &V),
        Err(LedgerError::Frozen { .. })
    ));
}

#[test]
fn a_claim_on_an_escrow_beyond_the_credit_line_is_refused() {
    let (app, supplier) = (key(1), key(2));
    let params = params(&[(&app, 1_000)]);
    let (claim, _, _) = settled_session(
        &params,
        &app,
        &supplier,
        None,
        500,
        1,
        true,
        CreditSlot::new(500, 600),
    );
    let mut ledger = Ledger::new(params);
    assert!(matches!(
        ledger.apply_claim(claim, &V),
        Err(LedgerError::Unfunded(_))
    ));
}

#[test]
fn credit_received_is_spendable_once_final() {
    let (a, b, c) = (key(1), key(2), key(3));
    let params = params(&[(&a, 1_000)]);
    // H + 1 epochs and the skew: by the time anyone dates a debit, its line is final.
    let lag = params.funding_lag_epochs();
    assert_eq!(lag, u64::from(params.freeze_horizon_epochs) + 1 + 3);
    let at = |epoch: u64| epoch * params.epoch_ms;
    let mut ledger = Ledger::new(params.clone());
    ledger.advance(0);
    ledger
        .apply_transfer(&transfer(&params, &a, &b, 600, 0, 0), &V)
        .unwrap();
    // B may not spend it before the epoch it arrived in is final everywhere.
    assert_eq!(ledger.credit(&b.public_key(), lag - 1).line, 0);
    ledger.advance(at(lag - 1));
    assert!(matches!(
        ledger.apply_transfer(&transfer(&params, &b, &c, 600, lag - 1, 0), &V),
        Err(LedgerError::Unfunded(_))
    ));
    assert_eq!(ledger.credit(&b.public_key(), lag).line, 600);
    ledger.advance(at(lag));
    ledger
        .apply_transfer(&transfer(&params, &b, &c, 600, lag, 0), &V)
        .unwrap();
    assert_eq!(ledger.account(&c.public_key()).balance, 600);
}

#[test]
fn messages_dated_past_the_clock_wait() {
    let (a, b) = (key(1), key(2));
    let params = params(&[(&a, 1_000)]);
    let mut ledger = Ledger::new(params.clone());
    ledger.advance(0);
    assert!(matches!(
        ledger.apply_transfer(&transfer(&params, &a, &b, 1, 1_000, 0), &V),
        Err(LedgerError::Early { .. })
    ));
}

#[test]
fn freezing_folds_without_changing_balances() {
    let s = scenario();
    let order: Vec<usize> = (0..s.messages.len()).collect();
    let mut ledger = apply_all(&s.params, &order, &s.messages);
    let before = ledger.accounts();
    // Everything freezes.
    ledger.advance(100 * s.params.epoch_ms);
    assert_eq!(ledger.accounts(), before);
}

/// A pool of validly signed debits by two payers with adversarial slots (overlapping,
/// backdated, beyond the line), for the conservation property.
fn debit_pool() -> &'static (MeshParams, Vec<Message>) {
    static POOL: OnceLock<(MeshParams, Vec<Message>)> = OnceLock::new();
    POOL.get_or_init(|| {
        let payers = [key(1), key(2)];
        let others = [key(3), key(4), key(5)];
        let params = params(&[(&payers[0], 5_000), (&payers[1], 3_000)]);
        let mut messages = Vec::new();
        let mut n = 0u64;
        for (p, payer) in payers.iter().enumerate() {
            for (start, amount, epoch) in [
                (0, 2_000, 0),
                (1_000, 2_000, 1),
                (2_000, 1_500, 0),
                (4_000, 900, 2),
            ] {
                n += 1;
                let to = &others[(n % 3) as usize];
                if (n + p as u64).is_multiple_of(2) {
                    messages.push(Message::Transfer(transfer(
                        &params, payer, to, amount, epoch, start,
                    )));
                } else {
                    let (claim, proof, _) = settled_session(
                        &params,
                        payer,
                        to,
                        None,
                        epoch * params.epoch_ms + 100,
                        n,
                        n.is_multiple_of(3),
                        CreditSlot::new(start, amount),
                    );
                    messages.push(Message::Claim(Box::new(claim)));
                    messages.push(Message::Proof(Box::new(proof)));
                }
            }
        }
        (params, messages)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_order_gives_the_same_ledger(order in Just((0..scenario().messages.len()).collect::<Vec<_>>()).prop_shuffle()) {
        let s = scenario();
        let reference: Vec<usize> = (0..s.messages.len()).collect();
        let expected = apply_all(&s.params, &reference, &s.messages).accounts();
        let got = apply_all(&s.params, &order, &s.messages).accounts();
        prop_assert_eq!(got, expected);
    }

    /// No set of validly signed messages, in any order, with any freezing on the way,
    /// raises the total balance above genesis (or below it), and no account's balance
    /// ever exceeds what genesis gave everyone.
    #[test]
    fn no_valid_messages_mint_credit(
        subset in proptest::collection::vec(any::<bool>(), 16),
        order in Just((0..16usize).collect::<Vec<_>>()).prop_shuffle(),
        freeze_after in 0usize..16,
    ) {
        let (params, pool) = debit_pool();
        let total = genesis_total(params);
        let mut ledger = Ledger::new(params.clone());
        for (step, i) in order.iter().enumerate() {
            if *i >= pool.len() || !subset[*i] {
                continue;
            }
            let _ = apply(&mut ledger, &pool[*i]);
            if step == freeze_after {
                ledger.advance(2 * params.epoch_ms);
            }
            let accounts = ledger.accounts();
            prop_assert_eq!(accounts.values().map(|a| a.balance).sum::<u128>(), total);
            prop_assert!(accounts.values().all(|a| a.balance <= total));
        }
    }
}

/// A ledger resumed from a stored snapshot of its frozen epochs, given the messages of
/// the epochs still open, holds the same balances as one that saw everything.
#[test]
fn a_snapshot_of_the_frozen_epochs_resumes_the_same_ledger() {
    let s = scenario();
    let order: Vec<usize> = (0..s.messages.len()).collect();
    let mut full = apply_all(&s.params, &order, &s.messages);
    // Epochs 0 and 1 freeze; epoch 2 stays open.
    let at = (1 + u64::from(s.params.freeze_horizon_epochs)) * s.params.epoch_ms;
    full.advance(at);
    assert_eq!(full.frozen_before(), 2);
    let snapshot = full.snapshot();
    let stored =
        relaymesh_protocol::ledger::LedgerSnapshot::from_bytes(&snapshot.to_bytes()).unwrap();
    assert_eq!(stored.digest(), snapshot.digest());
    let mut resumed = Ledger::from_snapshot(s.params.clone(), stored);
    let mut frozen = 0;
    for message in &s.messages {
        match apply(&mut resumed, message) {
            Err(LedgerError::Frozen { .. }) => frozen += 1,
            Err(
                LedgerError::UnknownClaim(_)
                | LedgerError::Unfunded(_)
                | LedgerError::SupplierExcluded { .. },
            ) => {}
            Err(e) => panic!("{e}"),
            Ok(_) => {}
        }
    }
    assert!(frozen > 0);
    assert_eq!(resumed.accounts(), full.accounts());
    assert_eq!(resumed.snapshot().digest(), full.snapshot().digest());
}
