//! Failing over and routing across the mesh: a supplier killed mid-answer hands the
//! stream to another without a seam, hedging beats a silent supplier and request rules
//! narrow the choice, and a gateway finds a supplier it never met through the DHT.
//! Real swarms and node processes on loopback, SmolLM2 served.

mod support;

use std::time::Duration;

use relaymesh::NodeBuilder;
use serde_json::{json, Value};

/// The answer SmolLM2 gives, greedy, to "What is the capital of France?".
const ANSWER: &str = "The capital of France is Paris.";
use support::{address, quic, tcp, wait_for};

/// Polls a node process's API until it tells its peer id.
async fn peer_id_of(api: u16) -> String {
    wait_for("the node's API", Duration::from_secs(60), || async move {
        let v: Value = reqwest::get(format!("http://127.0.0.1:{api}/relaymesh/v1/status"))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["peer_id"].as_str().map(str::to_owned)
    })
    .await
}

/// Two supplier processes; the one serving a streamed answer is killed with SIGKILL
/// part way. The gateway notices the stall, sends the prompt and the answer so far to
/// the other, and the client's one stream goes on: the text after the seam is exactly
/// what the second supplier says when asked to continue the first part, so nothing is
/// repeated or missing. Then both are gone, and a request gets a clear 503.
#[tokio::test(flavor = "multi_thread")]
async fn a_supplier_killed_mid_stream_hands_the_answer_over_without_a_seam() {
    const FAILOVER_MESH: &str = "mesh-failover-tests";
    let boot = support::bootstrap(FAILOVER_MESH).await;
    let boot_addr = address(&boot, "quic").await.to_string();
    let serve = format!("smollm2=gguf:{}", support::model_path().display());
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let apis = [support::free_port(), support::free_port()];
    let mut procs: Vec<Option<support::Proc>> = dirs
        .iter()
        .zip(apis)
        .map(|(d, api)| {
            Some(support::node_process(
                d.path(),
                api,
                &[
                    "--mesh",
                    FAILOVER_MESH,
                    "--bootstrap",
                    &boot_addr,
                    "--serve",
                    &serve,
                ],
            ))
        })
        .collect();
    let ids = [peer_id_of(apis[0]).await, peer_id_of(apis[1]).await];
    let mut builder = NodeBuilder::light()
        .mesh_name(FAILOVER_MESH)
        .listen(vec![quic(), tcp()])
        .bootstrap(boot_addr.parse().unwrap())
        .api("127.0.0.1:0".parse().unwrap());
    builder.config_mut().routing.timeouts.stall = Duration::from_secs(3);
    let gateway = builder.start().await.unwrap();
    wait_for(
        "both suppliers' ads at the gateway",
        Duration::from_secs(60),
        || async {
            let offers = gateway.handle().offers("smollm2").await.ok()?;
            (offers.len() == 2).then_some(())
        },
    )
    .await;
    // An ad can arrive (synced from the bootstrap node) before the gateway knows where
    // its supplier listens; the gateway would look the supplier up on its first request
    // (tested below), but this test is about failover: both are reached before it starts.
    wait_for(
        "the gateway connected to both suppliers",
        Duration::from_secs(60),
        || async {
            let mut reached = 0;
            for id in &ids {
                reached += usize::from(gateway.handle().locate(id.parse().ok()?).await.ok()?);
            }
            (reached == ids.len()).then_some(())
        },
    )
    .await;
    let base = support::base_url(&gateway);
    let client = reqwest::Client::new();
    let messages =
        json!([{ "role": "user", "content": "Explain in a few sentences why the sky is blue." }]);

    let mut r = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({
            "model": "smollm2", "temperature": 0, "max_tokens": 400, "stream": true,
            "stream_options": { "include_usage": true }, "messages": messages,
        }))
        .send()
        .await
        .unwrap();
    if r.status() != 200 {
        panic!(
            "the first request: {} {}",
            r.status(),
            r.text().await.unwrap()
        );
    }
    let first = r.headers()["x-relaymesh-supplier"]
        .to_str()
        .unwrap()
        .to_owned();
    let victim = ids.iter().position(|id| *id == first).expect("a supplier");
    let mut body = String::new();
    while support::sse_chat_content(&body).len() < 20 {
        let chunk = r.chunk().await.unwrap().expect("the stream goes on");
        body.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    // Without warning, mid-answer.
    procs[victim].take();
    while let Some(chunk) = r.chunk().await.unwrap() {
        body.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(!body.contains("\"error\""), "the stream failed: {body}");
    let answer = support::sse_chat_content(&body);
    let usage = support::sse_usage(&body).expect("a usage chunk");
    let other = 1 - victim;
    let report = &usage["relaymesh"];
    assert_eq!(report["suppliers"], json!([ids[victim], ids[other]]));
    let seam = report["answer_bytes"][0].as_u64().unwrap() as usize;
    assert!(seam >= 20 && seam < answer.len(), "{report}");
    assert_eq!(
        report["answer_bytes"][1].as_u64().unwrap() as usize,
        answer.len() - seam
    );

    // The survivor, asked directly to continue the first part, says exactly the rest.
    let (before, after) = answer.split_at(seam);
    let mut continued = messages.as_array().unwrap().clone();
    continued.push(json!({ "role": "assistant", "content": before }));
    let direct: Value = client
        .post(format!(
            "http://127.0.0.1:{}/v1/chat/completions",
            apis[other]
        ))
        .json(&json!({
            "model": "smollm2", "temperature": 0, "max_tokens": 400, "messages": continued,
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(direct["choices"][0]["message"]["content"], after);
    println!("seam after {seam} bytes: {before:?} | {after:?}");

    // Nobody left: 503, with the reason.
    procs[other].take();
    let started = std::time::Instant::now();
    let r = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({ "model": "smollm2", "max_tokens": 8, "messages": messages }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    println!(
        "with every supplier gone: {status} after {:?}: {text}",
        started.elapsed()
    );
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("no supplier of smollm2"), "{text}");
    gateway.shutdown().await;
    boot.shutdown().await;
}

/// A supplier that advertises the model, faster than anyone, and then never answers;
/// beside it one real supplier. The gateway tries the black hole first, hedges with the
/// real one after its deadline, and the real one's first token wins. The request
/// headers that narrow the choice are obeyed, and explain themselves when nobody fits.
#[tokio::test(flavor = "multi_thread")]
async fn hedging_beats_a_silent_supplier_and_request_rules_narrow_the_choice() {
    const HEDGE_MESH: &str = "mesh-hedge-tests";
    let boot = support::bootstrap(HEDGE_MESH).await;
    let boot_addr = address(&boot, "quic").await;
    let dir = tempfile::tempdir().unwrap();
    let real = support::data_supplier(HEDGE_MESH, &boot_addr, dir.path()).await;
    let digest = wait_for(
        "the real supplier's ad",
        Duration::from_secs(30),
        || async {
            let offers = boot.handle().offers("smollm2").await.ok()?;
            offers.first().and_then(|(_, o)| o.gguf_digest)
        },
    )
    .await;

    // The black hole: the same model at ten times the speed, on paper.
    let mut fake = support::offer("smollm2");
    fake.gguf_digest = Some(digest);
    fake.tokens_per_sec_milli = 1_000_000;
    fake.tau = relaymesh_node::config::named_mesh(HEDGE_MESH).tau_min;
    let mut hb = NodeBuilder::full()
        .mesh_name(HEDGE_MESH)
        .listen(vec![quic(), tcp()])
        .bootstrap(boot_addr.clone());
    hb.config_mut().offers = vec![fake];
    let hole = hb.start().await.unwrap();
    let protocol = relaymesh_node::mesh::names::infer_protocol(
        &relaymesh_node::config::named_mesh(HEDGE_MESH).mesh_id(),
    );
    let mut incoming = hole.handle().streams().accept(protocol).unwrap();
    let swallowed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = swallowed.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some((_, stream)) = futures::StreamExt::next(&mut incoming).await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });

    let mut gb = NodeBuilder::light()
        .mesh_name(HEDGE_MESH)
        .listen(vec![quic(), tcp()])
        .bootstrap(boot_addr.clone())
        .api("127.0.0.1:0".parse().unwrap());
    gb.config_mut().routing.timeouts.hedge = Some(Duration::from_secs(1));
    let gateway = gb.start().await.unwrap();
    wait_for(
        "both ads at the gateway",
        Duration::from_secs(30),
        || async { (gateway.handle().offers("smollm2").await.ok()?.len() == 2).then_some(()) },
    )
    .await;
    let base = support::base_url(&gateway);
    let client = reqwest::Client::new();
    let body = json!({
        "model": "smollm2", "temperature": 0, "max_tokens": 32,
        "messages": [{ "role": "user", "content": "What is the capital of France?" }],
    });
    let ask = |headers: &[(&'static str, String)]| {
        let mut r = client
            .post(format!("{base}/v1/chat/completions"))
            .json(&body);
        for (k, v) in headers {
            r = r.header(*k, v);
        }
        r.send()
    };
    let real_id = real.handle().peer_id().to_string();

    let started = std::time::Instant::now();
    let r = ask(&[]).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-relaymesh-supplier"], real_id.as_str());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], ANSWER);
    assert_eq!(
        swallowed.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the black hole was tried first"
    );
    println!("answered past a silent supplier in {:?}", started.elapsed());

    // Rules in the request: an allowlist, a price cap, a pinned digest.
    let r = ask(&[("x-relaymesh-suppliers", real_id.clone())])
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-relaymesh-supplier"], real_id.as_str());
    let r = ask(&[("x-relaymesh-max-price", "0".into())]).await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("above the maximum price"));
    let r = ask(&[("x-relaymesh-digest", format!("blake3:{}", "0".repeat(64)))])
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("no supplier serves smollm2 with the pinned digest"));
    let r = ask(&[("x-relaymesh-digest", format!("blake3:{}", digest.to_hex()))])
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = ask(&[("x-relaymesh-max-price", "cheap".into())])
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("x-relaymesh-max-price"));

    gateway.shutdown().await;
    hole.shutdown().await;
    real.shutdown().await;
    boot.shutdown().await;
}

