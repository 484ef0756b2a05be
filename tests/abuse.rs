//! Hostile peers against a supplier, each attack ending with the supplier still serving
//! an honest gateway: a request flood from one app, a thousand connections from one
//! peer, forty peer ids from one address, silent streams from one peer, oversized frames, prompts
//! and bodies over a node's size limits, and random bytes to every listening port (QUIC,
//! TCP, HTTP).
//! What each limit cut off is counted in the supplier's `/metrics`
//! (`relaymesh_limited_total{reason=…}`). Real swarms on loopback, SmolLM2 served.

mod support;

use std::time::Duration;

use futures::{AsyncWriteExt, StreamExt};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use relaymesh::NodeBuilder;
use relaymesh_node::backend::{Models, ServedModel, SharedBackend};
use serde_json::{json, Value};
use support::{address, quic, tcp, wait_for};

/// The attacked mesh: a bootstrap node, a supplier of SmolLM2 with an API (for its
/// metrics), an honest light gateway that sees it, and the attacker's light node.
struct Mesh {
    supplier: relaymesh::Node,
    gateway: relaymesh::Node,
    attacker: relaymesh::Node,
    boot: relaymesh::Node,
    mesh: String,
}

impl Mesh {
    async fn start(mesh: &str) -> Mesh {
        Self::start_with(mesh, |_| ()).await
    }

    /// As [`Mesh::start`], with the supplier's configuration changed by `tweak`.
    async fn start_with(mesh: &str, tweak: impl FnOnce(&mut relaymesh::NodeConfig)) -> Mesh {
        let boot = support::bootstrap(mesh).await;
        let boot_addr = address(&boot, "quic").await;
        let mut models = Models::default();
        models
            .insert(ServedModel::new(support::smollm(1, 4) as SharedBackend, 1))
            .unwrap();
        let mut b = NodeBuilder::full()
            .mesh_name(mesh)
            .listen(vec![quic(), tcp()])
            .bootstrap(boot_addr.clone())
            .api("127.0.0.1:0".parse().unwrap());
        b.config_mut().models = std::sync::Arc::new(models);
        tweak(b.config_mut());
        let supplier = b.start().await.unwrap();
        let gateway = support::mesh_gateway(mesh, &boot_addr).await;
        let attacker = NodeBuilder::light()
            .mesh_name(mesh)
            .listen(vec![quic(), tcp()])
            .bootstrap(boot_addr)
            .start()
            .await
            .unwrap();
        for node in [&gateway, &attacker] {
            wait_for_ad(node).await;
        }
        Mesh {
            supplier,
            gateway,
            attacker,
            boot,
            mesh: mesh.to_owned(),
        }
    }

    /// Asserts that the honest gateway is answered by the supplier.
    async fn serves_honest_requests(&self, after: &str) {
        let (status, body) = ask(&self.gateway).await;
        assert_eq!(
            status, 200,
            "after {after}, the honest request failed: {body}"
        );
    }

    /// The supplier's `/metrics`.
    async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", support::base_url(&self.supplier)))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// What the supplier's `relaymesh_limited_total{reason}` says.
    async fn limited(&self, reason: &str) -> u64 {
        self.counter(&format!("relaymesh_limited_total{{reason=\"{reason}\"}}"))
            .await
    }

    /// The supplier's counter `name{labels}` (0 if absent).
    async fn counter(&self, series: &str) -> u64 {
        support::counter(&self.metrics().await, series)
    }

    /// The attacker's way to the supplier's inference protocol: the supplier's peer
    /// id, located by the attacker, and the protocol.
    async fn infer_target(&self) -> (PeerId, libp2p::StreamProtocol) {
        let params = relaymesh_node::config::named_mesh(&self.mesh);
        let protocol = relaymesh_node::mesh::names::infer_protocol(&params.mesh_id());
        let supplier = self.supplier.handle().peer_id();
        self.attacker.handle().locate(supplier).await.unwrap();
        (supplier, protocol)
    }

