//! Answers through the mesh as a client sees them: a bootstrap node, two suppliers
//! serving SmolLM2 with the embedded engine, and a light gateway with the local API,
//! all real swarms on loopback. Requests to the gateway are served by a supplier over
//! the inference stream protocol, metered by acks the supplier keeps as receipts. Each
//! test sets the mesh up afresh and names one behaviour.

mod support;

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::time::Duration;

use libp2p::Multiaddr;
use relaymesh::{Node, NodeBuilder, Role};
use serde_json::{json, Value};
use support::http::{get_json, post, post_json};
use support::{address, quic, stored_receipts, tcp, wait_for};

const MESH: &str = "mesh-answers-tests";
const ANSWER: &str = "The capital of France is Paris.";

/// A bootstrap node, two suppliers and a light gateway with an API.
struct TwoSuppliers {
    boot: Node,
    boot_addr: Multiaddr,
    suppliers: [Node; 2],
    gateway: Node,
    /// The suppliers' data dirs, then the gateway's.
    dirs: [tempfile::TempDir; 3],
}

impl TwoSuppliers {
    /// The mesh, once the gateway has both suppliers' ads.
    async fn start() -> Self {
        let mut boot_builder = NodeBuilder::full()
            .mesh_name(MESH)
            .listen(vec![quic(), tcp()]);
        boot_builder.config_mut().role = Role::Bootstrap;
        let boot = boot_builder.start().await.unwrap();
        let boot_addr = address(&boot, "quic").await;
        let dirs = [(); 3].map(|_| tempfile::tempdir().unwrap());
        let suppliers = [
            support::data_supplier(MESH, &boot_addr, dirs[0].path()).await,
            support::data_supplier(MESH, &boot_addr, dirs[1].path()).await,
        ];
        let gateway = gateway(dirs[2].path(), &boot_addr).await;
        Self {
            boot,
            boot_addr,
            suppliers,
            gateway,
            dirs,
        }
    }

    fn base(&self) -> String {
        support::base_url(&self.gateway)
    }

    fn supplier_ids(&self) -> [String; 2] {
        [0, 1].map(|i| self.suppliers[i].handle().peer_id().to_string())
    }

    async fn stop(self) {
        self.gateway.shutdown().await;
        for s in self.suppliers {
            s.shutdown().await;
        }
        self.boot.shutdown().await;
    }
}

