//! The `ollama` backend: a local or remote Ollama server, through `ollama-rs`.
//!
//! The model's identity is Ollama's own digest (from `/api/tags`); its context
//! length, and the length of its embeddings, come from `/api/show`. Ollama applies its
//! own chat template. Embeddings go to Ollama's `/api/embed`.

use std::time::Duration;

use futures::StreamExt;
use ollama_rs::generation::chat::request::ChatMessageRequest;
use ollama_rs::generation::chat::{ChatMessage as OChatMessage, MessageRole};
use ollama_rs::generation::completion::request::GenerationRequest;
use ollama_rs::generation::parameters::FormatType;
use ollama_rs::models::ModelOptions;
use ollama_rs::Ollama;
use tokio::sync::mpsc;

use relaymesh_protocol::messages::infer::MAX_HELD_LOGPROBS;

use super::{
    Backend, BackendError, Embedded, Finish, FinishReason, Format, GenEvent, GenRequest,
    Generation, ModelDetails, ModelDigest, ModelInfo, Prompt, Role, Sampling, Slots, Tenant,
    TokenLogprob, TokenProb, EVENT_BUFFER,
};

/// Context length assumed when Ollama does not report one.
const FALLBACK_CONTEXT: u32 = 2048;

/// A model on an Ollama server.
pub struct OllamaBackend {
    info: ModelInfo,
    slots: Slots,
    client: Ollama,
    model: String,
    /// The length of the model's embeddings, where `/api/show` says it.
    embedding_dims: Option<u32>,
    http: reqwest::Client,
}

/// How long Ollama may take to embed one request's inputs.
const EMBED_TIMEOUT: Duration = Duration::from_secs(300);

/// What Ollama's `/api/embed` answers.
#[derive(serde::Deserialize)]
struct Embeddings {
    embeddings: Vec<Vec<f32>>,
    #[serde(default)]
    prompt_eval_count: u32,
}

#[derive(serde::Deserialize)]
struct Tags {
    models: Vec<Tag>,
}

#[derive(serde::Deserialize)]
struct Tag {
    name: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    size: u64,
}

impl OllamaBackend {
    /// Connects to `url`, checks that `model` is there, and learns its digest and
    /// context length.
    pub async fn connect(
        name: &str,
        url: &str,
        model: &str,
        slots: usize,
        queue: usize,
    ) -> Result<Self, BackendError> {
        let client = Ollama::try_new(url)
            .map_err(|e| BackendError::Invalid(format!("Ollama URL {url:?}: {e}")))?;
        let unreachable =
            |e: &dyn std::fmt::Display| BackendError::Upstream(format!("Ollama at {url}: {e}"));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| BackendError::Internal(e.to_string()))?;
        let tags: Tags = http
            .get(format!("{}api/tags", client.url_str()))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| unreachable(&e))?
            .json()
            .await
            .map_err(|e| unreachable(&e))?;
        let tag = tags
            .models
            .iter()
            .find(|t| t.name == model || t.model == model || t.name == format!("{model}:latest"))
            .ok_or_else(|| {
                let names: Vec<&str> = tags.models.iter().map(|t| t.name.as_str()).collect();
                BackendError::Invalid(format!(
                    "Ollama at {url} has no model {model:?} (it has: {})",
                    names.join(", ")
                ))
            })?;
        let show = client
            .show_model_info(model.to_owned())
            .await
            .map_err(|e| unreachable(&e))?;
        let context_length = show
            .model_info
            .iter()
            .find(|(k, _)| k.ends_with(".context_length"))
            .and_then(|(_, v)| v.as_u64())
            .map_or(FALLBACK_CONTEXT, |n| n.min(u32::MAX as u64) as u32);
        let embedding_dims = show
            .model_info
            .iter()
            .find(|(k, _)| k.ends_with(".embedding_length"))
            .and_then(|(_, v)| v.as_u64())
            .and_then(|n| u32::try_from(n).ok())
            .filter(|&n| n > 0);
        let info = ModelInfo {
            name: name.to_owned(),
            digest: (!tag.digest.is_empty()).then(|| ModelDigest::Ollama(tag.digest.clone())),
            manifest: None,
            context_length,
            max_token_bytes: super::OPAQUE_TOKEN_BYTES,
            kind: "ollama",
            details: ModelDetails {
                format: "gguf".into(),
                size_bytes: tag.size,
                template: show.template,
                ..ModelDetails::default()
            },
        };
        tracing::info!(model = name, upstream = %url, remote_model = model, digest = %tag.digest, "Ollama model ready");
        Ok(Self {
            info,
            slots: Slots::new(slots, queue, Duration::from_secs(2)),
            client,
            model: model.to_owned(),
            embedding_dims,
            http,
        })
    }
}

