//! What the OpenAI and Ollama routes share: finding the model, checking sampling
//! options, refusing what is not supported, and running a generation in a task that
//! feeds a response stream (so a client that leaves stops the work).

use serde_json::Value;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::ApiState;
use crate::backend::{GenEvent, GenRequest, Measured, Sampling, ServedModel};

/// Parts of a streamed response buffered ahead of a slow client.
pub const STREAM_BUFFER: usize = 32;

/// A model to run a request on: served here, or by the mesh's suppliers.
pub enum Resolved<'a> {
    /// One of this node's backends.
    Local(&'a ServedModel),
    /// Suppliers on the mesh, reached through the inference protocol.
    Mesh(ServedModel),
}

impl std::ops::Deref for Resolved<'_> {
    type Target = ServedModel;
    fn deref(&self) -> &ServedModel {
        match self {
            Resolved::Local(m) => m,
            Resolved::Mesh(m) => m,
        }
    }
}

/// The model called `name`: served here if it is (this node serves its own models
/// itself), else by the mesh's suppliers; or 404 naming the models there are.
pub async fn lookup<'a>(state: &'a ApiState, name: &str) -> Result<Resolved<'a>, ApiError> {
    if let Some(m) = state.models.get(name) {
        return Ok(Resolved::Local(m));
    }
    let me = relaymesh_protocol::Signer::public_key(&state.key);
    let offers = state.node.offers(name).await.unwrap_or_default();
    if let Some((_, offer)) = offers.iter().find(|(k, _)| *k != me) {
        let backend = crate::infer::gateway::MeshBackend::new(
            name,
            state.node.clone(),
            state.key.clone(),
            state.params.clone(),
        )
        .with_offer(offer);
        return Ok(Resolved::Mesh(ServedModel::new(
            std::sync::Arc::new(backend),
            offer.price_per_cu,
        )));
    }
    Err(ApiError::unknown_model(name, &all_model_names(state).await))
}

/// Names of every model this node can answer for: its own and the mesh's.
pub async fn all_model_names(state: &ApiState) -> Vec<String> {
    let mut names = state.models.names();
    if let Ok(rows) = state.node.models().await {
        names.extend(rows.into_iter().map(|r| r.name));
    }
    names.sort();
    names.dedup();
    names
}

/// Whether an optional field holds what it means when absent (null, false, 0, an
/// empty list or object), so a client that sends defaults explicitly is not refused.
pub fn is_neutral(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// Refuses any of `names` present in `extra` with a non-neutral value; `ok_if`
/// allows specific non-neutral values (e.g. `n: 1`).
pub fn refuse_unsupported(
    extra: &serde_json::Map<String, Value>,
    names: &[&str],
    ok_if: impl Fn(&str, &Value) -> bool,
) -> Result<(), ApiError> {
    for name in names {
        if let Some(value) = extra.get(*name) {
            if !is_neutral(value) && !ok_if(name, value) {
                return Err(ApiError::unsupported(name));
            }
        }
    }
    Ok(())
}

/// Checks sampling values and builds [`Sampling`]. `top_k` of 0 or less means "off"
/// (Ollama and llama.cpp use 0 that way).
pub fn sampling(
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    seed: Option<i64>,
    max_tokens: Option<i64>,
    stop: Vec<String>,
) -> Result<Sampling, ApiError> {
    if let Some(t) = temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::bad_param(
                "temperature",
                "temperature must be between 0 and 2",
            ));
        }
    }
    if let Some(p) = top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::bad_param("top_p", "top_p must be in (0, 1]"));
        }
    }
    let max_tokens = match max_tokens {
        None => None,
        // Ollama's num_predict: -1 (and -2) mean "no limit but the context".
        Some(n) if n < 0 => None,
        Some(0) => {
            return Err(ApiError::bad_param(
                "max_tokens",
                "max_tokens must be at least 1",
            ))
        }
        Some(n) => Some(n.min(u32::MAX as i64) as u32),
    };
    if stop.len() > 4 || stop.iter().any(|s| s.len() > 256) {
        return Err(ApiError::bad_param(
            "stop",
            "at most 4 stop sequences of up to 256 bytes",
        ));
    }
    Ok(Sampling {
        temperature,
        top_p,
        top_k: top_k.filter(|k| *k > 0).map(|k| k as usize),
        // Seeds are taken as 64-bit patterns: negative ones are valid seeds too.
        seed: seed.map(|s| s as u64),
        max_tokens,
        stop,
    })
}

/// Starts `request` on `model` and runs it in a task that turns each event into
/// response parts with `render`, sent down a bounded channel. The task ends when the
/// generation ends or the receiver (the client's response) is dropped; dropping the
/// generation stops the engine and frees the slot.
pub async fn spawn_stream<T, F>(
    model: &ServedModel,
    request: GenRequest,
    mut render: F,
) -> Result<(mpsc::Receiver<T>, Option<String>), ApiError>
where
    T: Send + 'static,
    F: FnMut(GenEvent) -> Vec<T> + Send + 'static,
{
    let mut generation: Measured = model.generate(request).await?;
    let supplier = generation.supplier().map(str::to_owned);
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        loop {
            let event = generation.next().await.unwrap_or_else(|| {
                GenEvent::Failed("the backend stopped without finishing".into())
            });
            let last = !matches!(event, GenEvent::Text(_));
            for part in render(event) {
                if tx.send(part).await.is_err() {
                    return; // the client left
                }
            }
            if last {
                return;
            }
        }
    });
    Ok((rx, supplier))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A random id with a prefix (`chatcmpl-…`).
pub fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 12];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    format!("{prefix}-{}", hex::encode(bytes))
}