/// A light gateway with its data in `dir`, once it has both suppliers' ads.
async fn gateway(dir: &Path, boot: &Multiaddr) -> Node {
    let gateway = NodeBuilder::light()
        .data_dir(dir)
        .mesh_name(MESH)
        .listen(vec![quic(), tcp()])
        .bootstrap(boot.clone())
        .api("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap();
    wait_for(
        "both suppliers' ads at the gateway",
        Duration::from_secs(30),
        || async { (gateway.handle().offers("smollm2").await.ok()?.len() == 2).then_some(()) },
    )
    .await;
    gateway
}

fn chat() -> Value {
    json!({
        "model": "smollm2", "temperature": 0, "max_tokens": 32,
        "messages": [{ "role": "user", "content": "What is the capital of France?" }],
    })
}

/// What the receipts stored by `nodes` bill: compute units (prompt and acked output
/// of every request) and acked output bytes, from closed requests only.
fn billed(nodes: &[Node]) -> (u64, u64) {
    let cu = relaymesh_protocol::metering::compute_units::CuFormula::default();
    let mut by_request = std::collections::HashMap::new();
    for r in nodes.iter().flat_map(|n| stored_receipts(n, MESH)) {
        let e = by_request.entry(r.ack.body.request).or_insert((
            r.request.body.prompt_bytes,
            0u32,
            false,
        ));
        e.1 = e.1.max(r.ack.body.new_bytes);
        e.2 |= r.ack.body.last;
    }
    by_request
        .values()
        .filter(|(_, _, closed)| *closed)
        .fold((0, 0), |(c, b), (prompt, out, _)| {
            (
                c + cu.prompt_units(*prompt) + cu.output_units(0, *out).unwrap(),
                b + u64::from(*out),
            )
        })
}

/// Compute units and bytes a response's `relaymesh` report says the acks metered.
fn reported(report: &Value) -> (u64, u64) {
    (
        report["compute_units"].as_u64().expect("compute_units"),
        report["acked_bytes"].as_u64().expect("acked_bytes"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_lists_the_mesh_model_once_and_refuses_others_with_404() {
    let mesh = TwoSuppliers::start().await;
    let base = mesh.base();
    let list = get_json(&format!("{base}/v1/models")).await;
    assert_eq!(list["data"][0]["id"], "smollm2");
    let tags = get_json(&format!("{base}/api/tags")).await;
    assert_eq!(tags["models"][0]["name"], "smollm2");
    assert_eq!(
        tags["models"].as_array().unwrap().len(),
        1,
        "one entry per model, not per supplier"
    );
    // A model nobody serves: 404 naming the mesh's models.
    let mut unknown = chat();
    unknown["model"] = json!("llama-70b");
    let (status, _, text) = post(&format!("{base}/v1/chat/completions"), unknown).await;
    assert_eq!(status, 404);
    assert!(text.contains("smollm2"), "{text}");
    mesh.stop().await;
}

/// Four requests in three APIs, streamed and not: each answer is the model's, and what
/// the gateway reports is what the suppliers' receipts bill, to the unit; the app
/// keeps the same acks; requests to a supplier share one session.
#[tokio::test(flavor = "multi_thread")]
async fn answers_through_the_mesh_are_billed_as_the_receipts_say() {
    let mesh = TwoSuppliers::start().await;
    let (base, suppliers) = (mesh.base(), mesh.supplier_ids());
    let (status, headers, text) = post(&format!("{base}/v1/chat/completions"), chat()).await;
    assert_eq!(status, 200, "{text}");
    let served_by = headers["x-relaymesh-supplier"].to_str().unwrap().to_owned();
    assert!(suppliers.contains(&served_by), "{served_by} is a supplier");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], ANSWER);
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() >= 7);
    let report = &v["usage"]["relaymesh"];
    assert_eq!(report["suppliers"], json!([served_by]));
    assert_eq!(report["answer_bytes"], json!([ANSWER.len()]));
    let mut total = reported(report);
    assert_eq!(total.1 as usize, ANSWER.len());

    // The supplier that served keeps the acks as receipts: they cover the prompt and
    // every byte of the answer exactly once, the last one closing the request.
    let serving = &mesh.suppliers[usize::from(served_by != suppliers[0])];
    let stored = wait_for("the final ack stored", Duration::from_secs(10), || async {
        let r = stored_receipts(serving, MESH);
        r.iter().any(|r| r.ack.body.last).then_some(r)
    })
    .await;
    let mut acks: Vec<_> = stored.iter().map(|r| r.ack.body.clone()).collect();
    acks.sort_by_key(|a| a.index);
    assert_eq!(acks.last().unwrap().new_bytes as usize, ANSWER.len());
    assert!(acks.windows(2).all(|w| w[0].new_bytes == w[1].prev_bytes));
    assert_eq!(acks[0].prev_bytes, 0);

    // Streaming, in both APIs.
    let mut streamed = chat();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({ "include_usage": true });
    let (_, _, text) = post(&format!("{base}/v1/chat/completions"), streamed).await;
    assert_eq!(support::sse_chat_content(&text), ANSWER);
    assert!(text.trim_end().ends_with("data: [DONE]"));
    let usage = support::sse_usage(&text).expect("a usage chunk");
    let (c, b) = reported(&usage["relaymesh"]);
    total = (total.0 + c, total.1 + b);
    let ollama_chat = json!({
        "model": "smollm2", "options": { "temperature": 0, "num_predict": 32 },
        "messages": [{ "role": "user", "content": "What is the capital of France?" }],
    });
    let (_, headers, text) = post(&format!("{base}/api/chat"), ollama_chat).await;
    let served_by = headers["x-relaymesh-supplier"].to_str().unwrap();
    assert!(suppliers.iter().any(|s| s == served_by));
    let lines = support::ndjson(&text);
    assert_eq!(support::ndjson_chat_content(&lines), ANSWER);
    let (c, b) = reported(&lines.last().unwrap()["relaymesh"]);
    total = (total.0 + c, total.1 + b);

    // A text completion, not streamed.
    let (_, v) = post_json(
        &format!("{base}/v1/completions"),
        json!({
            "model": "smollm2", "temperature": 0, "max_tokens": 8,
            "prompt": "The capital of France is",
        }),
    )
    .await;
    let text = v["choices"][0]["text"].as_str().unwrap();
    assert!(text.contains("Paris"), "{v}");
    let (c, b) = reported(&v["usage"]["relaymesh"]);
    total = (total.0 + c, total.1 + b);

    // What the gateway reported is what the suppliers' receipts bill, to the unit.
    wait_for(
        "the receipts of every request",
        Duration::from_secs(10),
        || async { (billed(&mesh.suppliers) == total).then_some(()) },
    )
    .await;
    println!(
        "4 requests: {} CU, {} bytes, as the receipts say",
        total.0, total.1
    );
    // The app keeps a copy of every ack it sent: the same receipts the suppliers keep,
    // under their session key and digest.
    // (The tree is dropped at once: it holds the database open.)
    let sent: BTreeSet<Vec<u8>> = mesh
        .gateway
        .data_dir()
        .unwrap()
        .db()
        .open_tree(relaymesh_node::settle::APP_ACKS_TREE)
        .unwrap()
        .iter()
        .keys()
        .map(|k| k.unwrap().to_vec())
        .collect();
    let stored: Vec<_> = mesh
        .suppliers
        .iter()
        .flat_map(|n| stored_receipts(n, MESH))
        .collect();
    let kept: BTreeSet<Vec<u8>> = stored
        .iter()
        .map(|r| [r.ack.body.session_key.0, r.digest().0].concat())
        .collect();
    assert_eq!(sent, kept);

    // Requests to a supplier share one session (resumed, not re-proposed).
    let sessions: HashSet<_> = stored.iter().map(|r| r.ack.body.session_key).collect();
    let requests: HashSet<_> = stored.iter().map(|r| r.ack.body.request).collect();
    assert_eq!(requests.len(), 4);
    assert!(
        sessions.len() <= 2,
        "{} sessions for 4 requests",
        sessions.len()
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_python_clients_work_through_the_mesh() {
    let mesh = TwoSuppliers::start().await;
    let (base, here) = (mesh.base(), support::repo_dir());
    support::run_ok(
        std::process::Command::new(support::python())
            .arg(here.join("tests/clients/check_clients.py"))
            .args([&base, "smollm2", "mesh"]),
        "python clients through the mesh",
    );
    // Structured output and tool calls: the format travels to the supplier.
    support::run_ok(
        std::process::Command::new(support::python())
            .arg(here.join("tests/clients/check_agents.py"))
            .args([&base, "smollm2"]),
        "agent clients through the mesh",
    );
    mesh.stop().await;
}

/// The app keeps its sessions, each with the secret its terms commit to, and after a
/// restart resumes them with request ids it has not used.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_gateway_resumes_its_stored_sessions() {
    let TwoSuppliers {
        boot,
        boot_addr,
        suppliers,
        gateway: first,
        dirs,
    } = TwoSuppliers::start().await;
    let url = |node: &Node| format!("{}/v1/chat/completions", support::base_url(node));
    let (status, v) = post_json(&url(&first), chat()).await;
    assert_eq!(status, 200, "{v}");
    let stored_sessions = || async {
        // Open once the stopped node's last handles (its API's connections) are gone.
        let dir = wait_for(
            "the gateway's data dir",
            Duration::from_secs(20),
            || async { relaymesh_node::store::DataDir::open(dirs[2].path()).ok() },
        )
        .await;
        relaymesh_node::store::app::AppStore::open(dir.db())
            .unwrap()
            .sessions()
            .collect::<Vec<_>>()
    };
    first.shutdown().await;
    let before = stored_sessions().await;
    // One session, or two where the gateway hedged on a slow first token.
    assert!(!before.is_empty() && before.len() <= 2, "{before:?}");
    for (session, secret, next) in &before {
        assert_eq!(
            relaymesh_protocol::messages::reveal::commitment(secret),
            session.body.reveal_commitment
        );
        assert!(*next >= 1, "request 0 went through it");
    }
    let (held, _, next) = &before[0];

    let second = gateway(dirs[2].path(), &boot_addr).await;
    let response = reqwest::Client::new()
        .post(url(&second))
        // A supplier the app holds a session with.
        .header("x-relaymesh-suppliers", held.body.supplier.peer_id())
        .json(&chat())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let v: Value = response.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], ANSWER);
    second.shutdown().await;
    let after = stored_sessions().await;
    assert_eq!(after.len(), before.len(), "no new session: one was resumed");
    let resumed = after
        .iter()
        .find(|(s, _, _)| s.body.reveal_commitment == held.body.reveal_commitment)
        .expect("the held session is kept");
    assert_eq!(resumed.2, next + 1, "the resumed request used the next id");
    for s in suppliers {
        s.shutdown().await;
    }
    boot.shutdown().await;
}
