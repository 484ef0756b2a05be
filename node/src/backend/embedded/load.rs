//! Loading a GGUF file: hash it, check its manifest, load it into llama.cpp (GPU
//! layers as asked), and start its decode loop.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::{list_llama_ggml_backend_devices, LlamaBackendDeviceType};
use relaymesh_protocol::Digest;
use tokio::sync::mpsc;

use super::super::{ModelDetails, ModelDigest, ModelInfo, Slots};
use super::decode_loop::{self, LoopConfig};
use super::{
    llama_backend, log, read_manifest, ChatTemplate, EmbeddedBackend, EmbeddedOptions, LoadError,
    DEFAULT_CONTEXT,
};

/// Jobs waiting for the decode loop beyond the slots (only `greedy_ids` sends without
/// a slot, so this is rarely used).
const JOB_BUFFER: usize = 8;

impl EmbeddedBackend {
    /// Loads `path` (blocking: hashes and reads the whole file) and starts its decode
    /// loop. A signed manifest next to the file (`FILE.gguf.manifest`) is checked
    /// against the digest and advertised.
    pub fn load(name: &str, path: &Path, options: &EmbeddedOptions) -> Result<Self, LoadError> {
        let started = Instant::now();
        let format = |why: String| LoadError::Format {
            path: path.to_owned(),
            why,
        };
        let (digest, size) =
            digest_file(path, options.progress).map_err(|source| LoadError::Io {
                path: path.to_owned(),
                source,
            })?;
        let manifest = read_manifest(path, digest, size)?;
        check_magic(path).map_err(format)?;

        let backend = llama_backend();
        let requested_layers = options.gpu_layers.unwrap_or(u32::MAX);
        let bar = load_bar(name, options.progress);
        let progress = bar.clone();
        // Without a terminal (a service's log) the bar is hidden: log every quarter.
        let log_steps = options.progress && !std::io::IsTerminal::is_terminal(&std::io::stderr());
        let (mut logged, model_name) = (0, name.to_owned());
        let params = LlamaModelParams::default()
            .with_n_gpu_layers(requested_layers)
            .with_progress_callback(move |done| {
                let percent = (done.clamp(0.0, 1.0) * 100.0) as u64;
                progress.set_position(percent);
                if log_steps && percent >= logged + 25 {
                    logged = percent - percent % 25;
                    tracing::info!(model = %model_name, "loading: {percent}%");
                }
                true
            });
        let model = LlamaModel::load_from_file(backend, path, &params).map_err(|e| {
            let why = log::take_last_error().unwrap_or_else(|| e.to_string());
            format(format!(
                "llama.cpp could not load it ({why}); is it a complete GGUF file of an \
                 architecture llama.cpp supports? (RUST_LOG=llama.cpp=debug shows its log)"
            ))
        })?;
        bar.finish_and_clear();
        let model = Arc::new(model);

        let trained = model.n_ctx_train();
        let context = options
            .context
            .unwrap_or(DEFAULT_CONTEXT)
            .min(trained.max(1))
            .max(16);
        if options.context.is_some_and(|asked| asked > trained) {
            tracing::warn!(
                model = name,
                asked = options.context,
                trained,
                "--context is beyond what the model was trained on; using {trained}"
            );
        }
        let template = ChatTemplate::from_gguf(
            model
                .meta_val_str("tokenizer.chat_template")
                .ok()
                .as_deref(),
        );
        let (device, offloaded) = offload(&model, requested_layers);
        let details = ModelDetails {
            format: "gguf".into(),
            family: model
                .meta_val_str("general.architecture")
                .unwrap_or_default(),
            parameter_size: model.meta_val_str("general.size_label").unwrap_or_default(),
            quantization_level: model
                .meta_val_str("general.file_type")
                .ok()
                .and_then(|code| code.parse().ok())
                .map(file_type_name)
                .unwrap_or_default(),
            size_bytes: size,
            template: template.describe(),
            device: device.clone(),
            gpu_layers: Some((offloaded, model.n_layer() + 1)),
        };
        let max_token_bytes = longest_token_bytes(&model);

        let slots = Slots::new(
            options.slots,
            options.queue,
            std::time::Duration::from_secs(2),
        );
        let threads = options.threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(4, std::num::NonZeroUsize::get)
        });
        let (jobs, receiver) = mpsc::channel(slots.places() + JOB_BUFFER);
        let decode_thread = decode_loop::spawn(
            model.clone(),
            LoopConfig {
                sequences: slots.places(),
                context,
                threads: i32::try_from(threads).unwrap_or(4),
            },
            receiver,
        )
        .map_err(format)?;

        tracing::info!(
            model = name,
            backend = %device,
            gpu_layers = format!("{offloaded}/{}", model.n_layer() + 1),
            slots = slots.available().1,
            context,
            threads,
            path = %path.display(),
            size_mib = size / (1 << 20),
            digest = %digest.to_hex(),
            manifest = manifest.is_some(),
            secs = format!("{:.2}", started.elapsed().as_secs_f64()),
            "model loaded"
        );
        Ok(Self {
            info: ModelInfo {
                name: name.to_owned(),
                digest: Some(ModelDigest::Gguf(digest)),
                manifest,
                context_length: context,
                max_token_bytes,
                kind: "embedded",
                details,
            },
            slots,
            model,
            template,
            context,
            threads: i32::try_from(threads).unwrap_or(4),
            default_max_tokens: options.default_max_tokens.max(1),
            jobs,
            decode_thread: Some(decode_thread),
        })
    }
}

/// A clear error for a file that is not GGUF at all (llama.cpp would only say that
/// loading failed).
fn check_magic(path: &Path) -> Result<(), String> {
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(|e| format!("reading the header: {e}"))?;
    if &magic != b"GGUF" {
        return Err("not a GGUF file (it does not start with \"GGUF\")".into());
    }
    Ok(())
}

/// Load progress: a bar on a terminal, nothing otherwise (the hashing bar before it
/// shows the same on a terminal; `model loaded` follows in the log).
fn load_bar(name: &str, progress: bool) -> indicatif::ProgressBar {
    let bar = if progress {
        indicatif::ProgressBar::new(100)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}%")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(format!("loading {name}"));
    bar
}

/// The backend that runs the layers, and how many layers went to it: llama.cpp puts
/// up to `requested` of the model's layers (its repeating layers plus the output
/// layer) on the first GPU, when the build has a GPU backend and it finds a device.
fn offload(model: &LlamaModel, requested: u32) -> (String, u32) {
    let gpu = list_llama_ggml_backend_devices().into_iter().find(|d| {
        matches!(
            d.device_type,
            LlamaBackendDeviceType::Gpu | LlamaBackendDeviceType::IntegratedGpu
        )
    });
    match gpu {
        Some(d) => (
            format!("{} ({})", d.backend, d.description),
            requested.min(model.n_layer() + 1),
        ),
        None => ("CPU".into(), 0),
    }
}

/// Bytes of the longest token text can be made of (control tokens render as nothing).
fn longest_token_bytes(model: &LlamaModel) -> u32 {
    let vocab = model.vocab();
    let mut buffer = Vec::new();
    vocab
        .tokens()
        .map(|t| {
            buffer.clear();
            vocab.token_to_piece_into(t, &mut buffer, false, None);
            buffer.len()
        })
        .max()
        .map_or(1, |n| u32::try_from(n.max(1)).unwrap_or(u32::MAX))
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