fn options(s: &Sampling) -> ModelOptions {
    let mut o = ModelOptions::default();
    if let Some(t) = s.temperature {
        o = o.temperature(t as f32);
    }
    if let Some(p) = s.top_p {
        o = o.top_p(p as f32);
    }
    if let Some(k) = s.top_k {
        o = o.top_k(k.min(u32::MAX as usize) as u32);
    }
    if let Some(seed) = s.seed {
        // Ollama takes an i32 seed.
        o = o.seed(seed as i32);
    }
    if let Some(n) = s.max_tokens {
        o = o.num_predict(n.min(i32::MAX as u32) as i32);
    }
    if !s.stop.is_empty() {
        o = o.stop(s.stop.clone());
    }
    o
}

/// The log probabilities an Ollama answer's part tells, as an event, if the request
/// `asked` (at most [`MAX_HELD_LOGPROBS`] a part). Only the chosen tokens': the client
/// library reads no alternatives.
fn told(
    asked: bool,
    logprobs: Option<Vec<ollama_rs::generation::parameters::LogprobsData>>,
) -> Option<GenEvent> {
    let tokens: Vec<TokenLogprob> = logprobs
        .filter(|_| asked)?
        .into_iter()
        .take(MAX_HELD_LOGPROBS)
        .map(|d| TokenLogprob {
            chosen: TokenProb::new(
                if d.bytes.is_empty() {
                    d.token.into_bytes()
                } else {
                    d.bytes.iter().map(|&b| b.clamp(0, 255) as u8).collect()
                },
                d.logprob as f32,
            ),
            top: Vec::new(),
        })
        .collect();
    (!tokens.is_empty()).then_some(GenEvent::Logprobs(tokens))
}

fn finish(done_reason_length: bool, prompt: u64, eval: u64) -> GenEvent {
    GenEvent::Done(Finish {
        reason: if done_reason_length {
            FinishReason::Length
        } else {
            FinishReason::Stop
        },
        prompt_tokens: prompt.min(u32::MAX as u64) as u32,
        completion_tokens: eval.min(u32::MAX as u64) as u32,
        cached_tokens: 0,
        stop: None,
    })
}

