//! A busy payer's debits: the cost of storing its next one, and of asking whether it is
//! excluded (a supplier asks at every ack), once it has `n` debits in unfrozen epochs.
//! Both rescanned and sorted all of the payer's debits before the payer index
//! (`ledger::payers`), so they grew with `n`.
//! `cargo bench -p relaymesh-protocol --bench ledger`

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use relaymesh_protocol::ledger::Ledger;
use relaymesh_protocol::{Ed25519Verifier, Signer};

fn ledger(c: &mut Criterion) {
    let (app, friend) = (common::key(1), common::key(2));
    let params = common::params(&[(&app, 1_000_000)]);
    let epoch = 3;
    let v = Ed25519Verifier;
    for n in [100u64, 1_000, 4_000] {
        // The payer's debits: transfers of one micro-credit, numbered in signing order.
        let transfers: Vec<_> = (0..=n)
            .map(|i| common::transfer(&params, &app, &friend, 1, epoch, i))
            .collect();
        let mut busy = Ledger::new(params.clone());
        busy.advance(epoch * params.epoch_ms + 1);
        for t in &transfers[..n as usize] {
            busy.apply_transfer(t, &v).unwrap();
        }
        let next = &transfers[n as usize];
        c.bench_function(&format!("store a payer's next debit, {n} stored"), |b| {
            b.iter_batched_ref(
                || busy.clone(),
                |ledger| ledger.apply_transfer(next, &v).unwrap(),
                BatchSize::LargeInput,
            )
        });
        let payer = app.public_key();
        c.bench_function(&format!("is the payer excluded, {n} stored"), |b| {
            b.iter(|| busy.is_payer_excluded(&payer))
        });
    }
}

criterion_group!(benches, ledger);
criterion_main!(benches);
