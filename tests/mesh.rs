//! Multi-node tests of the mesh layer: real libp2p swarms on loopback.

mod support;

use std::time::Duration;

use relaymesh::NodeBuilder;
use relaymesh_protocol::identity::signed::Signed;
use relaymesh_protocol::messages::capability::CapabilityAd;
use relaymesh_protocol::{BoundedVec, Keypair, Signer, WireMessage};
use support::*;

const LONG: Duration = Duration::from_secs(60);

/// A valid ad of `model` from `key` in mesh `mesh_id`, issued now, for a minute.
fn signed_ad(
    key: &Keypair,
    mesh_id: relaymesh_protocol::Digest,
    seq: u64,
    model: &str,
) -> Signed<CapabilityAd> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    Signed::sign(
        CapabilityAd {
            version: relaymesh_protocol::PROTOCOL_VERSION,
            mesh_id,
            supplier: key.public_key(),
            seq,
            issued_ms: now,
            expires_ms: now + 60_000,
            models: BoundedVec::try_from_vec(vec![offer(model)]).unwrap(),
        },
        key,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_learns_every_ad_and_light_nodes_find_providers_in_the_dht() {
    let boot = bootstrap("t-six").await;
    let boot_addr = address(&boot, "quic").await;
    let mut suppliers = Vec::new();
    for i in 0..5 {
        suppliers.push(supplier("t-six", &boot_addr, &[&format!("model-{i}")], LONG).await);
    }
    let ids: Vec<String> = suppliers
        .iter()
        .map(|n| n.handle().peer_id().to_string())
        .collect();
    for node in suppliers.iter().chain([&boot]) {
        wait_for(
            "every ad at every node",
            Duration::from_secs(45),
            || async {
                let seen = seen(node).await;
                (0..5)
                    .all(|i| seen.contains(&(format!("model-{i}"), ids[i].clone())))
                    .then_some(())
            },
        )
        .await;
    }
    // QUIC is used when both sides have it.
    let peers = suppliers[0].handle().peers().await.unwrap();
    let to_boot = peers
        .iter()
        .find(|p| p.peer_id == boot.handle().peer_id().to_string())
        .unwrap();
    assert!(
        to_boot.transports.contains(&"quic".to_string()),
        "{to_boot:?}"
    );

    // A light node joins later and finds the supplier of model-3 through the DHT alone.
    let light = NodeBuilder::light()
        .mesh_name("t-six")
        .listen(vec![quic()])
        .bootstrap(boot_addr.clone())
        .start()
        .await
        .unwrap();
    let providers = wait_for(
        "a DHT provider record for model-3",
        Duration::from_secs(45),
        || async {
            let found = light.handle().find_providers("model-3").await.ok()?;
            (!found.is_empty()).then_some(found)
        },
    )
    .await;
    assert!(
        providers.iter().any(|p| p.to_string() == ids[3]),
        "{providers:?} should contain {}",
        ids[3]
    );
    light.shutdown().await;
    for node in suppliers {
        node.shutdown().await;
    }
    boot.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_quic_off_on_one_side_tcp_connects() {
    let boot = bootstrap("t-tcp").await;
    let boot_tcp = address(&boot, "tcp").await;
    let mut builder = NodeBuilder::full()
        .mesh_name("t-tcp")
        .listen(vec![tcp()])
        .bootstrap(boot_tcp)
        .ad_lifetime(LONG);
    builder.config_mut().offers = vec![offer("tcp-model")];
    let tcp_only = builder.start().await.unwrap();
    let id = tcp_only.handle().peer_id().to_string();
    wait_for(
        "the TCP-only node's ad at the bootstrap",
        Duration::from_secs(30),
        || async {
            seen(&boot)
                .await
                .contains(&("tcp-model".into(), id.clone()))
                .then_some(())
        },
    )
    .await;
    let peers = boot.handle().peers().await.unwrap();
    let row = peers.iter().find(|p| p.peer_id == id).unwrap();
    assert_eq!(row.transports, vec!["tcp".to_string()]);
    tcp_only.shutdown().await;
    boot.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_meshes_on_one_machine_do_not_see_each_other() {
    let boot_a = bootstrap("t-mesh-a").await;
    let addr_a = address(&boot_a, "quic").await;
    let a = supplier("t-mesh-a", &addr_a, &["model-a"], LONG).await;
    // A node of mesh B is pointed at mesh A's bootstrap by mistake.
    let b = supplier("t-mesh-b", &addr_a, &["model-b"], LONG).await;
    let a_id = a.handle().peer_id().to_string();
    wait_for(
        "mesh A's ad within mesh A",
        Duration::from_secs(30),
        || async {
            seen(&boot_a)
                .await
                .contains(&("model-a".into(), a_id.clone()))
                .then_some(())
        },
    )
    .await;
    // Give B's ad ample time to leak, were it to.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(seen(&boot_a).await.iter().all(|(m, _)| m != "model-b"));
    assert!(seen(&a).await.iter().all(|(m, _)| m != "model-b"));
    assert!(seen(&b).await.iter().all(|(m, _)| m != "model-a"));
    // And the bootstrap does not keep B connected.
    let b_id = b.handle().peer_id().to_string();
    wait_for(
        "mesh A's bootstrap to drop the mesh-B node",
        Duration::from_secs(20),
        || async {
            let peers = boot_a.handle().peers().await.ok()?;
            peers.iter().all(|p| p.peer_id != b_id).then_some(())
        },
    )
    .await;
    for node in [a, b, boot_a] {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_gossip_is_dropped_counted_and_punished() {
    let boot = bootstrap("t-bad").await;
    let boot_addr = address(&boot, "quic").await;
    let attacker = supplier("t-bad", &boot_addr, &[], LONG).await;
    let attacker_id = attacker.handle().peer_id();
    let key = Keypair::from_secret([9; 32]);
    let status = boot.handle().status().await.unwrap();
    let mesh_id = relaymesh_protocol::Digest::from_hex(&status.mesh_id).unwrap();
    let ad = |seq: u64, model: &str| signed_ad(&key, mesh_id, seq, model);
    // Wait until the attacker can reach the bootstrap on the ads topic (with valid ads,
    // each new, so gossipsub does not drop them as duplicates).
    let mut seq = 0;
    wait_for(
        "a gossip mesh between attacker and bootstrap",
        Duration::from_secs(30),
        || {
            seq += 1;
            let bytes = ad(seq, "probe").encode().unwrap();
            let handle = attacker.handle().clone();
            async move { handle.publish_ad_bytes(bytes).await.ok()?.ok() }
        },
    )
    .await;
    // A well-formed ad with a forged signature, an oversized ad, and garbage CBOR.
    let mut forged = ad(seq + 1, "forged");
    forged.signature.0[0] ^= 1;
    let bad: Vec<Vec<u8>> = vec![
        forged.encode().unwrap(),
        vec![0x41; 12 * 1024 + 100],
        vec![0xff, 0x00, 0x13],
    ];
    for bytes in bad {
        attacker
            .handle()
            .publish_ad_bytes(bytes)
            .await
            .unwrap()
            .unwrap();
    }
    wait_for(
        "the bootstrap to count the invalid messages",
        Duration::from_secs(20),
        || async {
            let text = boot.metrics().render();
            ["bad-signature", "oversized", "malformed"]
                .iter()
                .all(|r| {
                    text.contains(&format!(
                        "relaymesh_invalid_messages_total{{reason=\"{r}\"}}"
                    ))
                })
                .then_some(())
        },
    )
    .await;
    assert!(seen(&boot).await.iter().all(|(m, _)| m != "forged"));
    let score = wait_for(
        "the attacker's gossip score to fall below zero",
        Duration::from_secs(20),
        || async {
            let peers = boot.handle().peers().await.ok()?;
            let score = peers
                .iter()
                .find(|p| p.peer_id == attacker_id.to_string())?
                .gossip_score?;
            (score < 0.0).then_some(score)
        },
    )
    .await;
    println!("attacker's score at the bootstrap: {score}");
    // The mesh keeps working: an honest supplier's ad still arrives.
    let honest = supplier("t-bad", &boot_addr, &["honest"], LONG).await;
    let honest_id = honest.handle().peer_id().to_string();
    wait_for(
        "an honest ad after the attack",
        Duration::from_secs(30),
        || async {
            seen(&boot)
                .await
                .contains(&("honest".into(), honest_id.clone()))
                .then_some(())
        },
    )
    .await;
    for node in [attacker, honest, boot] {
        node.shutdown().await;
    }
}

/// A bare libp2p peer that speaks gossipsub (and answers pings).
#[derive(libp2p::swarm::NetworkBehaviour)]
struct Flooder {
    gossipsub: libp2p::gossipsub::Behaviour,
    ping: libp2p::ping::Behaviour,
}

/// A bare gossipsub peer of mesh `mesh_id`, subscribed to its ads topic and dialling
/// `boot`; and the topic.
fn flooder(
    mesh_id: relaymesh_protocol::Digest,
    boot: &libp2p::Multiaddr,
) -> (libp2p::Swarm<Flooder>, libp2p::gossipsub::IdentTopic) {
    use libp2p::gossipsub;
    let topic = gossipsub::IdentTopic::new(relaymesh_node::mesh::names::ads_topic(&mesh_id));
    let config = gossipsub::ConfigBuilder::default()
        .protocol_id_prefix(relaymesh_node::mesh::names::gossip_prefix(&mesh_id))
        .validation_mode(gossipsub::ValidationMode::Strict)
        .message_id_fn(|m: &gossipsub::Message| {
            gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec())
        })
        .build()
        .unwrap();
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_quic()
        .with_behaviour(|k| Flooder {
            gossipsub: gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(k.clone()),
                config,
            )
            .unwrap(),
            // Nodes close connections to peers that do not answer pings.
            ping: libp2p::ping::Behaviour::default(),
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    swarm.behaviour_mut().gossipsub.subscribe(&topic).unwrap();
    swarm.dial(boot.clone()).unwrap();
    (swarm, topic)
}

/// Publishes `first` as soon as a peer has subscribed to `topic` (within 30 s).
async fn publish_once_subscribed(
    swarm: &mut libp2p::Swarm<Flooder>,
    topic: &libp2p::gossipsub::IdentTopic,
    first: Vec<u8>,
) {
    use futures::StreamExt;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while swarm
        .behaviour_mut()
        .gossipsub
        .publish(topic.clone(), first.clone())
        .is_err()
    {
        assert!(tokio::time::Instant::now() < deadline, "never subscribed");
        let _ = tokio::time::timeout(Duration::from_millis(100), swarm.next()).await;
    }
}

/// Gossip messages `node` has received so far (its gossip counter).
fn gossip_in(node: &relaymesh::Node) -> u64 {
    node.metrics()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix("relaymesh_gossip_messages_total{direction=\"in\"} "))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// A peer that publishes a stream of valid ads from one key (a new sequence number every
/// few milliseconds) to the bootstrap node: the bootstrap node takes about one a second
/// and forwards none of the others, so an observer connected to it hears of a handful.
/// Before, every ad was valid, accepted and carried to every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_valid_ads_from_one_key_is_not_carried() {
    use futures::StreamExt;
    let boot = bootstrap("t-flood").await;
    let boot_addr = address(&boot, "quic").await;
    let observer = supplier("t-flood", &boot_addr, &["honest"], LONG).await;
    let status = boot.handle().status().await.unwrap();
    let mesh_id = relaymesh_protocol::Digest::from_hex(&status.mesh_id).unwrap();
    let (mut swarm, topic) = flooder(mesh_id, &boot_addr);
    let key = Keypair::from_secret([7; 32]);
    let ad = |seq: u64| signed_ad(&key, mesh_id, seq, "flood").encode().unwrap();
    // Publish until the bootstrap node is a subscriber, then wait for that first ad to
    // reach the observer (so the path works), then flood.
    let mut seq = 1;
    publish_once_subscribed(&mut swarm, &topic, ad(seq)).await;
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = tokio::time::Instant::now();
    while !seen(&observer).await.iter().any(|(m, _)| m == "flood") {
        assert!(
            tokio::time::Instant::now() < until,
            "the first ad never arrived"
        );
        if last.elapsed() > Duration::from_millis(1500) {
            // Until the gossip mesh has formed, a new ad (one a second goes through).
            seq += 1;
            let _ = swarm
                .behaviour_mut()
                .gossipsub
                .publish(topic.clone(), ad(seq));
            last = tokio::time::Instant::now();
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), swarm.next()).await;
    }
    let before = gossip_in(&observer);
    let started = tokio::time::Instant::now();
    for _ in 0..200 {
        seq += 1;
        let _ = swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic.clone(), ad(seq));
        let _ = tokio::time::timeout(Duration::from_millis(10), swarm.next()).await;
    }
    // Let whatever would be forwarded arrive.
    let settle = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::timeout_at(settle, swarm.next()).await.is_ok() {}
    let secs = started.elapsed().as_secs();
    let heard = gossip_in(&observer) - before;
    let limited = support::counter(
        &boot.metrics().render(),
        "relaymesh_limited_total{reason=\"ads_too_soon\"}",
    );
    println!("flood of 200 ads in {secs} s: the observer heard {heard}; the bootstrap node kept out {limited}");
    assert!(
        heard <= secs + 5,
        "the observer heard {heard} messages in {secs} s"
    );
    assert!(
        limited >= 150,
        "the bootstrap node kept the flood out: {limited}"
    );
    // Honest ads still go through: a supplier that joins now is heard by the observer.
    let late = supplier("t-flood", &boot_addr, &["after-flood"], LONG).await;
    let late_id = late.handle().peer_id().to_string();
    wait_for(
        "an honest ad after the flood",
        Duration::from_secs(30),
        || async {
            seen(&observer)
                .await
                .contains(&("after-flood".to_string(), late_id.clone()))
                .then_some(())
        },
    )
    .await;
    for node in [late, observer, boot] {
        node.shutdown().await;
    }
}

/// A peer handing a node more gossip than its budget (`--limit gossip_per_peer`) has the
/// rest dropped unchecked and counted: here 200 valid ads of 200 fresh keys in about 2 s
/// to a bootstrap node that takes 5 a second from one peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_beyond_a_peers_budget_is_dropped_and_counted() {
    use futures::StreamExt;
    let mut b = NodeBuilder::full()
        .mesh_name("t-gossip-budget")
        .listen(vec![quic(), tcp()]);
    b.config_mut().role = relaymesh::Role::Bootstrap;
    b.config_mut().limits.set("gossip_per_peer", 5).unwrap();
    let boot = b.start().await.unwrap();
    let boot_addr = address(&boot, "quic").await;
    let status = boot.handle().status().await.unwrap();
    let mesh_id = relaymesh_protocol::Digest::from_hex(&status.mesh_id).unwrap();
    let (mut swarm, topic) = flooder(mesh_id, &boot_addr);
    let ad = |n: u8| {
        signed_ad(&Keypair::from_secret([n; 32]), mesh_id, 1, "flood")
            .encode()
            .unwrap()
    };
    publish_once_subscribed(&mut swarm, &topic, ad(0)).await;
    for n in 1..=200u8 {
        let _ = swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic.clone(), ad(n));
        let _ = tokio::time::timeout(Duration::from_millis(10), swarm.next()).await;
    }
    let limited = || {
        support::counter(
            &boot.metrics().render(),
            "relaymesh_limited_total{reason=\"gossip_per_peer\"}",
        )
    };
    wait_for(
        "the flood to be counted",
        Duration::from_secs(10),
        || async { (limited() >= 150).then_some(()) },
    )
    .await;
    let kept = boot.handle().models().await.unwrap().len();
    assert!(
        kept <= 40,
        "the bootstrap node took {kept} of the flood's ads"
    );
    boot.shutdown().await;
}

