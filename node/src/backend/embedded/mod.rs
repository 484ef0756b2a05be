//! The embedded engine: candle runs a GGUF model in the node's own process.
//!
//! The weights are loaded once and shared; each generation clones the model (the
//! quantised tensors are reference-counted, only the KV cache is per generation) and
//! runs on a blocking thread, feeding text pieces to a bounded channel. A full
//! channel makes generation wait for the client; a dropped one stops it at the next
//! token and frees the slot.

mod manifest_file;
mod template;
mod tokenizer;

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling as Mode};
use candle_transformers::models::quantized_llama::{ModelWeights, MAX_SEQ_LEN};
use relaymesh_protocol::Digest;
use tokio::sync::mpsc;

pub use manifest_file::{manifest_path, read_manifest, write_manifest, ManifestFileError};
pub use template::ChatTemplate;
pub use tokenizer::{Detokenizer, GgufTokenizer};

use super::{
    Backend, BackendError, Finish, FinishReason, GenEvent, GenRequest, Generation, ModelDetails,
    ModelDigest, ModelInfo, Prompt, Sampling, Slots, StopMatcher, EVENT_BUFFER,
};

/// Temperature when a request names none (Ollama's default).
pub const DEFAULT_TEMPERATURE: f64 = 0.8;

/// Options of the embedded engine.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Concurrent generations.
    pub slots: usize,
    /// Requests that may wait for a slot; more are refused (503).
    pub queue: usize,
    /// Tokens generated when a request sets no limit.
    pub default_max_tokens: u32,
    /// Show a progress bar while loading (only drawn on a terminal).
    pub progress: bool,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            slots: 1,
            queue: 8,
            default_max_tokens: 1024,
            progress: true,
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

/// The model, tokenizer and template, shared by every generation.
struct Engine {
    weights: ModelWeights,
    tokenizer: GgufTokenizer,
    template: ChatTemplate,
    context_length: u32,
    default_max_tokens: u32,
    device: Device,
}

/// A GGUF model served in process.
pub struct EmbeddedBackend {
    info: ModelInfo,
    slots: Slots,
    engine: Arc<Engine>,
}

