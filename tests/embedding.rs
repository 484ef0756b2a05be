//! The library an app embeds, through its examples (included here as they are):
//! `examples/chat.rs` joins a mesh as a light node and streams a chat answer from a
//! supplier process without any HTTP API, and the supplier metered it;
//! `examples/ollama_supplier.rs` serves the mesh from an Ollama API (a relaymesh node
//! process's, since Ollama itself is not installed here); `examples/private_mesh.rs`
//! makes a private mesh whose owner invites a supplier and an app, and refuses a
//! stranger.

mod support;

#[path = "../examples/chat.rs"]
mod chat_example;
#[path = "../examples/ollama_supplier.rs"]
mod ollama_example;
#[path = "../examples/private_mesh.rs"]
mod private_example;

use std::time::Duration;

use serde_json::Value;
use support::wait_for;

const MESH: &str = "embedding-tests";

#[tokio::test(flavor = "multi_thread")]
async fn the_chat_example_streams_an_answer_from_a_supplier_process() {
    let dir = tempfile::tempdir().unwrap();
    let api = support::free_port();
    let serve = format!("smollm2=gguf:{}", support::model_path().display());
    // A supplier (also the mesh's bootstrap node: it is a DHT server).
    let _supplier = support::node_process(dir.path(), api, &["--mesh", MESH, "--serve", &serve]);
    let status: Value = wait_for("the supplier's API", Duration::from_secs(60), || async {
        support::get_json(&format!("http://127.0.0.1:{api}/relaymesh/v1/status")).await
    })
    .await;
    let supplier = status["peer_id"].as_str().unwrap().to_owned();
    let bootstrap = status["listen_addrs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find(|a| a.contains("/quic-v1/"))
        .expect("a QUIC address")
        .parse()
        .unwrap();

    let mut printed = Vec::new();
    let answer = chat_example::ask(MESH, bootstrap, "smollm2", "Name a colour.", &mut printed)
        .await
        .unwrap();
    let printed = String::from_utf8(printed).unwrap();
    assert!(!answer.trim().is_empty(), "{printed}");
    assert!(
        printed.contains(&format!("served by {supplier}")),
        "{printed}"
    );

    // Metered like any answer through the mesh: the supplier holds the receipts.
    wait_for(
        "receipts at the supplier",
        Duration::from_secs(10),
        || async {
            let v: Value =
                support::get_json(&format!("http://127.0.0.1:{api}/relaymesh/v1/sessions")).await?;
            (v["sessions"][0]["receipts"].as_u64()? > 0).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ollama_supplier_example_serves_the_mesh_from_an_ollama_api() {
    // The Ollama server: a relaymesh process speaking the Ollama API, on a mesh of its
    // own (so it is no supplier of the example's mesh).
    let dir = tempfile::tempdir().unwrap();
    let upstream = support::free_port();
    let serve = format!("smollm2=gguf:{}", support::model_path().display());
    let _ollama = support::node_process(
        dir.path(),
        upstream,
        &["--mesh", "embedding-upstream", "--serve", &serve],
    );
    wait_for("the Ollama API", Duration::from_secs(60), || async {
        let tags: Value =
            support::get_json(&format!("http://127.0.0.1:{upstream}/api/tags")).await?;
        (tags["models"].as_array()?.len() == 1).then_some(())
    })
    .await;

    const MESH2: &str = "embedding-ollama-tests";
    let supplier = ollama_example::serve(
        MESH2,
        vec![support::quic()],
        None,
        &format!("http://127.0.0.1:{upstream}"),
        "smollm2",
        "smollm2",
    )
    .await
    .unwrap();
    let bootstrap = support::address(&supplier, "quic").await;
    let mut printed = Vec::new();
    let answer = chat_example::ask(MESH2, bootstrap, "smollm2", "Name a colour.", &mut printed)
        .await
        .unwrap();
    let printed = String::from_utf8(printed).unwrap();
    assert!(!answer.trim().is_empty(), "{printed}");
    let id = supplier.handle().peer_id().to_string();
    assert!(printed.contains(&format!("served by {id}")), "{printed}");
    supplier.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_private_mesh_example_serves_members_and_refuses_a_stranger() {
    let mut printed = Vec::new();
    let answer = private_example::run(&support::model_path(), "Name a colour.", &mut printed)
        .await
        .unwrap();
    let printed = String::from_utf8(printed).unwrap();
    assert!(!answer.trim().is_empty(), "{printed}");
    assert!(
        printed.contains("a stranger without an invite: refused"),
        "{printed}"
    );
    assert!(printed.contains("served by 12D3KooW"), "{printed}");
}
