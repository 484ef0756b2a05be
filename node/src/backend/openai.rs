//! The `openai` backend: any OpenAI-compatible server (llama.cpp's llama-server,
//! vLLM, LM Studio), streamed over server-sent events.
//!
//! An opaque upstream has no model identity we can check, so its ads carry no digest;
//! its context length is read from `/v1/models` where the server tells it
//! (llama-server's `meta.n_ctx_train`, vLLM's `max_model_len`). Whether it makes
//! embeddings, and how long, is learnt by asking `/v1/embeddings` for one word when it
//! connects (llama-server makes them only when started with `--embeddings`).

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use relaymesh_protocol::messages::infer::MAX_HELD_LOGPROBS;

use super::{
    Backend, BackendError, Embedded, Finish, FinishReason, Format, GenEvent, GenRequest,
    Generation, ModelDetails, ModelInfo, Prompt, Slots, Tenant, TokenLogprob, TokenProb,
    EVENT_BUFFER, LOGPROB_FLOOR,
};

/// Context length assumed when the upstream does not say.
const FALLBACK_CONTEXT: u32 = 4096;
/// Longest SSE line accepted from the upstream.
const MAX_LINE: usize = 1 << 20;

/// A model on an OpenAI-compatible server.
pub struct OpenAiBackend {
    info: ModelInfo,
    slots: Slots,
    http: reqwest::Client,
    url: String,
    model: String,
    api_key: Option<String>,
    /// The length of its embeddings, where the upstream makes them.
    embedding_dims: Option<u32>,
}

/// How long the upstream may take to embed one request's inputs.
const EMBED_TIMEOUT: Duration = Duration::from_secs(300);