/// A gateway that joined before the supplier and never met it: the supplier's ad comes
/// through gossip, but no address does (a light node is in no one's routing table, and
/// the supplier's own lookups never name it). The gateway finds the supplier through
/// the DHT when it first routes to it, instead of refusing the request.
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_finds_a_supplier_it_never_met_through_the_dht() {
    const LOOKUP_MESH: &str = "mesh-lookup-tests";
    let boot = support::bootstrap(LOOKUP_MESH).await;
    let boot_addr = address(&boot, "quic").await;
    let boot_id = boot.handle().peer_id().to_string();
    let gateway = support::mesh_gateway(LOOKUP_MESH, &boot_addr).await;
    // The gateway's first DHT walk, through the bootstrap node, is over before the
    // supplier exists.
    wait_for(
        "the gateway connected to the bootstrap node",
        Duration::from_secs(30),
        || async {
            let peers = gateway.handle().peers().await.ok()?;
            peers.iter().any(|p| p.peer_id == boot_id).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let s = support::data_supplier(LOOKUP_MESH, &boot_addr, dir.path()).await;
    let supplier_id = s.handle().peer_id().to_string();
    wait_for(
        "the supplier's ad at the gateway",
        Duration::from_secs(60),
        || async {
            let offers = gateway.handle().offers("smollm2").await.ok()?;
            (!offers.is_empty()).then_some(())
        },
    )
    .await;
    let peers = gateway.handle().peers().await.unwrap();
    assert!(
        !peers.iter().any(|p| p.peer_id == supplier_id),
        "the gateway already met the supplier: nothing to look up"
    );

    let r = reqwest::Client::new()
        .post(format!(
            "{}/v1/chat/completions",
            support::base_url(&gateway)
        ))
        .json(&json!({
            "model": "smollm2", "temperature": 0, "max_tokens": 8,
            "messages": [{ "role": "user", "content": "What is the capital of France?" }],
        }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let supplier_header = r
        .headers()
        .get("x-relaymesh-supplier")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert_eq!(supplier_header.as_deref(), Some(supplier_id.as_str()));
    let peers = gateway.handle().peers().await.unwrap();
    assert!(peers.iter().any(|p| p.peer_id == supplier_id));
    gateway.shutdown().await;
    s.shutdown().await;
    boot.shutdown().await;
}
