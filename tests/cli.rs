//! The `relaymesh` binary as a user runs it: identities that survive restarts, one
//! process per data dir, key backups, config files and the environment, limits, and a
//! node killed with SIGKILL leaving the mesh and keeping its receipts. Starting a node
//! the ways a newcomer does is in `cli_start.rs`.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::cli::*;
use support::*;

#[test]
fn identity_survives_restarts_and_a_data_dir_takes_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let id = stdout_of(relaymesh().args(["id", "--data-dir"]).arg(dir.path()));
    assert!(id.starts_with("12D3KooW"), "{id}");
    assert_eq!(
        stdout_of(relaymesh().args(["id", "--data-dir"]).arg(dir.path())),
        id
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("identity.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the key file must be private");
    }

    let api = free_port();
    let first = node_process(dir.path(), api, &[]);
    let status = wait_status(api, "the node's API came up");
    assert_eq!(status["peer_id"], id.as_str());

    // A second process on the same data dir fails with a clear error.
    let out = relaymesh()
        .args(["node", "--data-dir"])
        .arg(dir.path())
        .args([
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--api",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another relaymesh process"), "{err}");
    drop(first);

    // Restarted after a hard stop, same identity.
    let api = free_port();
    let _again = node_process(dir.path(), api, &[]);
    let status = wait_status(api, "the node's API came up");
    assert_eq!(status["peer_id"], id.as_str());
}

#[test]
fn key_export_and_import_round_trip() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let id = stdout_of(relaymesh().args(["id", "--data-dir"]).arg(a.path()));
    let hex = stdout_of(
        relaymesh()
            .args(["key", "export", "--data-dir"])
            .arg(a.path()),
    );
    let file = a.path().join("backup.hex");
    std::fs::write(&file, &hex).unwrap();
    let restored = stdout_of(
        relaymesh()
            .args(["key", "import", "--data-dir"])
            .arg(b.path())
            .arg(&file),
    );
    assert_eq!(restored, id);
    assert_eq!(
        stdout_of(relaymesh().args(["id", "--data-dir"]).arg(b.path())),
        id
    );
    // Garbage is refused with a message that says what a key looks like.
    std::fs::write(&file, "not a key").unwrap();
    let out = relaymesh()
        .args(["key", "import", "--data-dir"])
        .arg(tempfile::tempdir().unwrap().path())
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("64 hex digits"), "{stderr}");
    // It names the file given, not the identity file it would have written.
    assert!(
        stderr.contains("backup.hex") && !stderr.contains("identity.key"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_sigkill_leaves_the_others_tables_after_expiry() {
    let boot = bootstrap("public").await;
    let boot_addr = address(&boot, "quic").await.to_string();
    let dir = tempfile::tempdir().unwrap();
    let api = free_port();
    let mut victim = node_process(
        dir.path(),
        api,
        &[
            "--bootstrap",
            &boot_addr,
            "--advertise",
            "doomed",
            "--ad-lifetime-secs",
            "4",
        ],
    );
    wait_for(
        "the victim's ad at the bootstrap",
        Duration::from_secs(30),
        || async {
            seen(&boot)
                .await
                .iter()
                .any(|(m, _)| m == "doomed")
                .then_some(())
        },
    )
    .await;
    // SIGKILL: no goodbye, no last ad.
    victim.0.kill().unwrap();
    victim.0.wait().unwrap();
    wait_for(
        "the victim to leave the bootstrap's table",
        Duration::from_secs(30),
        || async {
            seen(&boot)
                .await
                .iter()
                .all(|(m, _)| m != "doomed")
                .then_some(())
        },
    )
    .await;
    // Its models are gone from the API too.
    let models = boot.handle().models().await.unwrap();
    assert!(models.is_empty(), "{models:?}");
    boot.shutdown().await;
}

#[test]
fn peers_and_models_print_tables_and_say_when_no_node_answers() {
    let port = free_port();
    let out = relaymesh()
        .args(["peers", "--api", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no relaymesh node answers"));

    let dir = tempfile::tempdir().unwrap();
    let api = free_port();
    let _node = node_process(
        dir.path(),
        api,
        &["--advertise", "table-model", "--ad-lifetime-secs", "30"],
    );
    let table = poll(Duration::from_secs(10), || {
        let out = relaymesh()
            .args(["models", "--api", &format!("127.0.0.1:{api}")])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("table-model").then_some(text)
    })
    .expect("the node lists its own model");
    assert!(table.starts_with("MODEL"), "{table}");
    // Beside the supplier's own figures, what this node measured of it and its score.
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|h| h.contains("SEEN") && h.contains("SCORE")),
        "{table}"
    );
    let peers = stdout_of(relaymesh().args(["peers", "--api", &format!("127.0.0.1:{api}")]));
    assert_eq!(peers, "no peers connected");
    let status = stdout_of(relaymesh().args(["status", "--api", &format!("127.0.0.1:{api}")]));
    for line in [
        "node ", "mesh ", "reach ", "peers ", "serving ", "models ", "account ",
    ] {
        assert!(status.contains(line), "{line:?} not in\n{status}");
    }
    assert!(status.contains("table-model (1 supplier)"), "{status}");
    // A mesh without genesis credit has nothing to transfer: said, not "gossiped".
    let other = stdout_of(
        relaymesh()
            .args(["id", "--data-dir"])
            .arg(dir.path().join("other")),
    );
    let out = relaymesh()
        .args(["transfer", "--to", &other, "--amount", "5", "--api"])
        .arg(format!("127.0.0.1:{api}"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("has no credit"),
        "{stderr}"
    );
    // Unknown routes answer 404 with a JSON error.
    let url = format!("http://127.0.0.1:{api}/no/such/route");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, body) = runtime.block_on(async {
        let r = reqwest::get(&url).await.unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.unwrap(),
        )
    });
    assert_eq!(status, 404);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no such route"),
        "{body}"
    );
}

