//! Starting a node the ways a newcomer does: a model from the Ollama store, `init`'s
//! config, `up`, completions, versions, and the errors a taken port or a bad command
//! gives.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::cli::*;
use support::*;

/// `--serve NAME=ollama-model:MODEL` serves a model from an Ollama store laid out as
/// Ollama writes one (manifest → blob), straight from the blob, without Ollama; a model
/// the store does not hold stops the node with an error that lists what it does hold.
#[test]
fn a_model_in_the_ollama_store_is_served_from_its_blob() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("ollama");
    relaymesh_node::backend::ollama_store::lay_out_for_tests(
        &store,
        "smollm2:135m",
        &support::model_path(),
    )
    .unwrap();
    let node = |data: &str, api: u16, model: &str| {
        let mut cmd = relaymesh();
        cmd.args(["node", "--data-dir"])
            .arg(dir.path().join(data))
            .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--api"])
            .arg(format!("127.0.0.1:{api}"))
            .args(["--serve", &format!("smol=ollama-model:{model}")])
            .env("OLLAMA_MODELS", &store)
            .env_remove("RUST_LOG");
        cmd
    };
    let out = node("absent", free_port(), "llama3.2:1b").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("llama3.2:1b is not in the Ollama store") && err.contains("smollm2:135m"),
        "{err}"
    );

    let api = free_port();
    let mut cmd = node("served", api, "smollm2:135m");
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let _node = Proc(cmd.spawn().unwrap());
    let models = poll(Duration::from_secs(60), || {
        api_json(api, "/relaymesh/v1/models")
    })
    .expect("the node serving the store's model");
    assert_eq!(models[0]["name"], "smol", "{models}");
    let answer: serde_json::Value = tokio::runtime::Runtime::new().unwrap().block_on(async {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{api}/v1/chat/completions"))
            .json(&serde_json::json!({
                "model": "smol", "max_tokens": 8, "temperature": 0,
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    let content = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!content.is_empty(), "{answer}");
}

/// First-run polish: `relaymesh node -V` printed "unexpected argument", and an error
/// that quotes its cause said it twice ("No such file or directory (os error 2): No
/// such file or directory (os error 2)").
#[test]
fn subcommands_print_the_version_and_errors_say_their_cause_once() {
    for args in [&["-V"][..], &["node", "-V"], &["mesh", "--version"]] {
        let out = stdout_of(relaymesh().args(args));
        assert!(out.ends_with(env!("CARGO_PKG_VERSION")), "{args:?}: {out}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = relaymesh()
        .args(["node", "--data-dir"])
        .arg(dir.path())
        .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
        .args(["--serve", "x=gguf:/nonexistent/model.gguf"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/model.gguf"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

/// The `--api` port was checked only once the model had loaded (minutes, for a big
/// one); a taken port is now refused before loading starts.
#[test]
fn a_taken_api_port_is_refused_before_the_model_loads() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = relaymesh()
        .args(["node", "--data-dir"])
        .arg(dir.path())
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--api", &api, "--serve"])
        .arg(format!("smollm2=gguf:{}", support::model_path().display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("choose another --api"), "{err}");
    assert!(!err.contains("model loaded"), "loaded first: {err}");
}

/// `relaymesh init` writes a commented config a node starts from (and will not write
/// over one without `--force`); `--log-format json` logs one JSON object per line;
/// `relaymesh completions` prints a shell's completions.
#[test]
fn init_writes_a_config_a_node_starts_from_with_json_logs_and_completions_print() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relaymesh.toml");
    let data = dir.path().join("data");
    let init = || {
        relaymesh()
            .args(["init", "--out"])
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap()
    };
    let out = init();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("relaymesh node --config"));
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains(&format!("data_dir = {:?}", data.to_str().unwrap())));
    assert!(text.contains("# serve = "), "commented options");
    let again = init();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let api = free_port();
    let log = dir.path().join("node.log");
    let _node = Proc(
        relaymesh()
            .args(["--log-format", "json", "node", "--config"])
            .arg(&config)
            .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--api"])
            .arg(format!("127.0.0.1:{api}"))
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_status(api, "a node started from the written config");
    assert!(
        data.read_dir().unwrap().count() > 0,
        "the data dir is the one written"
    );
    let logs = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "INFO" && l["fields"]["message"].is_string()),
        "{logs}"
    );

    let bash = stdout_of(relaymesh().args(["completions", "bash"]));
    assert!(
        bash.contains("_relaymesh") && bash.contains("completions"),
        "{bash}"
    );
    let fish = stdout_of(relaymesh().args(["completions", "fish"]));
    assert!(fish.contains("complete -c relaymesh"), "{fish}");
}

/// `relaymesh up FILE.gguf`: the hobbyist's one command serves the file under its name,
/// passes flags after `--` to the node, and says (and serves) where the dashboard is.
#[test]
fn up_serves_a_gguf_file_by_its_name_and_the_dashboard() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_path();
    let name = model.file_stem().unwrap().to_str().unwrap().to_lowercase();
    let api = free_port();
    let log = dir.path().join("up.log");
    let _up = Proc(
        relaymesh()
            .arg("up")
            .arg(&model)
            .args(["--no-browser", "--mesh", "up-tests", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--api", &format!("127.0.0.1:{api}")])
            .args(["--", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let served = poll(Duration::from_secs(60), || {
        let models = api_json(api, "/v1/models")?;
        models["data"]
            .as_array()?
            .iter()
            .any(|m| m["id"] == name.as_str())
            .then_some(())
    })
    .is_some();
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(served, "{name} is not served: {logs}");
    assert!(
        logs.contains(&format!("dashboard: http://127.0.0.1:{api}/")),
        "{logs}"
    );
    let page = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            reqwest::get(format!("http://127.0.0.1:{api}/"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        });
    assert!(page.contains("<title>relaymesh node</title>"), "{page}");
}

/// A port another process holds is refused with the reason: QUIC said nothing after
/// "cannot listen on …:", and TCP was shared silently (libp2p listens with
/// SO_REUSEPORT), so a second node on the same port ran with half its traffic.
#[test]
fn a_listen_port_in_use_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tcp = free_port();
    let quic_addr = format!("/ip4/127.0.0.1/udp/{udp}/quic-v1");
    let tcp_addr = format!("/ip4/127.0.0.1/tcp/{tcp}");
    let api = free_port();
    let _first = Proc(
        relaymesh()
            .args(["node", "--data-dir"])
            .arg(dir.path().join("a"))
            .args(["--listen", &format!("{quic_addr},{tcp_addr}")])
            .args(["--api", &format!("127.0.0.1:{api}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_status(api, "the first node listening");
    for (n, addr) in [&quic_addr, &tcp_addr].into_iter().enumerate() {
        let log = dir.path().join(format!("b{n}.log"));
        let mut second = Proc(
            relaymesh()
                .args(["node", "--data-dir"])
                .arg(dir.path().join(format!("b{n}")))
                .args(["--listen", addr])
                .args(["--api", &format!("127.0.0.1:{}", free_port())])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        let exited = poll(Duration::from_secs(10), || {
            second.0.try_wait().unwrap().filter(|s| !s.success())
        })
        .is_some();
        let stderr = std::fs::read_to_string(&log).unwrap();
        assert!(exited, "a second node took {addr}: {stderr}");
        assert!(
            stderr.contains(&format!("cannot listen on {addr}: ")) && stderr.contains("in use"),
            "{stderr}"
        );
    }
}
