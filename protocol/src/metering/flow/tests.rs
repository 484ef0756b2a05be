use std::collections::VecDeque;

use super::*;
use crate::messages::ack::SignedAck;
use crate::messages::session::SessionOpen;
use crate::metering::app::RequestAcker;
use crate::metering::app::RequestTerms;
use crate::metering::compute_units::CuFormula;
use crate::Digest;
use crate::Signer;
use crate::{Ed25519Verifier, Keypair};

const WINDOW: Window = Window {
    ack_every: 2,
    max_unacked: 4,
};

fn setup(max_acks: u16) -> (SupplierFlow, AppFlow, Keypair) {
    setup_with(max_acks, 1000, CuFormula::default())
}

/// A request for at most `max_output_bytes` in a session weighing by `cu`.
fn setup_with(
    max_acks: u16,
    max_output_bytes: u32,
    cu: CuFormula,
) -> (SupplierFlow, AppFlow, Keypair) {
    let app = Keypair::from_secret([1; 32]);
    let supplier = Keypair::from_secret([2; 32]);
    let terms = SessionOpen {
        version: crate::PROTOCOL_VERSION,
        mesh_id: Digest([9; 32]),
        app: app.public_key(),
        supplier: supplier.public_key(),
        model_digest: Digest([8; 32]),
        manifest: None,
        cu,
        price_per_cu: 1,
        tau: 1,
        max_token_bytes: 16,
        escrow: crate::messages::credit::CreditSlot::default(),
        start_ms: 0,
        max_duration_ms: 60_000,
        reveal_commitment: Digest([7; 32]),
        nonce: 1,
    };
    let session = crate::identity::signed::Signed::sign(terms.clone(), &app)
        .countersign(&supplier, &Digest([6; 32]));
    let acker = RequestAcker::new(
        RequestTerms {
            session_key: session.session_key(),
            request_id: 0,
            prompt_digest: Digest([3; 32]),
            prompt_bytes: 12,
            max_output_bytes,
            max_acks,
        },
        Digest([4; 32]),
        &app,
    );
    let supplier_flow =
        SupplierFlow::new(&session, acker.request().clone(), WINDOW, &Ed25519Verifier).unwrap();
    (supplier_flow, AppFlow::new(acker, WINDOW, &terms), app)
}

#[test]
fn a_whole_stream_is_acked_in_increments_that_add_up() {
    let (mut s, mut a, app) = setup(16);
    let tokens = ["The", " capital", " of", " France", " is", " Paris", "."];
    let mut receipts = Vec::new();
    for t in tokens {
        assert!(s.can_send());
        s.send(t).unwrap();
        if let Some(ack) = a.on_token(t, &app).unwrap() {
            receipts.push(s.on_ack(ack, &Ed25519Verifier).unwrap());
        }
    }
    s.finish();
    let last = s.on_ack(a.finish(&app).unwrap(), &Ed25519Verifier).unwrap();
    assert!(last.last && s.is_closed());
    receipts.push(last);
    let total: u32 = tokens.iter().map(|t| t.len() as u32).sum();
    assert_eq!(s.acked_bytes(), total);
    assert_eq!(
        receipts.len(),
        4,
        "7 tokens at K = 2: three acks and the last"
    );
    // Weights add up to the prompt plus every output byte.
    let cu = CuFormula::default();
    let weight: u64 = receipts.iter().map(|r| r.facts.weight).sum();
    assert_eq!(
        weight,
        cu.prompt_units(12) + cu.output_units(0, total).unwrap()
    );
}

#[test]
fn an_app_that_never_acks_gets_at_most_w_tokens() {
    let (mut s, _, _) = setup(16);
    let mut sent = 0;
    while s.can_send() {
        s.send("tok").unwrap();
        sent += 1;
    }
    assert_eq!(sent, WINDOW.max_unacked);
    assert_eq!(s.send("more"), Err(FlowError::WindowFull(4)));
}

