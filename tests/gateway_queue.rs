//! The gateway's queue under honest load: more concurrent requests than the mesh has
//! slots wait at the gateway for a free one, in arrival order, instead of being
//! refused; what waits too long is refused with `503` and `Retry-After`. A bootstrap
//! node, two suppliers serving SmolLM2 with one slot and no queue of their own, and a
//! light gateway, all real swarms on loopback.

mod support;

use std::time::Duration;

use relaymesh::NodeBuilder;
use relaymesh_node::backend::{Models, ServedModel, SharedBackend};
use serde_json::{json, Value};
use support::{address, quic, tcp, wait_for};

/// A supplier of `mesh` serving SmolLM2 with one slot and no queue: a second request
/// at once is refused as busy.
async fn one_slot_supplier(mesh: &str, boot: &libp2p::Multiaddr) -> relaymesh::Node {
    let mut models = Models::default();
    models
        .insert(ServedModel::new(support::smollm(1, 0) as SharedBackend, 1))
        .unwrap();
    let mut b = NodeBuilder::full()
        .mesh_name(mesh)
        .listen(vec![quic(), tcp()])
        .bootstrap(boot.clone());
    b.config_mut().models = std::sync::Arc::new(models);
    b.start().await.unwrap()
}

/// A light gateway of `mesh` whose requests wait at most `queue` for a slot.
async fn gateway(mesh: &str, boot: &libp2p::Multiaddr, queue: Duration) -> relaymesh::Node {
    let mut b = NodeBuilder::light()
        .mesh_name(mesh)
        .listen(vec![quic(), tcp()])
        .bootstrap(boot.clone())
        .api("127.0.0.1:0".parse().unwrap());
    b.config_mut().routing.timeouts.queue = queue;
    b.start().await.unwrap()
}

/// A mesh of two one-slot suppliers and a gateway that sees both.
async fn mesh(name: &str, queue: Duration) -> Vec<relaymesh::Node> {
    let boot = support::bootstrap(name).await;
    let boot_addr = address(&boot, "quic").await;
    let a = one_slot_supplier(name, &boot_addr).await;
    let b = one_slot_supplier(name, &boot_addr).await;
    let gw = gateway(name, &boot_addr, queue).await;
    wait_for(
        "both suppliers' ads at the gateway",
        Duration::from_secs(60),
        || async {
            let offers = gw.handle().offers("smollm2").await.ok()?;
            (offers.len() == 2).then_some(())
        },
    )
    .await;
    vec![gw, a, b, boot]
}

/// `n` chat requests at once; each answer's status, `Retry-After` and body.
async fn ask_at_once(gw: &relaymesh::Node, n: usize) -> Vec<(u16, Option<String>, Value)> {
    let url = format!("{}/v1/chat/completions", support::base_url(gw));
    let client = reqwest::Client::new();
    let asks = (0..n).map(|i| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let r = client
                .post(url)
                .json(&json!({
                    "model": "smollm2", "temperature": 0, "max_tokens": 6,
                    "messages": [{ "role": "user", "content": format!("Say the number {i}.") }],
                }))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, retry, r.json::<Value>().await.unwrap())
        }
    });
    futures::future::join_all(asks).await
}

async fn stop(nodes: Vec<relaymesh::Node>) {
    for n in nodes {
        n.shutdown().await;
    }
}

/// Five times the mesh's slots at once: every request is answered, the ones that found
/// both slots taken after waiting at the gateway (without the queue, all but the two
/// that got a slot were refused: "no supplier of smollm2 could take the request").
#[tokio::test(flavor = "multi_thread")]
async fn requests_beyond_the_mesh_slots_wait_at_the_gateway_and_are_all_answered() {
    let nodes = mesh("gateway-queue-tests", Duration::from_secs(120)).await;
    let answers = ask_at_once(&nodes[0], 10).await;
    for (status, _, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert!(
            body["choices"][0]["message"]["content"].is_string(),
            "{body}"
        );
    }
    let queued: Vec<u64> = answers
        .iter()
        .map(|(_, _, b)| b["usage"]["relaymesh"]["queued_ms"].as_u64().unwrap())
        .collect();
    assert!(
        queued.iter().filter(|q| **q > 0).count() >= 8,
        "eight requests found both slots taken and waited: {queued:?}"
    );
    stop(nodes).await;
}

/// With no time to wait, a request that finds every slot taken is refused at once with
/// `503`, `Retry-After` and a JSON error saying so; the others are answered.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_that_cannot_wait_is_refused_with_retry_after() {
    let nodes = mesh("gateway-queue-refusal-tests", Duration::ZERO).await;
    let answers = ask_at_once(&nodes[0], 6).await;
    let refused: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 503).collect();
    assert!(!refused.is_empty(), "six requests at once on two slots");
    assert!(answers.iter().any(|(s, _, _)| *s == 200));
    for (status, retry, body) in &answers {
        assert!(*status == 200 || *status == 503, "{status}: {body}");
        if *status == 503 {
            let secs: u64 = retry.as_deref().expect("Retry-After").parse().unwrap();
            assert!(secs >= 1, "{secs}");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains("slots are busy"), "{message}");
            assert_eq!(body["error"]["code"], "slots_busy", "{body}");
        }
    }
    stop(nodes).await;
}

/// A supplier's free slots reach the mesh while they change, not a third of an ad's
/// lifetime later (100 s by default): `relaymesh models` showed a busy supplier free.
#[tokio::test(flavor = "multi_thread")]
async fn a_supplier_re_announces_when_its_free_slots_change() {
    let nodes = mesh("queue-reannounce-tests", Duration::from_secs(30)).await;
    let (gw, boot) = (&nodes[0], &nodes[3]);
    let free_at_boot = || async {
        let rows = boot.handle().models().await.ok()?;
        Some(rows.iter().map(|r| r.free_slots).sum::<u16>())
    };
    assert_eq!(free_at_boot().await, Some(2));
    // Keep the suppliers busy (four answers at a time, asked again as each ends) until
    // the bootstrap node's table shows a slot taken.
    let url = format!("{}/v1/chat/completions", support::base_url(gw));
    let busy = async {
        let client = reqwest::Client::new();
        let one = |i: usize| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                loop {
                    let asked = client
                        .post(&url)
                        .json(&json!({
                            "model": "smollm2", "max_tokens": 200,
                            "messages": [{ "role": "user", "content": format!("Tell story {i}.") }],
                        }))
                        .send()
                        .await;
                    if let Ok(answer) = asked {
                        let _ = answer.bytes().await;
                    }
                }
            }
        };
        futures::future::join_all((0..4).map(one)).await;
    };
    let seen = wait_for("a busy supplier's ad", Duration::from_secs(30), || async {
        (free_at_boot().await? < 2).then_some(())
    });
    tokio::select! {
        () = seen => {}
        _ = busy => unreachable!("the load runs until the ad changes"),
    }
    stop(nodes).await;
}
