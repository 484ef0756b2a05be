//! Stopping a node with SIGTERM mid-answer, as an operator (or systemd) does: a
//! supplier hands its streams over at once and withdraws its ads; a gateway's clients
//! get a whole answer or a clean error, never a hang; the database is flushed.

mod support;

use std::time::Duration;

use relaymesh::NodeBuilder;
use serde_json::{json, Value};
use support::{address, quic, tcp, wait_for, Proc};

/// Sends SIGTERM to `proc` and waits (at most 30 s) for it to exit; whether it exited
/// cleanly.
fn terminate(proc: &mut Proc) -> bool {
    let pid = proc.0.id().to_string();
    support::run_ok(
        std::process::Command::new("kill").args(["-TERM", &pid]),
        "kill -TERM",
    );
    support::poll(Duration::from_secs(30), || proc.0.try_wait().unwrap())
        .expect("the node did not exit within 30 s of SIGTERM")
        .success()
}

async fn status_of(api: u16, path: &str) -> Option<Value> {
    support::get_json(&format!("http://127.0.0.1:{api}{path}")).await
}

/// Receipts a supplier's API reports, over all its sessions.
async fn receipts(api: u16) -> Option<u64> {
    let v = status_of(api, "/relaymesh/v1/sessions").await?;
    v["sessions"]
        .as_array()?
        .iter()
        .map(|s| s["receipts"].as_u64())
        .sum()
}

