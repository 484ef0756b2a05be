//! The API surface agent frameworks use (issue 21's figures), each on a supplier's own
//! API and through a light gateway → that supplier over QUIC on loopback, SmolLM2 on
//! the embedded engine:
//!
//! - per endpoint, the median latency of a short greedy request, and what the mesh adds
//!   (and what asking for log probabilities costs on a 64-token answer);
//! - the share of constrained answers (JSON schemas, a required tool call) that parse
//!   and validate, sampled at temperature 1 with varying seeds;
//! - embeddings per second, in batches.
//!
//! `cargo bench --bench api` (needs the test model: `scripts/fetch-model`).

use std::time::{Duration, Instant};

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use common::median;
use relaymesh_node::backend::SharedBackend;
use serde_json::{json, Value};

const MESH: &str = "bench-api";
/// Requests timed per endpoint and place (after one to warm up).
const RUNS: usize = 10;
/// Constrained answers asked for per schema and place.
const CONSTRAINED: u64 = 20;

/// One endpoint's request: a route and a body (`model` is filled in).
struct Endpoint {
    name: &'static str,
    route: &'static str,
    body: Value,
}

fn endpoints() -> Vec<Endpoint> {
    let question = json!([{ "role": "user", "content": "What is the capital of France?" }]);
    let weather = json!([{ "type": "function", "function": {
        "name": "get_weather", "description": "The current weather in a city",
        "parameters": { "type": "object", "properties": { "city": { "type": "string", "maxLength": 24 } },
                        "required": ["city"] } } }]);
    let story = json!([{ "role": "user", "content": "Tell me a long story about a dragon." }]);
    let texts = json!([
        "The capital of France is Paris.",
        "Paris is in France.",
        "Bananas are yellow."
    ]);
    vec![
        Endpoint {
            name: "POST /v1/chat/completions",
            route: "/v1/chat/completions",
            body: json!({ "messages": question, "temperature": 0, "max_tokens": 8 }),
        },
        Endpoint {
            name: "POST /v1/completions",
            route: "/v1/completions",
            body: json!({ "prompt": "The capital of France is", "temperature": 0, "max_tokens": 8 }),
        },
        Endpoint {
            name: "POST /v1/chat/completions, tools (required)",
            route: "/v1/chat/completions",
            body: json!({ "messages": [{ "role": "user", "content": "What is the weather in Paris?" }],
                          "tools": weather, "tool_choice": "required", "temperature": 0, "max_tokens": 48 }),
        },
        Endpoint {
            name: "POST /v1/chat/completions, json_schema",
            route: "/v1/chat/completions",
            body: json!({ "messages": question, "temperature": 0, "max_tokens": 48,
                          "response_format": { "type": "json_schema", "json_schema": {
                              "name": "answer", "strict": true, "schema": city_schema() } } }),
        },
        Endpoint {
            name: "POST /v1/messages (Anthropic)",
            route: "/v1/messages",
            body: json!({ "messages": question, "temperature": 0, "max_tokens": 8 }),
        },
        Endpoint {
            name: "POST /api/chat (Ollama)",
            route: "/api/chat",
            body: json!({ "messages": question, "stream": false,
                          "options": { "temperature": 0, "num_predict": 8 } }),
        },
        Endpoint {
            name: "POST /api/generate (Ollama)",
            route: "/api/generate",
            body: json!({ "prompt": "The capital of France is", "stream": false,
                          "options": { "temperature": 0, "num_predict": 8 } }),
        },
        // What telling log probabilities costs: the same 64 greedy tokens with and
        // without 20 alternatives each (the story never ends before 64).
        Endpoint {
            name: "POST /v1/chat/completions, 64 tokens",
            route: "/v1/chat/completions",
            body: json!({ "messages": story, "temperature": 0, "max_tokens": 64 }),
        },
        Endpoint {
            name: "  the same, logprobs with top_logprobs 20",
            route: "/v1/chat/completions",
            body: json!({ "messages": story, "temperature": 0, "max_tokens": 64,
                          "logprobs": true, "top_logprobs": 20 }),
        },
        Endpoint {
            name: "POST /v1/embeddings (3 inputs)",
            route: "/v1/embeddings",
            body: json!({ "input": texts, "encoding_format": "float" }),
        },
        Endpoint {
            name: "POST /api/embed (3 inputs)",
            route: "/api/embed",
            body: json!({ "input": texts }),
        },
    ]
}

