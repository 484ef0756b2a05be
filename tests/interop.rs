//! A node of another libp2p implementation (js-libp2p, from npm) connects to a relaymesh
//! node over TCP and runs identify and ping.
//!
//! `scripts/test` installs the npm packages of `tests/interop/package.json` into
//! `~/.cache/relaymesh/interop` and points `RELAYMESH_INTEROP_DIR` there. Without Node.js
//! (20 or newer) the test says so and passes vacuously.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use relaymesh::NodeBuilder;
use support::*;

fn interop_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("RELAYMESH_INTEROP_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/relaymesh/interop"))
        })?;
    dir.join("node_modules/libp2p").exists().then_some(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_libp2p_connects_over_tcp_and_runs_identify_and_ping() {
    let Some(dir) = interop_dir() else {
        eprintln!(
            "SKIPPED: js-libp2p is not installed (run scripts/test, which installs it with npm)"
        );
        return;
    };
    let here = support::repo_dir().join("tests/interop");
    for file in ["dial.mjs", "polyfill.mjs"] {
        std::fs::copy(here.join(file), dir.join(file)).unwrap();
    }
    let node = NodeBuilder::full()
        .mesh_name("t-interop")
        .listen(vec![tcp()])
        .start()
        .await
        .unwrap();
    let addr = address(&node, "tcp").await.to_string();
    let out = tokio::process::Command::new("node")
        .arg("dial.mjs")
        .arg(&addr)
        .current_dir(&dir)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("js-libp2p finished")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "js-libp2p failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["remotePeer"], node.handle().peer_id().to_string());
    let status = node.handle().status().await.unwrap();
    assert_eq!(
        report["protocolVersion"],
        format!("/relaymesh/{}/1", &status.mesh_id[..16])
    );
    assert!(report["agentVersion"]
        .as_str()
        .unwrap()
        .starts_with("relaymesh/"));
    assert!(report["rttMs"].as_f64().is_some(), "{report}");
    let protocols = report["protocols"].as_array().unwrap();
    assert!(
        protocols
            .iter()
            .any(|p| p.as_str().unwrap().ends_with("/kad/1")),
        "{protocols:?}"
    );
    node.shutdown().await;
}
