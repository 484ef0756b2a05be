//! Helpers for multi-node tests: real swarms on loopback, OS-chosen ports.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use libp2p::Multiaddr;
use relaymesh::{Node, NodeBuilder, Role};
use relaymesh_protocol::messages::capability::ModelOffer;
use relaymesh_protocol::metering::compute_units::CuFormula;
use relaymesh_protocol::BoundedString;

pub mod cli;
pub mod credit_mesh;
pub mod http;
pub mod nat_mesh;
pub mod netns;
pub mod raw_app;

/// Polls `check` every 100 ms until it returns `Some`, or panics after `timeout`
/// saying what did not happen.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `check` every 100 ms, from a thread that may block, until it returns `Some`,
/// or `None` after `timeout` (the caller says what did not happen, with its context).
pub fn poll<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn quic() -> Multiaddr {
    "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()
}

pub fn tcp() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/0".parse().unwrap()
}

/// A model offer as the serving backends will make them.
pub fn offer(name: &str) -> ModelOffer {
    ModelOffer {
        name: BoundedString::new(name).unwrap(),
        gguf_digest: None,
        manifest: None,
        context_length: 8192,
        free_slots: 2,
        total_slots: 2,
        tokens_per_sec_milli: 25_000,
        ttft_ms: 80,
        price_per_cu: 1,
        cu: CuFormula::default(),
        tau: 64,
        max_token_bytes: 32,
        details: Default::default(),
        embedding_dims: None,
    }
}

/// A node's listen address on one transport, with `/p2p/<peer id>`.
pub async fn address(node: &Node, transport: &str) -> Multiaddr {
    let status = wait_for("listen addresses", Duration::from_secs(10), || async {
        let s = node.handle().status().await.ok()?;
        s.listen_addrs
            .iter()
            .any(|a| a.contains(transport))
            .then_some(s)
    })
    .await;
    status
        .listen_addrs
        .iter()
        .find(|a| a.contains(transport))
        .unwrap()
        .parse()
        .unwrap()
}

/// A bootstrap node of `mesh` listening on QUIC and TCP.
pub async fn bootstrap(mesh: &str) -> Node {
    let mut builder = NodeBuilder::full()
        .mesh_name(mesh)
        .listen(vec![quic(), tcp()]);
    builder.config_mut().role = Role::Bootstrap;
    builder.start().await.unwrap()
}

/// A full node of `mesh` that advertises `models`, bootstrapping from `boot`.
pub async fn supplier(
    mesh: &str,
    boot: &Multiaddr,
    models: &[&str],
    ad_lifetime: Duration,
) -> Node {
    let mut builder = NodeBuilder::full()
        .mesh_name(mesh)
        .listen(vec![quic(), tcp()])
        .bootstrap(boot.clone())
        .ad_lifetime(ad_lifetime);
    builder.config_mut().offers = models.iter().map(|m| offer(m)).collect();
    builder.start().await.unwrap()
}

/// Names of (model, supplier) pairs a node sees.
pub async fn seen(node: &Node) -> Vec<(String, String)> {
    node.handle()
        .models()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.name, r.supplier))
        .collect()
}