#[test]
fn options_come_from_a_config_file_and_the_environment_with_flags_winning() {
    let dir = tempfile::tempdir().unwrap();
    let (file_api, env_api) = (free_port(), free_port());
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\napi = \"127.0.0.1:{file_api}\"\nmesh = \"from-file\"\nadvertise = [\"file-model\"]\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    // The file alone.
    let _from_file = Proc(
        relaymesh()
            .args(["node", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let status = wait_status(file_api, "the API address from the file");
    assert_eq!(status["mesh_name"], "from-file");

    // The environment overrides the file, a flag overrides the environment.
    let other = tempfile::tempdir().unwrap();
    let _from_env = Proc(
        relaymesh()
            .args(["node", "--config"])
            .arg(&config)
            .args(["--data-dir"])
            .arg(other.path())
            .env("RELAYMESH_API", format!("127.0.0.1:{env_api}"))
            .env("RELAYMESH_MESH", "from-env")
            .args(["--mesh", "from-flag"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let status = wait_status(env_api, "the API address from the environment");
    assert_eq!(status["mesh_name"], "from-flag");

    // A misspelt key is an error that names it.
    std::fs::write(&config, "data_dri = \"/tmp/x\"\n").unwrap();
    let out = relaymesh()
        .args(["node", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("data_dri"));
}

#[test]
fn manifest_sign_writes_a_manifest_a_serving_node_advertises() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    let model = dir.path().join("smol.gguf");
    std::fs::copy(support::model_path(), &model).unwrap();
    let source_id = stdout_of(relaymesh().args(["id", "--data-dir"]).arg(&source));
    let written = stdout_of(
        relaymesh()
            .args(["manifest", "sign", "--model"])
            .arg(&model)
            .args([
                "--name",
                "SmolLM2-135M-Instruct",
                "--royalty",
                "2.5",
                "--licence",
                "apache-2.0",
                "--data-dir",
            ])
            .arg(&source),
    );
    assert_eq!(written, format!("{}.manifest", model.display()));

    let api = free_port();
    let _node = node_process(
        &dir.path().join("node"),
        api,
        &["--serve", &format!("smol=gguf:{}", model.display())],
    );
    wait_status(api, "the serving node's API");
    let models = api_json(api, "/relaymesh/v1/models").unwrap();
    assert_eq!(models[0]["source"], source_id.as_str(), "{models}");
    assert_eq!(models[0]["royalty_ppm"], 25_000);

    // Out-of-range royalties are refused.
    let out = relaymesh()
        .args(["manifest", "sign", "--model"])
        .arg(&model)
        .args(["--name", "x", "--royalty", "120", "--data-dir"])
        .arg(&source)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("between 0 and 100"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supplier_killed_with_sigkill_keeps_its_receipts() {
    let boot = bootstrap("public").await;
    let boot_addr = address(&boot, "quic").await.to_string();
    let dir = tempfile::tempdir().unwrap();
    let api = free_port();
    let mut supplier = node_process(
        dir.path(),
        api,
        &[
            "--bootstrap",
            &boot_addr,
            "--serve",
            &format!("smollm2=gguf:{}", model_path().display()),
        ],
    );
    let gateway = mesh_gateway("public", &boot_addr.parse().unwrap()).await;
    wait_for(
        "the supplier's ad at the gateway",
        Duration::from_secs(60),
        || async { (!gateway.handle().offers("smollm2").await.ok()?.is_empty()).then_some(()) },
    )
    .await;
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!(
            "http://{}/v1/chat/completions",
            gateway.api_addr().unwrap()
        ))
        .json(&serde_json::json!({
            "model": "smollm2", "temperature": 0, "max_tokens": 32,
            "messages": [{ "role": "user", "content": "What is the capital of France?" }],
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(text, "The capital of France is Paris.");

    // The supplier shows the session it metered.
    let sessions = wait_for("the metered session", Duration::from_secs(10), || async {
        let v: serde_json::Value =
            reqwest::get(format!("http://127.0.0.1:{api}/relaymesh/v1/sessions"))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
        (v["sessions"].as_array()?.len() == 1).then_some(v)
    })
    .await;
    let metered = &sessions["sessions"][0];
    assert!(
        metered["cu"].as_u64().unwrap() > text.len() as u64,
        "{metered}"
    );
    assert_eq!(metered["app"], gateway.handle().peer_id().to_string());

    // Older than the commit interval, then killed without warning.
    tokio::time::sleep(Duration::from_millis(
        3 * relaymesh_node::store::COMMIT_INTERVAL_MS,
    ))
    .await;
    supplier.0.kill().unwrap();
    supplier.0.wait().unwrap();
    let data = relaymesh_node::store::DataDir::open(dir.path()).unwrap();
    let miner = relaymesh_node::mining::Miner::new(
        data.db().open_tree("mining").unwrap(),
        &relaymesh_node::config::named_mesh("x"),
    );
    let receipts = miner.all_receipts().unwrap();
    let last = receipts
        .iter()
        .find(|r| r.ack.body.last)
        .expect("the closing ack survived");
    assert_eq!(last.ack.body.new_bytes as usize, text.len());

    // The mined tree is whole: counters agree with the receipts and the tree, and every
    // mined receipt's path proves against the root.
    let report = miner.sessions().unwrap().remove(0);
    assert_eq!(report.counters.receipts as usize, receipts.len());
    let key = relaymesh_protocol::Digest::from_hex(&report.session).unwrap();
    let root = miner.check_tree(&key).unwrap();
    assert_eq!(
        (root.count, root.sum),
        (report.counters.mined, report.counters.mined_value)
    );
    gateway.shutdown().await;
    boot.shutdown().await;
}

#[test]
fn a_mesh_file_sets_the_mesh_a_node_joins() {
    let dir = tempfile::tempdir().unwrap();
    let account = stdout_of(
        relaymesh()
            .args(["id", "--data-dir"])
            .arg(dir.path().join("a")),
    );
    let file = dir.path().join("mesh.toml");
    let mut init = relaymesh();
    init.args(["mesh", "init", "--name", "community", "--epoch-secs", "5"])
        .args(["--genesis", &format!("{account}=1000000"), "--out"])
        .arg(&file);
    stdout_of(&mut init);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("epoch_secs = 5") && text.contains(&account),
        "{text}"
    );
    let id = stdout_of(relaymesh().args(["mesh", "id"]).arg(&file));
    assert_eq!(id.len(), 64);
    assert_ne!(
        id,
        relaymesh_node::config::named_mesh("community")
            .mesh_id()
            .to_hex(),
        "other parameters, another mesh"
    );
    // An existing file is not overwritten.
    let again = init.output().unwrap();
    assert!(!again.status.success());

    let api = free_port();
    let _node = node_process(
        &dir.path().join("node"),
        api,
        &["--mesh-file", file.to_str().unwrap()],
    );
    let status = wait_status(api, "a node with the mesh file");
    assert_eq!(status["mesh_id"], id.as_str());

    // A broken file is a clear error, not a node in some other mesh.
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "name = \"x\"\nepoch_secs = \"soon\"\n").unwrap();
    let out = relaymesh()
        .args(["node", "--data-dir"])
        .arg(dir.path().join("other"))
        .arg("--mesh-file")
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.toml"), "{err}");
}

/// A limit `relaymesh node` does not know, or a bad value, is refused before anything
/// starts, naming the limits there are.
#[test]
fn unknown_or_bad_limits_are_refused_with_the_list() {
    let dir = tempfile::tempdir().unwrap();
    let run = |limit: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_relaymesh"))
            .args(["node", "--data-dir"])
            .arg(dir.path())
            .args(["--api", "127.0.0.1:0", "--limit", limit])
            .output()
            .unwrap()
    };
    let out = run("bogus=3");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("streams_per_app"),
        "{err}"
    );
    let out = run("streams=lots");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not a whole number"),
        "{err}"
    );
    let out = run("streams=0");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("at least 1"), "{err}");
}
