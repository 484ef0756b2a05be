//! Relay mining end to end, on real swarms with the real model: a bootstrap node, two
//! suppliers serving SmolLM2 under a signed manifest (its Source earns a royalty), an
//! observer full node and a light gateway whose account holds genesis credit, in a mesh
//! with 5-second epochs and 10-second sessions. Suppliers claim their sessions when
//! they end, the gateway reveals, suppliers prove, and every node's ledger settles the
//! same claims.

mod support;

use std::time::Duration;

use relaymesh::NodeBuilder;
use relaymesh_node::settle::{balances, LedgerReport};
use relaymesh_protocol::params::{Allocation, MeshParams};
use relaymesh_protocol::{Keypair, Signer};
use serde_json::{json, Value};
use support::credit_mesh::{bootstrap, joined, now_ms, params, supplier};
use support::wait_for;

const ROYALTY_PPM: u32 = 100_000;
const CREDIT: u64 = 1_000_000_000_000;

/// The test model under a manifest signed by `source`, in `dir` (a link to the cached
/// file with the manifest beside it).
fn model_with_manifest(dir: &std::path::Path, source: &Keypair) -> std::path::PathBuf {
    let link = dir.join("smollm2.gguf");
    std::os::unix::fs::symlink(support::model_path(), &link).unwrap();
    relaymesh_node::backend::embedded::write_manifest(
        &link,
        "smollm2",
        "apache-2.0",
        ROYALTY_PPM,
        source,
    )
    .unwrap();
    link
}

/// A light gateway of mesh `p` with an API (its data in `dir`, if given), once it holds
/// the ads of `suppliers` suppliers of the test model, and the API's base URL.
async fn gateway_with_ads(
    p: &MeshParams,
    boot: &libp2p::Multiaddr,
    dir: Option<std::path::PathBuf>,
    suppliers: usize,
) -> (relaymesh::Node, String) {
    let mut b = joined(NodeBuilder::light(), p, boot).api("127.0.0.1:0".parse().unwrap());
    if let Some(dir) = dir {
        b = b.data_dir(dir);
    }
    let gateway = b.start().await.unwrap();
    wait_for("the suppliers' ads", Duration::from_secs(30), || async {
        let rows = gateway.handle().models().await.ok()?;
        (rows.iter().filter(|r| r.name == "smollm2").count() == suppliers).then_some(())
    })
    .await;
    let base = format!("http://{}", gateway.api_addr().unwrap());
    (gateway, base)
}

/// A bootstrap node, a supplier of `model` (its data in `dir`) and a light gateway
/// without a data dir that sees it, in mesh `p`; and the gateway's API base URL.
async fn one_supplier(
    p: &MeshParams,
    dir: &std::path::Path,
    model: &std::path::Path,
) -> (relaymesh::Node, relaymesh::Node, relaymesh::Node, String) {
    let (boot, boot_addr) = bootstrap(p, None).await;
    let s = supplier(p, &boot_addr, dir, model).await;
    let (gateway, base) = gateway_with_ads(p, &boot_addr, None, 1).await;
    (boot, s, gateway, base)
}