#[test]
fn forged_replayed_and_misplaced_acks_are_refused() {
    let (mut s, mut a, app) = setup(16);
    for t in ["ab", "cd"] {
        s.send(t).unwrap();
    }
    a.on_token("ab", &app).unwrap();
    let ack = a.on_token("cd", &app).unwrap().unwrap();

    // Signed by someone else.
    let mut forged = ack.clone();
    forged.signature =
        crate::identity::signed::Signed::sign(forged.body.clone(), &Keypair::from_secret([5; 32]))
            .signature;
    assert_eq!(
        s.on_ack(forged, &Ed25519Verifier).unwrap_err(),
        FlowError::BadSignature
    );

    s.on_ack(ack.clone(), &Ed25519Verifier).unwrap();
    // The same ack again.
    assert!(matches!(
        s.on_ack(ack, &Ed25519Verifier),
        Err(FlowError::OutOfOrder { .. })
    ));
    // An ack for bytes not sent, or not at a token boundary.
    s.send("efgh").unwrap();
    s.send("ij").unwrap();
    let mut a2 = a.clone();
    let mid = a2.acker.ack(b"ef", 1, false, &app).unwrap();
    assert_eq!(
        s.clone().on_ack(mid, &Ed25519Verifier).unwrap_err(),
        FlowError::NotABoundary(6)
    );
    // The right counts over different text.
    let mut a3 = a.clone();
    let wrong = a3.acker.ack(b"EFGHij", 2, false, &app).unwrap();
    assert_eq!(
        s.clone().on_ack(wrong, &Ed25519Verifier).unwrap_err(),
        FlowError::WrongStream
    );
    // "last" before the supplier finished.
    let mut a4 = a.clone();
    let early = a4.acker.ack(b"efghij", 2, true, &app).unwrap();
    assert_eq!(
        s.on_ack(early, &Ed25519Verifier).unwrap_err(),
        FlowError::EarlyLast
    );
}

/// Hole: with the window open, the app could ack any boundary it liked, try each,
/// and sign the one whose receipt it knew would not be mined (supplier paid for
/// almost nothing). Failed before acks were fixed to every K tokens: the early
/// boundary was accepted.
#[test]
fn an_ack_must_fall_on_its_fixed_boundary() {
    let (mut s, a, app) = setup(16);
    for t in ["a", "b", "c", "d"] {
        s.send(t).unwrap();
    }
    // K = 2: ack 1 must cover exactly two tokens, not one, not three.
    for (early, tokens) in [(&b"a"[..], 1), (b"abc", 3)] {
        let mut acker = a.acker.clone();
        let ack = acker.ack(early, tokens, false, &app).unwrap();
        assert_eq!(
            s.clone().on_ack(ack, &Ed25519Verifier).unwrap_err(),
            FlowError::NotABoundary(early.len() as u32)
        );
    }
    let mut acker = a.acker.clone();
    s.on_ack(acker.ack(b"ab", 2, false, &app).unwrap(), &Ed25519Verifier)
        .unwrap();
    // A last ack must cover the finished stream and no more than K tokens.
    s.finish();
    let all = acker.clone().ack(b"cd", 2, true, &app).unwrap();
    s.clone().on_ack(all, &Ed25519Verifier).unwrap();
}

/// Hole: a supplier streaming 1 KiB "tokens" billed far more than an honest answer
/// of as many tokens. The app refuses a token over the session's cap; failed before
/// the cap existed.
#[test]
fn a_token_over_the_cap_is_refused_on_both_sides() {
    let (mut s, mut a, app) = setup(16);
    let junk = "x".repeat(17);
    assert!(matches!(
        a.on_token(&junk, &app),
        Err(FlowError::TokenTooLong { len: 17, max: 16 })
    ));
    assert!(matches!(
        s.send(&junk),
        Err(FlowError::TokenTooLong { len: 17, max: 16 })
    ));
}

/// Hole: a supplier streaming every token at the session's byte cap of junk was
/// paid by the byte, `max_token_bytes / 4` times an honest answer (7× at a cap of
/// 32, measured in netsim). An increment is now paid for at most `token_bytes` a
/// token; failed before acks named their tokens (paid 4 × 32).
#[test]
fn padded_tokens_are_paid_at_most_token_bytes_each() {
    let (mut s, mut a, app) = setup(16);
    let junk = "x".repeat(16);
    let cu = CuFormula::default();
    for _ in 0..2 {
        s.send(&junk).unwrap();
        if let Some(ack) = a.on_token(&junk, &app).unwrap() {
            let paid = s.on_ack(ack, &Ed25519Verifier).unwrap();
            let output = paid.facts.weight - cu.prompt_units(12);
            assert_eq!(output, u64::from(cu.output_per_byte * 2 * cu.token_bytes));
            assert_eq!(a.paid_output_units(), output);
        }
    }
    assert_eq!(
        s.acked_bytes(),
        32,
        "every byte acknowledged, not every byte paid"
    );
}

