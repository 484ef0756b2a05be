//! Serving backends: what runs a model behind the node.
//!
//! A [`Backend`] takes a backend-neutral [`GenRequest`] (chat messages or a raw
//! prompt, sampling options) and streams [`GenEvent`]s back over a bounded channel:
//! text pieces as they are produced, then one [`Finish`] with the token counts. The
//! HTTP APIs (OpenAI and Ollama shapes) and, later, the mesh's inference streams sit on
//! top of this one trait. Dropping the [`Generation`] stops the work and frees its slot.
//!
//! Three backends: [`embedded`] (llama.cpp on a GGUF file, the default), [`ollama`] (an
//! Ollama server through `ollama-rs`) and [`openai`] (any OpenAI-compatible server).

pub mod embedded;
mod format;
pub mod ollama;
pub mod ollama_store;
pub mod openai;
mod registry;
mod slots;
mod spec;
mod stop;

use std::sync::Arc;
use std::time::Duration;

use relaymesh_protocol::messages::manifest::SignedManifest;
use relaymesh_protocol::Digest;
use tokio::sync::mpsc;

pub use format::Format;
pub use registry::{Ended, Measured, Models, Perf, ServedModel};
pub use slots::{SlotGuard, Slots, Tenant};
pub use spec::{BackendSpec, SpecError};
pub use stop::StopMatcher;

/// Events buffered between a backend and its consumer; a slow consumer makes the
/// backend wait (backpressure), a gone one makes it stop.
pub const EVENT_BUFFER: usize = 64;

/// Who wrote a chat message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the assistant.
    System,
    /// The person asking.
    User,
    /// The model.
    Assistant,
}

impl Role {
    /// The name templates use.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// What it says.
    pub content: String,
}

/// What the model is asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prompt {
    /// A conversation, formatted with the model's chat template.
    Chat(Vec<ChatMessage>),
    /// Raw text, continued as it is (no template).
    Text(String),
}

/// How tokens are chosen. `None` leaves the backend's default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sampling {
    /// 0 means greedy (always the most likely token).
    pub temperature: Option<f64>,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches p.
    pub top_p: Option<f64>,
    /// Keep only the k most likely tokens.
    pub top_k: Option<usize>,
    /// Seed for the sampler; the same seed and prompt give the same text.
    pub seed: Option<u64>,
    /// Most tokens to generate.
    pub max_tokens: Option<u32>,
    /// Generation stops before any of these strings; they are not returned.
    pub stop: Vec<String>,
    /// The shape the answer must take; `None`: free text.
    pub format: Option<Format>,
    /// Whether to tell each token's log probability, and how many of the most likely
    /// alternatives with it (at most [`MAX_TOP_LOGPROBS`]); `None`: not told.
    pub logprobs: Option<u8>,
}

/// Most alternatives a request may ask to be told per token.
pub use relaymesh_protocol::messages::infer::MAX_TOP_LOGPROBS;

/// A token and its log probability.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenProb {
    /// The token's text as bytes (a token may end inside a character).
    pub bytes: Vec<u8>,
    /// Its natural-log probability under the model, before sampling's temperature,
    /// top-k or top-p.
    pub logprob: f32,
}

/// The log probability told for one too small for an f32, or for a value that is no
/// number at all (as OpenAI tells it).
pub const LOGPROB_FLOOR: f32 = -9999.0;

/// `logprob` as a log probability is told: at most 0, and [`LOGPROB_FLOOR`] where it
/// is not finite.
pub fn told_logprob(logprob: f32) -> f32 {
    if logprob.is_finite() {
        logprob.min(0.0)
    } else {
        LOGPROB_FLOOR
    }
}

impl TokenProb {
    /// `bytes` at `logprob`, told as a log probability ([`told_logprob`]).
    pub fn new(bytes: Vec<u8>, logprob: f32) -> Self {
        Self {
            bytes,
            logprob: told_logprob(logprob),
        }
    }

    /// The text, with a character cut by the token's end replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// One generated token's log probability, and the most likely tokens at its place
/// (most likely first, as many as asked).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// The token generated.
    pub chosen: TokenProb,
    /// The alternatives.
    pub top: Vec<TokenProb>,
}

