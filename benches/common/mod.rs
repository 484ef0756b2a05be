//! What the end-to-end benchmarks share: timing a streamed request over HTTP, medians
//! and percentiles, and a backend that answers at once.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use relaymesh_node::backend::{GenEvent, GenRequest};
use serde_json::Value;

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The `p`-th percentile (0–100) of `v`, nearest rank.
pub fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// One streamed request: time to the first piece, pieces (or the usage's completion
/// tokens), total time, and who served it (`x-relaymesh-supplier`).
pub struct Timing {
    pub ttft: Duration,
    pub tokens: u32,
    pub total: Duration,
    pub supplier: Option<String>,
}

/// The same through an SSE stream from `url` (OpenAI `/v1/completions`).
pub async fn over_http(url: &str, body: Value) -> Timing {
    let started = Instant::now();
    let mut r = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    let supplier = r
        .headers()
        .get("x-relaymesh-supplier")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut first = None;
    let mut buf = String::new();
    let mut tokens = 0;
    while let Some(chunk) = r.chunk().await.unwrap() {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(data).unwrap();
            let text = v["choices"][0]["text"]
                .as_str()
                .or_else(|| v["content"].as_str())
                .unwrap_or("");
            if !text.is_empty() {
                first.get_or_insert_with(|| started.elapsed());
                tokens += 1;
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                tokens = n as u32;
            }
        }
    }
    Timing {
        ttft: first.expect("a first piece"),
        tokens,
        total: started.elapsed(),
        supplier,
    }
}

/// A backend that answers at once with `n` one-word pieces: what is left of a
/// request's time is the API layer's.
pub struct Instant_;

#[async_trait::async_trait]
impl relaymesh_node::backend::Backend for Instant_ {
    fn info(&self) -> &relaymesh_node::backend::ModelInfo {
        static INFO: std::sync::OnceLock<relaymesh_node::backend::ModelInfo> =
            std::sync::OnceLock::new();
        INFO.get_or_init(|| relaymesh_node::backend::ModelInfo {
            name: "instant".into(),
            digest: None,
            manifest: None,
            context_length: 4096,
            max_token_bytes: relaymesh_node::backend::OPAQUE_TOKEN_BYTES,
            kind: "bench",
            details: Default::default(),
        })
    }
    fn slots(&self) -> (usize, usize) {
        (64, 64)
    }
    async fn generate(
        &self,
        request: GenRequest,
    ) -> Result<relaymesh_node::backend::Generation, relaymesh_node::backend::BackendError> {
        let n = request.sampling.max_tokens.unwrap_or(16);
        let (tx, rx) = tokio::sync::mpsc::channel(relaymesh_node::backend::EVENT_BUFFER);
        tokio::spawn(async move {
            for _ in 0..n {
                if tx.send(GenEvent::Text(" word".into())).await.is_err() {
                    return;
                }
            }
            let _ = tx
                .send(GenEvent::Done(relaymesh_node::backend::Finish {
                    reason: relaymesh_node::backend::FinishReason::Length,
                    prompt_tokens: 1,
                    completion_tokens: n,
                    cached_tokens: 0,
                    stop: None,
                }))
                .await;
        });
        Ok(relaymesh_node::backend::Generation::new(rx, None))
    }
}