fn city_schema() -> Value {
    json!({ "type": "object", "additionalProperties": false,
            "properties": {
                "city": { "type": "string", "maxLength": 24 },
                "population": { "type": "integer", "minimum": 0, "maximum": 100000000 },
                "coastal": { "type": "boolean" } },
            "required": ["city", "population", "coastal"] })
}

fn list_schema() -> Value {
    json!({ "type": "object", "additionalProperties": false,
            "properties": {
                "colours": { "type": "array", "minItems": 2, "maxItems": 4,
                             "items": { "type": "string", "enum": ["red", "green", "blue", "yellow"] } },
                "favourite": { "type": "string", "enum": ["red", "green", "blue", "yellow"] } },
            "required": ["colours", "favourite"] })
}

/// Whether `v` is valid under `schema`, for the keywords the schemas here use.
fn valid(schema: &Value, v: &Value) -> bool {
    if let Some(options) = schema["enum"].as_array() {
        if !options.contains(v) {
            return false;
        }
    }
    match schema["type"].as_str() {
        Some("object") => {
            let Some(map) = v.as_object() else {
                return false;
            };
            let props = schema["properties"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let required = schema["required"].as_array().cloned().unwrap_or_default();
            required
                .iter()
                .all(|k| map.contains_key(k.as_str().unwrap_or("")))
                && map.iter().all(|(k, x)| match props.get(k) {
                    Some(s) => valid(s, x),
                    None => schema["additionalProperties"] != json!(false),
                })
        }
        Some("array") => {
            let Some(items) = v.as_array() else {
                return false;
            };
            let n = items.len() as u64;
            schema["minItems"].as_u64().is_none_or(|m| n >= m)
                && schema["maxItems"].as_u64().is_none_or(|m| n <= m)
                && items.iter().all(|x| valid(&schema["items"], x))
        }
        Some("string") => v.as_str().is_some_and(|s| {
            schema["maxLength"]
                .as_u64()
                .is_none_or(|m| s.chars().count() as u64 <= m)
        }),
        Some("integer") => v.as_i64().is_some_and(|n| {
            schema["minimum"].as_i64().is_none_or(|m| n >= m)
                && schema["maximum"].as_i64().is_none_or(|m| n <= m)
        }),
        Some("boolean") => v.is_boolean(),
        _ => true,
    }
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> Value {
    let r = client.post(url).json(body).send().await.unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert!(status.is_success(), "{url}: {status} {v}");
    v
}

/// Median latency of each endpoint, direct and through the mesh, alternating.
async fn latencies(client: &reqwest::Client, direct: &str, mesh: &str) {
    println!("per endpoint, median of {RUNS} requests (ms): direct, through the mesh, added");
    for e in endpoints() {
        let mut body = e.body.clone();
        body["model"] = json!("smollm2");
        let (mut d, mut m) = (Vec::new(), Vec::new());
        for i in 0..=RUNS {
            for (base, times) in [(direct, &mut d), (mesh, &mut m)] {
                let started = Instant::now();
                post(client, &format!("{base}{}", e.route), &body).await;
                if i > 0 {
                    times.push(started.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        let (d, m) = (median(d), median(m));
        println!("  {:<46} {d:>7.1} {m:>7.1} {:>+7.1}", e.name, m - d);
    }
}

/// The share of constrained answers that parse and validate: two JSON schemas and a
/// required tool call (one: several at temperature 1 can outrun `max_tokens`, which
/// cuts any answer short), each sampled at temperature 1 with `CONSTRAINED` seeds.
async fn constrained(client: &reqwest::Client, place: &str, base: &str) {
    let tools = json!([{ "type": "function", "function": {
        "name": "get_weather", "description": "The current weather in a city",
        "parameters": { "type": "object", "additionalProperties": false,
                        "properties": { "city": { "type": "string", "maxLength": 24 },
                                        "unit": { "type": "string", "enum": ["celsius", "fahrenheit"] } },
                        "required": ["city", "unit"] } } }]);
    let (mut ok, mut asked) = (0u64, 0u64);
    for seed in 0..CONSTRAINED {
        for (schema, prompt) in [
            (city_schema(), "Describe the capital of France."),
            (list_schema(), "Which colours do you like?"),
        ] {
            let body = json!({ "model": "smollm2", "temperature": 1.0, "seed": seed, "max_tokens": 128,
                "messages": [{ "role": "user", "content": prompt }],
                "response_format": { "type": "json_schema", "json_schema": {
                    "name": "answer", "strict": true, "schema": schema } } });
            let v = post(client, &format!("{base}/v1/chat/completions"), &body).await;
            let text = v["choices"][0]["message"]["content"].as_str().unwrap_or("");
            asked += 1;
            if serde_json::from_str(text).is_ok_and(|x| valid(&schema, &x)) {
                ok += 1;
            } else {
                let finish = &v["choices"][0]["finish_reason"];
                println!("  {place}, seed {seed}: not valid ({finish}): {text}");
            }
        }
        let body = json!({ "model": "smollm2", "temperature": 1.0, "seed": seed, "max_tokens": 128,
            "messages": [{ "role": "user", "content": "What is the weather in Paris?" }],
            "tools": tools, "tool_choice": "required", "parallel_tool_calls": false });
        let v = post(client, &format!("{base}/v1/chat/completions"), &body).await;
        let call = &v["choices"][0]["message"]["tool_calls"][0]["function"];
        let parsed = call["arguments"]
            .as_str()
            .and_then(|a| serde_json::from_str::<Value>(a).ok());
        asked += 1;
        if call["name"] == "get_weather"
            && parsed.is_some_and(|a| valid(&tools[0]["function"]["parameters"], &a))
        {
            ok += 1;
        } else {
            println!(
                "  {place}, seed {seed}: not a valid call: {}",
                v["choices"][0]
            );
        }
    }
    println!(
        "constrained answers, {place}: {ok} of {asked} parse and validate ({:.1}%)",
        ok as f64 * 100.0 / asked as f64
    );
}

/// Inputs embedded per second, in batches of `batch` short texts.
async fn embeddings_per_second(client: &reqwest::Client, place: &str, base: &str, batch: usize) {
    let inputs: Vec<String> = (0..batch)
        .map(|i| format!("Sentence number {i} says something about Paris and its history."))
        .collect();
    let body = json!({ "model": "smollm2", "input": inputs, "encoding_format": "float" });
    post(client, &format!("{base}/v1/embeddings"), &body).await;
    let started = Instant::now();
    let rounds = 5;
    for _ in 0..rounds {
        let v = post(client, &format!("{base}/v1/embeddings"), &body).await;
        assert_eq!(v["data"].as_array().map(Vec::len), Some(batch));
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "embeddings, {place}, batches of {batch}: {:.1} inputs/s",
        (rounds * batch) as f64 / secs
    );
}

#[tokio::main]
async fn main() {
    let boot = support::bootstrap(MESH).await;
    let boot_addr = support::address(&boot, "quic").await;
    let gateway = support::mesh_gateway(MESH, &boot_addr).await;
    let supplier = support::mesh_supplier(
        MESH,
        &boot_addr,
        vec![support::smollm(1, 16) as SharedBackend],
    )
    .await;
    support::wait_for(
        "the supplier's ad at the gateway",
        Duration::from_secs(60),
        || async { (!gateway.handle().offers("smollm2").await.ok()?.is_empty()).then_some(()) },
    )
    .await;
    let (direct, mesh) = (support::base_url(&supplier), support::base_url(&gateway));
    let client = reqwest::Client::new();

    latencies(&client, &direct, &mesh).await;
    for (place, base) in [("direct", &direct), ("through the mesh", &mesh)] {
        constrained(&client, place, base).await;
    }
    for (place, base) in [("direct", &direct), ("through the mesh", &mesh)] {
        for batch in [1, 32] {
            embeddings_per_second(&client, place, base, batch).await;
        }
    }
    for node in [gateway, supplier, boot] {
        node.shutdown().await;
    }
}