/// The SmolLM2-135M-Instruct GGUF the tests run: `$RELAYMESH_MODEL`, else the copy
/// `scripts/fetch-model` puts in the cache.
pub fn model_path() -> std::path::PathBuf {
    let path = std::env::var_os("RELAYMESH_MODEL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            std::path::Path::new(&home)
                .join(".cache/relaymesh/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        path.is_file(),
        "the test model is missing at {}: run scripts/fetch-model (scripts/test does)",
        path.display()
    );
    path
}

/// The embedded engine on the test model.
pub fn smollm(
    slots: usize,
    queue: usize,
) -> std::sync::Arc<relaymesh_node::backend::embedded::EmbeddedBackend> {
    use relaymesh_node::backend::embedded::{EmbeddedBackend, EmbeddedOptions};
    let options = EmbeddedOptions {
        slots,
        queue,
        default_max_tokens: 64,
        progress: false,
        ..Default::default()
    };
    std::sync::Arc::new(EmbeddedBackend::load("smollm2", &model_path(), &options).unwrap())
}

/// The GGUF digest of the model `backend` runs, in hex (as APIs report it).
pub fn gguf_hex(backend: &relaymesh_node::backend::embedded::EmbeddedBackend) -> String {
    use relaymesh_node::backend::Backend;
    backend
        .info()
        .digest
        .as_ref()
        .and_then(|d| d.gguf())
        .expect("a GGUF model has a digest")
        .to_hex()
}

/// The receipts `node` keeps as a supplier of mesh `mesh` (its miner's store).
pub fn stored_receipts(
    node: &Node,
    mesh: &str,
) -> Vec<relaymesh_protocol::metering::receipt::Receipt> {
    let tree = node.data_dir().unwrap().db().open_tree("mining").unwrap();
    relaymesh_node::mining::Miner::new(tree, &relaymesh_node::config::named_mesh(mesh))
        .all_receipts()
        .unwrap()
}

/// A node with no peers that serves `backends` on an API at an OS-chosen port.
pub async fn serving_node(
    backends: Vec<relaymesh_node::backend::SharedBackend>,
    keys: Option<relaymesh_node::api::ApiKeys>,
) -> Node {
    use relaymesh_node::backend::{Models, ServedModel};
    let mut models = Models::default();
    for b in backends {
        models.insert(ServedModel::new(b, 1)).unwrap();
    }
    let mut builder = NodeBuilder::full()
        .mesh_name("serving-tests")
        .listen(vec![tcp()])
        .api("127.0.0.1:0".parse().unwrap());
    builder.config_mut().models = std::sync::Arc::new(models);
    builder.config_mut().api_keys = keys.map(std::sync::Arc::new);
    builder.start().await.unwrap()
}

/// `http://127.0.0.1:PORT` of a node's API.
pub fn base_url(node: &Node) -> String {
    format!(
        "http://{}",
        node.api_addr().expect("the node serves an API")
    )
}

/// The `data:` payloads of an SSE body.
pub fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|event| {
            event
                .lines()
                .find_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                .map(str::to_owned)
        })
        .collect()
}

/// The `usage` of a streamed OpenAI answer (SSE with `include_usage`), if it came.
#[allow(dead_code)]
pub fn sse_usage(text: &str) -> Option<serde_json::Value> {
    sse_data(text)
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap())
        .find_map(|c| (!c["usage"].is_null()).then(|| c["usage"].clone()))
}

