//! `relaymesh status`: one screen on a running node: who it is, whether peers reach
//! it, what it serves and sees, and what it earned.

use std::collections::BTreeMap;

use serde_json::Value;

use super::query::{get, text, QueryArgs};

pub fn status(args: &QueryArgs) -> anyhow::Result<()> {
    let status = get(args, "/relaymesh/v1/status")?;
    let models = get(args, "/relaymesh/v1/models")?;
    let ledger = get(args, "/relaymesh/v1/ledger")?;
    let loaded = get(args, "/api/ps")?;
    if args.json {
        let all = serde_json::json!({ "status": status, "models": models, "ledger": ledger, "loaded": loaded });
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    print!("{}", render(&status, &models, &ledger, &loaded));
    Ok(())
}

/// Where this node runs each model it serves (from `/api/ps`): `CPU`, or the GPU device
/// and how many layers went to it.
fn devices(loaded: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for m in loaded["models"].as_array().into_iter().flatten() {
        let r = &m["relaymesh"];
        let Some(device) = r["device"].as_str().filter(|d| !d.is_empty()) else {
            continue;
        };
        let layers = match (r["gpu_layers"][0].as_u64(), r["gpu_layers"][1].as_u64()) {
            (Some(on), Some(all)) if on > 0 => format!(", {on}/{all} layers on GPU"),
            _ => String::new(),
        };
        out.insert(text(&m["name"]), format!("{device}{layers}, "));
    }
    out
}

/// The screen, from the four answers.
fn render(status: &Value, models: &Value, ledger: &Value, loaded: &Value) -> String {
    let devices = devices(loaded);
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "node      {} ({}), relaymesh {}, up {}",
        text(&status["peer_id"]),
        text(&status["role"]),
        text(&status["version"]),
        uptime(status["uptime_secs"].as_u64())
    ));
    line(format!(
        "mesh      {} (id {}){}",
        text(&status["mesh_name"]),
        short(&text(&status["mesh_id"])),
        status["membership"]["role"]
            .as_str()
            .map(|r| format!(", member as {r}"))
            .unwrap_or_default()
    ));
    let reach = &status["reachability"];
    let addrs: Vec<String> = reach["public_addrs"]
        .as_array()
        .into_iter()
        .chain(reach["relayed_addrs"].as_array())
        .flatten()
        .map(text)
        .collect();
    line(format!(
        "reach     {}{}",
        text(&reach["state"]),
        if addrs.is_empty() {
            String::new()
        } else {
            format!(" at {}", addrs.join(", "))
        }
    ));
    let links = &status["links"];
    let boot = &status["bootstrap"];
    line(format!(
        "peers     {} connected ({} direct, {} hole-punched, {} relayed); bootstrap {} of {}{}",
        text(&status["connected_peers"]),
        text(&links["direct"]),
        text(&links["hole_punched"]),
        text(&links["relayed"]),
        text(&boot["connected"]),
        text(&boot["configured"]),
        match status["clock"]["offset_ms"].as_i64() {
            Some(ms) => format!("; clock {ms:+} ms against peers"),
            None => String::new(),
        }
    ));
    let me = text(&status["peer_id"]);
    let rows = models.as_array().cloned().unwrap_or_default();
    let served: Vec<String> = rows
        .iter()
        .filter(|m| text(&m["supplier"]) == me)
        .map(|m| {
            format!(
                "{} ({}{}/{} slots free, {} tok/s, price {}, τ {})",
                text(&m["name"]),
                devices.get(&text(&m["name"])).map_or("", String::as_str),
                text(&m["free_slots"]),
                text(&m["total_slots"]),
                text(&m["tokens_per_sec"]),
                text(&m["price_per_cu"]),
                text(&m["tau"])
            )
        })
        .collect();
    line(format!(
        "serving   {}",
        if served.is_empty() {
            "nothing".to_string()
        } else {
            served.join("; ")
        }
    ));
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for m in &rows {
        *seen.entry(text(&m["name"])).or_default() += 1;
    }
    line(format!(
        "models    {}",
        if seen.is_empty() {
            "none seen on the mesh yet".to_string()
        } else {
            seen.iter()
                .map(|(name, n)| format!("{name} ({n} supplier{})", if *n == 1 { "" } else { "s" }))
                .collect::<Vec<_>>()
                .join(", ")
        }
    ));
    let account = &ledger["me"];
    line(format!(
        "account   balance {}, earned {}, spent {} (micro-credits); claims {} pending, {} settled, {} void",
        text(&account["balance"]),
        text(&account["earned"]),
        text(&account["spent"]),
        text(&ledger["claims_pending"]),
        text(&ledger["claims_settled"]),
        text(&ledger["claims_void"])
    ));
    out
}

fn short(id: &str) -> String {
    if id.len() > 16 {
        format!("{}…", &id[..16])
    } else {
        id.to_string()
    }
}

fn uptime(secs: Option<u64>) -> String {
    let Some(secs) = secs else {
        return "-".into();
    };
    match secs {
        s if s >= 86_400 => format!("{}d {}h", s / 86_400, s % 86_400 / 3_600),
        s if s >= 3_600 => format!("{}h {}m", s / 3_600, s % 3_600 / 60),
        s if s >= 60 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_screen_says_who_what_and_how_much() {
        let status = json!({
            "peer_id": "12D3KooWme", "role": "full", "version": "0.1.0", "uptime_secs": 3_725,
            "mesh_name": "public", "mesh_id": "00112233445566778899aabbccddeeff",
            "reachability": { "state": "public", "public_addrs": ["/ip4/203.0.113.5/udp/4002/quic-v1"], "relayed_addrs": [] },
            "connected_peers": 3, "links": { "direct": 2, "hole_punched": 0, "relayed": 1 },
            "bootstrap": { "configured": 1, "connected": 1 },
            "clock": { "offset_ms": -12 },
        });
        let models = json!([
            { "name": "smollm2", "supplier": "12D3KooWme", "free_slots": 1, "total_slots": 2, "tokens_per_sec": 41.5, "price_per_cu": 1, "tau": 64 },
            { "name": "smollm2", "supplier": "12D3KooWother", "tokens_per_sec": null },
        ]);
        let ledger = json!({ "me": { "balance": 10, "earned": 7, "spent": 3 }, "claims_pending": 1, "claims_settled": 2, "claims_void": 0 });
        let loaded = json!({ "models": [{ "name": "smollm2", "relaymesh": { "device": "CUDA (NVIDIA H100)", "gpu_layers": [31, 31] } }] });
        let screen = render(&status, &models, &ledger, &loaded);
        for expected in [
            "node      12D3KooWme (full), relaymesh 0.1.0, up 1h 2m",
            "reach     public at /ip4/203.0.113.5/udp/4002/quic-v1",
            "3 connected (2 direct, 0 hole-punched, 1 relayed); bootstrap 1 of 1; clock -12 ms",
            "serving   smollm2 (CUDA (NVIDIA H100), 31/31 layers on GPU, 1/2 slots free, 41.5 tok/s, price 1, τ 64)",
            "models    smollm2 (2 suppliers)",
            "account   balance 10, earned 7, spent 3",
        ] {
            assert!(screen.contains(expected), "{expected:?} not in\n{screen}");
        }
    }
}
