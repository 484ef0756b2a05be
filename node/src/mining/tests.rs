//! The miner against real receipts: the sled tree equals the protocol's, survives a
//! reopen, stops at a claim's leaf bound, and refuses garbage.
use super::*;
use relaymesh_protocol::metering::app::{RequestAcker, RequestTerms};
use relaymesh_protocol::Keypair;

/// The supplier's mining secret in these tests.
const SECRET: Digest = Digest([5; 32]);

fn session(app: &Keypair, supplier: &Keypair, tau: u64) -> SignedSessionOpen {
    let params = crate::config::named_mesh("mining-tests");
    crate::testkit::session(&params, app, supplier, tau, 1, 1).0
}

/// Real receipts of one request and made-up facts (the miner trusts its caller).
fn receipts(app: &Keypair, session: &SignedSessionOpen, n: usize) -> Vec<(Receipt, ReceiptFacts)> {
    let mut acker = RequestAcker::new(
        RequestTerms {
            session_key: session.session_key(),
            request_id: 0,
            prompt_digest: Digest([2; 32]),
            prompt_bytes: 10,
            max_output_bytes: 1 << 20,
            max_acks: 1000,
        },
        Digest([3; 32]),
        app,
    );
    (0..n)
        .map(|i| {
            let ack = acker.ack(b"token", 1, false, app).unwrap();
            let receipt = Receipt {
                request: acker.request().clone(),
                ack,
            };
            let facts = ReceiptFacts {
                relay_hash: receipt.ack.body.relay_hash(),
                weight: 1 + (i as u64 % 7) * 10,
                digest: receipt.digest(),
            };
            (receipt, facts)
        })
        .collect()
}

#[test]
fn the_sled_tree_is_the_protocol_tree_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (app, supplier) = (Keypair::from_secret([1; 32]), Keypair::from_secret([2; 32]));
    let s = session(&app, &supplier, 30);
    let all = receipts(&app, &s, 200);
    let mut reference = MinedSession::new(SECRET);
    {
        let db = crate::testkit::open_db(dir.path());
        let miner = Miner::new(
            db.open_tree("mining").unwrap(),
            &crate::config::named_mesh("mining-tests"),
        );
        for (i, (receipt, facts)) in all.iter().enumerate() {
            if i == 77 {
                // A group commit mid-request splits its acks into two runs.
                miner.commit().unwrap();
            }
            let paid = miner.offer(&s, &SECRET, receipt, facts).unwrap();
            assert_eq!(paid, reference.offer(receipt.clone(), facts, 30).unwrap());
            // The same receipt again is counted, never mined twice.
            miner.offer(&s, &SECRET, receipt, facts).unwrap();
        }
        db.flush().unwrap();
    }
    let db = crate::testkit::open_db(dir.path());
    let miner = Miner::new(
        db.open_tree("mining").unwrap(),
        &crate::config::named_mesh("mining-tests"),
    );
    let root = miner.root(&s.session_key()).unwrap();
    assert_eq!(root, reference.root().unwrap());
    assert!(
        root.count > 10 && root.count < 200,
        "τ selects some: {root:?}"
    );
    let report = &miner.sessions().unwrap()[0];
    assert_eq!(report.counters.receipts, 400);
    // Every receipt is kept once, in chain order.
    let kept = miner.receipts(&s.session_key()).unwrap();
    assert!(kept.iter().eq(all.iter().map(|(r, _)| r)));
    assert_eq!(report.counters.mined, root.count);
    assert_eq!(report.counters.mined_value, root.sum);
    // Proofs from the sled tree verify against the root.
    assert_eq!(
        miner.load(&s.session_key()).unwrap().receipts().len() as u64,
        root.count
    );
    assert_eq!(miner.check_tree(&s.session_key()).unwrap(), root);

    // Once claimed, a late receipt is kept but neither counted nor mined.
    let late = receipts(&app, &s, 201).pop().unwrap();
    miner.close(&s, 1).unwrap();
    assert_eq!(miner.offer(&s, &SECRET, &late.0, &late.1).unwrap(), None);
    assert_eq!(miner.sessions().unwrap()[0].counters, report.counters);
    assert_eq!(miner.receipts(&s.session_key()).unwrap().len(), 201);
    assert_eq!(miner.root(&s.session_key()).unwrap(), root);
}

#[test]
fn a_session_stops_mining_at_the_leaves_a_claim_may_hold() {
    let dir = tempfile::tempdir().unwrap();
    let (app, supplier) = (Keypair::from_secret([1; 32]), Keypair::from_secret([2; 32]));
    let mut params = crate::config::named_mesh("mining-tests");
    params.max_claim_leaves = 5;
    params.tau_min = 1;
    // τ = 1 mines every receipt.
    let s = crate::testkit::session(&params, &app, &supplier, 1, 1, 1).0;
    let db = crate::testkit::open_db(dir.path());
    let miner = Miner::new(db.open_tree("mining").unwrap(), &params);
    let mut full_after = None;
    let mut mined = 0;
    for (i, (receipt, facts)) in receipts(&app, &s, 12).iter().enumerate() {
        mined += usize::from(miner.offer(&s, &SECRET, receipt, facts).unwrap().is_some());
        if full_after.is_none() && miner.nearly_full(&s.session_key()).unwrap() {
            full_after = Some(i + 1);
        }
    }
    assert_eq!(mined, 5);
    // Nine tenths of 5 leaves: the session takes no more requests after the fifth.
    assert_eq!(full_after, Some(5));
    // Also when read back from disk by a new miner.
    miner.commit().unwrap();
    assert!(Miner::new(db.open_tree("mining").unwrap(), &params)
        .nearly_full(&s.session_key())
        .unwrap());
    let report = &miner.sessions().unwrap()[0];
    assert_eq!((report.counters.receipts, report.counters.mined), (12, 5));
    let root = miner.check_tree(&s.session_key()).unwrap();
    assert_eq!(root.count, 5);
    // The claim over that root is one every ledger accepts.
    let claim = relaymesh_protocol::identity::signed::Signed::sign(
        relaymesh_protocol::messages::claim::Claim {
            version: relaymesh_protocol::PROTOCOL_VERSION,
            open: s.clone(),
            root: root.hash,
            sum: root.sum,
            count: root.count,
        },
        &supplier,
    );
    relaymesh_protocol::settlement::claim::verify_claim(
        &claim,
        &params,
        &relaymesh_protocol::Ed25519Verifier,
    )
    .unwrap();
}

#[test]
fn nodes_round_trip_and_garbage_is_corrupt() {
    let leaf = StoredNode::Leaf(LeafEntry {
        key: Digest([1; 32]),
        value: Digest([2; 32]),
        weight: 3,
    });
    let inner = StoredNode::Internal(NodeSummary {
        hash: Digest([4; 32]),
        sum: 5,
        count: 6,
    });
    for node in [leaf, inner] {
        assert_eq!(decode_node(&encode_node(&node)), Some(node));
    }
    assert_eq!(decode_node(&[0, 1, 2]), None);
    assert_eq!(decode_node(&[]), None);
    assert_eq!(decode_node(&[9; 73]), None);
}
