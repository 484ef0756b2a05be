//! Supplier-side receipt throughput: verify the app's ack signatures (batched per
//! session), check each receipt, hash it, decide mining, insert mined ones into the
//! session's sum tree. `cargo bench -p relaymesh-protocol --bench receipts`

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use relaymesh_protocol::identity::verify::SignedItem;
use relaymesh_protocol::metering::receipt::Receipt;
use relaymesh_protocol::settlement::proof::MinedSession;
use relaymesh_protocol::{Digest, Ed25519Verifier, SignatureVerifier, Signer};

struct Fixture {
    key: Digest,
    open: relaymesh_protocol::messages::session::SignedSessionOpen,
    receipts: Vec<Receipt>,
    /// Previous chain link of each receipt (the head for the first).
    previous: Vec<Digest>,
    app: relaymesh_protocol::PublicKey,
}

fn fixture(acks: u16) -> Fixture {
    let (app, supplier) = (common::key(1), common::key(2));
    let params = common::params(&[(&app, 1)]);
    let open = common::open(common::SessionTerms {
        params: &params,
        app: &app,
        supplier: &supplier,
        manifest: None,
        tau: 1536,
        price: 1,
        start_ms: 0,
        nonce: 1,
        escrow: relaymesh_protocol::messages::credit::CreditSlot::new(0, 1 << 40),
    });
    let key = open.session_key();
    let mut request = common::AppRequest::new(key, 0, 300, &app);
    let mut receipts = Vec::new();
    let mut previous = vec![request.request.body.ack_chain_head];
    for i in 0..acks {
        // About 12 tokens of English per increment.
        let receipt = request.ack(&[b'x'; 48], i + 1 == acks, &app);
        previous.push(receipt.ack.body.chain_secret);
        receipts.push(receipt);
    }
    previous.pop();
    Fixture {
        key,
        open,
        receipts,
        previous,
        app: app.public_key(),
    }
}

fn pipeline(f: &Fixture) -> usize {
    let items: Vec<SignedItem> = f
        .receipts
        .iter()
        .map(|r| r.ack.signed_item(f.app))
        .collect();
    Ed25519Verifier.verify_batch(&items).expect("valid acks");
    let mut mined = MinedSession::new(common::mining_secret(&f.open.body));
    let tau = f.open.body.tau;
    let mut count = 0;
    for (receipt, previous) in f.receipts.iter().zip(&f.previous) {
        let facts = receipt
            .check_next(&f.key, &f.open.body, previous)
            .expect("valid receipt");
        if mined.offer(receipt.clone(), &facts, tau).unwrap().is_some() {
            count += 1;
        }
    }
    count
}

fn receipts(c: &mut Criterion) {
    let one = fixture(1);
    let item = one.receipts[0].ack.signed_item(one.app);
    c.bench_function("ack signature, single verify", |b| {
        b.iter(|| {
            Ed25519Verifier
                .verify(&item.key, &item.message, &item.signature)
                .unwrap()
        })
    });
    c.bench_function("relay hash (blake3 of ack body)", |b| {
        b.iter(|| one.receipts[0].ack.body.relay_hash())
    });

    let mut group = c.benchmark_group("supplier receipt pipeline");
    for acks in [64u16, 256] {
        let f = fixture(acks);
        group.throughput(Throughput::Elements(u64::from(acks)));
        group.bench_with_input(BenchmarkId::new("batch", acks), &f, |b, f| {
            b.iter(|| pipeline(f))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(4));
    targets = receipts
}
criterion_main!(benches);
