//! The dashboard in a real browser: headless Chromium (Debian's `chromium`, driven by
//! Playwright for Python from the test venv) loads the dashboard of a three-node mesh
//! (bootstrap, supplier, gateway), sees every peer in the graph and the model in the
//! table, sends a chat in the playground and sees the streamed answer, its supplier
//! and the request in the live list, saves screenshots, and the page asks no host but
//! the node (`tests/dashboard/check_dashboard.py`).

mod support;

use std::time::Duration;

use support::{address, wait_for};

const MESH: &str = "dashboard-tests";

/// Debian's Chromium, or `None` (the test then says why it is skipped).
fn chromium() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("RELAYMESH_CHROMIUM")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into());
    path.is_file().then_some(path)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_the_mesh_and_streams_a_chat_in_chromium() {
    let Some(chromium) = chromium() else {
        eprintln!("SKIPPED: no Chromium (apt-get install chromium, or set RELAYMESH_CHROMIUM)");
        return;
    };
    let python = support::python();
    let has_playwright = std::process::Command::new(&python)
        .args(["-c", "import playwright"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_playwright {
        eprintln!(
            "SKIPPED: no playwright in {} (scripts/test installs it)",
            python.display()
        );
        return;
    }
    let boot = support::bootstrap(MESH).await;
    let boot_addr = address(&boot, "quic").await;
    let supplier = support::mesh_supplier(
        MESH,
        &boot_addr,
        vec![support::smollm(1, 4) as relaymesh_node::backend::SharedBackend],
    )
    .await;
    let gateway = support::mesh_gateway(MESH, &boot_addr).await;
    let peers = [boot.handle().peer_id(), supplier.handle().peer_id()];
    wait_for(
        "the gateway linked to both and seeing the model",
        Duration::from_secs(60),
        || async {
            for peer in peers {
                gateway.handle().locate(peer).await.ok()?.then_some(())?;
            }
            (!gateway.handle().offers("smollm2").await.ok()?.is_empty()).then_some(())
        },
    )
    .await;

    let out = std::env::var_os("RELAYMESH_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("relaymesh-dashboard"));
    std::fs::create_dir_all(&out).unwrap();
    let script = support::repo_dir().join("tests/dashboard/check_dashboard.py");
    let url = support::base_url(&gateway);
    let output = tokio::task::spawn_blocking({
        let (peers, out) = (peers.map(|p| p.to_string()), out.clone());
        move || {
            std::process::Command::new(python)
                .arg(script)
                .arg(format!("{url}/"))
                .arg(chromium)
                .arg(out)
                .arg("smollm2")
                .args(peers)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    println!("{}", String::from_utf8_lossy(&output.stdout));
    assert!(
        output.status.success(),
        "the dashboard check failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("screenshots in {}", out.display());
    gateway.shutdown().await;
    supplier.shutdown().await;
    boot.shutdown().await;
}
