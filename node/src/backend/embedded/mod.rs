//! The embedded engine: llama.cpp (through `llama-cpp-2`) runs a GGUF model in the
//! node's own process.
//!
//! One model is loaded once; one llama.cpp context holds a KV cache of `slots ×
//! context` tokens, one sequence per slot, and one thread runs every generation in
//! it (continuous batching, see [`decode_loop`]): each step decodes the next token of
//! every running stream in a single batch. Requests reach that thread over a bounded
//! channel after taking a slot ([`Slots`]: a bounded queue, then 503); text comes back
//! over each request's own bounded channel. Dropping a [`Generation`] cancels it: its
//! sequence leaves the KV cache at the next step and its slot is freed.
//!
//! The chat template is the GGUF's own Jinja template rendered by minijinja (see
//! [`ChatTemplate`]), not llama.cpp's `llama_chat_apply_template`: that one does not
//! run Jinja, it recognises some forty known templates by their text and formats
//! those itself, so a model with any other template would be formatted wrongly; the
//! full Jinja engine of llama.cpp lives in its `common` library, which this crate does
//! not build. Tokens are turned back into text by llama.cpp (`token_to_piece`), with
//! the bytes of an unfinished UTF-8 character held back ([`utf8`]).

mod decode_loop;
mod embed;
mod load;
mod log;
mod manifest_file;
mod sampler;
mod schedule;
mod sequence;
mod template;
mod utf8;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use tokio::sync::mpsc;

pub use load::digest_file;
pub use manifest_file::{manifest_path, read_manifest, write_manifest, ManifestFileError};
pub use sampler::DEFAULT_TEMPERATURE;
pub use sampler::{grammar, FORMAT_FAILURE};
pub use template::ChatTemplate;

use super::{
    Backend, BackendError, Embedded, GenEvent, GenRequest, Generation, ModelInfo, Prompt, Sampling,
    Slots, Tenant, EVENT_BUFFER,
};
use sequence::Job;

/// Default KV cache tokens per slot (less where the model was trained on less).
pub const DEFAULT_CONTEXT: u32 = 4096;

/// Options of the embedded engine.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Concurrent generations (sequences in the one context).
    pub slots: usize,
    /// Requests that may wait for a slot; more are refused (503).
    pub queue: usize,
    /// Tokens generated when a request sets no limit.
    pub default_max_tokens: u32,
    /// Show progress while hashing and loading (a bar on a terminal).
    pub progress: bool,
    /// KV cache tokens per slot: the longest prompt plus answer. `None`:
    /// [`DEFAULT_CONTEXT`] or the model's training context if smaller.
    pub context: Option<u32>,
    /// Layers offloaded to the GPU (in builds with a GPU feature); `None`: all.
    pub gpu_layers: Option<u32>,
    /// CPU threads; `None`: one per available core.
    pub threads: Option<usize>,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            slots: 1,
            queue: 8,
            default_max_tokens: 1024,
            progress: true,
            context: None,
            gpu_layers: None,
            threads: None,
        }
    }
}

/// Why a model did not load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a GGUF model this engine runs.
    #[error("{path}: {why}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The manifest next to the file is wrong.
    #[error(transparent)]
    Manifest(#[from] ManifestFileError),
}

/// llama.cpp's process-wide state, initialised once and never freed (several models
/// may be loaded in one process).
fn llama_backend() -> &'static LlamaBackend {
    static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();
    BACKEND.get_or_init(|| {
        log::install();
        LlamaBackend::init().expect("llama.cpp's backend is initialised only here")
    })
}

/// A GGUF model served in process.
pub struct EmbeddedBackend {
    info: ModelInfo,
    slots: Slots,
    model: Arc<LlamaModel>,
    template: ChatTemplate,
    /// Tokens per sequence.
    context: u32,
    /// CPU threads llama.cpp uses.
    threads: i32,
    default_max_tokens: u32,
    /// To the decode loop; a job is only sent with a slot (or by `greedy_ids`).
    jobs: mpsc::Sender<Job>,
    /// The decode loop's thread, joined when the backend goes.
    decode_thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for EmbeddedBackend {
    /// Ends the decode loop (closing its job channel) and waits for it: at most the
    /// step it is in.
    fn drop(&mut self) {
        drop(std::mem::replace(&mut self.jobs, mpsc::channel(1).0));
        if let Some(thread) = self.decode_thread.take() {
            let _ = thread.join();
        }
    }
}

impl EmbeddedBackend {
    /// Token ids of the prompt `request` makes (chat template applied).
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>, BackendError> {
        Ok(self
            .tokenize(prompt)?
            .iter()
            .map(|t| t.0.try_into().unwrap_or(0))
            .collect())
    }