#[async_trait::async_trait]
impl Backend for OllamaBackend {
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
                "model {}: Ollama reports no embedding length for it",
                self.info.name
            )));
        };
        let _slot = self.slots.acquire(tenant).await?;
        let upstream = |e: &dyn std::fmt::Display| BackendError::Upstream(format!("Ollama: {e}"));
        let r = self
            .http
            .post(format!("{}api/embed", self.client.url_str()))
            .timeout(EMBED_TIMEOUT)
            // Ollama cuts long inputs by default; bytes not embedded would be billed.
            .json(&serde_json::json!({ "model": self.model, "input": inputs, "truncate": false }))
            .send()
            .await
            .map_err(|e| upstream(&e))?;
        let max = super::embeddings_answer_bytes(inputs.len(), dims as usize);
        let body = super::read_capped(r, max).await.map_err(|e| upstream(&e))?;
        let answer: Embeddings = serde_json::from_slice(&body).map_err(|e| upstream(&e))?;
        let fits = answer.embeddings.len() == inputs.len()
            && answer.embeddings.iter().all(|v| v.len() == dims as usize);
        if !fits {
            return Err(upstream(&format!(
                "{} vectors for {} inputs, not all of its {dims} components",
                answer.embeddings.len(),
                inputs.len()
            )));
        }
        Ok(Embedded {
            vectors: answer.embeddings,
            prompt_tokens: answer.prompt_eval_count,
            mesh: None,
        })
    }

    async fn generate(&self, request: GenRequest) -> Result<Generation, BackendError> {
        let slot = self.slots.acquire(request.tenant).await?;
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let opts = options(&request.sampling);
        let format = match &request.sampling.format {
            None => None,
            Some(Format::Json) => Some(FormatType::Json),
            // Checked as for the embedded engine: the upstream compiles it the same way.
            Some(format @ Format::JsonSchema(_)) => Some(
                serde_json::from_str::<FormatType>(
                    &format.checked_schema().map_err(BackendError::Invalid)?,
                )
                .map_err(|e| BackendError::Invalid(format!("the JSON schema: {e}")))?,
            ),
        };
        let limit = request.sampling.max_tokens;
        let asked = request.sampling.logprobs.is_some();
        let broke = || GenEvent::Failed("the connection to Ollama broke".into());
        let upstream = |e: ollama_rs::error::OllamaError| BackendError::Upstream(e.to_string());
        match request.prompt {
            Prompt::Chat(messages) => {
                let messages = messages
                    .into_iter()
                    .map(|m| {
                        let role = match m.role {
                            Role::System => MessageRole::System,
                            Role::User => MessageRole::User,
                            Role::Assistant => MessageRole::Assistant,
                        };
                        OChatMessage::new(role, m.content)
                    })
                    .collect();
                let mut req = ChatMessageRequest::new(self.model.clone(), messages).options(opts);
                if let Some(format) = format {
                    req = req.format(format);
                }
                if let Some(n) = request.sampling.logprobs {
                    req = req.logprobs(true).top_logprobs(u32::from(n));
                }
                let mut stream = self
                    .client
                    .send_chat_messages_stream(req)
                    .await
                    .map_err(upstream)?;
                tokio::spawn(async move {
                    let _slot = slot;
                    while let Some(item) = stream.next().await {
                        let event = match item {
                            Ok(r) if r.done => {
                                let f = r.final_data.unwrap_or(
                                    ollama_rs::generation::chat::ChatMessageFinalResponseData {
                                        total_duration: 0,
                                        load_duration: 0,
                                        prompt_eval_count: 0,
                                        prompt_eval_duration: 0,
                                        eval_count: 0,
                                        eval_duration: 0,
                                    },
                                );
                                if !r.message.content.is_empty() {
                                    if let Some(told) = told(asked, r.logprobs) {
                                        let _ = tx.send(told).await;
                                    }
                                    let _ = tx.send(GenEvent::Text(r.message.content)).await;
                                }
                                let hit_limit = limit.is_some_and(|l| f.eval_count >= l as u64);
                                let _ = tx
                                    .send(finish(hit_limit, f.prompt_eval_count, f.eval_count))
                                    .await;
                                return;
                            }
                            Ok(r) => {
                                if let Some(told) = told(asked, r.logprobs) {
                                    if tx.send(told).await.is_err() {
                                        return;
                                    }
                                }
                                GenEvent::Text(r.message.content)
                            }
                            Err(()) => broke(),
                        };
                        let failed = matches!(event, GenEvent::Failed(_));
                        if tx.send(event).await.is_err() || failed {
                            return;
                        }
                    }
                    let _ = tx.send(broke()).await;
                });
            }
            Prompt::Text(text) => {
                let mut req = GenerationRequest::new(self.model.clone(), text)
                    .raw(true)
                    .options(opts);
                if let Some(format) = format {
                    req = req.format(format);
                }
                if let Some(n) = request.sampling.logprobs {
                    req = req.logprobs(true).top_logprobs(u32::from(n));
                }
                let mut stream = self.client.generate_stream(req).await.map_err(upstream)?;
                tokio::spawn(async move {
                    let _slot = slot;
                    while let Some(item) = stream.next().await {
                        let Ok(batch) = item else {
                            let _ = tx.send(broke()).await;
                            return;
                        };
                        for r in batch {
                            if !r.response.is_empty() {
                                if let Some(told) = told(asked, r.logprobs) {
                                    if tx.send(told).await.is_err() {
                                        return;
                                    }
                                }
                                if tx.send(GenEvent::Text(r.response)).await.is_err() {
                                    return;
                                }
                            }
                            if r.done {
                                let eval = r.eval_count.unwrap_or(0);
                                let hit_limit = limit.is_some_and(|l| eval >= l as u64);
                                let _ = tx
                                    .send(finish(hit_limit, r.prompt_eval_count.unwrap_or(0), eval))
                                    .await;
                                return;
                            }
                        }
                    }
                    let _ = tx.send(broke()).await;
                });
            }
        }
        Ok(Generation::new(rx, None))
    }
}