/// Adds `tokens` to the log probabilities `held` for the text to come, as many as
/// [`MAX_HELD_LOGPROBS`] (an upstream that tells more before its text is cut there).
///
/// [`MAX_HELD_LOGPROBS`]: relaymesh_protocol::messages::infer::MAX_HELD_LOGPROBS
pub fn hold_logprobs(held: &mut Vec<TokenLogprob>, tokens: Vec<TokenLogprob>) {
    let room = relaymesh_protocol::messages::infer::MAX_HELD_LOGPROBS.saturating_sub(held.len());
    held.extend(tokens.into_iter().take(room));
}

/// One generation request.
#[derive(Clone, Debug, PartialEq)]
pub struct GenRequest {
    /// The prompt.
    pub prompt: Prompt,
    /// Sampling options.
    pub sampling: Sampling,
    /// On whose behalf it runs: backends share their slots and compute fairly among
    /// tenants (see [`Tenant`]).
    pub tenant: Tenant,
}

impl GenRequest {
    /// A conversation, with the backend's default sampling.
    pub fn chat(messages: Vec<ChatMessage>) -> Self {
        Self {
            prompt: Prompt::Chat(messages),
            sampling: Sampling::default(),
            tenant: Tenant::Local,
        }
    }

    /// Raw text to continue, with the backend's default sampling.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            prompt: Prompt::Text(text.into()),
            sampling: Sampling::default(),
            tenant: Tenant::Local,
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// The model ended its answer, or a stop sequence was met.
    Stop,
    /// `max_tokens` (or the context) was reached.
    Length,
}

/// The end of a generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finish {
    /// Why it ended.
    pub reason: FinishReason,
    /// Tokens in the prompt (as the backend counted them).
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Prompt tokens read from the cache of an earlier request of the same tenant, not
    /// again (0 where the backend does not say).
    pub cached_tokens: u32,
    /// The request's stop sequence that ended it, where the backend tells (the
    /// embedded engine does; upstreams do not).
    pub stop: Option<String>,
}

/// What a backend streams. More kinds of event may come in later versions: match
/// the ones you need and pass over the rest.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum GenEvent {
    /// The next piece of text (one token's worth, or more where a token ends mid
    /// character or a stop sequence was held back).
    Text(String),
    /// For a request that asked: the log probabilities of the tokens whose text the
    /// next `Text` begins (tokens whose text never comes, a stop sequence's, are not
    /// told).
    Logprobs(Vec<TokenLogprob>),
    /// Generation is over; nothing follows.
    Done(Finish),
    /// Generation failed part way; nothing follows.
    Failed(String),
}

/// A running generation. Dropping it cancels the work and frees the slot.
pub struct Generation {
    events: mpsc::Receiver<GenEvent>,
    // Held until the consumer is done, so the slot stays taken while it reads.
    _slot: Option<SlotGuard>,
    provenance: Option<Provenance>,
}

/// Who served a mesh generation and what the app's acks metered, kept up to date by
/// the gateway while the generation runs (a failover adds a supplier).
#[derive(Clone, Debug, Default)]
pub struct Provenance(Arc<std::sync::Mutex<MeshReport>>);

/// A snapshot of a [`Provenance`], as the API reports it (`usage.relaymesh`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MeshReport {
    /// Peer ids of the suppliers, first to last.
    pub suppliers: Vec<String>,
    /// Bytes of the answer each supplier produced, in the same order: after a failover
    /// the first `answer_bytes[0]` bytes came from the first supplier, and so on.
    pub answer_bytes: Vec<u64>,
    /// Compute units of the requests and acked increments, at each session's formula:
    /// what the suppliers' receipts add up to.
    pub compute_units: u64,
    /// Output bytes the app acknowledged.
    pub acked_bytes: u64,
    /// Milliseconds the request waited in this node's queue for a free supplier slot.
    pub queued_ms: u64,
}

impl Provenance {
    /// What is known now.
    pub fn report(&self) -> MeshReport {
        self.0.lock().expect("provenance lock").clone()
    }

