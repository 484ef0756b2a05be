//! What the mesh costs and how it spreads load: the same model and prompt called on the
//! supplier's own API and through a light gateway → supplier over QUIC on loopback, and
//! 1, 4 and 16 concurrent streams through a mesh of two suppliers.
//!
//! `cargo bench --bench mesh` (needs the test model: `scripts/fetch-model`).
//!
//! Mesh overhead is measured twice: with a backend that answers at once (what is left
//! is the mesh's own cost: session, request, frames, acks) and with SmolLM2 on the
//! embedded engine (what a user sees). TTFT is to the first streamed piece at the
//! client; tokens/s counts streamed pieces over the whole request.

use std::time::{Duration, Instant};

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use common::{median, over_http, percentile, Instant_, Timing};
use relaymesh_node::backend::SharedBackend;
use serde_json::json;

const MESH: &str = "bench-mesh";

fn body(model: &str, prompt: &str, max: u32) -> serde_json::Value {
    json!({ "model": model, "prompt": prompt, "temperature": 0, "max_tokens": max,
            "stream": true, "stream_options": { "include_usage": true } })
}

async fn wait_offers(gateway: &relaymesh::Node, model: &str, n: usize) {
    support::wait_for(
        "the suppliers' ads at the gateway",
        Duration::from_secs(60),
        || async { (gateway.handle().offers(model).await.ok()?.len() >= n).then_some(()) },
    )
    .await;
}

/// TTFT p50/p99 and pieces/s, direct and through the mesh, alternating requests.
async fn overhead(
    name: &str,
    model: &str,
    direct: &str,
    mesh: &str,
    ttft_runs: usize,
    rate: (u32, usize),
) {
    let (mut d, mut m) = (Vec::new(), Vec::new());
    for i in 0..ttft_runs + ttft_runs / 10 {
        let a = over_http(direct, body(model, "The history of Paris begins", 1)).await;
        let b = over_http(mesh, body(model, "The history of Paris begins", 1)).await;
        if i >= ttft_runs / 10 {
            d.push(a.ttft.as_secs_f64() * 1e3);
            m.push(b.ttft.as_secs_f64() * 1e3);
        }
    }
    let (mut dr, mut mr) = (Vec::new(), Vec::new());
    let speed = |t: &Timing| f64::from(t.tokens) / t.total.as_secs_f64();
    for _ in 0..rate.1 {
        dr.push(speed(
            &over_http(direct, body(model, "The history of Paris begins", rate.0)).await,
        ));
        mr.push(speed(
            &over_http(mesh, body(model, "The history of Paris begins", rate.0)).await,
        ));
    }
    println!(
        "{name}: TTFT p50 direct {:.2} ms, mesh {:.2} ms (+{:.2} ms); p99 direct {:.2} ms, \
         mesh {:.2} ms (+{:.2} ms); tokens/s direct {:.1}, mesh {:.1} ({:.1}% of direct)",
        median(d.clone()),
        median(m.clone()),
        median(m.clone()) - median(d.clone()),
        percentile(d.clone(), 99.0),
        percentile(m.clone(), 99.0),
        percentile(m, 99.0) - percentile(d, 99.0),
        median(dr.clone()),
        median(mr.clone()),
        median(mr) / median(dr) * 100.0
    );
}

/// `n` streams at once through the gateway: aggregate tokens/s, p99 TTFT, and how many
/// of them each supplier served.
async fn concurrent(url: &str, n: usize, ids: &[String]) {
    let started = Instant::now();
    let runs: Vec<Timing> = futures::future::join_all(
        (0..n).map(|_| over_http(url, body("smollm2", "The history of Paris begins", 32))),
    )
    .await;
    let wall = started.elapsed().as_secs_f64();
    let tokens: u32 = runs.iter().map(|t| t.tokens).sum();
    let ttft: Vec<f64> = runs.iter().map(|t| t.ttft.as_secs_f64() * 1e3).collect();
    let share: Vec<usize> = ids
        .iter()
        .map(|id| {
            runs.iter()
                .filter(|t| t.supplier.as_deref() == Some(id))
                .count()
        })
        .collect();
    println!(
        "{n:>2} concurrent streams: {:.1} tokens/s in all, TTFT p50 {:.0} ms p99 {:.0} ms, \
         served {:?} by the two suppliers",
        f64::from(tokens) / wall,
        median(ttft.clone()),
        percentile(ttft, 99.0),
        share
    );
}

#[tokio::main]
async fn main() {
    let boot = support::bootstrap(MESH).await;
    let boot_addr = support::address(&boot, "quic").await;
    let gateway = support::mesh_gateway(MESH, &boot_addr).await;
    let mesh_url = format!("{}/v1/completions", support::base_url(&gateway));

    // The mesh's own cost, with a backend that answers at once.
    let instant = support::mesh_supplier(
        MESH,
        &boot_addr,
        vec![std::sync::Arc::new(Instant_) as SharedBackend],
    )
    .await;
    wait_offers(&gateway, "instant", 1).await;
    let direct_url = format!("{}/v1/completions", support::base_url(&instant));
    overhead(
        "mesh overhead, instant backend",
        "instant",
        &direct_url,
        &mesh_url,
        1000,
        (2000, 10),
    )
    .await;
    instant.shutdown().await;

    // What a user sees, with SmolLM2 on the embedded engine.
    let s1 = support::mesh_supplier(
        MESH,
        &boot_addr,
        vec![support::smollm(1, 16) as SharedBackend],
    )
    .await;
    wait_offers(&gateway, "smollm2", 1).await;
    let direct_url = format!("{}/v1/completions", support::base_url(&s1));
    over_http(&mesh_url, body("smollm2", "Warm up", 4)).await;
    overhead(
        "mesh overhead, SmolLM2 (embedded, CPU)",
        "smollm2",
        &direct_url,
        &mesh_url,
        40,
        (128, 5),
    )
    .await;

    // Load across two suppliers.
    let s2 = support::mesh_supplier(
        MESH,
        &boot_addr,
        vec![support::smollm(1, 16) as SharedBackend],
    )
    .await;
    wait_offers(&gateway, "smollm2", 2).await;
    over_http(&mesh_url, body("smollm2", "Warm up", 4)).await;
    let ids = [
        s1.handle().peer_id().to_string(),
        s2.handle().peer_id().to_string(),
    ];
    for n in [1, 4, 16] {
        concurrent(&mesh_url, n, &ids).await;
    }
    for node in [gateway, s1, s2, boot] {
        node.shutdown().await;
    }
}