async fn ask(client: &reqwest::Client, base: &str, question: &str) -> reqwest::Response {
    client
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({
            "model": "smollm2", "temperature": 0, "max_tokens": 40,
            "messages": [{ "role": "user", "content": question }],
        }))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_ledger_settles_the_same_claims_and_credits_match_the_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    // The gateway's account is in genesis: its identity exists before the mesh does.
    let gateway_key = relaymesh_node::store::load_or_create_identity(&path("gateway"), || {
        Keypair::generate(&mut rand_core::OsRng)
    })
    .unwrap();
    let source = Keypair::from_secret([42; 32]);
    let p = params(
        "relay-mining-tests",
        vec![Allocation {
            account: gateway_key.public_key(),
            amount: CREDIT,
        }],
    );
    std::fs::create_dir_all(path("model")).unwrap();
    let model = model_with_manifest(&path("model"), &source);

    let (boot, boot_addr) = bootstrap(&p, Some(path("boot"))).await;
    let s1 = supplier(&p, &boot_addr, &path("s1"), &model).await;
    let s2 = supplier(&p, &boot_addr, &path("s2"), &model).await;
    let observer = joined(NodeBuilder::full(), &p, &boot_addr)
        .data_dir(path("observer"))
        .api("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap();
    let (gateway, base) = gateway_with_ads(&p, &boot_addr, Some(path("gateway")), 2).await;

    // Pairs of concurrent requests, so both suppliers (one slot each) work.
    let client = reqwest::Client::new();
    let mut served: std::collections::BTreeMap<String, u64> = Default::default();
    let questions = [
        "What is the capital of France?",
        "Name three colours.",
        "What is two plus two?",
        "Say hello in Spanish.",
        "What is the largest ocean?",
        "Name a planet.",
    ];
    for pair in questions.chunks(2) {
        let responses =
            futures::future::join_all(pair.iter().map(|q| ask(&client, &base, q))).await;
        for r in responses {
            assert_eq!(r.status(), 200);
            let supplier = r.headers()["x-relaymesh-supplier"]
                .to_str()
                .unwrap()
                .to_string();
            let body: Value = r.json().await.unwrap();
            let cu = body["usage"]["relaymesh"]["compute_units"]
                .as_u64()
                .unwrap();
            *served.entry(supplier).or_default() += cu;
        }
    }

    // Sessions end (10 s), are claimed (5 s later), revealed, proven and settled on
    // every node.
    let nodes = [&boot, &s1, &s2, &observer, &gateway];
    let settled = |n: &relaymesh::Node| n.settlement().report(now_ms());
    let reports: Vec<LedgerReport> = wait_for(
        "every claim settled on every node",
        Duration::from_secs(120),
        || async {
            for s in [&s1, &s2] {
                let sessions = s.settlement().miner().unwrap().claimable().ok()?;
                if sessions.iter().any(|c| c.claimed_ms.is_none()) {
                    return None;
                }
            }
            let reports: Vec<LedgerReport> = nodes.iter().map(|n| settled(n)).collect();
            let all_settled = reports
                .iter()
                .all(|r| r.claims_pending == 0 && r.claims_settled == reports[0].claims_settled);
            let agree = reports.iter().all(|r| balances(r) == balances(&reports[0]));
            (all_settled && agree && reports[0].claims_settled > 0).then_some(reports)
        },
    )
    .await;
    println!(
        "{} claims settled on all {} nodes",
        reports[0].claims_settled,
        nodes.len()
    );

    // Credits equal debits: the total is genesis, what the gateway spent is what the
    // suppliers and the Source earned.
    let r = &reports[0];
    assert_eq!(r.total_balance, u128::from(CREDIT));
    let account = |k: &Keypair| observer.settlement().account(&k.public_key());
    let spent = account(&gateway_key).spent;
    let earned: u128 = [s1.key(), s2.key(), &source]
        .iter()
        .map(|k| account(k).earned)
        .sum();
    assert_eq!(spent, earned);

    // The Source gets exactly its royalty share of every settled claim.
    let claims = observer.settlement().claims();
    let royalty: u128 = claims
        .iter()
        .map(|c| c.value * u128::from(ROYALTY_PPM) / 1_000_000)
        .sum();
    assert!(claims.iter().all(|c| c.royalty_ppm == Some(ROYALTY_PPM)));
    assert_eq!(account(&source).earned, royalty);

    // Each supplier's credited CUs are within the bound τ implies of what it served.
    for s in [&s1, &s2] {
        let id = s.handle().peer_id().to_string();
        let served = served.get(&id).copied().unwrap_or(0);
        let credited: u64 = claims
            .iter()
            .filter(|c| c.supplier == id)
            .map(|c| c.sum)
            .sum();
        let tau_max = s
            .settlement()
            .miner()
            .unwrap()
            .claimable()
            .unwrap()
            .iter()
            .map(|c| c.terms.body.tau)
            .max()
            .unwrap_or(p.tau_min);
        // Threshold mining's standard deviation is √Σ w(τ−w) ≤ √(τ·served).
        let sigma = ((tau_max * served) as f64).sqrt();
        let error = credited as f64 - served as f64;
        println!(
            "supplier {id}: served {served} CU, credited {credited} CU, error {:+.1}% (σ bound {sigma:.0} CU)",
            if served > 0 { 100.0 * error / served as f64 } else { 0.0 }
        );
        assert!(error.abs() <= 5.0 * sigma + 1.0, "outside 5σ");
    }

    // The API and the metrics show it.
    let api = observer.api_addr().unwrap();
    let ledger = support::get_json(&format!("http://{api}/relaymesh/v1/ledger"))
        .await
        .unwrap();
    assert_eq!(ledger["claims_settled"], r.claims_settled);
    assert_eq!(ledger["credit_enforced"], true);
    let metrics = client
        .get(format!("http://{api}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("relaymesh_ledger_messages_total{kind=\"claim\",outcome=\"new\"}"));
    // Each peer's clock, as heard in anti-entropy (one machine: within a second).
    let peers = support::get_json(&format!("http://{api}/relaymesh/v1/peers"))
        .await
        .unwrap();
    let offsets: Vec<i64> = peers
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|row| row["clock_offset_ms"].as_i64())
        .collect();
    assert!(
        !offsets.is_empty() && offsets.iter().all(|o| o.abs() < 1_000),
        "{peers}"
    );

    // The observer restarts on its data dir with the same ledger; a node that was not
    // there at all (as if cut off until now) catches up by anti-entropy.
    let before = balances(&observer.settlement().report(now_ms()));
    observer.shutdown().await;
    let observer = wait_for(
        "the observer's data dir",
        Duration::from_secs(10),
        || async {
            joined(NodeBuilder::full(), &p, &boot_addr)
                .data_dir(path("observer"))
                .start()
                .await
                .ok()
        },
    )
    .await;
    assert_eq!(balances(&observer.settlement().report(now_ms())), before);
    let late = joined(NodeBuilder::full(), &p, &boot_addr)
        .data_dir(path("late"))
        .start()
        .await
        .unwrap();
    wait_for(
        "the late node's ledger",
        Duration::from_secs(60),
        || async {
            let r = late.settlement().report(now_ms());
            (balances(&r) == before && r.claims_settled == reports[0].claims_settled).then_some(())
        },
    )
    .await;

    for n in [late, gateway, observer, s1, s2, boot] {
        n.shutdown().await;
    }
}

