//! Gossip load of capability ads: bytes per node per second at 10, 50 and 100
//! in-process nodes on loopback, and the time until a new node's ad is seen by all.
//!
//! `cargo bench --bench gossip -- [SIZES…]` (default 10 50 100). Each node serves one
//! model; ads last 30 s and are re-announced every 10 s. Bytes are gossip payloads
//! delivered to and published by each node's application (unique messages, ads handed
//! over on connect included); gossipsub's duplicate forwarding and framing come on top.

use std::time::{Duration, Instant};

#[path = "../tests/support/mod.rs"]
mod support;

use relaymesh::{Node, NodeBuilder, Role};
use support::offer;

const LIFETIME: Duration = Duration::from_secs(30);
const WINDOW: Duration = Duration::from_secs(20);

async fn start(mesh: &str, boot: Option<&libp2p::Multiaddr>, model: Option<&str>) -> Node {
    let mut b = NodeBuilder::full()
        .mesh_name(mesh)
        .listen(vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()])
        .ad_lifetime(LIFETIME);
    if let Some(boot) = boot {
        b = b.bootstrap(boot.clone());
    } else {
        b.config_mut().role = Role::Bootstrap;
    }
    if let Some(m) = model {
        // Ads as a GGUF-backed supplier makes them: with the file's digest.
        let mut o = offer(m);
        o.gguf_digest = Some(relaymesh_protocol::Digest([7; 32]));
        b.config_mut().offers = vec![o];
    }
    b.start().await.unwrap()
}

async fn all_see(nodes: &[Node], model: &str) -> bool {
    for n in nodes {
        if !n
            .handle()
            .models()
            .await
            .unwrap()
            .iter()
            .any(|r| r.name == model)
        {
            return false;
        }
    }
    true
}

/// How many ads each node sees, sorted.
async fn coverage(nodes: &[Node]) -> Vec<usize> {
    let mut seen = Vec::with_capacity(nodes.len());
    for n in nodes {
        seen.push(n.handle().models().await.unwrap().len());
    }
    seen.sort_unstable();
    seen
}

/// Summed over nodes: (messages, bytes), in and out together.
fn totals(nodes: &[Node]) -> (u64, u64) {
    nodes.iter().fold((0, 0), |(m, b), n| {
        let (mi, mo, bi, bo) = n.metrics().gossip_totals();
        (m + mi + mo, b + bi + bo)
    })
}

async fn run(size: usize) {
    let mesh = format!("bench-{size}");
    let boot = start(&mesh, None, None).await;
    let addr: libp2p::Multiaddr = loop {
        if let Some(a) = boot.handle().status().await.unwrap().listen_addrs.first() {
            break a.parse().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut nodes = Vec::new();
    for i in 0..size {
        nodes.push(start(&mesh, Some(&addr), Some(&format!("m{i}"))).await);
    }
    let started = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let seen = coverage(&nodes).await;
        if seen[0] >= size {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  {size} nodes, {:.0} s: ads seen per node min {} median {} max {}; connections at node 0: {}",
                started.elapsed().as_secs_f64(),
                seen[0],
                seen[seen.len() / 2],
                seen[seen.len() - 1],
                nodes[0].handle().peers().await.unwrap().len()
            );
            last_report = Instant::now();
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "{size} nodes did not converge"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let converged = started.elapsed();
    let before = totals(&nodes);
    tokio::time::sleep(WINDOW).await;
    let after = totals(&nodes);
    let per_node = |x: u64| x as f64 / size as f64 / WINDOW.as_secs_f64();
    let (messages, per_node_per_s) = (per_node(after.0 - before.0), per_node(after.1 - before.1));
    let newcomer = start(&mesh, Some(&addr), Some("newcomer")).await;
    let t = Instant::now();
    while !all_see(&nodes, "newcomer").await {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the newcomer's ad did not spread"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let spread = t.elapsed();
    println!(
        "{size:>4} nodes: {per_node_per_s:>8.0} gossip B/node/s ({messages:.2} messages/node/s) steady, all ads everywhere after {:.1} s, a new node's ad seen by all in {:.2} s",
        converged.as_secs_f64(),
        spread.as_secs_f64()
    );
    newcomer.shutdown().await;
    for n in nodes {
        n.shutdown().await;
    }
    boot.shutdown().await;
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10, 50, 100]
    } else {
        sizes
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for size in sizes {
        runtime.block_on(run(size));
    }
}
