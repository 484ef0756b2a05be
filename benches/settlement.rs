//! Relay mining figures (`cargo bench --bench settlement`):
//!
//! 1. supplier receipts/s end to end, as a supplier does it for each ack: verify the
//!    app's signature, check the receipt against the previous chain link, store it,
//!    count it and mine it into the session's sum tree when τ selects it, in one sled
//!    set of writes for the next group commit (`Miner::offer`); on 1 and 2 threads
//!    (one session each at a time), and through the node's batching verifier with 1,
//!    16 and 256 streams at once (`-- streams` with `STREAMS=N` runs one count);
//! 2. claim, reveal and proof sizes on the wire, the time a node takes to validate and
//!    apply them (`Settlement::ingest`, sled included), and the gossip bytes per node
//!    per second they make at 100 sessions a minute;
//! 3. metering error against τ: the trade-off between mined receipts (what a supplier
//!    stores and proves) and the error of the credited CUs, written to
//!    `docs/figures/metering-error-vs-tau.{csv,svg}`.

use std::time::Instant;

use relaymesh_node::metrics::Metrics;
use relaymesh_node::mining::Miner;
use relaymesh_node::settle::Settlement;
use relaymesh_protocol::identity::signed::Signed;
use relaymesh_protocol::messages::claim::Claim;
use relaymesh_protocol::messages::ledger::{LedgerBody, LedgerMessage};
use relaymesh_protocol::messages::session::SignedSessionOpen;
use relaymesh_protocol::metering::app::{RequestAcker, RequestTerms};
use relaymesh_protocol::metering::receipt::Receipt;
use relaymesh_protocol::metering::threshold::{is_mined, mined_value};
use relaymesh_protocol::params::{Allocation, MeshParams};
use relaymesh_protocol::settlement::proof::sign_reveal;
use relaymesh_protocol::wire::WireMessage;
use relaymesh_protocol::{Digest, Ed25519Verifier, Keypair, Signer};

/// Acks per session in the receipts benchmark: one request of 1,000 increments of
/// 48 bytes (about 12 tokens each).
const ACKS: u16 = 1000;
const START: u64 = 1_750_000_000_000;

fn params() -> MeshParams {
    let mut p = MeshParams::new(
        "settlement-bench",
        vec![Allocation {
            account: Keypair::from_secret([1; 32]).public_key(),
            amount: u64::MAX / 2,
        }],
    )
    .unwrap();
    p.tau_max = 1 << 40;
    p
}

struct Session {
    open: SignedSessionOpen,
    secret: Digest,
    /// The supplier's mining secret for it.
    mining: Digest,
    receipts: Vec<Receipt>,
    /// The chain link before each receipt's (the head for the first).
    previous: Vec<Digest>,
}

/// A session of one request with `ACKS` acks at threshold `tau`.
fn session(p: &MeshParams, supplier: &Keypair, nonce: u64, tau: u64) -> Session {
    let app = Keypair::from_secret([1; 32]);
    let (open, secret) = relaymesh_node::testkit::session(p, &app, supplier, tau, START, nonce);
    let mut acker = RequestAcker::new(
        RequestTerms {
            session_key: open.session_key(),
            request_id: 0,
            prompt_digest: Digest([2; 32]),
            prompt_bytes: 300,
            max_output_bytes: 1 << 24,
            max_acks: ACKS,
        },
        Digest([nonce as u8; 32]),
        &app,
    );
    let mut receipts = Vec::new();
    let mut previous = vec![acker.request().body.ack_chain_head];
    for i in 0..ACKS {
        let ack = acker.ack(&[b'x'; 48], 12, i + 1 == ACKS, &app).unwrap();
        previous.push(ack.body.chain_secret);
        receipts.push(acker.receipt(ack));
    }
    previous.pop();
    Session {
        mining: open.body.mining_secret(supplier),
        open,
        secret,
        receipts,
        previous,
    }
}

/// What a supplier does with each ack of `s`.
fn supply(s: &Session, miner: &Miner) -> usize {
    let app = s.open.body.app;
    let key = s.open.session_key();
    let mut mined = 0;
    for (r, prev) in s.receipts.iter().zip(&s.previous) {
        r.ack.verify(&app, &Ed25519Verifier).unwrap();
        let facts = r.check_next(&key, &s.open.body, prev).unwrap();
        if miner
            .offer(&s.open, &s.mining, r, &facts)
            .unwrap()
            .is_some()
        {
            mined += 1;
        }
    }
    mined
}