impl OpenAiBackend {
    /// Connects to `url` (ending in `/v1`), checks that it answers `/models`, and
    /// reads the model's context length if the server tells it. `api_key`, if given,
    /// is sent as a bearer token.
    pub async fn connect(
        name: &str,
        url: &str,
        model: &str,
        api_key: Option<String>,
        slots: usize,
        queue: usize,
    ) -> Result<Self, BackendError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| BackendError::Internal(e.to_string()))?;
        let mut get = http
            .get(format!("{url}/models"))
            .timeout(Duration::from_secs(10));
        if let Some(key) = &api_key {
            get = get.bearer_auth(key);
        }
        let unreachable = |e: &dyn std::fmt::Display| {
            BackendError::Upstream(format!("OpenAI-compatible server at {url}: {e}"))
        };
        let models: Value = get
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| unreachable(&e))?
            .json()
            .await
            .map_err(|e| unreachable(&e))?;
        let entries = models["data"].as_array().cloned().unwrap_or_default();
        let entry = entries
            .iter()
            .find(|m| m["id"] == model)
            .or_else(|| (entries.len() == 1).then(|| &entries[0]));
        let context_length = entry
            .and_then(|m| {
                m["meta"]["n_ctx_train"]
                    .as_u64()
                    .or_else(|| m["max_model_len"].as_u64())
                    .or_else(|| m["context_length"].as_u64())
            })
            .map_or(FALLBACK_CONTEXT, |n| n.min(u32::MAX as u64) as u32);
        let mut backend = Self {
            info: ModelInfo {
                name: name.to_owned(),
                digest: None,
                manifest: None,
                context_length,
                max_token_bytes: super::OPAQUE_TOKEN_BYTES,
                kind: "openai",
                details: ModelDetails::default(),
            },
            slots: Slots::new(slots, queue, Duration::from_secs(2)),
            http,
            url: url.to_owned(),
            model: model.to_owned(),
            api_key,
            embedding_dims: None,
        };
        backend.embedding_dims = backend
            .embeddings(&["relaymesh".to_owned()], Duration::from_secs(30))
            .await
            .ok()
            .and_then(|(vectors, _)| vectors.first().map(Vec::len))
            .and_then(|n| u32::try_from(n).ok())
            .filter(|&n| n > 0);
        tracing::info!(model = name, upstream = %url, remote_model = model, context = context_length, embedding_dims = ?backend.embedding_dims, "OpenAI-compatible model ready");
        Ok(backend)
    }

    /// The upstream's `/v1/embeddings` of `inputs`, in order, and the tokens it read.
    async fn embeddings(
        &self,
        inputs: &[String],
        timeout: Duration,
    ) -> Result<(Vec<Vec<f32>>, u32), BackendError> {
        let upstream = |e: &dyn std::fmt::Display| BackendError::Upstream(format!("upstream: {e}"));
        let mut post = self
            .http
            .post(format!("{}/embeddings", self.url))
            .timeout(timeout)
            .json(&json!({ "model": self.model, "input": inputs, "encoding_format": "float" }));
        if let Some(key) = &self.api_key {
            post = post.bearer_auth(key);
        }
        let r = post.send().await.map_err(|e| upstream(&e))?;
        let dims = self.embedding_dims.map_or(
            relaymesh_protocol::messages::infer::MAX_EMBEDDING_DIMS,
            |d| d as usize,
        );
        let max = super::embeddings_answer_bytes(inputs.len(), dims);
        let body = super::read_capped(r, max).await.map_err(|e| upstream(&e))?;
        let answer: Value = serde_json::from_slice(&body).map_err(|e| upstream(&e))?;
        let mut data: Vec<(u64, Vec<f32>)> = answer["data"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|d| {
                        let v = serde_json::from_value(d["embedding"].clone()).ok()?;
                        Some((d["index"].as_u64()?, v))
                    })
                    .collect()
            })
            .unwrap_or_default();
        data.sort_by_key(|(i, _)| *i);
        let in_order = data.iter().enumerate().all(|(i, (j, _))| i as u64 == *j);
        if data.len() != inputs.len() || !in_order {
            return Err(upstream(&format!(
                "{} vectors for {} inputs",
                data.len(),
                inputs.len()
            )));
        }
        let tokens = answer["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
        Ok((
            data.into_iter().map(|(_, v)| v).collect(),
            u32::try_from(tokens).unwrap_or(u32::MAX),
        ))
    }

    fn body(&self, request: &GenRequest) -> (String, Value) {
        let s = &request.sampling;
        let mut body = match &request.prompt {
            Prompt::Chat(messages) => json!({ "messages": messages }),
            Prompt::Text(text) => json!({ "prompt": text }),
        };
        body["model"] = json!(self.model);
        body["stream"] = json!(true);
        body["stream_options"] = json!({ "include_usage": true });
        for (key, value) in [
            ("temperature", s.temperature.map(|v| json!(v))),
            ("top_p", s.top_p.map(|v| json!(v))),
            ("top_k", s.top_k.map(|v| json!(v))),
            ("seed", s.seed.map(|v| json!(v))),
            ("max_tokens", s.max_tokens.map(|v| json!(v))),
            ("stop", (!s.stop.is_empty()).then(|| json!(s.stop))),
            ("response_format", s.format.as_ref().map(response_format)),
        ] {
            if let Some(value) = value {
                body[key] = value;
            }
        }
        if let Some(n) = s.logprobs {
            match request.prompt {
                Prompt::Chat(_) => {
                    body["logprobs"] = json!(true);
                    body["top_logprobs"] = json!(n);
                }
                Prompt::Text(_) => body["logprobs"] = json!(n),
            }
        }
        let path = match request.prompt {
            Prompt::Chat(_) => "chat/completions",
            Prompt::Text(_) => "completions",
        };
        (format!("{}/{path}", self.url), body)
    }
}

/// What one SSE `data:` payload says.
enum Chunk {
    Logprobs(Vec<TokenLogprob>),
    Text(String),
    Finish(FinishReason),
    Usage(u32, u32),
}

