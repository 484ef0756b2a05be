//! One node serving SmolLM2-135M-Instruct with the embedded engine, called through its
//! OpenAI- and Ollama-compatible API over real HTTP: answers, streaming, listings,
//! every error, slots, API keys and manifests (`upstreams.rs` has the `ollama:` and
//! `openai:` backends against another relaymesh node).

mod support;

use std::sync::Arc;
use std::time::Duration;

use relaymesh_node::backend::{Backend, ChatMessage, Prompt, Role};
use serde_json::{json, Value};
use support::http::{chat_body, get_json, post, post_json, ANSWER, QUESTION};
use support::{base_url, ndjson, ndjson_chat_content, serving_node, smollm, sse_data};

#[tokio::test(flavor = "multi_thread")]
async fn openai_chat_is_greedy_deterministic_and_counts_usage() {
    let backend = smollm(1, 4);
    let prompt_tokens = backend
        .prompt_ids(&Prompt::Chat(vec![ChatMessage {
            role: Role::User,
            content: QUESTION.into(),
        }]))
        .unwrap()
        .len() as u64;
    let node = serving_node(vec![backend], None).await;
    let url = format!("{}/v1/chat/completions", base_url(&node));
    let (status, first) = post_json(&url, chat_body(false)).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["object"], "chat.completion");
    assert_eq!(first["choices"][0]["message"]["role"], "assistant");
    assert_eq!(first["choices"][0]["message"]["content"], ANSWER);
    assert_eq!(first["choices"][0]["finish_reason"], "stop");
    let usage = &first["usage"];
    assert_eq!(usage["prompt_tokens"], prompt_tokens);
    assert!(usage["completion_tokens"].as_u64().unwrap() >= 7);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    let (_, second) = post_json(&url, chat_body(false)).await;
    assert_eq!(
        second["choices"][0]["message"],
        first["choices"][0]["message"]
    );
    // Asked again, only the prompt's last token is read: the rest is in the cache.
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(
        second["usage"]["prompt_tokens_details"]["cached_tokens"],
        prompt_tokens - 1
    );
    for count in ["prompt_tokens", "completion_tokens"] {
        assert_eq!(second["usage"][count], usage[count]);
    }

    // Sampling with a seed is reproducible too.
    let mut seeded = chat_body(false);
    seeded["temperature"] = json!(0.9);
    seeded["seed"] = json!(42);
    let (_, a) = post_json(&url, seeded.clone()).await;
    let (_, b) = post_json(&url, seeded).await;
    assert_eq!(a["choices"][0]["message"], b["choices"][0]["message"]);

    // max_tokens ends with "length".
    let mut short = chat_body(false);
    short["max_tokens"] = json!(2);
    let (_, cut) = post_json(&url, short).await;
    assert_eq!(cut["choices"][0]["finish_reason"], "length");
    assert_eq!(cut["usage"]["completion_tokens"], 2);

    // A stop sequence ends the answer before it.
    let mut stopped = chat_body(false);
    stopped["stop"] = json!(" is");
    let (_, s) = post_json(&url, stopped).await;
    assert_eq!(
        s["choices"][0]["message"]["content"],
        "The capital of France"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_streams_server_sent_events_ending_in_done() {
    let node = serving_node(vec![smollm(1, 4)], None).await;
    let base = base_url(&node);
    let mut body = chat_body(true);
    body["stream_options"] = json!({ "include_usage": true });
    let (status, headers, text) = post(&format!("{base}/v1/chat/completions"), body).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, ANSWER);
    assert!(chunks.len() > 5, "streamed token by token");
    let finish = chunks
        .iter()
        .find(|c| c["choices"][0]["finish_reason"] == "stop");
    assert!(finish.is_some());
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(chunks.last().unwrap()["choices"], json!([]));
    assert!(usage["completion_tokens"].as_u64().unwrap() >= 7);

    // Text completions, streamed and not, give the same text.
    let completion = json!({
        "model": "smollm2", "prompt": "The capital of France is", "temperature": 0, "max_tokens": 8,
    });
    let (status, whole) = post_json(&format!("{base}/v1/completions"), completion.clone()).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "text_completion");
    let text_whole = whole["choices"][0]["text"].as_str().unwrap().to_owned();
    assert!(text_whole.contains("Paris"), "{text_whole}");
    let mut streamed = completion;
    streamed["stream"] = json!(true);
    let (_, _, text) = post(&format!("{base}/v1/completions"), streamed).await;
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let joined: String = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(joined, text_whole);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ollama_chat_and_generate_stream_ndjson_or_answer_once() {
    let node = serving_node(vec![smollm(1, 4)], None).await;
    let base = base_url(&node);
    let chat = json!({
        "model": "smollm2",
        "messages": [{ "role": "user", "content": QUESTION }],
        "options": { "temperature": 0, "num_predict": 32 },
    });
    // Streaming is Ollama's default.
    let (status, headers, text) = post(&format!("{base}/api/chat"), chat.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/x-ndjson");
    let lines = ndjson(&text);
    let content = ndjson_chat_content(&lines);
    assert!(lines.iter().all(|l| l["message"]["content"].is_string()));
    assert_eq!(content, ANSWER);
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop");
    assert!(last["eval_count"].as_u64().unwrap() >= 7);
    assert!(last["prompt_eval_count"].as_u64().unwrap() > 5);
    assert!(lines[..lines.len() - 1].iter().all(|l| l["done"] == false));

    let mut once = chat;
    once["stream"] = json!(false);
    let (status, single) = post_json(&format!("{base}/api/chat"), once).await;
    assert_eq!(status, 200);
    assert_eq!(single["message"]["content"], ANSWER);
    assert_eq!(single["done"], true);

    let generate = json!({
        "model": "smollm2", "prompt": QUESTION, "stream": false,
        "options": { "temperature": 0, "num_predict": 32 },
    });
    let (status, g) = post_json(&format!("{base}/api/generate"), generate.clone()).await;
    assert_eq!(status, 200, "{g}");
    assert_eq!(
        g["response"], ANSWER,
        "a prompt is a user turn in the template"
    );
    let mut raw = generate;
    raw["raw"] = json!(true);
    raw["prompt"] = json!("The capital of France is");
    raw["stream"] = json!(true);
    let (_, _, text) = post(&format!("{base}/api/generate"), raw).await;
    let lines = ndjson(&text);
    let response: String = lines
        .iter()
        .map(|l| l["response"].as_str().unwrap())
        .collect();
    assert!(response.contains("Paris"), "{response}");
    assert_eq!(lines.last().unwrap()["done"], true);

    // An empty request "loads" the model, as in Ollama.
    let (status, loaded) = post_json(
        &format!("{base}/api/generate"),
        json!({ "model": "smollm2" }),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(loaded["done_reason"], "load");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn models_are_listed_with_their_identity() {
    let backend = smollm(2, 4);
    let digest = support::gguf_hex(&backend);
    let node = serving_node(vec![backend], None).await;
    let base = base_url(&node);
    let list = get_json(&format!("{base}/v1/models")).await;
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], "smollm2");
    let one = get_json(&format!("{base}/v1/models/smollm2")).await;
    assert_eq!(one["id"], "smollm2");
    let tags = get_json(&format!("{base}/api/tags")).await;
    let tag = &tags["models"][0];
    assert_eq!(tag["name"], "smollm2");
    assert_eq!(tag["digest"], digest);
    assert_eq!(tag["details"]["family"], "llama");
    assert_eq!(tag["details"]["quantization_level"], "Q4_1");
    assert_eq!(tag["size"], 98_362_432);
    let (status, show) =
        post_json(&format!("{base}/api/show"), json!({ "model": "smollm2" })).await;
    assert_eq!(status, 200);
    assert_eq!(show["model_info"]["llama.context_length"], 4096);
    assert!(show["template"].as_str().unwrap().contains("<|im_start|>"));
    let version = get_json(&format!("{base}/api/version")).await;
    assert!(version["version"].as_str().is_some());
    // The node's own view: the ad made from the backend.
    let models = get_json(&format!("{base}/relaymesh/v1/models")).await;
    let row = &models.as_array().unwrap()[0];
    assert_eq!(row["name"], "smollm2");
    assert_eq!(row["digest"], digest);
    assert_eq!(row["total_slots"], 2);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_clear_errors_in_each_apis_shape() {
    let node = serving_node(vec![smollm(1, 4)], None).await;
    let base = base_url(&node);
    let client = reqwest::Client::new();

    // Unknown model: 404 naming the models there are.
    let mut body = chat_body(false);
    body["model"] = json!("gpt-4");
    let (status, e) = post_json(&format!("{base}/v1/chat/completions"), body).await;
    assert_eq!(status, 404);
    assert!(e["error"]["message"].as_str().unwrap().contains("smollm2"));
    assert_eq!(e["error"]["code"], "model_not_found");
    let (status, e) = post_json(
        &format!("{base}/api/chat"),
        json!({ "model": "llama3", "messages": [] }),
    )
    .await;
    assert_eq!(status, 404);
    assert!(e["error"].as_str().unwrap().contains("smollm2"), "{e}");

    // Malformed JSON: 400.
    for path in [
        "/v1/chat/completions",
        "/api/chat",
        "/v1/completions",
        "/api/generate",
    ] {
        let r = client
            .post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body("{\"model\": ")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"].to_string().contains("not valid JSON"),
            "{path}: {v}"
        );
    }
    // Missing fields: 400 too.
    let (status, e) = post_json(
        &format!("{base}/v1/chat/completions"),
        json!({ "model": "smollm2" }),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("messages"),
        "{e}"
    );

    // Unsupported parameters, and formats or tools the engine cannot follow: 400
    // naming them.
    for (param, value) in [
        (
            "functions",
            json!([{ "name": "f", "parameters": { "type": "object" } }]),
        ),
        ("n", json!(2)),
        ("logit_bias", json!({ "1": 5 })),
        ("top_logprobs", json!(21)),
        (
            "response_format",
            json!({ "type": "json_schema", "json_schema": { "name": "x", "schema": { "$ref": "#/nowhere" } } }),
        ),
        (
            "tool_choice",
            json!({ "type": "function", "function": { "name": "missing" } }),
        ),
    ] {
        let mut body = chat_body(false);
        body[param] = value;
        let (status, e) = post_json(&format!("{base}/v1/chat/completions"), body).await;
        assert_eq!(status, 400, "{param}");
        assert_eq!(e["error"]["param"], param);
        assert!(e["error"]["message"].as_str().unwrap().contains(param));
    }
    // ...while their defaults, sent explicitly, are fine.
    let mut defaults = chat_body(false);
    defaults["n"] = json!(1);
    defaults["logprobs"] = json!(false);
    defaults["presence_penalty"] = json!(0);
    defaults["max_tokens"] = json!(1);
    assert_eq!(
        post_json(&format!("{base}/v1/chat/completions"), defaults)
            .await
            .0,
        200
    );
    let (status, e) = post_json(
        &format!("{base}/api/chat"),
        json!({ "model": "smollm2", "messages": [{ "role": "user", "content": "hi" }], "format": "yaml" }),
    )
    .await;
    assert_eq!(status, 400);
    assert!(e["error"].as_str().unwrap().contains("format"));
    let (status, e) = post_json(
        &format!("{base}/api/generate"),
        json!({ "model": "smollm2", "prompt": "hi", "options": { "mirostat": 2 } }),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        e["error"].as_str().unwrap().contains("option 'mirostat'"),
        "{e}"
    );
    // Out-of-range sampling values.
    let mut hot = chat_body(false);
    hot["temperature"] = json!(7);
    let (status, e) = post_json(&format!("{base}/v1/chat/completions"), hot).await;
    assert_eq!(
        (status, e["error"]["param"].clone()),
        (400, json!("temperature"))
    );

    // A prompt longer than the context: 400.
    let long = "Paris is lovely. ".repeat(2000);
    let mut body = chat_body(false);
    body["messages"][0]["content"] = json!(long);
    let (status, e) = post_json(&format!("{base}/v1/chat/completions"), body).await;
    assert_eq!(status, 400);
    assert_eq!(e["error"]["code"], "context_length_exceeded");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("context is 4096"));

    // A body over the limit: 413, in JSON. (Its own client: the server closes a
    // connection whose body it did not read, which a pooled connection would trip on.)
    let huge = "x".repeat(3 << 20);
    let r = reqwest::Client::new()
        .post(format!("{base}/api/generate"))
        .body(json!({ "model": "smollm2", "prompt": huge }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("limit"));

    // Unknown routes: JSON 404.
    let r = client
        .get(format!("{base}/v2/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().await.unwrap()["error"].is_object());

    // curl's default form content type is accepted, as Ollama does.
    let r = client
        .post(format!("{base}/api/generate"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(json!({ "model": "smollm2", "prompt": "Hi", "stream": false, "options": { "num_predict": 2 } }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn busy_slots_answer_503_and_a_dropped_stream_frees_its_slot() {
    let backend = smollm(1, 0);
    let node = serving_node(vec![backend.clone()], None).await;
    let base = base_url(&node);
    let long = json!({
        "model": "smollm2",
        "messages": [{ "role": "user", "content": "Write a long story about a dragon." }],
        "max_tokens": 2000, "stream": true, "temperature": 0.7,
    });
    let mut held = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), 200);
    assert!(held.chunk().await.unwrap().is_some(), "the stream started");
    assert_eq!(backend.slots(), (0, 1));

    // The only slot is taken and nothing may queue: 503 with Retry-After, both APIs.
    let (status, headers, text) =
        post(&format!("{base}/v1/chat/completions"), chat_body(false)).await;
    assert_eq!(status, 503, "{text}");
    assert!(headers.contains_key("retry-after"));
    let e: Value = serde_json::from_str(&text).unwrap();
    assert!(e["error"]["message"].as_str().unwrap().contains("busy"));
    let (status, headers, _) = post(
        &format!("{base}/api/generate"),
        json!({ "model": "smollm2", "prompt": "hi" }),
    )
    .await;
    assert_eq!(status, 503);
    assert!(headers.contains_key("retry-after"));

    // The client leaves halfway: generation stops and the slot comes back.
    drop(held);
    support::wait_for("the slot to be freed", Duration::from_secs(20), || {
        let backend = backend.clone();
        async move { (backend.slots() == (1, 1)).then_some(()) }
    })
    .await;
    let (status, answer) =
        post_json(&format!("{base}/v1/chat/completions"), chat_body(false)).await;
    assert_eq!(status, 200);
    assert_eq!(answer["choices"][0]["message"]["content"], ANSWER);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_gate_every_route_and_each_key_has_its_quota() {
    let keys = relaymesh_node::api::ApiKeys::parse(
        "[[keys]]\nname = \"alice\"\nkey = \"rm-alice-0123456789\"\nrequests_per_minute = 3\n",
    )
    .unwrap();
    let node = serving_node(vec![smollm(1, 4)], Some(keys)).await;
    let base = base_url(&node);
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.json::<Value>().await.unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("API key"));
    let r = client
        .get(format!("{base}/api/tags"))
        .bearer_auth("wrong-key-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.json::<Value>().await.unwrap()["error"].is_string(),
        "Ollama's shape"
    );
    for _ in 0..3 {
        let r = client
            .get(format!("{base}/v1/models"))
            .bearer_auth("rm-alice-0123456789")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = client
        .get(format!("{base}/v1/models"))
        .bearer_auth("rm-alice-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));

    // A page on another origin may call a node with keys: its preflight is answered
    // (it carries no key) and its answers are readable. Before, the preflight got a 401
    // and the browser refused every such call.
    let preflight = client
        .request(
            reqwest::Method::OPTIONS,
            format!("{base}/v1/chat/completions"),
        )
        .header("origin", "https://chat.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://chat.example"
    );
    let r = client
        .get(format!("{base}/api/version"))
        .header("origin", "https://chat.example")
        .bearer_auth("rm-alice-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://chat.example"
    );
    // Not the node's own routes: a key given to a chat page does not let it move the
    // node's credit or read its ledger (found by review).
    let admin = client
        .request(
            reqwest::Method::OPTIONS,
            format!("{base}/relaymesh/v1/transfers"),
        )
        .header("origin", "https://chat.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(!admin.headers().contains_key("access-control-allow-origin"));
    node.shutdown().await;

    // A node without keys still refuses other origins, and sends no CORS headers.
    let open = serving_node(vec![smollm(1, 4)], None).await;
    let r = client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/chat/completions", base_url(&open)),
        )
        .header("origin", "https://chat.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    open.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_manifest_next_to_the_file_is_checked_and_advertised() {
    use relaymesh_node::backend::embedded::{write_manifest, EmbeddedBackend, EmbeddedOptions};
    use relaymesh_protocol::{Keypair, Signer};
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("smol.gguf");
    std::fs::copy(support::model_path(), &model).unwrap();
    let source = Keypair::generate(&mut rand_core::OsRng);
    write_manifest(
        &model,
        "SmolLM2-135M-Instruct",
        "apache-2.0",
        50_000,
        &source,
    )
    .unwrap();
    let options = EmbeddedOptions {
        progress: false,
        ..EmbeddedOptions::default()
    };
    let backend = EmbeddedBackend::load("smol", &model, &options).unwrap();
    let manifest = backend.info().manifest.clone().expect("advertised");
    assert_eq!(manifest.body.source, source.public_key());
    assert_eq!(manifest.body.royalty_ppm, 50_000);
    let node = serving_node(vec![Arc::new(backend)], None).await;
    // The node's own ad enters its table with its first announcement.
    let url = format!("{}/relaymesh/v1/models", base_url(&node));
    let models = support::wait_for("the node's own ad", Duration::from_secs(10), || async {
        let models = get_json(&url).await;
        (!models[0].is_null()).then_some(models)
    })
    .await;
    assert_eq!(
        models[0]["source"],
        source.public_key().peer_id(),
        "{models}"
    );
    node.shutdown().await;

    // The same manifest next to a different file is refused, saying why.
    let other = dir.path().join("other.gguf");
    std::fs::write(&other, b"GGUF not really").unwrap();
    std::fs::copy(
        relaymesh_node::backend::embedded::manifest_path(&model),
        relaymesh_node::backend::embedded::manifest_path(&other),
    )
    .unwrap();
    let err = EmbeddedBackend::load("x", &other, &options)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("re-sign"), "{err}");
}

/// Deterministic garbage: valid bodies cut short, with bytes flipped, or replaced by
/// noise (xorshift, fixed seed).
fn mangled(valid: &[u8], i: u64) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ i.wrapping_mul(0x2545_F491_4F6C_DD1D);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    match i % 3 {
        0 => valid[..(next() as usize % valid.len())].to_vec(),
        1 => {
            let mut v = valid.to_vec();
            for _ in 0..1 + next() % 4 {
                let at = next() as usize % v.len();
                v[at] ^= 1 << (next() % 8);
            }
            v
        }
        _ => (0..next() % 64).map(|_| next() as u8).collect(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_bodies_get_a_4xx_json_error_never_a_5xx() {
    // Mangling can drop a body's token limit: keep the default short so that the
    // bodies that stay valid answer quickly.
    let options = relaymesh_node::backend::embedded::EmbeddedOptions {
        slots: 1,
        queue: 4,
        default_max_tokens: 2,
        progress: false,
        ..Default::default()
    };
    let backend = relaymesh_node::backend::embedded::EmbeddedBackend::load(
        "smollm2",
        &support::model_path(),
        &options,
    )
    .unwrap();
    let node = serving_node(vec![Arc::new(backend)], None).await;
    let base = base_url(&node);
    let client = reqwest::Client::new();
    let routes = [
        ("/v1/chat/completions", chat_body(false)),
        (
            "/v1/completions",
            json!({ "model": "smollm2", "prompt": "Hi", "max_tokens": 1 }),
        ),
        (
            "/api/chat",
            json!({ "model": "smollm2", "messages": [{ "role": "user", "content": "Hi" }], "stream": false, "options": { "num_predict": 1 } }),
        ),
        (
            "/api/generate",
            json!({ "model": "smollm2", "prompt": "Hi", "stream": false, "options": { "num_predict": 1 } }),
        ),
        ("/api/show", json!({ "model": "smollm2" })),
    ];
    let mut refused = 0;
    for (path, valid) in routes {
        let valid = valid.to_string().into_bytes();
        for i in 0..40 {
            let body = mangled(&valid, i);
            let r = client
                .post(format!("{base}{path}"))
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            assert!(
                status < 500,
                "{path} answered {status} to {:?}: {text}",
                String::from_utf8_lossy(&body)
            );
            if status >= 400 {
                refused += 1;
                let v: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|_| panic!("{path}: not JSON: {text}"));
                assert!(!v["error"].is_null(), "{path}: {text}");
            }
        }
    }
    assert!(refused > 120, "most garbage is refused ({refused} of 200)");
    node.shutdown().await;
}