/// Garbage and forged ledger messages on gossip are dropped and counted by the nodes
/// that receive them, the sender's score falls, and nothing moves.
#[tokio::test(flavor = "multi_thread")]
async fn invalid_ledger_gossip_is_dropped_and_counted() {
    let p = params("relay-mining-gossip-tests", Vec::new());
    let (boot, boot_addr) = bootstrap(&p, None).await;
    let node = || joined(NodeBuilder::full(), &p, &boot_addr).start();
    let (a, b) = (node().await.unwrap(), node().await.unwrap());
    // A transfer signed by someone other than its payer, then garbage.
    let (payer, thief) = (Keypair::from_secret([8; 32]), Keypair::from_secret([9; 32]));
    let forged = |nonce: u64| {
        let transfer = relaymesh_protocol::identity::signed::Signed::sign(
            relaymesh_protocol::messages::transfer::Transfer {
                version: relaymesh_protocol::PROTOCOL_VERSION,
                mesh_id: p.mesh_id(),
                from: payer.public_key(),
                to: thief.public_key(),
                amount: 1_000,
                epoch: p.epoch_of(now_ms()),
                slot_start: nonce,
            },
            &thief,
        );
        relaymesh_protocol::WireMessage::encode(
            &relaymesh_protocol::messages::ledger::LedgerMessage::new(
                relaymesh_protocol::messages::ledger::LedgerBody::Transfer(transfer),
            ),
        )
        .unwrap()
    };
    // b must hear a directly: the bootstrap node drops what it refuses.
    let sender = a.handle().peer_id().to_string();
    wait_for("a and b connected", Duration::from_secs(30), || async {
        let peers = b.handle().peers().await.ok()?;
        peers.iter().any(|r| r.peer_id == sender).then_some(())
    })
    .await;
    let rejected = |n: &relaymesh::Node, reason: &str| {
        n.metrics()
            .ledger_rejections
            .get_or_create(&relaymesh_node::metrics::ReasonLabel {
                reason: reason.into(),
            })
            .get()
    };
    wait_for(
        "the forged transfer and the garbage refused by the others",
        Duration::from_secs(30),
        || async {
            // Publishing repeats until the gossip mesh has formed (the same bytes are
            // deduplicated, so each attempt sends new ones).
            let _ = a.handle().publish_ledger(forged(now_ms())).await;
            let _ = a
                .handle()
                .publish_ledger(format!("garbage {}", now_ms()).into_bytes())
                .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let seen = [&b, &boot]
                .iter()
                .all(|n| rejected(n, "bad-transfer") >= 1 && rejected(n, "malformed") >= 1);
            seen.then_some(())
        },
    )
    .await;
    // The sender's gossip score falls at the bootstrap node, which it is connected to.
    wait_for(
        "the sender's score below zero",
        Duration::from_secs(10),
        || async {
            // More garbage, in case the first has decayed away already.
            let _ = a
                .handle()
                .publish_ledger(format!("garbage {}", now_ms()).into_bytes())
                .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let peers = boot.handle().peers().await.ok()?;
            let row = peers.into_iter().find(|r| r.peer_id == sender)?;
            (row.gossip_score? < 0.0).then_some(())
        },
    )
    .await;
    // Nothing moved.
    assert_eq!(b.settlement().account(&thief.public_key()).balance, 0);
    assert!(b.settlement().claims().is_empty());
    for n in [a, b, boot] {
        n.shutdown().await;
    }
}