/// Applying ledger messages (signature checks, sled writes, anti-entropy batches of up
/// to 4 MiB) does not stop the swarm: while the test holds a node's ledger and a
/// transfer reaches it by gossip, the node still answers its handle, and it applies the
/// transfer once the ledger is free. Before, the swarm's task applied ledger messages
/// itself and stopped until the ledger was free.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn a_node_busy_with_its_ledger_still_runs_its_swarm() {
    use relaymesh_protocol::params::Allocation;
    use support::credit_mesh::{bootstrap, joined, now_ms, params};
    let payer = Keypair::from_secret([9; 32]);
    let p = params(
        "ledger-off-the-swarm",
        vec![Allocation {
            account: payer.public_key(),
            amount: 1_000_000,
        }],
    );
    let (_boot, boot_addr) = bootstrap(&p, None).await;
    let a = joined(NodeBuilder::full(), &p, &boot_addr)
        .identity(payer.clone())
        .start()
        .await
        .unwrap();
    let b = joined(NodeBuilder::full(), &p, &boot_addr)
        .start()
        .await
        .unwrap();
    let to = Keypair::from_secret([10; 32]).public_key();
    let send = |amount: u64| {
        let (_, messages) = a.settlement().transfer(to, amount, now_ms()).unwrap();
        let handle = a.handle().clone();
        async move {
            for m in messages {
                handle
                    .publish_ledger(m.encode().unwrap())
                    .await
                    .unwrap()
                    .unwrap();
            }
        }
    };
    let balance_at_b = || b.settlement().account(&to).balance;
    send(100).await;
    wait_for("the first transfer at b", LONG, || async {
        (balance_at_b() == 100).then_some(())
    })
    .await;

    // A thread holds b's ledger until told to let go.
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let settlement = b.settlement().clone();
    let holder = std::thread::spawn(move || {
        let _ledger = settlement.hold_ledger();
        held_tx.send(()).unwrap();
        let _ = released.recv();
    });
    held_rx.recv().unwrap();
    let before = gossip_in(&b);
    send(200).await;
    wait_for("the second transfer's gossip at b", LONG, || async {
        (gossip_in(&b) > before).then_some(())
    })
    .await;
    for _ in 0..5 {
        tokio::time::timeout(Duration::from_secs(5), b.handle().peers())
            .await
            .expect("b's swarm answers while its ledger is busy")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    release.send(()).unwrap();
    holder.join().unwrap();
    wait_for("the second transfer applied at b", LONG, || async {
        (balance_at_b() == 300).then_some(())
    })
    .await;
}