/// A choice's log probabilities, in chat's shape (`content`: an entry per token) or
/// the completions API's (parallel lists), at most `top` alternatives each and
/// [`MAX_HELD_LOGPROBS`] tokens a chunk, each value told as a log probability.
fn parse_logprobs(logprobs: &Value, top: usize) -> Vec<TokenLogprob> {
    let prob = |token: &Value, logprob: &Value, bytes: &Value| {
        let bytes = serde_json::from_value::<Vec<u8>>(bytes.clone())
            .unwrap_or_else(|_| token.as_str().unwrap_or("").as_bytes().to_vec());
        TokenProb::new(bytes, logprob.as_f64().map_or(LOGPROB_FLOOR, |l| l as f32))
    };
    if let Some(content) = logprobs["content"].as_array() {
        return content
            .iter()
            .take(MAX_HELD_LOGPROBS)
            .map(|e| TokenLogprob {
                chosen: prob(&e["token"], &e["logprob"], &e["bytes"]),
                top: e["top_logprobs"]
                    .as_array()
                    .map(|alts| {
                        alts.iter()
                            .take(top)
                            .map(|a| prob(&a["token"], &a["logprob"], &a["bytes"]))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect();
    }
    let (Some(tokens), Some(logprobs_of)) = (
        logprobs["tokens"].as_array(),
        logprobs["token_logprobs"].as_array(),
    ) else {
        return Vec::new();
    };
    tokens
        .iter()
        .zip(logprobs_of)
        .take(MAX_HELD_LOGPROBS)
        .enumerate()
        .map(|(i, (token, logprob))| {
            let mut alts: Vec<TokenProb> = logprobs["top_logprobs"][i]
                .as_object()
                .map(|alts| {
                    alts.iter()
                        .map(|(t, l)| prob(&json!(t), l, &Value::Null))
                        .collect()
                })
                .unwrap_or_default();
            alts.sort_by(|a, b| b.logprob.total_cmp(&a.logprob));
            alts.truncate(top);
            TokenLogprob {
                chosen: prob(token, logprob, &Value::Null),
                top: alts,
            }
        })
        .collect()
}

fn parse_chunk(data: &Value, top: Option<u8>) -> Vec<Chunk> {
    let mut out = Vec::new();
    if let Some(choice) = data["choices"].get(0) {
        let text = choice["delta"]["content"]
            .as_str()
            .or_else(|| choice["text"].as_str())
            .unwrap_or("");
        // Only tokens that made text are told (an end-of-generation token, or a
        // reasoning one, makes none).
        if let Some(top) = top.filter(|_| !text.is_empty()) {
            let told = parse_logprobs(&choice["logprobs"], usize::from(top));
            if !told.is_empty() {
                out.push(Chunk::Logprobs(told));
            }
        }
        if !text.is_empty() {
            out.push(Chunk::Text(text.to_owned()));
        }
        match choice["finish_reason"].as_str() {
            Some("length") => out.push(Chunk::Finish(FinishReason::Length)),
            Some(_) => out.push(Chunk::Finish(FinishReason::Stop)),
            None => {}
        }
    }
    if let Some(usage) = data.get("usage").filter(|u| u.is_object()) {
        let n = |k: &str| usage[k].as_u64().unwrap_or(0).min(u32::MAX as u64) as u32;
        out.push(Chunk::Usage(n("prompt_tokens"), n("completion_tokens")));
    }
    out
}

#[async_trait::async_trait]
impl Backend for OpenAiBackend {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn slots(&self) -> (usize, usize) {
        self.slots.available()
    }

    fn embedding_dims(&self) -> Option<u32> {
        self.embedding_dims
    }

    async fn embed(&self, inputs: &[String], tenant: Tenant) -> Result<Embedded, BackendError> {
        let Some(dims) = self.embedding_dims else {
            return Err(BackendError::Invalid(format!(
                "model {}: its upstream made no embeddings when this node connected",
                self.info.name
            )));
        };
        let _slot = self.slots.acquire(tenant).await?;
        let (vectors, prompt_tokens) = self.embeddings(inputs, EMBED_TIMEOUT).await?;
        if vectors.iter().any(|v| v.len() != dims as usize) {
            return Err(BackendError::Upstream(format!(
                "the upstream's vectors are not all of its {dims} components"
            )));
        }
        Ok(Embedded {
            vectors,
            prompt_tokens,
            mesh: None,
        })
    }

    async fn generate(&self, request: GenRequest) -> Result<Generation, BackendError> {
        // Checked as for the embedded engine: the upstream compiles it the same way.
        if let Some(format) = &request.sampling.format {
            format.checked_schema().map_err(BackendError::Invalid)?;
        }
        let slot = self.slots.acquire(request.tenant).await?;
        let (url, body) = self.body(&request);
        let mut post = self.http.post(url).json(&body);
        if let Some(key) = &self.api_key {
            post = post.bearer_auth(key);
        }
        let response = post
            .send()
            .await
            .map_err(|e| BackendError::Upstream(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or(text);
            return Err(if status.is_client_error() {
                BackendError::Invalid(format!("upstream refused the request: {message}"))
            } else {
                BackendError::Upstream(format!("{status}: {message}"))
            });
        }
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let top = request.sampling.logprobs;
        tokio::spawn(async move {
            let _slot = slot;
            let mut bytes = response.bytes_stream();
            let mut buffer: Vec<u8> = Vec::new();
            let mut reason = None;
            let mut usage = (0, 0);
            let mut pieces = 0u32;
            'read: while let Some(chunk) = bytes.next().await {
                let Ok(chunk) = chunk else { break };
                buffer.extend_from_slice(&chunk);
                while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    let line = String::from_utf8_lossy(&line);
                    let Some(data) = line.trim().strip_prefix("data:") else {
                        continue;
                    };
                    let data = data.trim();
                    if data == "[DONE]" {
                        break 'read;
                    }
                    let Ok(value) = serde_json::from_str::<Value>(data) else {
                        continue;
                    };
                    for c in parse_chunk(&value, top) {
                        match c {
                            Chunk::Logprobs(told) => {
                                if tx.send(GenEvent::Logprobs(told)).await.is_err() {
                                    return;
                                }
                            }
                            Chunk::Text(text) => {
                                pieces += 1;
                                if tx.send(GenEvent::Text(text)).await.is_err() {
                                    return; // client gone: dropping the response cancels upstream
                                }
                            }
                            Chunk::Finish(r) => reason = Some(r),
                            Chunk::Usage(p, c) => usage = (p, c),
                        }
                    }
                }
                if buffer.len() > MAX_LINE {
                    break;
                }
            }
            let event = match reason {
                Some(reason) => GenEvent::Done(Finish {
                    reason,
                    prompt_tokens: usage.0,
                    // Without a usage report, count the streamed pieces (one per token).
                    completion_tokens: if usage.1 > 0 { usage.1 } else { pieces },
                    cached_tokens: 0,
                    stop: None,
                }),
                None => GenEvent::Failed("the upstream stream ended without finishing".into()),
            };
            let _ = tx.send(event).await;
        });
        Ok(Generation::new(rx, None))
    }
}

/// OpenAI's `response_format` for an output format.
fn response_format(format: &Format) -> Value {
    match format {
        Format::Json => json!({ "type": "json_object" }),
        Format::JsonSchema(schema) => json!({
            "type": "json_schema",
            "json_schema": {
                "name": "answer",
                "strict": true,
                "schema": serde_json::from_str::<Value>(schema).unwrap_or(Value::Null),
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_chat_and_completion_chunks() {
        let chat = json!({"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]});
        assert!(matches!(&parse_chunk(&chat, None)[..], [Chunk::Text(t)] if t == "Hi"));
        let done = json!({"choices":[{"text":"","finish_reason":"length"}],"usage":{"prompt_tokens":5,"completion_tokens":7}});
        assert!(matches!(
            &parse_chunk(&done, None)[..],
            [Chunk::Finish(FinishReason::Length), Chunk::Usage(5, 7)]
        ));
        let usage_only = json!({"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}});
        assert!(matches!(
            &parse_chunk(&usage_only, None)[..],
            [Chunk::Usage(1, 2)]
        ));
    }

    #[test]
    fn reads_log_probabilities_in_both_shapes() {
        let chat = json!({"choices":[{"delta":{"content":"Hé"},"finish_reason":null,
            "logprobs":{"content":[{"token":"Hé","logprob":-0.5,"bytes":[72,195,169],
                "top_logprobs":[{"token":"Hé","logprob":-0.5,"bytes":[72,195,169]},
                                {"token":"Hi","logprob":-1.5,"bytes":[72,105]},
                                {"token":"Ho","logprob":-2.5}]}]}}]});
        let [Chunk::Logprobs(told), Chunk::Text(_)] = &parse_chunk(&chat, Some(2))[..] else {
            panic!("log probabilities, then the text");
        };
        assert_eq!(told[0].chosen.bytes, "Hé".as_bytes());
        assert_eq!(told[0].top.len(), 2);
        assert_eq!(
            (told[0].top[1].text(), told[0].top[1].logprob),
            ("Hi".into(), -1.5)
        );
        // Not asked: not read.
        assert!(matches!(&parse_chunk(&chat, None)[..], [Chunk::Text(_)]));
        let legacy = json!({"choices":[{"text":" a b","finish_reason":null,
            "logprobs":{"tokens":[" a"," b"],"token_logprobs":[-0.25,-1.0],
                "top_logprobs":[{" c":-3.0," a":-0.25},{" b":-1.0}],"text_offset":[0,2]}}]});
        let [Chunk::Logprobs(told), Chunk::Text(_)] = &parse_chunk(&legacy, Some(1))[..] else {
            panic!("log probabilities, then the text");
        };
        assert_eq!(told.len(), 2);
        // Most likely first, cut to those asked for.
        assert_eq!(
            told[0].top.iter().map(TokenProb::text).collect::<Vec<_>>(),
            [" a"]
        );
        assert_eq!(told[1].chosen.logprob, -1.0);
    }
}