/// blake3 of a file, with a progress bar on a terminal.
pub fn digest_file(path: &Path, progress: bool) -> Result<(Digest, u64), std::io::Error> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let bar = if progress {
        indicatif::ProgressBar::new(size)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(format!(
        "hashing {}",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(bar.wrap_read(BufReader::with_capacity(1 << 20, file)))?;
    bar.finish_and_clear();
    Ok((Digest(*hasher.finalize().as_bytes()), size))
}

fn metadata_string(content: &gguf_file::Content, key: &str) -> Option<String> {
    content
        .metadata
        .get(key)
        .and_then(|v| v.to_string().ok())
        .cloned()
}

/// GGUF `general.file_type` codes (llama.cpp's `llama_ftype`) for the common types.
fn file_type_name(code: u32) -> String {
    match code {
        0 => "F32".into(),
        1 => "F16".into(),
        2 => "Q4_0".into(),
        3 => "Q4_1".into(),
        7 => "Q8_0".into(),
        8 => "Q5_0".into(),
        9 => "Q5_1".into(),
        10 => "Q2_K".into(),
        11 => "Q3_K_S".into(),
        12 => "Q3_K_M".into(),
        14 => "Q4_K_S".into(),
        15 => "Q4_K_M".into(),
        16 => "Q5_K_S".into(),
        17 => "Q5_K_M".into(),
        18 => "Q6_K".into(),
        other => format!("type {other}"),
    }
}

impl EmbeddedBackend {
    /// Loads `path` (blocking: hashes and reads the whole file). A signed manifest
    /// next to the file (`FILE.gguf.manifest`) is checked against the digest and
    /// advertised.
    pub fn load(name: &str, path: &Path, options: &EmbeddedOptions) -> Result<Self, LoadError> {
        let started = Instant::now();
        let io = |source| LoadError::Io {
            path: path.to_owned(),
            source,
        };
        let format = |why: String| LoadError::Format {
            path: path.to_owned(),
            why,
        };
        let (digest, size) = digest_file(path, options.progress).map_err(io)?;
        let manifest = read_manifest(path, digest, size)?;

        let spinner = if options.progress {
            indicatif::ProgressBar::new_spinner()
        } else {
            indicatif::ProgressBar::hidden()
        };
        spinner.set_message(format!("loading {name}"));
        spinner.enable_steady_tick(Duration::from_millis(120));
        let mut reader = BufReader::new(File::open(path).map_err(io)?);
        let content = gguf_file::Content::read(&mut reader)
            .map_err(|e| format(format!("not a GGUF file: {e}")))?;
        let arch = metadata_string(&content, "general.architecture").unwrap_or_default();
        if arch != "llama" {
            return Err(format(format!(
                "architecture {arch:?} is not supported by the embedded engine (llama only); \
                 serve it through ollama: or openai: instead"
            )));
        }
        let tokenizer = GgufTokenizer::from_gguf(&content).map_err(format)?;
        let template = ChatTemplate::from_gguf(
            metadata_string(&content, "tokenizer.chat_template").as_deref(),
        );
        let file_context = content
            .metadata
            .get("llama.context_length")
            .and_then(|v| v.to_u32().ok())
            .unwrap_or(MAX_SEQ_LEN as u32);
        // candle precomputes rotary embeddings for MAX_SEQ_LEN positions.
        let context_length = file_context.min(MAX_SEQ_LEN as u32);
        let details = ModelDetails {
            format: "gguf".into(),
            family: arch,
            parameter_size: metadata_string(&content, "general.size_label").unwrap_or_default(),
            quantization_level: content
                .metadata
                .get("general.file_type")
                .and_then(|v| v.to_u32().ok())
                .map(file_type_name)
                .unwrap_or_default(),
            size_bytes: size,
            template: template.describe(),
        };
        // The CPU unless the node was built with `--features cuda` and a GPU answers.
        let device = Device::cuda_if_available(0).unwrap_or(Device::Cpu);
        let weights = ModelWeights::from_gguf(content, &mut reader, &device)
            .map_err(|e| format(format!("loading the weights: {e}")))?;
        spinner.finish_and_clear();
        tracing::info!(
            model = name,
            device = if device.is_cuda() { "cuda" } else { "cpu" },
            path = %path.display(),
            size_mib = size / (1 << 20),
            digest = %digest.to_hex(),
            context = context_length,
            manifest = manifest.is_some(),
            secs = format!("{:.2}", started.elapsed().as_secs_f64()),
            "model loaded"
        );
        Ok(Self {
            info: ModelInfo {
                name: name.to_owned(),
                digest: Some(ModelDigest::Gguf(digest)),
                manifest,
                context_length,
                max_token_bytes: tokenizer.longest_token_bytes(),
                kind: "embedded",
                details,
            },
            slots: Slots::new(options.slots, options.queue, Duration::from_secs(2)),
            engine: Arc::new(Engine {
                weights,
                tokenizer,
                template,
                context_length,
                default_max_tokens: options.default_max_tokens.max(1),
                device,
            }),
        })
    }

    /// Token ids of the prompt `request` makes (chat template applied).
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>, BackendError> {
        self.engine.prompt_ids(prompt)
    }

    /// Token ids of a greedy completion of `prompt` (for comparisons with other
    /// engines); blocking.
    pub fn greedy_ids(&self, prompt: &Prompt, max_tokens: u32) -> Result<Vec<u32>, BackendError> {
        let ids = self.engine.prompt_ids(prompt)?;
        self.engine
            .greedy(&ids, max_tokens)
            .map_err(BackendError::Internal)
    }
}

impl Engine {
    fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>, BackendError> {
        let text = match prompt {
            Prompt::Chat(messages) => self
                .template
                .apply(messages)
                .map_err(BackendError::Invalid)?,
            Prompt::Text(text) => text.clone(),
        };
        let ids = self
            .tokenizer
            .encode(&text)
            .map_err(BackendError::Invalid)?;
        if ids.is_empty() {
            return Err(BackendError::Invalid("the prompt is empty".into()));
        }
        if ids.len() >= self.context_length as usize {
            return Err(BackendError::PromptTooLong {
                prompt_tokens: ids.len().try_into().unwrap_or(u32::MAX),
                context_length: self.context_length,
            });
        }
        Ok(ids)
    }

    fn logits(&self, model: &mut ModelWeights, ids: &[u32], pos: usize) -> Result<Tensor, String> {
        let input = Tensor::new(ids, &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(|e| e.to_string())?;
        model
            .forward(&input, pos)
            .and_then(|l| l.squeeze(0))
            .and_then(|l| l.to_dtype(DType::F32))
            .map_err(|e| format!("model forward pass: {e}"))
    }

    fn greedy(&self, prompt: &[u32], max_tokens: u32) -> Result<Vec<u32>, String> {
        let mut model = self.weights.clone();
        let mut sampler = LogitsProcessor::from_sampling(0, Mode::ArgMax);
        let mut logits = self.logits(&mut model, prompt, 0)?;
        let mut out = Vec::new();
        while out.len() < max_tokens as usize {
            let next = sampler.sample(&logits).map_err(|e| e.to_string())?;
            out.push(next);
            if self.tokenizer.end_ids.contains(&next) {
                break;
            }
            logits = self.logits(&mut model, &[next], prompt.len() + out.len() - 1)?;
        }
        Ok(out)
    }

    /// Generates into `tx` until done, a stop, the limit, or the receiver is gone.
    fn run(
        &self,
        prompt: &[u32],
        sampling: &Sampling,
        tx: &mpsc::Sender<GenEvent>,
    ) -> Result<(), String> {
        let room = self.context_length as usize - prompt.len();
        let max_new = (sampling.max_tokens.unwrap_or(self.default_max_tokens) as usize).min(room);
        let temperature = sampling.temperature.unwrap_or(DEFAULT_TEMPERATURE);
        let mode = if temperature <= 1e-7 {
            Mode::ArgMax
        } else {
            match (sampling.top_k, sampling.top_p.filter(|p| *p < 1.0)) {
                (Some(k), Some(p)) => Mode::TopKThenTopP { k, p, temperature },
                (Some(k), None) => Mode::TopK { k, temperature },
                (None, Some(p)) => Mode::TopP { p, temperature },
                (None, None) => Mode::All { temperature },
            }
        };
        let seed = sampling
            .seed
            .unwrap_or_else(|| rand_core::RngCore::next_u64(&mut rand_core::OsRng));
        let mut sampler = LogitsProcessor::from_sampling(seed, mode);
        let mut stop = StopMatcher::new(&sampling.stop);
        let mut detok = Detokenizer::default();
        let mut model = self.weights.clone();

        let mut logits = self.logits(&mut model, prompt, 0)?;
        let mut generated = 0usize;
        let reason = loop {
            if generated == max_new {
                break FinishReason::Length;
            }
            let next = sampler.sample(&logits).map_err(|e| e.to_string())?;
            if self.tokenizer.end_ids.contains(&next) {
                break FinishReason::Stop;
            }
            generated += 1;
            let (text, stopped) = stop.push(&detok.push(&self.tokenizer, next)?);
            if !text.is_empty() && tx.blocking_send(GenEvent::Text(text)).is_err() {
                return Ok(()); // the client is gone
            }
            if stopped {
                break FinishReason::Stop;
            }
            if tx.is_closed() {
                return Ok(());
            }
            logits = self.logits(&mut model, &[next], prompt.len() + generated - 1)?;
        };
        let rest = stop.finish();
        if !rest.is_empty() {
            let _ = tx.blocking_send(GenEvent::Text(rest));
        }
        let _ = tx.blocking_send(GenEvent::Done(Finish {
            reason,
            prompt_tokens: prompt.len() as u32,
            completion_tokens: generated as u32,
        }));
        Ok(())
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

    async fn generate(&self, request: GenRequest) -> Result<Generation, BackendError> {
        let ids = self.engine.prompt_ids(&request.prompt)?;
        let slot = self.slots.acquire().await?;
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let engine = self.engine.clone();
        let sampling = request.sampling;
        tokio::task::spawn_blocking(move || {
            // The slot is freed when the engine stops, not when the client leaves.
            let _slot = slot;
            if let Err(why) = engine.run(&ids, &sampling, &tx) {
                tracing::warn!(%why, "generation failed");
                let _ = tx.blocking_send(GenEvent::Failed(why));
            }
        });
        Ok(Generation::new(rx, None))
    }
}
