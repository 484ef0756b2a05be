//! Verifying one claim with its proof, as every full node does per settled session.
//! `cargo bench -p relaymesh-protocol --bench claims`

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use relaymesh_protocol::settlement::claim::verify_claim;
use relaymesh_protocol::settlement::proof::{sign_reveal, verify_proof};
use relaymesh_protocol::{Ed25519Verifier, WireMessage};

fn claims(c: &mut Criterion) {
    let (app, supplier) = (common::key(1), common::key(2));
    let mut params = common::params(&[(&app, 1)]);
    params.proof_samples = 16;
    let open = common::open(common::SessionTerms {
        params: &params,
        app: &app,
        supplier: &supplier,
        manifest: Some(common::manifest(&common::key(3), 50_000)),
        tau: 2_000,
        price: 1,
        start_ms: 0,
        nonce: 1,
        escrow: relaymesh_protocol::messages::credit::CreditSlot::new(0, 1 << 40),
    });
    // 8 requests of 16 acks of 48 bytes: about 32 mined receipts.
    let ran = common::run_session(open, &app, 8, 16, 48);
    let claim = common::claim(&ran, &supplier);
    let root = ran.mined.root().unwrap();
    let reveal = sign_reveal(ran.open.session_key(), root.hash, common::secret(1), &app);
    let sampled = ran
        .mined
        .sampled_proof(claim.id(), reveal, params.proof_samples)
        .unwrap();
    let full = ran.mined.full_reveal(claim.id()).unwrap();
    println!(
        "claim: {} bytes, {} mined leaves; sampled proof (16 samples): {} bytes; full reveal: {} bytes",
        claim.encode().unwrap().len(),
        root.count,
        sampled.encode().unwrap().len(),
        full.encode().unwrap().len()
    );
    let v = Ed25519Verifier;
    c.bench_function("verify claim", |b| {
        b.iter(|| verify_claim(&claim, &params, &v).unwrap())
    });
    c.bench_function("verify claim + sampled proof (16 samples)", |b| {
        b.iter(|| {
            verify_claim(&claim, &params, &v).unwrap();
            verify_proof(&claim, &sampled, &params, &v).unwrap()
        })
    });
    c.bench_function("verify claim + full reveal", |b| {
        b.iter(|| {
            verify_claim(&claim, &params, &v).unwrap();
            verify_proof(&claim, &full, &params, &v).unwrap()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(4));
    targets = claims
}
criterion_main!(benches);
