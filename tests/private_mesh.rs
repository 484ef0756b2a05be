//! A private mesh across hosts (network namespaces on one switch, every node on port
//! 4002): an owner's invites admit a bootstrap node, a supplier serving SmolLM2 and a
//! light gateway, which answer a chat request as any mesh would; a stranger at the
//! door — with no invite, a forged one, an expired one, another mesh's, or one the
//! owner revoked — gets no connection at all, over QUIC and over TCP, and is told why
//! (the verdict of the membership handshake, before the swarm sees the connection:
//! no identify, gossip, DHT, stream or ledger); hammering the bootstrap node leaves
//! the members served; and a revocation handed to one member cuts the revoked member
//! off mesh-wide within seconds. Needs root and iproute2; elsewhere it says SKIPPED.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use relaymesh_protocol::messages::membership::Credential;
use serde_json::{json, Value};
use support::netns::{api_json, http, relaymesh_id, wait_until, Net};

const PORT: u16 = 4002;
const API: &str = "http://127.0.0.1:7434";
const LOGS: &[&str] = &["boot", "supplier", "gateway"];
/// How soon a revocation must reach every member (PROTOCOL.md §15, "Private meshes").
const REVOCATION_BOUND: Duration = Duration::from_secs(5);

fn relaymesh() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_relaymesh"))
}

/// Runs `relaymesh ARGS` (in namespace `ns` if given): success and stdout + stderr.
fn run(ns: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(relaymesh());
            c
        }
        None => Command::new(relaymesh()),
    };
    let out = cmd.args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `relaymesh mesh invite …`: the token.