/// An app without credit is refused by every supplier, and the gateway says why (402).
#[tokio::test(flavor = "multi_thread")]
async fn an_app_without_credit_gets_a_clear_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let someone_else = Keypair::from_secret([7; 32]);
    let p = params(
        "relay-mining-credit-tests",
        vec![Allocation {
            account: someone_else.public_key(),
            amount: CREDIT,
        }],
    );
    std::fs::create_dir_all(dir.path().join("model")).unwrap();
    let model = model_with_manifest(&dir.path().join("model"), &someone_else);
    let (boot, s, gateway, base) = one_supplier(&p, &dir.path().join("s"), &model).await;
    let r = ask(&reqwest::Client::new(), &base, "Hello?").await;
    assert_eq!(r.status(), 402);
    let body: Value = r.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("insufficient credit"), "{message}");
    for n in [gateway, s, boot] {
        n.shutdown().await;
    }
}

/// A supplier killed with SIGKILL after mining and before claiming makes its claim
/// after restart, and it settles.
#[tokio::test(flavor = "multi_thread")]
async fn a_supplier_killed_between_mining_and_claiming_claims_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    // No genesis: no credit to enforce, claims still settle and record the work.
    let mut p = params("relay-mining-sigkill-tests", Vec::new());
    // Every ack (about 250 CUs) is mined at the default floor: one request is enough.
    p.tau_min = 64;
    let mesh_file = dir.path().join("mesh.toml");
    std::fs::write(
        &mesh_file,
        relaymesh_node::config::MeshFile::from_params(&p).to_toml(),
    )
    .unwrap();
    let (boot, boot_addr) = bootstrap(&p, None).await;
    let boot_addr = boot_addr.to_string();
    let data = dir.path().join("supplier");
    let serve = format!("smollm2=gguf:{}", support::model_path().display());
    let args = [
        "--bootstrap",
        &boot_addr,
        "--serve",
        &serve,
        "--mesh-file",
        mesh_file.to_str().unwrap(),
    ];
    let api = support::free_port();
    let mut supplier = support::node_process(&data, api, &args);
    let gateway = joined(NodeBuilder::light(), &p, &boot_addr.parse().unwrap())
        .data_dir(dir.path().join("gateway"))
        .api("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap();
    wait_for("the supplier's ad", Duration::from_secs(60), || async {
        (!gateway.handle().offers("smollm2").await.ok()?.is_empty()).then_some(())
    })
    .await;
    let base = format!("http://{}", gateway.api_addr().unwrap());
    let r = ask(
        &reqwest::Client::new(),
        &base,
        "What is the capital of France?",
    )
    .await;
    assert_eq!(r.status(), 200);
    let supplier_id = r.headers()["x-relaymesh-supplier"]
        .to_str()
        .unwrap()
        .to_string();
    let sessions_url = format!("http://127.0.0.1:{api}/relaymesh/v1/sessions");
    wait_for("mined receipts", Duration::from_secs(10), || async {
        let v: Value = reqwest::get(&sessions_url).await.ok()?.json().await.ok()?;
        (v["sessions"][0]["mined"].as_u64()? > 0).then_some(())
    })
    .await;
    // Durable (older than the commit interval), not yet claimed: killed.
    tokio::time::sleep(Duration::from_millis(
        3 * relaymesh_node::store::COMMIT_INTERVAL_MS,
    ))
    .await;
    assert_eq!(gateway.settlement().report(now_ms()).claims_pending, 0);
    supplier.0.kill().unwrap();
    supplier.0.wait().unwrap();

    let api = support::free_port();
    let _restarted = support::node_process(&data, api, &args);
    let claims_url = format!("http://127.0.0.1:{api}/relaymesh/v1/claims");
    wait_for(
        "the restarted supplier's claim settled at the gateway and at the supplier",
        Duration::from_secs(90),
        || async {
            let at_gateway = gateway
                .settlement()
                .claims()
                .into_iter()
                .any(|c| c.supplier == supplier_id && c.status == "settled");
            let v: Value = reqwest::get(&claims_url).await.ok()?.json().await.ok()?;
            let at_supplier = v["claims"]
                .as_array()?
                .iter()
                .any(|c| c["status"] == "settled");
            (at_gateway && at_supplier).then_some(())
        },
    )
    .await;
    let report = gateway.settlement().report(now_ms());
    assert_eq!((report.claims_settled, report.claims_void), (1, 0));
    gateway.shutdown().await;
    boot.shutdown().await;
}

