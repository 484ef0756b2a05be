//! The dashboard in real browsers: headless Chromium (Debian's `chromium`, driven by
//! Playwright for Python from the test venv) and headless Firefox (Debian's
//! `firefox-esr`, driven over WebDriver BiDi) each load the dashboard of a three-node mesh
//! (bootstrap, supplier, gateway), sees every peer in the graph and the model in the
//! table, sends a chat in the playground and sees the streamed answer, its supplier
//! and the request in the live list, saves screenshots, and the page asks no host but
//! the node (`tests/dashboard/check_dashboard.py`).

mod support;

use std::time::Duration;

use relaymesh::NodeBuilder;
use support::{address, quic, tcp, wait_for};

const MESH: &str = "dashboard-tests";

/// A browser at `RELAYMESH_<ENV>` or Debian's `default`, or `None` (the test then says
/// why it is skipped).
fn browser(env: &str, default: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os(format!("RELAYMESH_{env}"))
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| default.into());
    path.is_file().then_some(path)
}

/// Whether the test venv's Python can import `module`.
fn python_has(module: &str) -> bool {
    std::process::Command::new(support::python())
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_the_mesh_and_streams_a_chat_in_chromium() {
    let Some(chromium) = browser("CHROMIUM", "/usr/bin/chromium") else {
        eprintln!("SKIPPED: no Chromium (apt-get install chromium, or set RELAYMESH_CHROMIUM)");
        return;
    };
    if !python_has("playwright") {
        eprintln!("SKIPPED: no playwright in the test venv (scripts/test installs it)");
        return;
    }
    check_dashboard("chromium", chromium, false).await;
}

/// The same in Firefox, driven over WebDriver BiDi (`tests/dashboard/bidi.py`), in a
/// private mesh: the dashboard also shows what each node was admitted as.
#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_the_mesh_and_streams_a_chat_in_firefox() {
    let Some(firefox) = browser("FIREFOX", "/usr/bin/firefox-esr") else {
        eprintln!("SKIPPED: no Firefox (apt-get install firefox-esr, or set RELAYMESH_FIREFOX)");
        return;
    };
    if !python_has("websockets") {
        eprintln!("SKIPPED: no websockets in the test venv (scripts/test installs it)");
        return;
    }
    check_dashboard("firefox", firefox, true).await;
}

/// A private mesh's owner: its key runs the bootstrap node and invites the others.
struct Owner {
    key: relaymesh::Keypair,
    mesh: relaymesh::MeshParams,
}

impl Owner {
    /// `builder` joining this mesh as `role`, with an invite for a day.
    fn invite(&self, builder: NodeBuilder, role: relaymesh::MemberRole) -> NodeBuilder {
        let day = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            + 86_400_000;
        let invite = relaymesh::make_invite(&self.mesh, &self.key, None, role, day);
        builder.mesh(self.mesh.clone()).invite(invite)
    }
}

/// A three-node mesh (public, or private when the browser is `private`: then the
/// dashboard must show the members) whose gateway's dashboard `check_dashboard.py`
/// drives in the browser `kind` at `path`.
async fn check_dashboard(kind: &str, path: std::path::PathBuf, private: bool) {
    let name = format!("{MESH}-{kind}");
    let owner = private.then(|| {
        let key = relaymesh::new_key();
        let mesh = relaymesh::private_mesh(&name, &key);
        Owner { key, mesh }
    });
    let join = |builder: NodeBuilder, role| match &owner {
        Some(owner) => owner.invite(builder, role),
        None => builder.mesh_name(&name),
    };
    let mut boot = NodeBuilder::full().listen(vec![quic(), tcp()]);
    boot = match &owner {
        Some(owner) => boot.mesh(owner.mesh.clone()).identity(owner.key.clone()),
        None => boot.mesh_name(&name),
    };
    boot.config_mut().role = relaymesh::Role::Bootstrap;
    let boot = boot.start().await.unwrap();
    let boot_addr = address(&boot, "quic").await;
    let mut models = relaymesh_node::backend::Models::default();
    models
        .insert(relaymesh_node::backend::ServedModel::new(
            support::smollm(1, 4) as relaymesh_node::backend::SharedBackend,
            1,
        ))
        .unwrap();
    let mut supplier = join(NodeBuilder::full(), relaymesh::MemberRole::SUPPLIER)
        .listen(vec![quic(), tcp()])
        .bootstrap(boot_addr.clone());
    supplier.config_mut().models = std::sync::Arc::new(models);
    let supplier = supplier.start().await.unwrap();
    let gateway = join(NodeBuilder::light(), relaymesh::MemberRole::APP)
        .listen(vec![quic(), tcp()])
        .bootstrap(boot_addr)
        .api("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap();
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
        let (peers, out, kind) = (peers.map(|p| p.to_string()), out.clone(), kind.to_owned());
        move || {
            std::process::Command::new(support::python())
                .env("DASHBOARD_PRIVATE", if private { "1" } else { "" })
                .arg(script)
                .arg(kind)
                .arg(format!("{url}/"))
                .arg(path)
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
