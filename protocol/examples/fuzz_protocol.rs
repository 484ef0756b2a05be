//! Long fuzz runs of every wire decoder over the golden vectors.
//!
//! `cargo run --release -p relaymesh-protocol --example fuzz_protocol -- [ITERATIONS] [SEED]`
//! (default 1,000,000 mutated inputs per message type). A crash is a bug: the input that
//! caused it is in the panic message's context; add it to the tests.

use std::path::PathBuf;
use std::time::Instant;

use relaymesh_protocol::messages::wire_decoders;

fn main() {
    let mut args = std::env::args().skip(1);
    let iterations: u64 = args
        .next()
        .map_or(1_000_000, |a| a.parse().expect("ITERATIONS is a number"));
    let seed: u64 = args
        .next()
        .map_or(1, |a| a.parse().expect("SEED is a number"));
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("readable directory").path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).expect("vector file");
            (
                name,
                hex::decode(text.trim()).expect("vector files are hex"),
            )
        })
        .collect();
    files.sort();
    let mut total = 0;
    let started = Instant::now();
    for decoder in wire_decoders() {
        let corpus: Vec<Vec<u8>> = files
            .iter()
            .filter(|(name, _)| name.split('.').next() == Some(decoder.name))
            .map(|(_, bytes)| bytes.clone())
            .collect();
        let t = Instant::now();
        let stats = (decoder.fuzz)(&corpus, iterations, seed);
        total += stats.inputs;
        println!(
            "{:<22} {:>10} inputs {:>8} accepted  {:>6.1} s",
            decoder.name,
            stats.inputs,
            stats.accepted,
            t.elapsed().as_secs_f64()
        );
    }
    println!(
        "{total} inputs, no panic, {:.0} inputs/s",
        total as f64 / started.elapsed().as_secs_f64()
    );
}