/// A light gateway without a data dir reveals its sessions' secrets like any other
/// app. Found in review (issue 20): it kept its sessions nowhere, never revealed, and
/// every claim on its sessions settled by the supplier's full reveal; failed before:
/// the settled claim was not revealed. The supplier has no data dir either, and mines
/// and claims what it served all the same (before: no claim ever came).
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_and_a_supplier_without_data_dirs_settle_their_sessions() {
    // No genesis: no credit to enforce; every ack is mined, so one request is a claim.
    let mut p = params("relay-mining-dataless-tests", Vec::new());
    p.tau_min = 64;
    let (boot, boot_addr) = bootstrap(&p, None).await;
    // An embedded supplier without a data dir mines and claims in its temporary
    // database (before, it only counted its receipts, and nothing was ever claimed).
    let s = joined(NodeBuilder::full(), &p, &boot_addr)
        .serve(support::smollm(1, 4), 1)
        .unwrap()
        .start()
        .await
        .unwrap();
    assert!(s.data_dir().is_none());
    let (gateway, base) = gateway_with_ads(&p, &boot_addr, None, 1).await;
    let r = ask(
        &reqwest::Client::new(),
        &base,
        "What is the capital of France?",
    )
    .await;
    assert_eq!(r.status(), 200);
    let claim = wait_for(
        "the claim settled at the gateway",
        Duration::from_secs(90),
        || async {
            gateway
                .settlement()
                .claims()
                .into_iter()
                .find(|c| c.status == "settled")
        },
    )
    .await;
    assert!(
        claim.revealed,
        "settled without the app's reveal: {claim:?}"
    );
    for n in [gateway, s, boot] {
        n.shutdown().await;
    }
}

/// A session whose claim is nearly full (nine tenths of `max_claim_leaves`) is not
/// resumed: the gateway opens a new one, so work is not served beyond what a claim can
/// hold.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_whose_claim_is_nearly_full_gives_way_to_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = params("relay-mining-full-tests", Vec::new());
    // Every ack (about 250 CUs) is mined, a claim holds one leaf (a short answer is one
    // ack), and the sessions outlast the test (an ended session would also make way for
    // a new one).
    p.tau_min = 64;
    p.max_claim_leaves = 1;
    p.max_session_ms = 600_000;
    let (boot, s, gateway, base) =
        one_supplier(&p, &dir.path().join("s"), &support::model_path()).await;
    let client = reqwest::Client::new();
    let miner = relaymesh_node::mining::Miner::new(
        s.data_dir().unwrap().db().open_tree("mining").unwrap(),
        &p,
    );
    // Leaves mined per session, as the running supplier committed them (every 250 ms).
    let mined = || -> Vec<u64> {
        let sessions = miner.sessions().unwrap();
        sessions.iter().map(|r| r.counters.mined).collect()
    };
    // Until `leaves` leaves are committed, or 10 s.
    let committed = |leaves: u64| {
        tokio::time::timeout(Duration::from_secs(10), async move {
            while mined().iter().sum::<u64>() < leaves {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    for (i, question) in ["What is the capital of France?", "Name a colour."]
        .iter()
        .enumerate()
    {
        let r = ask(&client, &base, question).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        // The supplier mines an answer's last ack after the answer is out (acks are
        // verified in batches): the next request is sent once it counts.
        let _ = committed(i as u64 + 1).await;
    }
    let mined = mined();
    println!("mined leaves per session: {mined:?}");
    assert_eq!(mined.len(), 2, "one session per request: {mined:?}");
    assert_eq!(mined, [1, 1]);
    drop(miner);
    for n in [gateway, s, boot] {
        n.shutdown().await;
    }
}
