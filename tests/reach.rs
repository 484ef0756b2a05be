//! Reaching peers on loopback, with real processes: a supplier restarted on another
//! port is served again by the gateway that knew its old address, and a node whose
//! bootstrap node cannot be reached says so, keeps trying, and says when it gets
//! there.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{free_port, node_process_logged, wait_for, Proc};

async fn get(api: u16, path: &str) -> Option<Value> {
    let response = reqwest::get(format!("http://127.0.0.1:{api}{path}"))
        .await
        .ok()?;
    response.json().await.ok()
}

/// A node's QUIC listen address, with `/p2p/`, once it listens.
async fn quic_address(api: u16) -> String {
    wait_for("a QUIC listen address", Duration::from_secs(60), || async {
        get(api, "/relaymesh/v1/status").await?["listen_addrs"]
            .as_array()?
            .iter()
            .filter_map(Value::as_str)
            .find(|a| a.contains("/quic-v1/"))
            .map(str::to_owned)
    })
    .await
}

/// Asks the gateway on `api` once; the status, the supplier that served and the body.
async fn ask(api: u16) -> (u16, Option<String>, String) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let response = client
        .post(format!("http://127.0.0.1:{api}/v1/chat/completions"))
        .json(&json!({
            "model": "smollm2", "temperature": 0, "max_tokens": 4,
            "messages": [{"role": "user", "content": "Say hi."}],
        }))
        .send()
        .await;
    match response {
        Ok(r) => {
            let status = r.status().as_u16();
            let supplier = r
                .headers()
                .get("x-relaymesh-supplier")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            (status, supplier, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, None, e.to_string()),
    }
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A supplier killed and started again (same data dir, so the same peer id) on new
/// ports, as `udp/0` in the README gives it, is served again by the gateway that
/// knew its old address, within seconds. Its ads last 10 minutes here (the most an ad
/// may), re-announced every 200 s, so nothing but the fix brings it back within the
/// 120 s allowed: before it, every request dialled the old port,
/// failed, and evicted the supplier's fresh ad (model_not_found until its next
/// announcement, a third of its lifetime later); the gateway's routing table kept the
/// old address, so even a DHT walk started from it and never found the new one.
/// Fails without the fix (checked: `model_not_found` still after the 120 s given
/// here); with it, served again about 10 s after the restart on this machine (the
/// stale QUIC address takes its 5 s handshake timeout).
#[tokio::test(flavor = "multi_thread")]
async fn a_supplier_restarted_on_a_new_port_is_served_again() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (boot_api, sup_api, gw_api) = (free_port(), free_port(), free_port());
    let _boot = node_process_logged(&d.join("b"), boot_api, Some(&d.join("boot.log")), &[]);
    let boot = quic_address(boot_api).await;
    let model = format!("smollm2=gguf:{}", support::model_path().display());
    let supplier_args = [
        "--bootstrap",
        &boot,
        "--serve",
        &model,
        "--ad-lifetime-secs",
        "600",
    ];
    let supplier = node_process_logged(
        &d.join("s"),
        sup_api,
        Some(&d.join("supplier.log")),
        &supplier_args,
    );
    let _gateway = node_process_logged(
        &d.join("g"),
        gw_api,
        Some(&d.join("gateway.log")),
        &["--light", "--bootstrap", &boot],
    );
    let id = get_peer_id(sup_api).await;
    let old = quic_address(sup_api).await;
    let served = wait_for("a first answer", Duration::from_secs(120), || async {
        let (status, supplier, _) = ask(gw_api).await;
        (status == 200).then_some(supplier)
    })
    .await;
    assert_eq!(served.as_deref(), Some(id.as_str()));

    drop(supplier); // SIGKILL: no goodbye to anyone
    let sup_api = free_port();
    let _supplier = node_process_logged(
        &d.join("s"),
        sup_api,
        Some(&d.join("supplier-2.log")),
        &supplier_args,
    );
    let new = quic_address(sup_api).await;
    assert_ne!(old, new, "the OS gave the restarted supplier its old port");
    assert_eq!(get_peer_id(sup_api).await, id);

    let restarted = Instant::now();
    let mut last = String::new();
    while restarted.elapsed() < Duration::from_secs(120) {
        let (status, supplier, body) = ask(gw_api).await;
        if status == 200 {
            assert_eq!(supplier.as_deref(), Some(id.as_str()));
            eprintln!("served again {:?} after the restart", restarted.elapsed());
            let models = get(gw_api, "/relaymesh/v1/models").await.unwrap();
            assert!(models.to_string().contains(&id), "the ad is gone: {models}");
            return;
        }
        last = format!("{status} {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!(
        "the restarted supplier was not served again within 120 s; last answer: {last}\n{}",
        log_of(&d.join("gateway.log"))
    );
}

async fn get_peer_id(api: u16) -> String {
    wait_for("the node's status", Duration::from_secs(60), || async {
        Some(
            get(api, "/relaymesh/v1/status").await?["peer_id"]
                .as_str()?
                .to_owned(),
        )
    })
    .await
}

/// A node given a bootstrap address where nothing listens says so in its log (naming
/// the address and why) and in its status, keeps dialling it with back-off, and once a
/// bootstrap node is started there, connects and says that too. Before, it logged
/// nothing after "listening on", never dialled again, and requests answered
/// `model_not_found`. Fails without the fix (checked: no warning within 60 s).
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_bootstrap_node_is_reported_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let boot_dir = d.join("b");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_relaymesh"))
        .args(["id", "--data-dir"])
        .arg(&boot_dir)
        .output()
        .unwrap();
    let boot_id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let port = free_port();
    let boot = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{boot_id}");
    let api = free_port();
    let log = d.join("node.log");
    let _node = node_process_logged(&d.join("n"), api, Some(&log), &["--bootstrap", &boot]);

    let line = wait_for(
        "the warning in the log",
        Duration::from_secs(60),
        || async {
            log_of(&log)
                .lines()
                .find(|l| l.contains("WARN") && l.contains("cannot reach any bootstrap node"))
                .map(str::to_owned)
        },
    )
    .await;
    assert!(
        line.contains(&format!("/ip4/127.0.0.1/tcp/{port}")),
        "{line}"
    );
    assert!(line.contains("retrying in"), "{line}");
    let status = wait_for(
        "two failed rounds in status",
        Duration::from_secs(60),
        || async {
            let s = get(api, "/relaymesh/v1/status").await?;
            (s["bootstrap"]["failed_rounds"].as_u64()? >= 2).then_some(s)
        },
    )
    .await;
    let bootstrap = &status["bootstrap"];
    assert_eq!(bootstrap["configured"], 1, "{status}");
    assert_eq!(bootstrap["connected"], 0, "{status}");
    let errors = bootstrap["last_errors"].to_string();
    assert!(errors.contains(&format!("tcp/{port}")), "{status}");

    // A bootstrap node comes up at that address: the node gets there by itself.
    let _boot: Proc = support::node_process_logged(
        &boot_dir,
        free_port(),
        Some(&d.join("boot.log")),
        &["--listen", &format!("/ip4/127.0.0.1/tcp/{port}")],
    );
    wait_for(
        "the node connected to the bootstrap node",
        Duration::from_secs(120),
        || async {
            let s = get(api, "/relaymesh/v1/status").await?;
            (s["bootstrap"]["connected"] == 1 && s["bootstrap"]["failed_rounds"] == 0).then_some(())
        },
    )
    .await;
    assert!(
        log_of(&log).contains("reached a bootstrap node"),
        "{}",
        log_of(&log)
    );
}