    async fn stop(self) {
        for node in [self.attacker, self.gateway, self.supplier, self.boot] {
            node.shutdown().await;
        }
    }
}

/// Waits (at most a minute) until `node` holds the supplier's ad for SmolLM2.
async fn wait_for_ad(node: &relaymesh::Node) {
    wait_for("the supplier's ad", Duration::from_secs(60), || async {
        let offers = node.handle().offers("smollm2").await.ok()?;
        (!offers.is_empty()).then_some(())
    })
    .await;
}

/// A short question to `gateway`'s API: the status and the body.
async fn ask(gateway: &relaymesh::Node) -> (reqwest::StatusCode, String) {
    let r = reqwest::Client::new()
        .post(format!(
            "{}/v1/chat/completions",
            support::base_url(gateway)
        ))
        .json(&json!({
            "model": "smollm2", "temperature": 0, "max_tokens": 6,
            "messages": [{ "role": "user", "content": "What is the capital of France?" }],
        }))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

/// One app floods the supplier through its own gateway: 24 requests at once, each
/// asked again as soon as it ends. The honest gateway's requests are answered while the
/// flood goes on (an app holding every slot leaves a spare place to another, and the
/// engine gives each app its turn: `tests/engine.rs`), and after it.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_flood_from_one_app_leaves_the_supplier_serving_others() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let mesh = Mesh::start("abuse-flood-tests").await;
    let boot_addr = address(&mesh.boot, "quic").await;
    let flooder = support::mesh_gateway(&mesh.mesh, &boot_addr).await;
    wait_for_ad(&flooder).await;
    let url = format!("{}/v1/chat/completions", support::base_url(&flooder));
    let (stop, answered, in_flight) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let flood: Vec<_> = (0..24)
        .map(|i| {
            let (url, stop) = (url.clone(), stop.clone());
            let (answered, in_flight) = (answered.clone(), in_flight.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    in_flight.fetch_add(1, Ordering::SeqCst);
                    let r = client
                        .post(&url)
                        .json(&json!({
                            "model": "smollm2", "max_tokens": 32,
                            "messages": [{ "role": "user", "content": format!("Count from {i}.") }],
                        }))
                        .send()
                        .await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    if r.is_ok_and(|r| r.status() == 200) {
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    wait_for(
        "the flood to be served",
        Duration::from_secs(120),
        || async { (answered.load(Ordering::SeqCst) > 0).then_some(()) },
    )
    .await;
    for _ in 0..2 {
        mesh.serves_honest_requests("while another app floods")
            .await;
    }
    assert!(
        in_flight.load(Ordering::SeqCst) > 0,
        "the flood went on meanwhile"
    );
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        f.await.unwrap();
    }
    mesh.serves_honest_requests("a flood from another app")
        .await;
    flooder.shutdown().await;
    mesh.stop().await;
}

/// One peer dials the supplier a thousand times over QUIC, keeping every connection
/// it gets: the supplier never holds more than four of them at once (its
/// `connections_per_peer`), refuses the rest (counted), and serves the gateway
/// meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_connections_from_one_peer_leave_the_supplier_serving() {
    let mesh = Mesh::start("abuse-connections").await;
    let target = address(&mesh.supplier, "quic").await;
    let supplier_id = mesh.supplier.handle().peer_id();
    let key = libp2p::identity::Keypair::generate_ed25519();
    let flooder = key.public().to_peer_id().to_string();
    let flood = tokio::spawn(async move {
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_quic()
            .with_behaviour(|_| libp2p::swarm::dummy::Behaviour)
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
            .build();
        for _ in 0..1000 {
            swarm
                .dial(
                    DialOpts::peer_id(supplier_id)
                        .addresses(vec![target.clone()])
                        .condition(PeerCondition::Always)
                        .build(),
                )
                .unwrap();
        }
        // Keep every connection given for a while: the gateway asks meanwhile.
        let until = tokio::time::Instant::now() + Duration::from_secs(15);
        let mut established = 0;
        while let Ok(Some(event)) = tokio::time::timeout_at(until, swarm.next()).await {
            if let SwarmEvent::ConnectionEstablished { .. } = event {
                established += 1;
            }
        }
        established
    });
    // The flooder's connections as the supplier counts them (other peers' come and go
    // as the mesh works: the gateway's, the DHT's).
    let sampling = async {
        let mut most = 0;
        for _ in 0..100 {
            let peers = mesh.supplier.handle().peers().await.unwrap();
            let held = peers
                .iter()
                .find(|p| p.peer_id == flooder)
                .map_or(0, |p| p.addresses.len());
            most = most.max(held);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        most
    };
    let (most, ()) = tokio::join!(
        sampling,
        mesh.serves_honest_requests("a thousand connections from one peer")
    );
    let established = flood.await.unwrap();
    let limited = mesh.limited("connections").await;
    eprintln!(
        "the flooder held at most {most} connections at the supplier; it saw {established} \
         established; {limited} refused"
    );
    assert!(
        most > 0,
        "the flood never got a connection: the test measures nothing"
    );
    assert!(most <= 4, "{most} connections of one peer at the supplier");
    assert!(limited > 0, "the refused connections are counted");
    mesh.stop().await;
}

/// Peer ids cost nothing: one machine makes forty and dials the supplier with each
/// from 127.0.0.2, dialling again whenever a connection ends. The supplier (24
/// connections in all here) lets at most `connections_per_ip` (8) of them in and
/// counts the rest, and a gateway that joins during the flood gets a connection and an
/// answer. Failed without the per-address limit: the forty held 20 of the supplier's
/// 24 connections (at the default 256, a machine's peer ids could hold them all).
#[tokio::test(flavor = "multi_thread")]
async fn peer_ids_from_one_address_leave_room_for_newcomers() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let mesh = Mesh::start_with("abuse-per-ip", |c| {
        c.max_connections = 24;
        c.limits.set("connections_per_ip", 8).unwrap();
    })
    .await;
    let target = address(&mesh.supplier, "quic").await;
    let supplier_id = mesh.supplier.handle().peer_id();
    let stop = Arc::new(AtomicBool::new(false));
    let flood: Vec<_> = (0..40)
        .map(|_| {
            tokio::spawn(support::redialling_peer(
                supplier_id,
                target.clone(),
                Some("/ip4/127.0.0.2/udp/0/quic-v1".parse().unwrap()),
                stop.clone(),
            ))
        })
        .collect();
    let flooders = || async {
        let peers = mesh.supplier.handle().peers().await.unwrap();
        peers
            .iter()
            .filter(|p| p.addresses.iter().any(|a| a.contains("/127.0.0.2/")))
            .count()
    };
    // The flood is at the bound: it holds connections and has been refused some. (It
    // need not hold all 8 at one moment: its handshakes in progress count too, and on
    // a busy machine some always are.) Without the limit nothing is refused, and the
    // wait fails.
    let mut most = wait_for(
        "the flood to hold connections and be refused more",
        Duration::from_secs(60),
        || async {
            let held = flooders().await;
            (held >= 4 && mesh.limited("connections_per_ip").await > 0).then_some(held)
        },
    )
    .await;
    for _ in 0..40 {
        most = most.max(flooders().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A newcomer joins while the flood goes on, and is served.
    let boot_addr = address(&mesh.boot, "quic").await;
    let newcomer = support::mesh_gateway(&mesh.mesh, &boot_addr).await;
    wait_for_ad(&newcomer).await;
    let (status, body) = ask(&newcomer).await;
    most = most.max(flooders().await);
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        f.await.unwrap();
    }
    let refused = mesh.limited("connections_per_ip").await;
    eprintln!(
        "peer ids from 127.0.0.2 held at most {most} connections at the supplier; {refused} refused"
    );
    assert_eq!(status, 200, "the newcomer was not served: {body}");
    assert!(most <= 8, "{most} connections from one address");
    assert!(refused > 0, "the refused connections are counted");
    newcomer.shutdown().await;
    mesh.stop().await;
}

/// One peer opens a hundred inference streams and sends nothing on them (each would be
/// held for the 30 s frame timeout): it is given eight, for 3 s, and the supplier's other
/// streams stay free for the gateway. Failed without the per-peer limit: the attacker
/// held all 64 of the supplier's streams and the gateway's stream was dropped.
#[tokio::test(flavor = "multi_thread")]
async fn silent_streams_from_one_peer_do_not_take_every_stream() {
    let mesh = Mesh::start("abuse-streams").await;
    let (supplier_id, protocol) = mesh.infer_target().await;
    let mut control = mesh.attacker.handle().streams();
    let mut held = Vec::new();
    for _ in 0..100 {
        match control.open_stream(supplier_id, protocol.clone()).await {
            Ok(stream) => held.push(stream),
            Err(e) => panic!("opening a stream: {e}"),
        }
    }
    // The streams reached the supplier: those it did not keep were counted (at least
    // the 36 beyond its 64, with or without a per-peer limit).
    wait_for(
        "the supplier dropping the streams it does not keep",
        Duration::from_secs(30),
        || async {
            let dropped = mesh.limited("streams_per_peer").await
                + mesh.limited("streams_unstarted").await
                + mesh.limited("streams_total").await;
            (dropped >= 30).then_some(())
        },
    )
    .await;
    mesh.serves_honest_requests("a hundred silent streams from one peer")
        .await;
    let per_peer = mesh.limited("streams_per_peer").await + mesh.limited("streams_unstarted").await;
    assert!(
        per_peer >= 50,
        "{per_peer} streams refused beyond the peer's 8 silent ones"
    );
    drop(held);
    mesh.stop().await;
}

/// Four peer ids open sixteen inference streams each and never send a whole frame.
/// Failed before a stream's first frame had its own deadline and a per-peer quota: the
/// four held all 64 of the supplier's streams for the 30 s frame timeout, and the
/// gateway's stream was dropped at accept ("connection is closed"). Now each keeps at
/// most eight, for 3 s.
#[tokio::test(flavor = "multi_thread")]
async fn silent_streams_from_four_peers_do_not_shut_the_supplier() {
    let mesh = Mesh::start("abuse-four-peers").await;
    let (supplier_id, protocol) = mesh.infer_target().await;
    let boot_addr = address(&mesh.boot, "quic").await;
    let mut others = Vec::new();
    for _ in 0..3 {
        let node = NodeBuilder::light()
            .mesh_name(&mesh.mesh)
            .listen(vec![quic()])
            .bootstrap(boot_addr.clone())
            .start()
            .await
            .unwrap();
        node.handle().locate(supplier_id).await.unwrap();
        others.push(node);
    }
    let mut held = Vec::new();
    for node in std::iter::once(&mesh.attacker).chain(&others) {
        let mut control = node.handle().streams();
        for _ in 0..16 {
            match control.open_stream(supplier_id, protocol.clone()).await {
                // One byte of a frame's length, so the protocol is negotiated and the
                // supplier sees the stream: the frame never comes.
                // (The supplier may refuse it at once.)
                Ok(mut stream) => {
                    let _ = stream.write_all(&[0]).await;
                    let _ = stream.flush().await;
                    held.push(stream);
                }
                Err(e) => panic!("opening a stream: {e}"),
            }
        }
    }
    mesh.serves_honest_requests("sixteen silent streams from each of four peers")
        .await;
    drop(held);
    for node in others {
        node.shutdown().await;
    }
    mesh.stop().await;
}

/// Oversized frames on inference streams, and random bytes to the supplier's QUIC and
/// TCP ports and to the gateway's HTTP API: each is refused, and the supplier serves on.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_frames_and_random_bytes_are_refused() {
    let mesh = Mesh::start("abuse-bytes").await;
    let (supplier_id, protocol) = mesh.infer_target().await;
    let mut control = mesh.attacker.handle().streams();
    // One at a time: a peer's streams beyond eight not yet started are refused (and
    // reset) before they are read, which is another limit.
    for i in 1..=10 {
        let mut stream = control
            .open_stream(supplier_id, protocol.clone())
            .await
            .unwrap();
        // A length far over the frame limit, then bytes that never end. The supplier
        // may reset the stream as soon as it reads the length.
        let _ = stream.write_all(&u32::MAX.to_be_bytes()).await;
        let _ = stream.write_all(&[0xa5; 4096]).await;
        let _ = stream.close().await;
        wait_for(
            "the oversized frame counted",
            Duration::from_secs(30),
            || async { (mesh.limited("frame_size").await >= i).then_some(()) },
        )
        .await;
    }

    let mut noise = vec![0u8; 64 * 1024];
    for (i, b) in noise.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    let port = |addr: &Multiaddr| {
        addr.iter()
            .find_map(|p| match p {
                libp2p::multiaddr::Protocol::Udp(p) | libp2p::multiaddr::Protocol::Tcp(p) => {
                    Some(p)
                }
                _ => None,
            })
            .unwrap()
    };
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let quic_port = port(&address(&mesh.supplier, "quic").await);
    for chunk in noise.chunks(1200) {
        udp.send_to(chunk, ("127.0.0.1", quic_port)).await.unwrap();
    }
    let tcp_port = port(&address(&mesh.supplier, "tcp").await);
    let api = mesh.gateway.api_addr().unwrap();
    for target in [std::net::SocketAddr::from(([127, 0, 0, 1], tcp_port)), api] {
        for _ in 0..20 {
            use tokio::io::AsyncWriteExt as _;
            if let Ok(mut c) = tokio::net::TcpStream::connect(target).await {
                let _ = c.write_all(&noise).await;
            }
        }
    }
    // A JSON body of the wrong shape gets a JSON error, not a dropped connection.
    let r = reqwest::Client::new()
        .post(format!(
            "{}/v1/chat/completions",
            support::base_url(&mesh.gateway)
        ))
        .header("content-type", "application/json")
        .body(noise[..512].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().await.unwrap()["error"]["message"].is_string());
    mesh.serves_honest_requests("oversized frames and random bytes")
        .await;
    mesh.stop().await;
}

/// A client that trickles a request's headers, or opens connections and sends nothing,
/// is cut off after the header timeout; the API answers others meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn slow_http_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt as _};
    let node = support::serving_node(Vec::new(), None).await;
    let api = node.api_addr().unwrap();
    let mut slow = Vec::new();
    for i in 0..20 {
        let mut c = tokio::net::TcpStream::connect(api).await.unwrap();
        if i % 2 == 0 {
            c.write_all(b"GET /relaymesh/v1/status HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        slow.push(c);
    }
    let status = reqwest::get(format!("{}/relaymesh/v1/status", support::base_url(&node)))
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200, "answered while slow clients hold connections");
    let started = std::time::Instant::now();
    for mut c in slow {
        let mut buf = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(30), c.read(&mut buf))
            .await
            .expect("the server cut the slow client off");
        // Closed, or a 408 before closing: either way nothing more is served.
        if let Ok(n) = read {
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
        }
    }
    assert!(
        started.elapsed() >= relaymesh_node::api::HEADER_TIMEOUT - Duration::from_secs(2),
        "cut off by the timeout, not at once"
    );
    let metrics = reqwest::get(format!("{}/metrics", support::base_url(&node)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("relaymesh_limited_total{reason=\"http_header_timeout\"}"),
        "counted"
    );
    node.shutdown().await;
}

/// A supplier reads prompts up to its `prompt_bytes` and refuses a longer one with
/// the reason, which reaches the gateway's client; a node's API refuses a body over
/// its `http_body_bytes` with a JSON 413. Both are counted or said, and short
/// questions are still answered.
#[tokio::test(flavor = "multi_thread")]
async fn prompts_and_bodies_over_a_nodes_size_limits_are_refused_with_the_reason() {
    let mesh = Mesh::start_with("size-limit-tests", |c| {
        c.limits.set("prompt_bytes", 400).unwrap();
        c.limits.set("http_body_bytes", 4096).unwrap();
        assert!(c.limits.set("prompt_bytes", 1 << 30).is_err());
    })
    .await;
    // A session is held with the supplier first: refusing a prompt must not make the
    // gateway drop it and open another (found by review, with the refusal as `Terms`).
    mesh.serves_honest_requests("the start").await;
    let opens = || mesh.counter(r#"relaymesh_ledger_messages_total{kind="open",outcome="new"}"#);
    let opened = opens().await;
    assert!(opened >= 1, "the supplier counted no session opened");
    let long = "Tell me about France. ".repeat(40);
    let r = reqwest::Client::new()
        .post(format!(
            "{}/v1/chat/completions",
            support::base_url(&mesh.gateway)
        ))
        .json(&json!({
            "model": "smollm2", "max_tokens": 4,
            "messages": [{ "role": "user", "content": long }],
        }))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert!(
        status.is_client_error() || status.is_server_error(),
        "a prompt over the supplier's limit was answered: {body}"
    );
    assert!(
        body.contains("prompt_bytes"),
        "the refusal does not say which limit: {body}"
    );
    assert!(mesh.limited("prompt_bytes").await >= 1);
    mesh.serves_honest_requests("a prompt over the limit").await;
    assert_eq!(
        opens().await,
        opened,
        "the refusal cost the app a new session"
    );

    let r = reqwest::Client::new()
        .post(format!(
            "{}/v1/chat/completions",
            support::base_url(&mesh.supplier)
        ))
        .json(&json!({
            "model": "smollm2",
            "messages": [{ "role": "user", "content": "x".repeat(5000) }],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let error: Value = r.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("http_body_bytes")),
        "{error}"
    );
    mesh.stop().await;
}

/// The limits are settings: a node told to keep 3 API connections and wait 1 s for
/// headers refuses a fourth connection at once and cuts the silent three after a
/// second, counting both; then it answers again.
#[tokio::test(flavor = "multi_thread")]
async fn limits_are_settings_and_each_cut_off_is_counted() {
    let mut builder = NodeBuilder::full()
        .mesh_name("limit-settings-tests")
        .listen(vec![tcp()])
        .api("127.0.0.1:0".parse().unwrap());
    let limits = &mut builder.config_mut().limits;
    limits.set("http_connections", 3).unwrap();
    limits.set("http_header_timeout_secs", 1).unwrap();
    assert!(limits.set("http_connections", 0).is_err());
    assert!(limits.set("bogus", 1).unwrap_err().contains("queue_places"));
    let node = builder.start().await.unwrap();
    let api = node.api_addr().unwrap();
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tokio::net::TcpStream::connect(api).await.unwrap());
    }
    // The fourth is closed without an answer.
    use tokio::io::{AsyncReadExt, AsyncWriteExt as _};
    let mut fourth = tokio::net::TcpStream::connect(api).await.unwrap();
    let _ = fourth
        .write_all(b"GET /relaymesh/v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), fourth.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok() && answer.is_empty(),
        "the fourth connection was answered: {}",
        String::from_utf8_lossy(&answer)
    );
    // The silent three are cut off after the header timeout, and the API answers again.
    for mut c in silent {
        let mut rest = Vec::new();
        let cut = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest)).await;
        assert!(
            cut.is_ok(),
            "a silent client was kept past the header timeout"
        );
    }
    let url = format!("{}/metrics", support::base_url(&node));
    let metrics = reqwest::get(&url).await.unwrap().text().await.unwrap();
    for reason in ["http_connections", "http_header_timeout"] {
        assert!(
            metrics.contains(&format!("relaymesh_limited_total{{reason=\"{reason}\"}}")),
            "{reason} not counted"
        );
    }
    node.shutdown().await;
}