/// A supplier's store as the node opens it: sled with the node's group commit and its
/// miner.
fn supplier_store(p: &MeshParams) -> (tempfile::TempDir, Miner) {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new()
        .path(dir.path())
        .flush_every_ms(Some(relaymesh_node::store::COMMIT_INTERVAL_MS))
        .open()
        .unwrap();
    let miner = Miner::new(db.open_tree("mining").unwrap(), p);
    (dir, miner)
}

fn receipts_per_second(p: &MeshParams) {
    // τ as the rule sets it for this volume: ~1000 receipts of ~190 CU, 32 mined.
    let tau = 6_000;
    let supplier = Keypair::from_secret([2; 32]);
    for threads in [1usize, 2] {
        let (_dir, miner) = supplier_store(p);
        let per_thread: usize = std::env::var("PER_THREAD")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(6);
        let sessions: Vec<Vec<Session>> = (0..threads)
            .map(|t| {
                (0..per_thread)
                    .map(|i| session(p, &supplier, (t * 100 + i) as u64, tau))
                    .collect()
            })
            .collect();
        let started = Instant::now();
        let mined: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = sessions
                .iter()
                .map(|mine| {
                    let miner = &miner;
                    scope.spawn(move || mine.iter().map(|s| supply(s, miner)).sum::<usize>())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        let secs = started.elapsed().as_secs_f64();
        let total = threads * per_thread * usize::from(ACKS);
        println!(
            "receipts end to end, {threads} thread(s): {total} receipts ({mined} mined) in {secs:.2} s = {:.0} receipts/s",
            total as f64 / secs
        );
    }
}

/// The supplier's own path: every stream's acks go through the node's batching
/// verifier (`infer::verify::AckVerifier`), then the chain check, storage and mining,
/// with `streams` sessions streaming at once on a 2-worker runtime.
fn receipts_batched(p: &MeshParams, streams: usize) {
    let supplier = Keypair::from_secret([2; 32]);
    let (_dir, miner) = supplier_store(p);
    let miner = std::sync::Arc::new(miner);
    let sessions: Vec<Session> = (0..streams)
        .map(|i| session(p, &supplier, 5_000 + i as u64, 6_000))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let mined: usize = runtime.block_on(async {
        let verifier = relaymesh_node::infer::verify::AckVerifier::spawn();
        let tasks: Vec<_> = sessions
            .into_iter()
            .map(|s| {
                let (verifier, miner) = (verifier.clone(), miner.clone());
                tokio::spawn(async move {
                    let app = s.open.body.app;
                    let key = s.open.session_key();
                    let mut mined = 0;
                    for (r, prev) in s.receipts.iter().zip(&s.previous) {
                        assert!(verifier.verify(r.ack.signed_item(app)).await);
                        let facts = r.check_next(&key, &s.open.body, prev).unwrap();
                        if miner
                            .offer(&s.open, &s.mining, r, &facts)
                            .unwrap()
                            .is_some()
                        {
                            mined += 1;
                        }
                    }
                    mined
                })
            })
            .collect();
        let mut mined = 0;
        for t in tasks {
            mined += t.await.unwrap();
        }
        mined
    });
    let secs = started.elapsed().as_secs_f64();
    let total = streams * usize::from(ACKS);
    println!(
        "receipts end to end, batched verification, {streams} streams on 2 workers: {total} receipts ({mined} mined) in {secs:.2} s = {:.0} receipts/s",
        total as f64 / secs
    );
}

fn claims(p: &MeshParams) {
    let supplier_key = Keypair::from_secret([2; 32]);
    let app = Keypair::from_secret([1; 32]);
    let (_dir, miner) = supplier_store(p);
    let observer_dir = tempfile::tempdir().unwrap();
    let observer_db = sled::open(observer_dir.path()).unwrap();
    let observer = Settlement::open(
        Keypair::from_secret([3; 32]),
        p.clone(),
        &observer_db,
        None,
        Metrics::default(),
        START,
    )
    .unwrap();
    let n = 30;
    let (mut claim_bytes, mut reveal_bytes, mut proof_bytes, mut full_bytes) = (0, 0, 0, 0);
    let mut validate = std::time::Duration::ZERO;
    let mut leaves = 0;
    // Soon after the sessions (their epoch is not final yet).
    let now = START + 60_000;
    for i in 0..n {
        let s = session(p, &supplier_key, 1000 + i, 6_000);
        supply(&s, &miner);
        let key = s.open.session_key();
        let mined = miner.load(&key).unwrap();
        let root = mined.root().unwrap();
        leaves += root.count;
        let claim = Signed::sign(
            Claim {
                version: relaymesh_protocol::PROTOCOL_VERSION,
                open: s.open.clone(),
                root: root.hash,
                sum: root.sum,
                count: root.count,
            },
            &supplier_key,
        );
        let reveal = sign_reveal(key, root.hash, s.secret, &app);
        let proof = mined
            .sampled_proof(claim.id(), reveal.clone(), p.proof_samples)
            .unwrap();
        let full = mined.full_reveal(claim.id()).unwrap();
        let messages = [
            LedgerMessage::new(LedgerBody::Claim(claim)),
            LedgerMessage::new(LedgerBody::Reveal(reveal)),
            LedgerMessage::new(LedgerBody::Proof(proof)),
        ];
        let sizes: Vec<usize> = messages.iter().map(|m| m.encode().unwrap().len()).collect();
        claim_bytes += sizes[0];
        reveal_bytes += sizes[1];
        proof_bytes += sizes[2];
        full_bytes += LedgerMessage::new(LedgerBody::Proof(full))
            .encode()
            .unwrap()
            .len();
        let started = Instant::now();
        for m in messages {
            observer.ingest(m, now).unwrap();
        }
        validate += started.elapsed();
    }
    let n = n as usize;
    let per_session = (claim_bytes + reveal_bytes + proof_bytes) / n;
    println!(
        "per claim ({} mined leaves on average, 16 samples): claim {} B, reveal {} B, sampled proof {} B, full reveal {} B",
        leaves / n as u64,
        claim_bytes / n,
        reveal_bytes / n,
        proof_bytes / n,
        full_bytes / n
    );
    println!(
        "validate and apply claim + reveal + sampled proof at a node (sled included): {:.2} ms per session",
        validate.as_secs_f64() * 1000.0 / n as f64
    );
    println!(
        "gossip at 100 sessions/minute: {per_session} B per session, {:.0} B per node per second (unique payloads; gossipsub framing and duplicates on top)",
        per_session as f64 * 100.0 / 60.0
    );
}

/// A deterministic stream of pseudo-random numbers (blake3 in counter mode): the
/// figures do not change between runs.
struct Stream(u64);

impl Stream {
    fn next(&mut self) -> [u8; 32] {
        self.0 += 1;
        *blake3::hash(&self.0.to_be_bytes()).as_bytes()
    }
    fn below(&mut self, n: u64) -> u64 {
        u64::from_be_bytes(self.next()[..8].try_into().unwrap()) % n
    }
}

fn error_vs_tau() {
    // A session: 8 requests; the first ack of each carries its prompt (100–1,500 CU),
    // then 20 increments of 150–300 CU (about 12 tokens at 4 CU per byte).
    let sessions = 2_000;
    let taus = [
        64u64, 256, 1_024, 2_048, 4_096, 8_192, 16_384, 32_768, 65_536,
    ];
    let mut rows = Vec::new();
    println!("τ        mined/session  bytes stored  RMS error");
    for tau in taus {
        let mut rng = Stream(tau);
        let (mut sq, mut mined_total) = (0.0f64, 0u64);
        for _ in 0..sessions {
            let (mut served, mut credited) = (0u64, 0u64);
            for _ in 0..8 {
                for ack in 0..20 {
                    let mut w = 150 + rng.below(151);
                    if ack == 0 {
                        w += 100 + rng.below(1_401);
                    }
                    served += w;
                    if is_mined(&Digest(rng.next()), w, tau) {
                        credited += mined_value(w, tau);
                        mined_total += 1;
                    }
                }
            }
            let e = credited as f64 / served as f64 - 1.0;
            sq += e * e;
        }
        let rms = (sq / f64::from(sessions)).sqrt();
        let mined = mined_total as f64 / f64::from(sessions);
        // A mined receipt costs its canonical encoding (~420 B) plus its tree path.
        let bytes = mined * 420.0;
        println!(
            "{tau:<8} {mined:>13.1}  {bytes:>12.0}  {:>8.2}%",
            rms * 100.0
        );
        rows.push((tau, mined, bytes, rms));
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/figures");
    std::fs::create_dir_all(&out).unwrap();
    let mut csv = String::from("tau,mined_per_session,bytes_per_session,rms_relative_error\n");
    for (tau, mined, bytes, rms) in &rows {
        csv.push_str(&format!("{tau},{mined:.2},{bytes:.0},{rms:.5}\n"));
    }
    std::fs::write(out.join("metering-error-vs-tau.csv"), csv).unwrap();
    plot(&out.join("metering-error-vs-tau.svg"), &rows);
    println!("wrote docs/figures/metering-error-vs-tau.csv and .svg");
}

fn plot(path: &std::path::Path, rows: &[(u64, f64, f64, f64)]) {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (720, 480)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let max_mined = rows.iter().map(|r| r.1).fold(1.0, f64::max) * 1.2;
    let max_err = rows.iter().map(|r| r.3 * 100.0).fold(0.1, f64::max) * 1.2;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Metering error against mined receipts (one session, 160 acks)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d((1.0..max_mined).log_scale(), 0.0..max_err)
        .unwrap();
    chart
        .configure_mesh()
        .x_desc("mined receipts per session (stored and provable)")
        .y_desc("RMS error of credited CUs, %")
        .draw()
        .unwrap();
    chart
        .draw_series(LineSeries::new(
            rows.iter().map(|r| (r.1, r.3 * 100.0)),
            &BLUE,
        ))
        .unwrap();
    chart
        .draw_series(rows.iter().map(|r| {
            EmptyElement::at((r.1, r.3 * 100.0))
                + Circle::new((0, 0), 3, BLUE.filled())
                + Text::new(format!("τ={}", r.0), (6, -14), ("sans-serif", 12))
        }))
        .unwrap();
    root.present().unwrap();
}

/// Where one receipt's time goes, on one thread.
fn breakdown(p: &MeshParams) {
    let supplier = Keypair::from_secret([2; 32]);
    let s = session(p, &supplier, 999, 6_000);
    let (_dir, miner) = supplier_store(p);
    let app = s.open.body.app;
    let key = s.open.session_key();
    let n = s.receipts.len() as f64;
    let time = |what: &str, f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        println!(
            "  {what}: {:.1} µs per receipt",
            t.elapsed().as_secs_f64() * 1e6 / n
        );
    };
    time("verify the ack signature", &mut || {
        for r in &s.receipts {
            r.ack.verify(&app, &Ed25519Verifier).unwrap();
        }
    });
    for batch in [16usize, 64] {
        let items: Vec<_> = s.receipts.iter().map(|r| r.ack.signed_item(app)).collect();
        time(
            &format!("verify the ack signatures in batches of {batch}"),
            &mut || {
                for chunk in items.chunks(batch) {
                    relaymesh_protocol::SignatureVerifier::verify_batch(&Ed25519Verifier, chunk)
                        .unwrap();
                }
            },
        );
    }
    time("check against the previous link", &mut || {
        for (r, prev) in s.receipts.iter().zip(&s.previous) {
            r.check_next(&key, &s.open.body, prev).unwrap();
        }
    });
    time("store, count and mine (the check included)", &mut || {
        for (r, prev) in s.receipts.iter().zip(&s.previous) {
            let facts = r.check_next(&key, &s.open.body, prev).unwrap();
            miner.offer(&s.open, &s.mining, r, &facts).unwrap();
        }
    });
}

fn main() {
    // `cargo bench --bench settlement -- receipts` (or `claims`, `tau`) runs one part.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let part = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let p = params();
    if part("receipts") {
        breakdown(&p);
        receipts_per_second(&p);
        for streams in [1, 16, 256] {
            receipts_batched(&p, streams);
        }
    }
    if part("streams") {
        let streams = std::env::var("STREAMS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(16);
        receipts_batched(&p, streams);
    }
    if part("claims") {
        claims(&p);
    }
    if part("tau") {
        error_vs_tau();
    }
}
