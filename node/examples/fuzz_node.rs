//! Long fuzz runs of the node's decoders: the inference stream's framing, the ads and
//! ledger sync codecs with what the node does with them, and the HTTP API's bodies and
//! routing headers (the protocol's messages have their own run in `relaymesh-protocol`).
//!
//! `cargo run --release -p relaymesh-node --example fuzz_node -- [ITERATIONS] [SEED]`
//! (default 1,000,000 mutated inputs per target). A panic is a bug: add its input to
//! the tests.

use std::time::Instant;

use relaymesh_node::fuzz::{targets, vectors_dir};

fn main() {
    let mut args = std::env::args().skip(1);
    let iterations: u64 = args
        .next()
        .map_or(1_000_000, |a| a.parse().expect("ITERATIONS is a number"));
    let seed: u64 = args
        .next()
        .map_or(1, |a| a.parse().expect("SEED is a number"));
    let mut total = 0;
    let started = Instant::now();
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>10} {:>7}",
        "target", "inputs", "accepted", "refused", "inputs/s", "s"
    );
    for mut target in targets(&vectors_dir()).expect("the golden vectors") {
        let t = Instant::now();
        let stats = target.run(iterations, seed);
        let secs = t.elapsed().as_secs_f64();
        total += stats.inputs;
        println!(
            "{:<28} {:>10} {:>10} {:>10} {:>10.0} {:>7.1}",
            target.name,
            stats.inputs,
            stats.accepted,
            stats.inputs - stats.accepted,
            stats.inputs as f64 / secs,
            secs
        );
    }
    println!(
        "{total} inputs, no panic, {:.0} inputs/s",
        total as f64 / started.elapsed().as_secs_f64()
    );
}