    /// Changes the record.
    pub fn update(&self, f: impl FnOnce(&mut MeshReport)) {
        f(&mut self.0.lock().expect("provenance lock"))
    }

    /// The suppliers, comma-separated (the `x-relaymesh-supplier` header).
    pub fn header(&self) -> String {
        self.report().header()
    }
}

impl MeshReport {
    /// The suppliers, as the `x-relaymesh-supplier` header names them.
    pub fn header(&self) -> String {
        self.suppliers.join(",")
    }
}

impl Generation {
    /// Wraps a receiver; `slot` is released when the generation is dropped.
    pub fn new(events: mpsc::Receiver<GenEvent>, slot: Option<SlotGuard>) -> Self {
        Self {
            events,
            _slot: slot,
            provenance: None,
        }
    }

    /// Marks a generation served by the mesh, recorded in `provenance`.
    pub fn with_provenance(mut self, provenance: Provenance) -> Self {
        self.provenance = Some(provenance);
        self
    }

    /// Who serves it on the mesh; `None` when this node runs it itself.
    pub fn provenance(&self) -> Option<&Provenance> {
        self.provenance.as_ref()
    }

    /// The next event; `None` only if the backend vanished without a `Done`.
    pub async fn next(&mut self) -> Option<GenEvent> {
        self.events.recv().await
    }
}

/// What a backend tells about its model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    /// The name clients use.
    pub name: String,
    /// The model's identity: blake3 of the GGUF (embedded), Ollama's digest, or none
    /// (an opaque OpenAI-compatible upstream).
    pub digest: Option<ModelDigest>,
    /// The Source's signed manifest, when one sits next to the GGUF file.
    pub manifest: Option<SignedManifest>,
    /// Context length in tokens.
    pub context_length: u32,
    /// Most bytes one streamed token carries: the vocabulary's longest token where the
    /// backend can tell, else [`OPAQUE_TOKEN_BYTES`]. Sessions cap tokens at it, so a
    /// supplier cannot bill junk bytes; longer pieces are sent as several frames.
    pub max_token_bytes: u32,
    /// Which backend: `embedded`, `ollama` or `openai`.
    pub kind: &'static str,
    /// Free-form facts for `/api/show` (architecture, quantisation, size, template).
    pub details: ModelDetails,
}

/// The per-token byte cap of a backend that cannot tell its vocabulary (an Ollama or
/// OpenAI-compatible upstream): longer text pieces go out as several frames, so any
/// cap works; this one is above nearly every real token.
pub const OPAQUE_TOKEN_BYTES: u32 = 32;

/// A model's identity, as the backend knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelDigest {
    /// blake3 of the GGUF file (what ads and manifests pin).
    Gguf(Digest),
    /// Ollama's own digest (sha256 of its manifest), as Ollama reports it.
    Ollama(String),
}

impl ModelDigest {
    /// The GGUF digest, if this is one.
    pub fn gguf(&self) -> Option<Digest> {
        match self {
            ModelDigest::Gguf(d) => Some(*d),
            ModelDigest::Ollama(_) => None,
        }
    }
}

impl std::fmt::Display for ModelDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelDigest::Gguf(d) => write!(f, "blake3:{}", d.to_hex()),
            ModelDigest::Ollama(d) => f.write_str(d),
        }
    }
}

/// Descriptive facts about a model (shown, never relied on).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ModelDetails {
    /// Model file format (`gguf`).
    pub format: String,
    /// Architecture (`llama`).
    pub family: String,
    /// Size label (`135M`).
    pub parameter_size: String,
    /// Quantisation (`Q4_1`).
    pub quantization_level: String,
    /// File size in bytes, if known.
    pub size_bytes: u64,
    /// The chat template as the backend applies it.
    pub template: String,
    /// Where the engine runs the layers: `CPU`, or the GPU backend and device
    /// (`CUDA (NVIDIA H100)`); empty for an upstream server.
    pub device: String,
    /// Layers on the GPU, of the model's layers (the embedded engine only).
    pub gpu_layers: Option<(u32, u32)>,
}

