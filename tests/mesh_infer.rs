//! Inference over the mesh: a bootstrap node, two suppliers serving SmolLM2 with the
//! embedded engine, and a light gateway with the local API, all real swarms on
//! loopback. Requests to the gateway are served by a supplier over the inference
//! stream protocol, metered by acks the supplier keeps as receipts.

mod support;

use std::time::Duration;

use relaymesh::{NodeBuilder, Role};
use relaymesh_node::backend::{Models, ServedModel, SharedBackend};
use relaymesh_protocol::metering::receipt::Receipt;
use serde_json::{json, Value};
use support::{address, quic, tcp, wait_for};

const MESH: &str = "mesh-infer-tests";
const ANSWER: &str = "The capital of France is Paris.";

async fn supplier(boot: &libp2p::Multiaddr, dir: &std::path::Path) -> relaymesh::Node {
    let mut models = Models::default();
    models
        .insert(ServedModel::new(support::smollm(1, 4) as SharedBackend, 1))
        .unwrap();
    let mut b = NodeBuilder::full()
        .mesh_name(MESH)
        .data_dir(dir)
        .listen(vec![quic(), tcp()])
        .bootstrap(boot.clone());
    b.config_mut().models = std::sync::Arc::new(models);
    b.start().await.unwrap()
}

fn receipts(node: &relaymesh::Node) -> Vec<Receipt> {
    let tree = node.data_dir().unwrap().db().open_tree("receipts").unwrap();
    tree.iter()
        .map(|kv| ciborium::from_reader(kv.unwrap().1.as_ref()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_light_gateway_answers_through_a_supplier_and_the_acks_are_its_receipts() {
    let mut boot_builder = NodeBuilder::full()
        .mesh_name(MESH)
        .listen(vec![quic(), tcp()]);
    boot_builder.config_mut().role = Role::Bootstrap;
    let boot = boot_builder.start().await.unwrap();
    let boot_addr = address(&boot, "quic").await;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let s1 = supplier(&boot_addr, d1.path()).await;
    let s2 = supplier(&boot_addr, d2.path()).await;
    let gateway = NodeBuilder::light()
        .mesh_name(MESH)
        .listen(vec![quic(), tcp()])
        .bootstrap(boot_addr.clone())
        .api("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap();
    wait_for(
        "both suppliers' ads at the gateway",
        Duration::from_secs(30),
        || async {
            let rows = gateway.handle().models().await.ok()?;
            (rows.iter().filter(|r| r.name == "smollm2").count() == 2).then_some(())
        },
    )
    .await;
    let suppliers = [
        s1.handle().peer_id().to_string(),
        s2.handle().peer_id().to_string(),
    ];
    let base = format!("http://{}", gateway.api_addr().unwrap());
    let client = reqwest::Client::new();

    // The gateway lists the mesh's model.
    let list: Value = client
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"][0]["id"], "smollm2");
    let tags: Value = client
        .get(format!("{base}/api/tags"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["models"][0]["name"], "smollm2");
    assert_eq!(
        tags["models"].as_array().unwrap().len(),
        1,
        "one entry per model, not per supplier"
    );

    let body = json!({
        "model": "smollm2", "temperature": 0, "max_tokens": 32,
        "messages": [{ "role": "user", "content": "What is the capital of France?" }],
    });
    let r = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let served_by = r.headers()["x-relaymesh-supplier"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        suppliers.contains(&served_by),
        "{served_by} is one of the suppliers"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], ANSWER);
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() >= 7);

    // The supplier that served keeps the acks as receipts: they cover the prompt and
    // every byte of the answer exactly once, the last one closing the request.
    let serving = if served_by == suppliers[0] { &s1 } else { &s2 };
    let stored = wait_for("the final ack stored", Duration::from_secs(10), || async {
        let r = receipts(serving);
        r.iter().any(|r| r.ack.body.last).then_some(r)
    })
    .await;
    let mut acks: Vec<_> = stored.iter().map(|r| r.ack.body.clone()).collect();
    acks.sort_by_key(|a| a.index);
    assert_eq!(acks.last().unwrap().new_bytes as usize, ANSWER.len());
    assert!(acks.windows(2).all(|w| w[0].new_bytes == w[1].prev_bytes));
    assert_eq!(acks[0].prev_bytes, 0);

    // Streaming, in both APIs, through the mesh.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let text = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&streamed)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let content: String = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(content, ANSWER);
    assert!(text.trim_end().ends_with("data: [DONE]"));
    let r = client
        .post(format!("{base}/api/chat"))
        .json(&json!({
            "model": "smollm2", "options": { "temperature": 0, "num_predict": 32 },
            "messages": [{ "role": "user", "content": "What is the capital of France?" }],
        }))
        .send()
        .await
        .unwrap();
    assert!(suppliers.contains(
        &r.headers()["x-relaymesh-supplier"]
            .to_str()
            .unwrap()
            .to_owned()
    ));
    let lines: Vec<Value> = r
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let content: String = lines
        .iter()
        .filter_map(|l| l["message"]["content"].as_str())
        .collect();
    assert_eq!(content, ANSWER);

    // A model nobody serves: 404 naming the mesh's models.
    let mut unknown = body.clone();
    unknown["model"] = json!("llama-70b");
    let r = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&unknown)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("smollm2"));

    gateway.shutdown().await;
    s1.shutdown().await;
    s2.shutdown().await;
    boot.shutdown().await;
}
