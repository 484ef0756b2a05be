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
/// How long the ads may take to reach every node before the load is measured anyway.
const CONVERGE_LIMIT: Duration = Duration::from_secs(180);
/// How long a newcomer's ad may take to reach every node.
const SPREAD_LIMIT: Duration = Duration::from_secs(60);

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

/// When each node first sees `model` (polled by each node's own task every 250 ms,
/// for at most `limit`), sorted; `None` for nodes that did not see it in time.
async fn arrivals(nodes: &[Node], model: &str, limit: Duration) -> Vec<Option<Duration>> {
    let t = Instant::now();
    let polls = nodes.iter().map(|n| {
        let handle = n.handle().clone();
        let model = model.to_string();
        tokio::spawn(async move {
            while t.elapsed() < limit {
                let rows = handle.models().await.unwrap_or_default();
                if rows.iter().any(|r| r.name == model) {
                    return Some(t.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            None
        })
    });
    let mut seen: Vec<Option<Duration>> = futures::future::join_all(polls)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    // Nodes that saw it first, then those that never did.
    seen.sort_by_key(|d| d.unwrap_or(Duration::MAX));
    seen
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
    // Until every node holds every ad at once, or the limit: then the coverage so far.
    let converged = loop {
        let seen = coverage(&nodes).await;
        if seen[0] >= size {
            break format!(
                "all ads everywhere after {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        if started.elapsed() > CONVERGE_LIMIT {
            break format!(
                "not all ads everywhere at once within {} s (ads seen per node then: min {}, median {}, of {size})",
                CONVERGE_LIMIT.as_secs(),
                seen[0],
                seen[seen.len() / 2]
            );
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
        // Polling every node costs the nodes time too: once a second.
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let before = totals(&nodes);
    tokio::time::sleep(WINDOW).await;
    let after = totals(&nodes);
    let per_node = |x: u64| x as f64 / size as f64 / WINDOW.as_secs_f64();
    let (messages, per_node_per_s) = (per_node(after.0 - before.0), per_node(after.1 - before.1));
    // A newcomer's ad: when half, 90% and all of the nodes see it.
    let newcomer = start(&mesh, Some(&addr), Some("newcomer")).await;
    let seen = arrivals(&nodes, "newcomer", SPREAD_LIMIT).await;
    let at = |share: f64| {
        let i = ((size as f64 * share).ceil() as usize).clamp(1, size) - 1;
        seen[i].map_or(format!("not within {} s", SPREAD_LIMIT.as_secs()), |d| {
            format!("{:.2} s", d.as_secs_f64())
        })
    };
    let dropped: u64 = nodes.iter().map(|n| n.metrics().gossip_dropped.get()).sum();
    println!(
        "{size:>4} nodes: {dropped} gossip messages dropped for slow peers in all; {per_node_per_s:>8.0} gossip B/node/s ({messages:.2} messages/node/s) steady; {converged}; a new node's ad seen by half the nodes in {}, by 90% in {}, by all in {}",
        at(0.5),
        at(0.9),
        at(1.0)
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