/// Why a backend refused or failed a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// Every slot is taken and the queue is full.
    #[error("all {slots} slots are busy and {queued} requests are queued; retry shortly")]
    Busy {
        /// Slots in all.
        slots: usize,
        /// Requests already waiting.
        queued: usize,
        /// A hint for `Retry-After`.
        retry_after: Duration,
    },
    /// The prompt does not fit the context.
    #[error("the prompt is {prompt_tokens} tokens but the model's context is {context_length}")]
    PromptTooLong {
        /// Tokens in the prompt.
        prompt_tokens: u32,
        /// The model's context.
        context_length: u32,
    },
    /// The request is malformed for this backend (e.g. a bad sampling value).
    #[error("{0}")]
    Invalid(String),
    /// The upstream server failed or could not be reached.
    #[error("upstream: {0}")]
    Upstream(String),
    /// Nobody can serve it now (no supplier reachable, all refused).
    #[error("{0}")]
    Unavailable(String),
    /// The app's credit does not cover a session (suppliers refused it).
    #[error("{0}")]
    PaymentRequired(String),
    /// What the request asks for does not exist (a pinned digest nobody serves).
    #[error("{0}")]
    NotFound(String),
    /// A bug or an engine failure.
    #[error("internal: {0}")]
    Internal(String),
}

/// A model server behind the node.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The model and its identity.
    fn info(&self) -> &ModelInfo;

    /// Free and total slots (for ads and 503s).
    fn slots(&self) -> (usize, usize);

    /// Starts a generation: waits for a slot (bounded queue) and returns the stream,
    /// or refuses at once (busy, prompt too long, invalid).
    async fn generate(&self, request: GenRequest) -> Result<Generation, BackendError>;

    /// Tokens `prompt` comes to as the model reads it (its chat template applied), or
    /// `None` where the backend cannot tell (only the embedded engine holds the
    /// tokenizer; an upstream's and the mesh's are elsewhere).
    fn count_tokens(&self, prompt: &Prompt) -> Result<Option<u32>, BackendError> {
        let _ = prompt;
        Ok(None)
    }

    /// The length of the vectors [`Backend::embed`] makes; `None` where it makes none
    /// (a mesh model: the best supplier's, where it serves embeddings).
    fn embedding_dims(&self) -> Option<u32> {
        None
    }

    /// Embeddings of `inputs`, one vector each, in order. The embedded engine makes
    /// them, and the mesh's suppliers that advertise them; other backends refuse.
    async fn embed(&self, inputs: &[String], tenant: Tenant) -> Result<Embedded, BackendError> {
        let _ = (inputs, tenant);
        Err(BackendError::Invalid(format!(
            "model {} ({} backend) makes no embeddings: only a model run from a GGUF file by this node or a mesh supplier does, so far",
            self.info().name,
            self.info().kind
        )))
    }
}

/// An upstream's answer body, read up to `max` bytes (an upstream is not trusted to
/// bound it: found by review); an answer other than a success is an error naming its
/// status and the start of what it said (its first 300 characters, of at most 4 KiB
/// read).
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, String> {
    let status = response.status();
    let cap = if status.is_success() { max } else { 4096 };
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > cap {
            if !status.is_success() {
                break;
            }
            return Err(format!("the answer is longer than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        let why: String = String::from_utf8_lossy(&body).chars().take(300).collect();
        return Err(format!("{status}: {why}"));
    }
    Ok(body)
}

/// Bytes an upstream's JSON answer of `inputs` vectors of `dims` components may take:
/// 32 a component (a float in JSON text, with its comma) and 64 KiB besides.
pub(crate) fn embeddings_answer_bytes(inputs: usize, dims: usize) -> usize {
    inputs
        .saturating_mul(dims)
        .saturating_mul(32)
        .saturating_add(64 * 1024)
}

/// Embeddings: one vector per input, and the tokens read.
#[derive(Clone, Debug, PartialEq)]
pub struct Embedded {
    /// Unit-length vectors, one per input, in order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens of every input together.
    pub prompt_tokens: u32,
    /// Who made them and what the app's ack metered, for embeddings made on the mesh.
    pub mesh: Option<MeshReport>,
}

/// A shared backend.
pub type SharedBackend = Arc<dyn Backend>;
