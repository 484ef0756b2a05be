//! The ledger: conservation, royalties, pro-rata debits, order independence.

mod common;

use std::sync::OnceLock;

use common::*;
use proptest::prelude::*;
use relaymesh_protocol::identity::signed::Signed;
use relaymesh_protocol::ledger::{Applied, Ledger, LedgerError};
use relaymesh_protocol::messages::claim::SignedClaim;
use relaymesh_protocol::messages::proof::Proof;
use relaymesh_protocol::messages::transfer::{SignedTransfer, Transfer};
use relaymesh_protocol::params::MeshParams;
use relaymesh_protocol::settlement::proof::sign_reveal;
use relaymesh_protocol::{Ed25519Verifier, Keypair, Signer};

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

fn settled_session(
    params: &MeshParams,
    app: &Keypair,
    supplier: &Keypair,
    royalty_source: Option<&Keypair>,
    start_ms: u64,
    nonce: u64,
    reveal: bool,
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

/// Two apps (one short of credit), three suppliers, a royalty-earning Source, three
/// epochs, transfers, and a supplier that equivocates.
fn scenario() -> &'static Scenario {
    static SCENARIO: OnceLock<Scenario> = OnceLock::new();
    SCENARIO.get_or_init(|| {
        let (rich, poor) = (key(1), key(2));
        let suppliers = [key(10), key(11), key(12)];
        let source = key(20);
        let params = params(&[(&rich, 10_000_000), (&poor, 5_000)]);
        let mut messages = Vec::new();
        let mut nonce = 100;
        for epoch in 0..3u64 {
            for (i, supplier) in suppliers.iter().enumerate() {
                for app in [&rich, &poor] {
                    nonce += 1;
                    let royalty = (i == 0).then_some(&source);
                    let (claim, proof, _) = settled_session(
                        &params,
                        app,
                        supplier,
                        royalty,
                        epoch * params.epoch_ms + 500,
                        nonce,
                        nonce % 2 == 0,
                    );
                    messages.push(Message::Claim(Box::new(claim)));
                    messages.push(Message::Proof(Box::new(proof)));
                }
            }
            messages.push(Message::Transfer(Signed::sign(
                Transfer {
                    version: 1,
                    mesh_id: params.mesh_id(),
                    from: rich.public_key(),
                    to: poor.public_key(),
                    amount: 2_000,
                    epoch,
                    nonce: epoch,
                },
                &rich,
            )));
        }
        // Supplier 12 equivocates in one session.
        let Message::Claim(c) = &messages[messages.len() - 3] else {
            unreachable!()
        };
        let mut body = c.body.clone();
        body.sum += 1;
        messages.push(Message::Claim(Box::new(Signed::sign(body, &suppliers[2]))));
        Scenario { params, messages }
    })
}

fn apply_all(params: &MeshParams, order: &[usize], messages: &[Message]) -> Ledger {
    let mut ledger = Ledger::new(params.clone());
    let mut queue: std::collections::VecDeque<usize> = order.iter().copied().collect();
    let mut stalls = 0;
    while let Some(i) = queue.pop_front() {
        let result = match &messages[i] {
            Message::Claim(c) => ledger.apply_claim((**c).clone(), &V),
            Message::Proof(p) => ledger.apply_proof(p, &V),
            Message::Transfer(t) => ledger.apply_transfer(t, &V),
        };
        match result {
            // A proof before its claim waits, as a node keeps it until the claim arrives.
            Err(LedgerError::UnknownClaim(_)) => {
                queue.push_back(i);
                stalls += 1;
                assert!(stalls < 10_000, "proof without claim");
            }
            Err(e) => panic!("valid message refused: {e}"),
            Ok(_) => {}
        }
    }
    ledger
}

#[test]
fn conservation_royalty_and_pro_rata() {
    let s = scenario();
    let order: Vec<usize> = (0..s.messages.len()).collect();
    let ledger = apply_all(&s.params, &order, &s.messages);
    let genesis: u128 = s.params.genesis.iter().map(|a| u128::from(a.amount)).sum();
    let accounts = ledger.accounts();
    assert_eq!(
        accounts.values().map(|a| a.balance).sum::<u128>(),
        genesis,
        "credit was minted or lost"
    );
    let earned: u128 = accounts.values().map(|a| a.earned).sum();
    let spent: u128 = accounts.values().map(|a| a.spent).sum();
    assert_eq!(earned, spent, "credits != debits");
    // The poor app could not pay in full: its debits were scaled, never overdrawn.
    let poor = ledger.account(&key(2).public_key());
    // Each epoch it owed far more than it held: it paid out exactly what it carried
    // in (genesis, then each earlier epoch's transfer), less rounding.
    assert!((8_990..=9_000).contains(&poor.spent), "{poor:?}");
    // The equivocating supplier earned nothing.
    assert_eq!(ledger.account(&key(12).public_key()).earned, 0);
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
    let (claim, proof, _) = settled_session(&params, &app, &supplier, Some(&source), 500, 7, true);
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

#[test]
fn sessions_at_many_suppliers_beyond_balance_mint_nothing() {
    let app = key(1);
    let params = params(&[(&app, 1_000)]);
    let mut ledger = Ledger::new(params.clone());
    let mut claimed = 0u128;
    for (n, s) in [key(10), key(11), key(12), key(13)].iter().enumerate() {
        let (claim, proof, _) = settled_session(&params, &app, s, None, 500, 50 + n as u64, true);
        claimed += u128::from(claim.body.sum) * 2;
        ledger.apply_claim(claim, &V).unwrap();
        ledger.apply_proof(&proof, &V).unwrap();
    }
    assert!(
        claimed > 1_000,
        "the claims must exceed the balance for this test"
    );
    let spent = ledger.account(&app.public_key()).spent;
    assert!((1_000 - 4..=1_000).contains(&spent), "spent {spent}");
    assert_eq!(ledger.total_balance(), 1_000);
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
}