    /// Token ids of a greedy completion of `prompt`, the end-of-generation token
    /// included (for comparisons with other engines); blocking (call it outside the
    /// async runtime). Runs in the decode loop like any request, without a slot.
    pub fn greedy_ids(&self, prompt: &Prompt, max_tokens: u32) -> Result<Vec<u32>, BackendError> {
        let record = Arc::new(Mutex::new(Vec::new()));
        let sampling = Sampling {
            temperature: Some(0.0),
            max_tokens: Some(max_tokens),
            ..Sampling::default()
        };
        let (mut job, mut events) = self.job(self.tokenize(prompt)?, &sampling, None)?;
        job.record = Some(record.clone());
        self.jobs
            .blocking_send(job)
            .map_err(|_| BackendError::Internal("the decode loop has stopped".into()))?;
        loop {
            match events.blocking_recv() {
                Some(GenEvent::Done(_)) => break,
                Some(GenEvent::Failed(why)) => return Err(BackendError::Internal(why)),
                Some(GenEvent::Text(_) | GenEvent::Logprobs(_)) => {}
                None => return Err(BackendError::Internal("the decode loop has stopped".into())),
            }
        }
        let ids = record.lock().expect("record lock").clone();
        Ok(ids)
    }

    fn tokenize(
        &self,
        prompt: &Prompt,
    ) -> Result<Vec<llama_cpp_2::token::LlamaToken>, BackendError> {
        let ids = self.rendered(prompt)?;
        if ids.is_empty() {
            return Err(BackendError::Invalid("the prompt is empty".into()));
        }
        if ids.len() >= self.context as usize {
            return Err(BackendError::PromptTooLong {
                prompt_tokens: ids.len().try_into().unwrap_or(u32::MAX),
                context_length: self.context,
            });
        }
        Ok(ids)
    }

    /// The tokens of `prompt` with the chat template applied, however many.
    fn rendered(
        &self,
        prompt: &Prompt,
    ) -> Result<Vec<llama_cpp_2::token::LlamaToken>, BackendError> {
        let text = match prompt {
            Prompt::Chat(messages) => self
                .template
                .apply(messages)
                .map_err(BackendError::Invalid)?,
            Prompt::Text(text) => text.clone(),
        };
        // Control tokens written in the text (`<|im_start|>`) are parsed as such, as
        // the template means them; a BOS is added where the model asks for one (the
        // template is rendered with an empty `bos_token`), as llama-server does.
        Ok(self.model.vocab().tokenize(text.as_bytes(), true, true))
    }

    /// A job for the decode loop, and the receiver of its events.
    /// `prompt`: its tokens; `rules`: the grammar of the output format, if `sampling`
    /// has one.
    fn job(
        &self,
        prompt: Vec<llama_cpp_2::token::LlamaToken>,
        sampling: &Sampling,
        rules: Option<&str>,
    ) -> Result<(Job, mpsc::Receiver<GenEvent>), BackendError> {
        let sampler = sampler::chain(sampling)?;
        let grammar = rules
            .map(|rules| sampler::grammar_sampler(&self.model, rules))
            .transpose()?;
        let room = self.context as usize - prompt.len();
        let max_new = (sampling.max_tokens.unwrap_or(self.default_max_tokens) as usize).min(room);
        let (events, rx) = mpsc::channel(EVENT_BUFFER);
        Ok((
            Job {
                prompt,
                sampler,
                grammar,
                stop: sampling.stop.clone(),
                max_new,
                events,
                record: None,
                slot: None,
                tenant: Tenant::Local,
                logprobs: sampling.logprobs,
            },
            rx,
        ))
    }
}

#[async_trait::async_trait]
impl Backend for EmbeddedBackend {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn slots(&self) -> (usize, usize) {
        self.slots.available()
    }

    fn embedding_dims(&self) -> Option<u32> {
        // A vector longer than a frame carries is not offered to the mesh (found by
        // review: such a model did the work, then failed to send it).
        u32::try_from(self.model.n_embd_out())
            .ok()
            .filter(|&d| d as usize <= relaymesh_protocol::messages::infer::MAX_EMBEDDING_DIMS)
    }

    async fn embed(&self, inputs: &[String], tenant: Tenant) -> Result<Embedded, BackendError> {
        self.embed_texts(inputs, tenant).await
    }

    fn count_tokens(&self, prompt: &Prompt) -> Result<Option<u32>, BackendError> {
        let ids = self.rendered(prompt)?;
        Ok(Some(ids.len().try_into().unwrap_or(u32::MAX)))
    }

    async fn generate(&self, request: GenRequest) -> Result<Generation, BackendError> {
        // What can be refused is refused before the request waits for a place.
        let prompt = self.tokenize(&request.prompt)?;
        sampler::check(&request.sampling)?;
        // The slot travels with the job: it is freed when the decode loop lets the
        // sequence go (finished and delivered, or cancelled), not when the client leaves.
        let mut slot = self.slots.acquire(request.tenant).await?;
        // An app's schema is compiled off the async threads, while its place is held
        // (by the compiling thread: a client that leaves does not free it early); its
        // cost is the app's choice, bounded by `Format::checked_schema`.
        let rules = match request.sampling.format.clone() {
            Some(format) => {
                let (held, rules) = tokio::task::spawn_blocking(move || {
                    let rules = sampler::grammar(&format);
                    (slot, rules)
                })
                .await
                .map_err(|_| BackendError::Internal("compiling the grammar failed".into()))?;
                slot = held;
                Some(rules?)
            }
            None => None,
        };
        let (mut job, events) = self.job(prompt, &request.sampling, rules.as_deref())?;
        job.tenant = request.tenant;
        job.slot = Some(slot);
        self.jobs
            .send(job)
            .await
            .map_err(|_| BackendError::Internal("the decode loop has stopped".into()))?;
        Ok(Generation::new(events, None))
    }
}
