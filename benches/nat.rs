//! NAT traversal figures, across network namespaces (`tests/support/nat_mesh.rs`): a
//! bootstrap node on a public network, a light gateway behind a home router (a
//! port-restricted cone) and a supplier serving SmolLM2 that joins the mesh from each
//! kind of place, `JOINS` times each, every join in a fresh mesh:
//!
//! - joins: whether the gateway got an answer from the new supplier within 90 s, and
//!   the time from starting the supplier's process to that first answer (the gateway
//!   asks every 250 ms, pinning the supplier with `x-relaymesh-suppliers`);
//! - links: how the gateway reached the supplier once hole punching was over (direct,
//!   hole-punched, relayed);
//! - relay overhead: TTFT and tokens/s of streamed answers (64 tokens, median of
//!   `RUNS`) through a direct link, a hole-punched one and a relay.
//!
//! `cargo bench --bench nat -- [JOINS] [RUNS] [PLACE…]` (default 20 and 10, every
//! place; a word picks places by name, e.g. `address`; RUNS 0 skips the relay
//! overhead; root, iproute2, nftables and the test model: `scripts/fetch-model`). Namespaces add no latency,
//! so the overhead measured is the relay's own work, not a longer path.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::nat_mesh::{NatMesh, Place, API};
use support::netns::{api_json, Nat, Net};

/// One join.
struct Join {
    answered: Option<Duration>,
    link: Option<String>,
}

/// Starts a mesh with the supplier at `place`; returns it once the gateway got its
/// first answer (or 90 s passed), with the time that took.
fn join(place: Place) -> Option<(NatMesh, Option<Duration>)> {
    let mesh = NatMesh::start("bench", place, Place::Behind(Nat::PortRestricted))?;
    let deadline = mesh.supplier_started + Duration::from_secs(90);
    let answered = loop {
        let (code, _, _) = mesh.ask(8, false, Duration::from_secs(30));
        if code == 200 {
            break Some(mesh.supplier_started.elapsed());
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    Some((mesh, answered))
}

/// How the gateway reaches the supplier once hole punching is over: a relayed link
/// is watched until DCUtR reports at the gateway (at most 30 s).
fn settled_link(mesh: &NatMesh) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let link = mesh.link()?["link"].as_str()?.to_owned();
        let (_, metrics) = support::nat_mesh::get(&mesh.gw, "/metrics");
        let punch_over = metrics.lines().any(|l| {
            l.starts_with("relaymesh_hole_punches_total") && !l.trim_end().ends_with(" 0")
        });
        if link != "relayed" || punch_over || Instant::now() > deadline {
            return Some(link);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// One streamed answer: time to its first token and tokens/s after it.
fn streamed(mesh: &NatMesh) -> Option<(Duration, f64)> {
    let body = json!({
        "model": "smollm2", "temperature": 0, "max_tokens": 64, "stream": true,
        "messages": [{"role": "user", "content": "Tell me about the history of Paris."}],
    });
    let supplier = mesh.supplier_id.clone();
    Net::within(&mesh.gw, move || async move {
        let client = reqwest::Client::builder().no_proxy().build().ok()?;
        let started = Instant::now();
        let mut response = client
            .post(format!("{API}/v1/chat/completions"))
            .header("x-relaymesh-suppliers", supplier)
            .json(&body)
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        let (mut buffer, mut first, mut last, mut pieces) = (String::new(), None, None, 0u32);
        while let Some(chunk) = response.chunk().await.ok()? {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                let Some(data) = event.trim().strip_prefix("data:") else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<Value>(data.trim()) else {
                    continue;
                };
                if v["choices"][0]["delta"]["content"]
                    .as_str()
                    .is_some_and(|c| !c.is_empty())
                {
                    let now = Instant::now();
                    first.get_or_insert(now);
                    last = Some(now);
                    pieces += 1;
                }
            }
        }
        let (first, last) = (first?, last?);
        let rate = f64::from(pieces.saturating_sub(1)) / (last - first).as_secs_f64().max(1e-9);
        Some((first - started, rate))
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    let numbers: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let joins = numbers.first().copied().unwrap_or(20);
    let runs = numbers.get(1).copied().unwrap_or(10);
    // Words select places by name ("address" for the address-restricted cone only).
    let words: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a.parse::<usize>().is_err() && !a.starts_with('-'))
        .collect();
    let chosen =
        |place: &Place| words.is_empty() || words.iter().any(|w| place.name().contains(w.as_str()));
    let places: Vec<Place> = [
        Place::Public,
        Place::Behind(Nat::FullCone),
        Place::Behind(Nat::PortRestricted),
        Place::Behind(Nat::AddressRestricted),
        Place::Behind(Nat::Symmetric),
    ]
    .into_iter()
    .filter(chosen)
    .collect();

    println!("| supplier | joined | time to first answer: median / slowest | links: direct / hole-punched / relayed |");
    println!("| --- | --- | --- | --- |");
    for place in places {
        let mut results = Vec::new();
        for i in 0..joins {
            let Some((mesh, answered)) = join(place) else {
                eprintln!("SKIPPED: needs root, iproute2 and nftables");
                return;
            };
            let link = answered.and_then(|_| settled_link(&mesh));
            eprintln!(
                "{} join {}: {:?}, link {:?}",
                place.name(),
                i + 1,
                answered,
                link
            );
            if answered.is_none() {
                eprintln!("{}", mesh.tail());
            }
            results.push(Join { answered, link });
        }
        let times: Vec<f64> = results
            .iter()
            .filter_map(|j| j.answered.map(|d| d.as_secs_f64()))
            .collect();
        let count = |kind: &str| {
            results
                .iter()
                .filter(|j| j.link.as_deref() == Some(kind))
                .count()
        };
        println!(
            "| {} | {}/{} | {:.1} s / {:.1} s | {} / {} / {} |",
            place.name(),
            times.len(),
            results.len(),
            median(times.clone()),
            times.iter().copied().fold(f64::NAN, f64::max),
            count("direct"),
            count("hole-punched"),
            count("relayed"),
        );
    }

    println!();
    println!("| link | RTT ms | TTFT median | tokens/s median |");
    println!("| --- | --- | --- | --- |");
    for place in [
        Place::Public,
        Place::Behind(Nat::PortRestricted),
        Place::Behind(Nat::Symmetric),
    ]
    .into_iter()
    .filter(|p| runs > 0 && chosen(p))
    {
        let Some((mesh, Some(_))) = join(place) else {
            eprintln!("{}: the supplier never answered", place.name());
            continue;
        };
        let link = settled_link(&mesh).unwrap_or_default();
        // Warm the engine and the session up before measuring.
        let _ = streamed(&mesh);
        let (mut ttft, mut rate) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            if let Some((t, r)) = streamed(&mesh) {
                ttft.push(t.as_secs_f64() * 1000.0);
                rate.push(r);
            }
        }
        let rtt = mesh
            .link()
            .and_then(|l| l["rtt_ms"].as_f64())
            .unwrap_or(f64::NAN);
        let status = api_json(&mesh.sup, "/relaymesh/v1/status").unwrap_or_default();
        println!(
            "| {link} (supplier {}, {}) | {rtt:.2} | {:.0} ms | {:.1} |",
            place.name(),
            status["reachability"]["state"].as_str().unwrap_or("?"),
            median(ttft),
            median(rate),
        );
    }
}