/// The assistant text of a streamed OpenAI chat answer (SSE).
pub fn sse_chat_content(text: &str) -> String {
    sse_data(text)
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// The objects of an NDJSON body (Ollama's streaming).
pub fn ndjson(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The assistant text of a streamed Ollama chat answer.
pub fn ndjson_chat_content(lines: &[serde_json::Value]) -> String {
    lines
        .iter()
        .filter_map(|l| l["message"]["content"].as_str())
        .collect()
}

/// A child process, killed (SIGKILL) and reaped when dropped.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET `url` as JSON; `None` while nothing (or no JSON) answers there.
#[allow(dead_code)]
/// The largest difference between two vectors' components.
pub fn max_gap(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub async fn get_json(url: &str) -> Option<serde_json::Value> {
    reqwest::get(url).await.ok()?.json().await.ok()
}

/// A free loopback TCP port (for a node's API), chosen at random below the kernel's
/// ephemeral range: a port the kernel hands out (port 0) is soon handed out again for
/// some test's outgoing connection, and a node started on it then finds it taken.
pub fn free_port() -> u16 {
    loop {
        let port = 20_000 + (rand_core::RngCore::next_u32(&mut rand_core::OsRng) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `~/.cache/relaymesh`: the model, the venv and llama-server live there.
pub fn cache() -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/relaymesh")
}

/// The venv's Python with the official `openai` and `ollama` packages.
pub fn python() -> std::path::PathBuf {
    let python = std::env::var_os("RELAYMESH_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| cache().join("venv/bin/python"));
    assert!(
        python.is_file(),
        "no Python with the openai and ollama clients at {}: run scripts/test (it makes the venv)",
        python.display()
    );
    python
}

/// A `relaymesh node` process on loopback (QUIC and TCP) with its API on `api`.
pub fn node_process(data_dir: &std::path::Path, api: u16, extra: &[&str]) -> Proc {
    node_process_logged(data_dir, api, None, extra)
}

/// [`node_process`] with its log (stderr, at the default level) in `log`.
pub fn node_process_logged(
    data_dir: &std::path::Path,
    api: u16,
    log: Option<&std::path::Path>,
    extra: &[&str],
) -> Proc {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_relaymesh"));
    cmd.args(["node", "--data-dir"])
        .arg(data_dir)
        .args([
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1,/ip4/127.0.0.1/tcp/0",
            "--api",
            &format!("127.0.0.1:{api}"),
        ])
        .args(extra)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(match log {
            Some(path) => std::fs::File::create(path).unwrap().into(),
            None => std::process::Stdio::null(),
        });
    Proc(cmd.spawn().unwrap())
}

/// The repository root: at run time when cargo says (a test binary reused from a
/// build in another checkout would otherwise look in that checkout), else as built.
pub fn repo_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// A full node of `mesh` serving SmolLM2 (one slot), its data in `dir`.
pub async fn data_supplier(mesh: &str, boot: &Multiaddr, dir: &std::path::Path) -> Node {
    let mut models = relaymesh_node::backend::Models::default();
    models
        .insert(relaymesh_node::backend::ServedModel::new(
            smollm(1, 4) as relaymesh_node::backend::SharedBackend,
            1,
        ))
        .unwrap();
    let mut b = NodeBuilder::full()
        .mesh_name(mesh)
        .data_dir(dir)
        .listen(vec![quic(), tcp()])
        .bootstrap(boot.clone());
    b.config_mut().models = std::sync::Arc::new(models);
    b.start().await.unwrap()
}

/// A full node of `mesh` serving `backends` (price 1) with an API, joined through `boot`.
pub async fn mesh_supplier(
    mesh: &str,
    boot: &Multiaddr,
    backends: Vec<relaymesh_node::backend::SharedBackend>,
) -> Node {
    use relaymesh_node::backend::{Models, ServedModel};
    let mut models = Models::default();
    for b in backends {
        models.insert(ServedModel::new(b, 1)).unwrap();
    }
    let mut builder = NodeBuilder::full()
        .mesh_name(mesh)
        .listen(vec![quic(), tcp()])
        .bootstrap(boot.clone())
        .api("127.0.0.1:0".parse().unwrap());
    builder.config_mut().models = std::sync::Arc::new(models);
    builder.start().await.unwrap()
}

/// A light node of `mesh` with an API: the gateway apps talk to.
pub async fn mesh_gateway(mesh: &str, boot: &Multiaddr) -> Node {
    NodeBuilder::light()
        .mesh_name(mesh)
        .listen(vec![quic(), tcp()])
        .bootstrap(boot.clone())
        .api("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap()
}

/// Runs `cmd` to the end; panics with its output, saying `what` failed, unless it
/// succeeds.
pub fn run_ok(cmd: &mut std::process::Command, what: &str) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One peer id of a connection flood: a fresh identity that dials `supplier` at
/// `target` (leaving from `from`, an address it listens on, where given) and dials
/// again 100 ms after each connection ends or fails, until `stop` is set.
pub async fn redialling_peer(
    supplier: libp2p::PeerId,
    target: Multiaddr,
    from: Option<Multiaddr>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use futures::StreamExt;
    use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
    use libp2p::swarm::{dummy, SwarmEvent};
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_quic()
        .with_behaviour(|_| dummy::Behaviour)
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    if let Some(from) = from {
        // Listening there makes the dials leave from there.
        swarm.listen_on(from).unwrap();
        while !matches!(swarm.next().await, Some(SwarmEvent::NewListenAddr { .. })) {}
    }
    let dial = |swarm: &mut libp2p::Swarm<dummy::Behaviour>| {
        let _ = swarm.dial(
            DialOpts::peer_id(supplier)
                .addresses(vec![target.clone()])
                .condition(PeerCondition::Always)
                .build(),
        );
    };
    dial(&mut swarm);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let next = tokio::time::timeout(Duration::from_millis(200), swarm.next());
        match next.await {
            Ok(Some(
                SwarmEvent::ConnectionClosed { .. } | SwarmEvent::OutgoingConnectionError { .. },
            )) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                dial(&mut swarm);
            }
            Ok(None) => break,
            _ => {}
        }
    }
}

/// The counter `series` (name and labels, as `/metrics` prints them) in a metrics
/// text; 0 if absent.
pub fn counter(metrics: &str, series: &str) -> u64 {
    let prefix = format!("{series} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}
