//! HTTP calls the API tests make, and the question they ask with its greedy answer.

use serde_json::{json, Value};

/// The question most tests ask.
pub const QUESTION: &str = "What is the capital of France?";
/// SmolLM2's greedy answer to it.
pub const ANSWER: &str = "The capital of France is Paris.";

pub async fn post(url: &str, body: Value) -> (u16, reqwest::header::HeaderMap, String) {
    let r = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

pub async fn post_json(url: &str, body: Value) -> (u16, Value) {
    let (status, _, text) = post(url, body).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub async fn get_json(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

pub fn chat_body(stream: bool) -> Value {
    json!({
        "model": "smollm2",
        "messages": [{ "role": "user", "content": QUESTION }],
        "temperature": 0,
        "max_tokens": 32,
        "stream": stream,
    })
}