fn invite(mesh: &Path, owner: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "mesh",
        "invite",
        "--mesh-file",
        mesh.to_str().unwrap(),
        "--owner-key",
        owner.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = Command::new(relaymesh()).args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `relaymesh mesh init --private` of a mesh named `club`: its file and owner key.
fn init_private_mesh(mesh: &Path, owner: &Path) {
    let (ok, out) = run(
        None,
        &[
            "mesh",
            "init",
            "--name",
            "club",
            "--private",
            "--owner-key",
            owner.to_str().unwrap(),
            "--out",
            mesh.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
}

fn listen() -> String {
    format!("/ip4/0.0.0.0/udp/{PORT}/quic-v1,/ip4/0.0.0.0/tcp/{PORT}")
}

/// Both transports of a node at `ip`.
fn addrs(ip: &str, peer: &str) -> [String; 2] {
    [
        format!("/ip4/{ip}/udp/{PORT}/quic-v1/p2p/{peer}"),
        format!("/ip4/{ip}/tcp/{PORT}/p2p/{peer}"),
    ]
}

/// A stranger in namespace `ns` presents `token` (or nothing) to both transports of
/// each node: every one must refuse with a reason containing `why`.
fn refused_everywhere(
    ns: &str,
    mesh: &Path,
    token: Option<&str>,
    nodes: &[[String; 2]],
    why: &str,
) {
    let mut args = vec![
        "mesh",
        "probe",
        "--json",
        "--mesh-file",
        mesh.to_str().unwrap(),
    ];
    if let Some(token) = token {
        args.extend(["--invite", token]);
    }
    for pair in nodes {
        for addr in pair {
            args.extend(["--dial", addr.as_str()]);
        }
    }
    let (ok, out) = run(Some(ns), &args);
    assert!(!ok, "a stranger was admitted: {out}");
    let json_end = out.rfind('}').unwrap() + 1;
    let report: Value = serde_json::from_str(&out[..json_end]).unwrap();
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 2 * nodes.len(), "{out}");
    for r in results {
        assert_eq!(r["admitted"], false, "{out}");
        let reason = r["reason"].as_str().unwrap();
        assert!(
            reason.contains("refused this node's membership") && reason.contains(why),
            "expected a refusal saying {why:?}: {r}"
        );
    }
}

fn chat(gw: &str) -> (u16, reqwest::header::HeaderMap, String) {
    http(
        gw,
        &format!("{API}/v1/chat/completions"),
        Some(json!({
            "model": "smollm2", "temperature": 0, "max_tokens": 8,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
        })),
        Duration::from_secs(300),
    )
}

fn peer_ids(ns: &str) -> Vec<String> {
    api_json(ns, "/relaymesh/v1/peers")
        .and_then(|p| p.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p["peer_id"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn only_invited_peers_get_in_and_a_revoked_one_is_cut_off() {
    let Some(mut net) = Net::new("pm") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path();
    let wait = |what: &str, secs: u64, check: &mut dyn FnMut() -> Option<()>| {
        wait_until(what, Duration::from_secs(secs), (logs, LOGS), check)
    };
    let boot = net.host("boot", "10.66.0.1/24");
    let sup = net.host("sup", "10.66.0.2/24");
    let gw = net.host("gw", "10.66.0.3/24");
    let stranger = net.host("stranger", "10.66.0.9/24");

    // The owner makes the mesh, then an invite per member: the bootstrap node's bound
    // to its peer id, a supplier-only token, an app-only token for the gateway.
    let mesh = logs.join("mesh.toml");
    let owner = logs.join("owner.key");
    init_private_mesh(&mesh, &owner);
    let (boot_dir, sup_dir, gw_dir) = (logs.join("b"), logs.join("s"), logs.join("g"));
    let (boot_id, sup_id, gw_id) = (
        relaymesh_id(&boot_dir),
        relaymesh_id(&sup_dir),
        relaymesh_id(&gw_dir),
    );
    let boot_invite = invite(&mesh, &owner, &["--peer", &boot_id]);
    let sup_invite = invite(&mesh, &owner, &["--role", "supplier"]);
    let gw_invite = invite(&mesh, &owner, &["--role", "app"]);
    let gw_invite_id = Credential::from_token(&gw_invite)
        .unwrap()
        .invite
        .body
        .id
        .to_hex();

    // A supplier-only invite cannot run a gateway's requests, nor an app-only one
    // serve: refused at start, before any connection.
    let model = support::model_path();
    let serve = format!("smollm2=gguf:{}", model.display());
    let (ok, out) = run(
        None,
        &[
            "node",
            "--data-dir",
            logs.join("x").to_str().unwrap(),
            "--mesh-file",
            mesh.to_str().unwrap(),
            "--invite",
            &gw_invite,
            "--serve",
            &serve,
            "--api",
            "127.0.0.1:0",
        ],
    );
    assert!(
        !ok && out.contains("may use the mesh's suppliers but not serve"),
        "{out}"
    );

    let listen = listen();
    let node = |net: &mut Net, ns: &str, data: &Path, token: &str, extra: &[&str], log: &str| {
        let mut args = vec![
            "node",
            "--data-dir",
            data.to_str().unwrap(),
            "--mesh-file",
            mesh.to_str().unwrap(),
            "--invite",
            token,
            "--listen",
            &listen,
            "--api",
            "127.0.0.1:7434",
        ];
        args.extend_from_slice(extra);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        net.spawn(
            ns,
            relaymesh(),
            &args,
            Some(&logs.join(format!("{log}.log"))),
        );
    };
    let bootstrap = addrs("10.66.0.1", &boot_id)[0].clone();
    node(&mut net, &boot, &boot_dir, &boot_invite, &[], "boot");
    node(
        &mut net,
        &sup,
        &sup_dir,
        &sup_invite,
        &["--bootstrap", &bootstrap, "--serve", &serve],
        "supplier",
    );
    node(
        &mut net,
        &gw,
        &gw_dir,
        &gw_invite,
        &["--light", "--bootstrap", &bootstrap],
        "gateway",
    );

    // Members work as in any mesh: the gateway's request is served by the supplier.
    wait(
        "the supplier's model listed at the gateway",
        180,
        &mut || {
            let (code, _, body) = http(
                &gw,
                &format!("{API}/v1/models"),
                None,
                Duration::from_secs(10),
            );
            (code == 200 && body.contains("smollm2")).then_some(())
        },
    );
    let (code, headers, body) = chat(&gw);
    assert_eq!(
        code,
        200,
        "{body}\n{}",
        support::netns::tail_logs(logs, LOGS)
    );
    assert_eq!(
        headers
            .get("x-relaymesh-supplier")
            .and_then(|v| v.to_str().ok()),
        Some(sup_id.as_str())
    );
    let peers = api_json(&sup, "/relaymesh/v1/peers").unwrap();
    let gw_row = peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer_id"] == gw_id.as_str())
        .unwrap_or_else(|| panic!("the supplier is not connected to the gateway: {peers}"));
    assert_eq!(gw_row["member"]["role"], "app", "{gw_row}");

    // Strangers at the door of the bootstrap node and of the supplier.
    let members = [addrs("10.66.0.1", &boot_id), addrs("10.66.0.2", &sup_id)];
    refused_everywhere(&stranger, &mesh, None, &members, "no invite was presented");
    // Forged: an owner's token with its role changed and the signature kept.
    let mut forged = Credential::from_token(&sup_invite).unwrap();
    forged.invite.body.role = 3;
    refused_everywhere(
        &stranger,
        &mesh,
        Some(&forged.to_token()),
        &members,
        "forged or damaged",
    );
    // Expired.
    let short = invite(&mesh, &owner, &["--expires", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    refused_everywhere(&stranger, &mesh, Some(&short), &members, "expired");
    // Another private mesh's invite (another owner).
    let (other_mesh, other_owner) = (logs.join("other.toml"), logs.join("other.key"));
    init_private_mesh(&other_mesh, &other_owner);
    let foreign = invite(&other_mesh, &other_owner, &[]);
    refused_everywhere(&stranger, &mesh, Some(&foreign), &members, "another mesh");
    // A peer-bound invite presented by another peer.
    refused_everywhere(
        &stranger,
        &mesh,
        Some(&boot_invite),
        &members,
        "issued to another peer",
    );

    // A stranger hammering the bootstrap node: 300 attempts, each refused; the members
    // are still served.
    let mut args = vec!["mesh", "probe", "--mesh-file", mesh.to_str().unwrap()];
    let tcp = members[0][1].clone();
    for _ in 0..300 {
        args.extend(["--dial", tcp.as_str()]);
    }
    let (ok, out) = run(Some(&stranger), &args);
    assert!(
        !ok && out.contains("300 of 300 refused"),
        "{}",
        &out[out.len().saturating_sub(500)..]
    );
    let (code, _, body) = chat(&gw);
    assert_eq!(code, 200, "{body}");
    let metrics = http(
        &boot,
        &format!("{API}/metrics"),
        None,
        Duration::from_secs(10),
    )
    .2;
    assert!(
        metrics.contains("relaymesh_membership_refused_total{reason=\"no_invite\"}"),
        "{metrics}"
    );
    // Nobody of the mesh ever saw the stranger as a peer.
    for ns in [&boot, &sup, &gw] {
        assert!(peer_ids(ns)
            .iter()
            .all(|p| [&boot_id, &sup_id, &gw_id].contains(&p)));
    }

    // The owner revokes the gateway's invite through the bootstrap node: every member
    // drops it within the bound, and it cannot come back.
    let revoked_at = Instant::now();
    let (ok, out) = run(
        Some(&boot),
        &[
            "mesh",
            "revoke",
            "--mesh-file",
            mesh.to_str().unwrap(),
            "--owner-key",
            owner.to_str().unwrap(),
            "--invite",
            &gw_invite_id,
            "--api",
            "127.0.0.1:7434",
        ],
    );
    assert!(ok, "{out}");
    wait("every member to drop the revoked gateway", 30, &mut || {
        [&boot, &sup]
            .iter()
            .all(|ns| !peer_ids(ns).contains(&gw_id))
            .then_some(())
    });
    let took = revoked_at.elapsed();
    eprintln!("revocation took effect mesh-wide in {took:?}");
    assert!(took < REVOCATION_BOUND, "took {took:?}");
    // The supplier holds the list (gossip), and enforces it on new connections.
    let membership = api_json(&sup, "/relaymesh/v1/membership").unwrap();
    assert!(
        membership["revocations"]
            .to_string()
            .contains(&gw_invite_id),
        "{membership}"
    );
    refused_everywhere(&stranger, &mesh, Some(&gw_invite), &members, "revoked");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !peer_ids(&sup).contains(&gw_id),
        "the revoked gateway came back"
    );
    let (code, _, body) = chat(&gw);
    assert_ne!(code, 200, "a revoked member was served: {body}");
}

/// The revocation list `seq` of `owner` naming `invites`.
fn revocation(
    params: &relaymesh_protocol::params::MeshParams,
    owner: &relaymesh_protocol::Keypair,
    seq: u64,
    invites: Vec<relaymesh_protocol::Digest>,
) -> relaymesh_protocol::messages::membership::SignedRevocation {
    use relaymesh_protocol::Signer;
    relaymesh_protocol::identity::signed::Signed::sign(
        relaymesh_protocol::messages::membership::Revocation {
            version: relaymesh_protocol::PROTOCOL_VERSION,
            mesh_id: params.mesh_id(),
            owner: owner.public_key(),
            seq,
            invites: relaymesh_protocol::BoundedVec::try_from_vec(invites).unwrap(),
            peers: relaymesh_protocol::BoundedVec::new(),
        },
        owner,
    )
}

/// A member keeps its invite and the revocation lists it heard in its data dir: it
/// restarts without `--invite`, still enforcing them; once its own invite is revoked
/// (it learns so from the next member's hello), it refuses to start, saying why.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_member_keeps_its_invite_and_the_revocations_it_heard() {
    use relaymesh::NodeBuilder;
    use relaymesh_protocol::identity::signed::Signed;
    use relaymesh_protocol::messages::membership::{Holder, Invite, ROLE_BOTH};
    use relaymesh_protocol::{Digest, Keypair, Signer};
    use support::{address, wait_for};

    let owner = Keypair::from_secret([21; 32]);
    let mut params = relaymesh_node::config::named_mesh("private-restart");
    params.owners = relaymesh_protocol::BoundedVec::try_from_vec(vec![owner.public_key()]).unwrap();
    let token_key = Keypair::from_secret([22; 32]);
    let token = Credential {
        invite: Signed::sign(
            Invite {
                version: relaymesh_protocol::PROTOCOL_VERSION,
                mesh_id: params.mesh_id(),
                id: Digest([4; 32]),
                owner: owner.public_key(),
                holder: Holder::Token(token_key.public_key()),
                role: ROLE_BOTH,
                expires_ms: u64::MAX / 2,
            },
            &owner,
        ),
        token_secret: Some(token_key.secret()),
    };
    // The owner's own key runs the bootstrap node: it needs no invite.
    let mut builder = NodeBuilder::full()
        .mesh(params.clone())
        .listen(vec![support::tcp()]);
    builder.config_mut().identity = relaymesh::Identity::Ephemeral(owner.clone());
    let boot = builder.start().await.unwrap();
    let boot_addr = address(&boot, "tcp").await;
    let dir = tempfile::tempdir().unwrap();
    let member = || {
        NodeBuilder::full()
            .mesh(params.clone())
            .listen(vec![support::tcp()])
            .data_dir(dir.path())
            .bootstrap(boot_addr.clone())
    };
    let connected = |node: &relaymesh::Node| {
        let handle = node.handle().clone();
        async move {
            handle
                .peers()
                .await
                .ok()
                .filter(|p| !p.is_empty())
                .map(|_| ())
        }
    };

    // Without an invite, nothing starts.
    let refused = member()
        .start()
        .await
        .err()
        .expect("started without an invite");
    assert!(refused.to_string().contains("--invite"), "{refused}");
    let node = member().invite(token.clone()).start().await.unwrap();
    wait_for("the member connected", Duration::from_secs(20), || {
        connected(&node)
    })
    .await;
    // The owner revokes someone else's invite; the member hears it by gossip.
    let other = Digest([5; 32]);
    assert_eq!(
        boot.handle()
            .revoke(revocation(&params, &owner, 1, vec![other]))
            .await
            .unwrap(),
        Ok(true)
    );
    wait_for(
        "the list gossiped to the member",
        Duration::from_secs(20),
        || async {
            let lists = node.handle().membership()?.revocations();
            (lists.len() == 1).then_some(())
        },
    )
    .await;
    node.shutdown().await;

    // Restarted without --invite: admitted again, the list still held.
    let node = member().start().await.unwrap();
    wait_for("the member reconnected", Duration::from_secs(20), || {
        connected(&node)
    })
    .await;
    let lists = node.handle().membership().unwrap().revocations();
    assert_eq!(lists[0].body.invites.as_slice(), &[other]);

    // Its own invite revoked: cut off at once, and told why when it knocks again.
    assert_eq!(
        boot.handle()
            .revoke(revocation(
                &params,
                &owner,
                2,
                vec![other, token.invite.body.id]
            ))
            .await
            .unwrap(),
        Ok(true)
    );
    wait_for("the member cut off", Duration::from_secs(20), || async {
        let peers = node.handle().peers().await.ok()?;
        peers.is_empty().then_some(())
    })
    .await;
    wait_for(
        "the member told it was revoked",
        Duration::from_secs(20),
        || async {
            let now = relaymesh_node::mesh::now_ms();
            node.handle().membership()?.own_refusal(now).map(|_| ())
        },
    )
    .await;
    // At the protocol level it gets nothing: no stream opens to the bootstrap node
    // (the dial is refused at admission, before any protocol runs).
    let protocol = relaymesh_node::mesh::names::infer_protocol(&params.mesh_id());
    let opened = tokio::time::timeout(
        Duration::from_secs(10),
        node.handle()
            .streams()
            .open_stream(boot.handle().peer_id(), protocol),
    )
    .await;
    assert!(
        !matches!(opened, Ok(Ok(_))),
        "a revoked member opened a stream"
    );
    node.shutdown().await;
    let refused = member()
        .start()
        .await
        .err()
        .expect("a revoked member started");
    assert!(refused.to_string().contains("revoked"), "{refused}");
    boot.shutdown().await;
}