/// Two supplier processes; the one serving a streamed answer gets SIGTERM part way.
/// Its stream ends with a refusal, and the gateway (whose stall timeout is a minute,
/// so only that refusal or the closed connection can tell it) goes on at the other
/// at once; the stopped supplier's ad is withdrawn from the gateway's table (its
/// lifetime is five minutes); it exits cleanly, and restarted on its data dir it has
/// every receipt it counted. Before: the gateway noticed 10 s later, the ad stayed for
/// up to 300 s.
#[tokio::test(flavor = "multi_thread")]
async fn a_supplier_stopped_mid_answer_hands_it_over_and_withdraws_its_ad() {
    const MESH: &str = "shutdown-supplier-tests";
    let boot = support::bootstrap(MESH).await;
    let boot_addr = address(&boot, "quic").await.to_string();
    let serve = format!("smollm2=gguf:{}", support::model_path().display());
    let args = ["--mesh", MESH, "--bootstrap", &boot_addr, "--serve", &serve];
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let apis = [support::free_port(), support::free_port()];
    let mut procs: Vec<Proc> = dirs
        .iter()
        .zip(apis)
        .map(|(d, api)| support::node_process(d.path(), api, &args))
        .collect();
    let mut ids = Vec::new();
    for api in apis {
        let status = wait_for("a supplier's API", Duration::from_secs(60), || async move {
            status_of(api, "/relaymesh/v1/status").await
        })
        .await;
        ids.push(status["peer_id"].as_str().unwrap().to_owned());
    }
    let mut builder = NodeBuilder::light()
        .mesh_name(MESH)
        .listen(vec![quic(), tcp()])
        .bootstrap(boot_addr.parse().unwrap())
        .api("127.0.0.1:0".parse().unwrap());
    builder.config_mut().routing.timeouts.stall = Duration::from_secs(60);
    let gateway = builder.start().await.unwrap();
    let offers = || async {
        let offers = gateway.handle().offers("smollm2").await.ok()?;
        Some(
            offers
                .iter()
                .map(|(k, _)| k.peer_id().to_string())
                .collect::<Vec<_>>(),
        )
    };
    wait_for("both suppliers' ads", Duration::from_secs(60), || async {
        (offers().await?.len() == 2).then_some(())
    })
    .await;
    for id in &ids {
        let peer = id.parse().unwrap();
        wait_for(
            "a link to each supplier",
            Duration::from_secs(60),
            || async { gateway.handle().locate(peer).await.ok()?.then_some(()) },
        )
        .await;
    }

    let mut r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", support::base_url(&gateway)))
        .json(&json!({
            "model": "smollm2", "temperature": 0, "max_tokens": 300, "stream": true,
            "stream_options": { "include_usage": true },
            "messages": [{ "role": "user", "content": "Explain in a few sentences why the sky is blue." }],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let first = r.headers()["x-relaymesh-supplier"]
        .to_str()
        .unwrap()
        .to_owned();
    let victim = ids.iter().position(|id| *id == first).expect("a supplier");
    let mut body = String::new();
    while support::sse_chat_content(&body).len() < 100 {
        let chunk = r.chunk().await.unwrap().expect("the stream goes on");
        body.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let counted = wait_for(
        "receipts at the supplier",
        Duration::from_secs(10),
        || async { receipts(apis[victim]).await.filter(|n| *n > 0) },
    )
    .await;
    let stopped_at = std::time::Instant::now();
    let stopper = {
        let mut proc = procs.remove(victim);
        std::thread::spawn(move || terminate(&mut proc))
    };
    let rest = tokio::time::timeout(Duration::from_secs(40), async {
        while let Some(chunk) = r.chunk().await.unwrap() {
            body.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await;
    assert!(rest.is_ok(), "the answer hung after SIGTERM: {body}");
    println!(
        "the answer finished {:?} after SIGTERM to its first supplier",
        stopped_at.elapsed()
    );
    assert!(!body.contains("\"error\""), "the stream failed: {body}");
    let usage = support::sse_usage(&body).expect("a usage chunk");
    assert_eq!(
        usage["relaymesh"]["suppliers"],
        json!([ids[victim], ids[1 - victim]]),
        "{usage}"
    );
    assert!(stopper.join().unwrap(), "the supplier exits cleanly");
    wait_for(
        "the stopped supplier's ad withdrawn",
        Duration::from_secs(20),
        || async { (offers().await? == vec![ids[1 - victim].clone()]).then_some(()) },
    )
    .await;

    // Restarted on its data dir: everything it counted is there.
    let api = support::free_port();
    let _restarted = support::node_process(dirs[victim].path(), api, &args);
    let after = wait_for(
        "the restarted supplier's sessions",
        Duration::from_secs(60),
        || async { receipts(api).await },
    )
    .await;
    assert!(
        after >= counted,
        "{after} receipts after restart, {counted} before SIGTERM"
    );
    gateway.shutdown().await;
    boot.shutdown().await;
}

/// A gateway process gets SIGTERM while it streams two long answers, one to an
/// OpenAI client (SSE) and one to an Ollama client (NDJSON): each ends, within the
/// grace period, with its whole answer or an error event saying the node is stopping,
/// never a hang or a bare cut; the gateway exits cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_stopped_mid_answer_ends_its_streams_cleanly() {
    const MESH: &str = "shutdown-gateway-tests";
    let boot = support::bootstrap(MESH).await;
    let boot_addr = address(&boot, "quic").await.to_string();
    let dir = tempfile::tempdir().unwrap();
    let backend = support::smollm(2, 0);
    let supplier = support::mesh_supplier(
        MESH,
        &boot_addr.parse().unwrap(),
        vec![backend as relaymesh_node::backend::SharedBackend],
    )
    .await;
    let api = support::free_port();
    let mut gateway = support::node_process(
        dir.path(),
        api,
        &["--light", "--mesh", MESH, "--bootstrap", &boot_addr],
    );
    wait_for(
        "the supplier's ad at the gateway",
        Duration::from_secs(60),
        || async {
            let models = status_of(api, "/relaymesh/v1/models").await?;
            (!models.as_array()?.is_empty()).then_some(())
        },
    )
    .await;
    let client = reqwest::Client::new();
    let long = "Count from one to two hundred in words, one number per line.";
    let mut sse = client
        .post(format!("http://127.0.0.1:{api}/v1/chat/completions"))
        .json(&json!({
            "model": "smollm2", "max_tokens": 2000, "stream": true,
            "messages": [{ "role": "user", "content": long }],
        }))
        .send()
        .await
        .unwrap();
    let ndjson = client
        .post(format!("http://127.0.0.1:{api}/api/chat"))
        .json(&json!({
            "model": "smollm2", "stream": true, "options": { "num_predict": 2000 },
            "messages": [{ "role": "user", "content": long }],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (sse.status().as_u16(), ndjson.status().as_u16()),
        (200, 200)
    );
    let (mut sse_body, ndjson_body) = (String::new(), String::new());
    while support::sse_chat_content(&sse_body).is_empty() {
        let chunk = sse.chunk().await.unwrap().expect("the stream goes on");
        sse_body.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let stopper = std::thread::spawn(move || terminate(&mut gateway));
    let read = |mut r: reqwest::Response, mut body: String| async move {
        tokio::time::timeout(Duration::from_secs(40), async {
            while let Ok(Some(chunk)) = r.chunk().await {
                body.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await
        .map(|()| body)
    };
    let (sse_body, ndjson_body) = futures::join!(read(sse, sse_body), read(ndjson, ndjson_body));
    let sse_body = sse_body.expect("the SSE stream hung after SIGTERM");
    let ndjson_body = ndjson_body.expect("the NDJSON stream hung after SIGTERM");
    let sse_ended = sse_body.contains("[DONE]")
        || (sse_body.contains("\"error\"") && sse_body.contains("shutting down"));
    assert!(sse_ended, "the SSE stream was cut: {sse_body}");
    let last = support::ndjson(&ndjson_body).pop().expect("NDJSON lines");
    let ndjson_ended = last["done"] == true
        || last["error"]
            .as_str()
            .is_some_and(|e| e.contains("shutting down"));
    assert!(ndjson_ended, "the NDJSON stream was cut: {last}");
    println!(
        "after SIGTERM: SSE {}, NDJSON {}",
        if sse_body.contains("[DONE]") {
            "finished"
        } else {
            "ended with an error event"
        },
        if last["done"] == true {
            "finished"
        } else {
            "ended with an error line"
        }
    );
    assert!(stopper.join().unwrap(), "the gateway exits cleanly");
    supplier.shutdown().await;
    boot.shutdown().await;
}

/// A node dropped without `shutdown` (an app that returns early, a test that panics)
/// stops at once: its listener and its API port are free again within seconds, and a
/// peer sees its connection go. Before, its tasks ran on detached until the runtime
/// ended, so the ports stayed taken.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_dropped_without_shutdown_stops_its_tasks() {
    let boot = support::bootstrap("dropped-node").await;
    let boot_addr = address(&boot, "tcp").await;
    let node = NodeBuilder::light()
        .mesh_name("dropped-node")
        .listen(vec![tcp()])
        .bootstrap(boot_addr)
        .api("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap();
    let listen = address(&node, "tcp").await;
    let port = listen
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .unwrap();
    let api = node.api_addr().unwrap();
    let peer = node.handle().peer_id().to_string();
    wait_for(
        "the bootstrap node to see it",
        Duration::from_secs(20),
        || async {
            let peers = boot.handle().peers().await.ok()?;
            peers.iter().any(|p| p.peer_id == peer).then_some(())
        },
    )
    .await;
    drop(node);
    wait_for("its ports to be free", Duration::from_secs(10), || async {
        let swarm = std::net::TcpListener::bind(("127.0.0.1", port)).ok()?;
        let http = std::net::TcpListener::bind(api).ok()?;
        drop((swarm, http));
        Some(())
    })
    .await;
    wait_for(
        "the bootstrap node to see it gone",
        Duration::from_secs(20),
        || async {
            let peers = boot.handle().peers().await.ok()?;
            (!peers.iter().any(|p| p.peer_id == peer)).then_some(())
        },
    )
    .await;
    boot.shutdown().await;
}