/// Hole (found by review): the app's ack chain leaves room for two ack steps more
/// than a request needs, so a supplier could answer a one-token request with 2K
/// frames of junk, each paid for `token_bytes`. A stream carries at most twice the
/// tokens asked for and two more; failed before the bound (32 frames were taken).
#[test]
fn a_short_request_carries_at_most_twice_its_tokens_and_two() {
    let (s, a, app) = setup(16);
    let (mut s, mut a) = (s.with_max_tokens(1).unwrap(), a.with_max_tokens(1));
    for _ in 0..4 {
        s.send("x").unwrap();
        if let Some(ack) = a.on_token("x", &app).unwrap() {
            s.on_ack(ack, &Ed25519Verifier).unwrap();
        }
    }
    assert_eq!(s.frames_left(), 0);
    assert_eq!(s.send("x"), Err(FlowError::TooManyFrames(5)));
    assert_eq!(a.on_token("x", &app), Err(FlowError::TooManyFrames(5)));
    // A frame without text is no token, and is refused, not passed over.
    assert_eq!(a.on_token("", &app), Err(FlowError::EmptyToken));
    s.finish();
    assert!(
        s.on_ack(a.finish(&app).unwrap(), &Ed25519Verifier)
            .unwrap()
            .last
    );
    // Without a stated length, the ack chain's 16 links of K = 2 bound it, one
    // short of filling every link, so the last ack has one left.
    let (s, mut a, app) = setup(16);
    let mut s = s;
    assert_eq!(s.frames_left(), 31);
    while s.frames_left() > 0 {
        s.send("x").unwrap();
        if let Some(ack) = a.on_token("x", &app).unwrap() {
            s.on_ack(ack, &Ed25519Verifier).unwrap();
        }
    }
    s.finish();
    assert!(
        s.on_ack(a.finish(&app).unwrap(), &Ed25519Verifier)
            .unwrap()
            .last
    );
    assert_eq!(chain_links(1, WINDOW), 3);
    // A chain shorter than that is refused (16 links at K = 2 do for 14 tokens).
    let (s, _, _) = setup(16);
    assert!(s.clone().with_max_tokens(14).is_ok());
    assert!(matches!(
        s.with_max_tokens(15),
        Err(FlowError::ShortChain {
            links: 16,
            need: 17,
            ..
        })
    ));
    assert_eq!(chain_links(100_000, WINDOW), MAX_ACK_CHAIN);
    // A peer's largest max_tokens at K = 1 (found by review: the sum overflowed).
    let one = Window {
        ack_every: 1,
        max_unacked: 1,
    };
    assert_eq!(chain_links(u32::MAX, one), MAX_ACK_CHAIN);
}

/// An ack naming fewer tokens than its increment carried would cut what the
/// supplier is paid: the supplier refuses it, and no verifier takes bytes that
/// its tokens could not carry.
#[test]
fn an_ack_must_name_the_tokens_it_covers() {
    let (mut s, a, app) = setup(16);
    for t in ["abcdefgh", "ijklmnop"] {
        s.send(t).unwrap();
    }
    let ack = a
        .acker
        .clone()
        .ack(b"abcdefghijklmnop", 1, false, &app)
        .unwrap();
    assert_eq!(
        s.clone().on_ack(ack, &Ed25519Verifier).unwrap_err(),
        FlowError::WrongTokens { named: 1, sent: 2 }
    );
    // 17 bytes in one token of at most 16, or bytes in no token: not a receipt.
    let mut acker = a.acker.clone();
    for (bytes, tokens) in [(&b"abcdefghijklmnopq"[..], 1), (b"a", 0)] {
        let ack = acker.clone().ack(bytes, tokens, false, &app).unwrap();
        assert!(matches!(
            s.clone().on_ack(ack, &Ed25519Verifier),
            Err(FlowError::Receipt(ReceiptError::BadTokens { .. }))
        ));
    }
    s.on_ack(
        acker.ack(b"abcdefghijklmnop", 2, false, &app).unwrap(),
        &Ed25519Verifier,
    )
    .unwrap();
}

#[test]
fn an_empty_stream_closes_with_one_ack_that_bills_the_prompt() {
    let (mut s, mut a, app) = setup(4);
    s.finish();
    let done = s.on_ack(a.finish(&app).unwrap(), &Ed25519Verifier).unwrap();
    assert!(done.last);
    assert_eq!(done.facts.weight, CuFormula::default().prompt_units(12));
    assert!(!s.can_send());
    assert_eq!(s.send("x"), Err(FlowError::Finished));
}

