//! The `ollama:` and `openai:` backends against another relaymesh node serving
//! SmolLM2: chat, completions, log probabilities and embeddings through them.

mod support;

use std::sync::Arc;

use relaymesh_node::backend::ollama::OllamaBackend;
use relaymesh_node::backend::{Backend, Tenant};
use serde_json::{json, Value};
use support::http::{chat_body, post, post_json, ANSWER};
use support::{base_url, serving_node, smollm, sse_chat_content};

#[tokio::test(flavor = "multi_thread")]
async fn the_ollama_backend_serves_another_relaymesh_nodes_model() {
    let served = smollm(1, 4);
    let upstream_digest = support::gguf_hex(&served);
    let upstream = serving_node(vec![served], None).await;
    let ollama = OllamaBackend::connect("smol-remote", &base_url(&upstream), "smollm2", 2, 4)
        .await
        .unwrap();
    let info = ollama.info().clone();
    assert_eq!(info.kind, "ollama");
    assert_eq!(info.context_length, 4096);
    assert_eq!(
        info.digest.as_ref().unwrap().to_string(),
        upstream_digest,
        "Ollama's digest is reported"
    );

    let gateway = serving_node(vec![Arc::new(ollama)], None).await;
    let base = base_url(&gateway);
    let mut body = chat_body(false);
    body["model"] = json!("smol-remote");
    let (status, answer) = post_json(&format!("{base}/v1/chat/completions"), body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"][0]["message"]["content"], ANSWER);
    assert!(answer["usage"]["completion_tokens"].as_u64().unwrap() >= 7);
    body["stream"] = json!(true);
    let (_, _, text) = post(&format!("{base}/v1/chat/completions"), body).await;
    let content = sse_chat_content(&text);
    assert_eq!(content, ANSWER);
    let (status, raw) = post_json(
        &format!("{base}/v1/completions"),
        json!({ "model": "smol-remote", "prompt": "The capital of France is", "temperature": 0, "max_tokens": 8 }),
    )
    .await;
    assert_eq!(status, 200);
    assert!(raw["choices"][0]["text"]
        .as_str()
        .unwrap()
        .contains("Paris"));

    // Log probabilities come through Ollama's `logprobs`, the chosen tokens' only (the
    // client library reads no alternatives): the same as the upstream node tells.
    let mut asked = chat_body(false);
    asked["logprobs"] = json!(true);
    let (_, direct) = post_json(
        &format!("{}/v1/chat/completions", base_url(&upstream)),
        asked.clone(),
    )
    .await;
    asked["model"] = json!("smol-remote");
    let (status, passed) = post_json(&format!("{base}/v1/chat/completions"), asked).await;
    assert_eq!(status, 200, "{passed}");
    let tokens = |v: &Value| -> Vec<(String, f64)> {
        v["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["token"].as_str().unwrap().to_owned(),
                    t["logprob"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let (passed, direct) = (tokens(&passed), tokens(&direct));
    assert_eq!(
        passed.iter().map(|t| t.0.as_str()).collect::<String>(),
        ANSWER
    );
    assert_eq!(passed.len(), direct.len());
    assert!(passed
        .iter()
        .zip(&direct)
        .all(|(p, d)| p.0 == d.0 && (p.1 - d.1).abs() < 1e-3));

    // Embeddings from Ollama's `/api/embed`, of the length its `/api/show` says: the
    // upstream model's own vectors.
    let texts = [
        "The capital of France is Paris.".to_string(),
        "Bananas.".to_string(),
    ];
    let (status, embedded) = post_json(
        &format!("{base}/v1/embeddings"),
        json!({ "model": "smol-remote", "input": texts, "encoding_format": "float" }),
    )
    .await;
    assert_eq!(status, 200, "{embedded}");
    let local = smollm(1, 1).embed(&texts, Tenant::Local).await.unwrap();
    for (i, here) in local.vectors.iter().enumerate() {
        let there: Vec<f32> =
            serde_json::from_value(embedded["data"][i]["embedding"].clone()).unwrap();
        assert_eq!(there.len(), 576);
        let gap = support::max_gap(&there, here);
        assert!(gap < 1e-4, "{gap}");
    }

    // The openai backend on the same node: it learns at start that the upstream embeds,
    // and how long its vectors are, and embeds through `/v1/embeddings`.
    let openai = relaymesh_node::backend::openai::OpenAiBackend::connect(
        "smol-openai",
        &format!("{}/v1", base_url(&upstream)),
        "smollm2",
        None,
        1,
        1,
    )
    .await
    .unwrap();
    assert_eq!(openai.embedding_dims(), Some(576));
    let there = openai.embed(&texts, Tenant::Local).await.unwrap();
    for (there, here) in there.vectors.iter().zip(&local.vectors) {
        let gap = support::max_gap(there, here);
        assert!(gap < 1e-4, "{gap}");
    }

    // A model the Ollama server does not have is refused at start, naming what it has.
    let missing = OllamaBackend::connect("x", &base_url(&upstream), "nope", 1, 1).await;
    assert!(missing.err().unwrap().to_string().contains("smollm2"));
    gateway.shutdown().await;
    upstream.shutdown().await;
}
