//! The mesh under load: more concurrent requests than it has slots, and one app that
//! floods it while an honest client asks.
//!
//! A bootstrap node, two suppliers serving SmolLM2 with two slots each and no queue
//! of their own (4 slots in the mesh), all in this process on loopback.
//!
//! - 4× the mesh's slots at once (16 requests of 16 tokens) through a gateway whose
//!   requests wait up to 30 s in its queue, and through one that never waits: share
//!   answered, share refused (and whether each refusal carried `Retry-After`), p50/p99
//!   of the wait in the gateway's queue (`usage.relaymesh.queued_ms`).
//! - An honest client asking one request after another through its own gateway, alone
//!   and while another app's gateway keeps 32 requests in flight: the honest client's
//!   requests/s with the flood as a share of its rate without; in that mesh, and in a
//!   second one with a single supplier (two engines in one process compete for the
//!   cores, which measures the machine, not a supplier's fairness).
//!
//! `cargo bench --bench load` (needs the test model: `scripts/fetch-model`).

use std::time::{Duration, Instant};

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use common::{median, percentile};
use relaymesh_node::backend::SharedBackend;
use serde_json::{json, Value};

const MESH: &str = "bench-load";

async fn gateway(
    mesh: &str,
    boot: &libp2p::Multiaddr,
    queue: Duration,
    suppliers: usize,
) -> relaymesh::Node {
    let mut b = relaymesh::NodeBuilder::light()
        .mesh_name(mesh)
        .listen(vec![support::quic(), support::tcp()])
        .bootstrap(boot.clone())
        .api("127.0.0.1:0".parse().unwrap());
    b.config_mut().routing.timeouts.queue = queue;
    let node = b.start().await.unwrap();
    support::wait_for("the suppliers' ads", Duration::from_secs(60), || async {
        (node.handle().offers("smollm2").await.ok()?.len() >= suppliers).then_some(())
    })
    .await;
    node
}

/// One chat request: status, whether a 503 carried `Retry-After`, the queue wait.
async fn ask(client: &reqwest::Client, url: &str, i: usize) -> (u16, bool, Option<u64>) {
    let r = client
        .post(url)
        .json(&json!({
            "model": "smollm2", "temperature": 0, "max_tokens": 16,
            "messages": [{ "role": "user", "content": format!("Count from {i}.") }],
        }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry = r.headers().contains_key("retry-after");
    let body: Value = r.json().await.unwrap_or_default();
    (
        status,
        retry,
        body["usage"]["relaymesh"]["queued_ms"].as_u64(),
    )
}

async fn burst(name: &str, gw: &relaymesh::Node, n: usize) {
    let url = format!("{}/v1/chat/completions", support::base_url(gw));
    let client = reqwest::Client::new();
    let answers = futures::future::join_all((0..n).map(|i| ask(&client, &url, i))).await;
    let answered = answers.iter().filter(|a| a.0 == 200).count();
    let refused: Vec<_> = answers.iter().filter(|a| a.0 == 503).collect();
    let with_retry = refused.iter().filter(|a| a.1).count();
    let waits: Vec<f64> = answers
        .iter()
        .filter_map(|a| a.2)
        .map(|q| q as f64)
        .collect();
    println!(
        "| {name} | {n} | {:.0}% | {:.0}% ({with_retry} of {} with Retry-After) | {:.0} ms / {:.0} ms |",
        answered as f64 * 100.0 / n as f64,
        refused.len() as f64 * 100.0 / n as f64,
        refused.len(),
        if waits.is_empty() { f64::NAN } else { median(waits.clone()) },
        if waits.is_empty() { f64::NAN } else { percentile(waits, 99.0) },
    );
}

/// Requests/s of one client asking one after another for `secs`.
async fn honest_rate(gw: &relaymesh::Node, secs: u64) -> f64 {
    let url = format!("{}/v1/chat/completions", support::base_url(gw));
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut done = 0u32;
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        if ask(&client, &url, i).await.0 == 200 {
            done += 1;
        }
        i += 1;
    }
    f64::from(done) / started.elapsed().as_secs_f64()
}

/// A mesh of `suppliers` serving SmolLM2 with two slots each and no queue of their own.
async fn mesh(name: &str, suppliers: usize) -> (relaymesh::Node, Vec<relaymesh::Node>) {
    let boot = support::bootstrap(name).await;
    let boot_addr = support::address(&boot, "quic").await;
    let mut nodes = Vec::new();
    for _ in 0..suppliers {
        nodes.push(
            support::mesh_supplier(
                name,
                &boot_addr,
                vec![support::smollm(2, 0) as SharedBackend],
            )
            .await,
        );
    }
    (boot, nodes)
}

/// The honest client's requests/s through `honest` alone and while another app's
/// gateway (`flood`, which never queues) keeps 32 requests in flight and asks again
/// 50 ms after each refusal.
async fn flood_share(honest: &relaymesh::Node, flood: &relaymesh::Node) -> (f64, f64) {
    let secs = 30;
    let alone = honest_rate(honest, secs).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood_url = format!("{}/v1/chat/completions", support::base_url(flood));
    let flooders: Vec<_> = (0..32)
        .map(|i| {
            let (stop, url) = (stop.clone(), flood_url.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if ask(&client, &url, i).await.0 != 200 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let flooded = honest_rate(honest, secs).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in flooders {
        let _ = f.await;
    }
    (alone, flooded)
}

#[tokio::main]
async fn main() {
    let (boot, suppliers) = mesh(MESH, 2).await;
    let boot_addr = support::address(&boot, "quic").await;
    let queued = gateway(MESH, &boot_addr, Duration::from_secs(30), 2).await;
    let unqueued = gateway(MESH, &boot_addr, Duration::ZERO, 2).await;
    // Warm the engines and the sessions up.
    burst("warm-up", &queued, 4).await;

    println!("| gateway | requests at once | answered | refused | queue wait p50 / p99 |");
    println!("| --- | --- | --- | --- | --- |");
    burst("queue up to 30 s (default)", &queued, 16).await;
    burst("no queue (`--queue-secs 0`)", &unqueued, 16).await;

    println!();
    println!("| suppliers | honest client alone | while another app floods | share |");
    println!("| --- | --- | --- | --- |");
    let (alone, flooded) = flood_share(&queued, &unqueued).await;
    println!(
        "| 2 (in one process: they share the 2 cores) | {alone:.2} requests/s | {flooded:.2} requests/s | {:.2} |",
        flooded / alone
    );
    let mut nodes: Vec<_> = [queued, unqueued]
        .into_iter()
        .chain(suppliers)
        .chain([boot])
        .collect();
    // One supplier: the share its own scheduling gives, without a second engine
    // competing for the cores.
    let (boot, one) = mesh("bench-flood", 1).await;
    let boot_addr = support::address(&boot, "quic").await;
    let honest = gateway("bench-flood", &boot_addr, Duration::from_secs(30), 1).await;
    let flood = gateway("bench-flood", &boot_addr, Duration::ZERO, 1).await;
    burst("warm-up", &honest, 2).await;
    let (alone, flooded) = flood_share(&honest, &flood).await;
    println!(
        "| 1 | {alone:.2} requests/s | {flooded:.2} requests/s | {:.2} |",
        flooded / alone
    );
    nodes.extend([honest, flood].into_iter().chain(one).chain([boot]));
    for node in nodes {
        node.shutdown().await;
    }
}