/// An embedding request (version 6) asks for no output: the supplier sends no
/// token, and the app's one last ack pays for the inputs at the session's
/// `embed_per_byte`, not its prompt factor.
#[test]
fn an_embedding_request_pays_for_its_inputs_at_the_embed_factor() {
    let cu = CuFormula {
        embed_per_byte: 3,
        ..CuFormula::default()
    };
    let (s, a, app) = setup_with(chain_links(0, WINDOW), 0, cu);
    let (mut s, mut a) = (s.with_max_tokens(0).unwrap(), a.with_max_tokens(0));
    assert_eq!(s.send("x"), Err(FlowError::TooMuchOutput(1)));
    s.finish();
    let done = s.on_ack(a.finish(&app).unwrap(), &Ed25519Verifier).unwrap();
    assert!(done.last && s.is_closed());
    assert_eq!(done.facts.weight, 3 * 12);
    // The same inputs as a prompt weigh at the prompt factor.
    let (mut s, mut a, app) = setup_with(4, 1000, cu);
    s.finish();
    let done = s.on_ack(a.finish(&app).unwrap(), &Ed25519Verifier).unwrap();
    assert_eq!(done.facts.weight, 12);
}

proptest::proptest! {
    /// Any output, any K <= W, acks delivered whenever the supplier must wait or
    /// at random: the supplier never has more than W tokens out, every ack is
    /// accepted, and the receipts cover the prompt and every byte exactly once,
    /// each increment of K tokens paid for at most `K × token_bytes` of them (as
    /// the app counted it).
    #[test]
    fn any_stream_closes_with_receipts_that_add_up(
        tokens in proptest::collection::vec("[a-zé ]{1,6}", 0..60),
        k in 1u32..8,
        extra in 0u32..8,
        eager in proptest::collection::vec(proptest::bool::ANY, 60),
    ) {
        let window = Window { ack_every: k, max_unacked: k + extra };
        let (s0, a0, app) = setup(200);
        let (mut s, mut a) = (s0, a0);
        (s.window, a.window) = (window, window);
        let mut in_flight: VecDeque<SignedAck> = VecDeque::new();
        let mut weight = 0u64;
        for (i, t) in tokens.iter().enumerate() {
            while !s.can_send() {
                let ack = in_flight.pop_front().expect("an ack is owed when the window is full");
                weight += s.on_ack(ack, &Ed25519Verifier).unwrap().facts.weight;
            }
            s.send(t).unwrap();
            proptest::prop_assert!(s.unacked_tokens() <= window.max_unacked);
            if let Some(ack) = a.on_token(t, &app).unwrap() {
                in_flight.push_back(ack);
            }
            if eager[i % eager.len()] {
                while let Some(ack) = in_flight.pop_front() {
                    weight += s.on_ack(ack, &Ed25519Verifier).unwrap().facts.weight;
                }
            }
        }
        s.finish();
        in_flight.push_back(a.finish(&app).unwrap());
        for ack in in_flight {
            weight += s.on_ack(ack, &Ed25519Verifier).unwrap().facts.weight;
        }
        proptest::prop_assert!(s.is_closed());
        let total: u32 = tokens.iter().map(|t| t.len() as u32).sum();
        proptest::prop_assert_eq!(s.acked_bytes(), total);
        let cu = CuFormula::default();
        let lengths: Vec<u32> = tokens.iter().filter(|t| !t.is_empty()).map(|t| t.len() as u32).collect();
        let paid: u64 = lengths
            .chunks(k as usize)
            .map(|c| u64::from(c.iter().sum::<u32>().min(c.len() as u32 * cu.token_bytes)))
            .sum();
        proptest::prop_assert_eq!(weight, cu.prompt_units(12) + u64::from(cu.output_per_byte) * paid);
        proptest::prop_assert_eq!(weight, cu.prompt_units(12) + a.paid_output_units());
        if lengths.iter().all(|&l| l <= cu.token_bytes) {
            proptest::prop_assert_eq!(weight, cu.prompt_units(12) + cu.output_units(0, total).unwrap());
        }
    }
}

#[test]
fn the_app_refuses_a_supplier_that_runs_past_the_window() {
    let (_, a, app) = setup(16);
    // An app that could not ack (its acks were lost) sees W tokens, then refuses.
    let mut a = a;
    a.window = Window {
        ack_every: 100,
        max_unacked: 3,
    };
    for _ in 0..3 {
        assert_eq!(a.on_token("x", &app).unwrap(), None);
    }
    assert_eq!(
        a.on_token("x", &app).unwrap_err(),
        FlowError::WindowExceeded(4)
    );
}
