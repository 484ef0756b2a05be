//! What the OpenAI and Ollama routes share: finding the model, checking sampling
//! options, refusing what is not supported, and running a generation in a task that
//! feeds a response stream (so a client that leaves stops the work).

use serde_json::Value;
use tokio::sync::mpsc;

use axum::http::{HeaderMap, StatusCode};
use relaymesh_protocol::{Digest, PublicKey};

use super::error::ApiError;
use super::ApiState;
use crate::backend::{Format, GenEvent, GenRequest, Measured, Provenance, Sampling, ServedModel};
use crate::infer::router::RoutePolicy;

/// Parts of a streamed response buffered ahead of a slow client.
pub const STREAM_BUFFER: usize = 32;

pub use crate::infer::resolve::Resolved;

/// Request headers that narrow who may serve a request (the node's configuration
/// narrows it too): the most it may cost per CU, the model digest it must be, and the
/// suppliers trusted with the prompt.
pub const MAX_PRICE_HEADER: &str = "x-relaymesh-max-price";
/// See [`MAX_PRICE_HEADER`]: `blake3:<hex>` or `<hex>`.
pub const DIGEST_HEADER: &str = "x-relaymesh-digest";
/// See [`MAX_PRICE_HEADER`]: peer ids, comma-separated.
pub const SUPPLIERS_HEADER: &str = "x-relaymesh-suppliers";

/// The routing rules a request's headers ask for.
pub fn request_policy(headers: &HeaderMap) -> Result<RoutePolicy, ApiError> {
    let text = |name: &str| -> Result<Option<&str>, ApiError> {
        match headers.get(name) {
            None => Ok(None),
            Some(v) => v
                .to_str()
                .map(|s| Some(s.trim()))
                .map_err(|_| ApiError::bad_param(name, format!("the {name} header is not text"))),
        }
    };
    let max_price = match text(MAX_PRICE_HEADER)? {
        None => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            ApiError::bad_param(
                MAX_PRICE_HEADER,
                format!("{MAX_PRICE_HEADER} must be a whole number of credits per CU, not {v:?}"),
            )
        })?),
    };
    let digest = match text(DIGEST_HEADER)? {
        None => None,
        Some(v) => Some(parse_digest(v).ok_or_else(|| {
            ApiError::bad_param(
                DIGEST_HEADER,
                format!("{DIGEST_HEADER} must be blake3:<64 hex digits>, not {v:?}"),
            )
        })?),
    };
    let allow = match text(SUPPLIERS_HEADER)? {
        None => None,
        Some(v) => Some(
            v.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| {
                    PublicKey::from_peer_id(p).ok_or_else(|| {
                        ApiError::bad_param(
                            SUPPLIERS_HEADER,
                            format!("{p:?} in {SUPPLIERS_HEADER} is not an ed25519 peer id"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(RoutePolicy {
        max_price,
        digest,
        allow,
    })
}

/// A model digest as users write it: `blake3:<hex>` or the bare hex.
pub fn parse_digest(text: &str) -> Option<Digest> {
    Digest::from_hex(text.strip_prefix("blake3:").unwrap_or(text))
}

/// The model called `name` under the request's rules: served here when this node has
/// it and scores best, else by the best suppliers on the mesh; 404 naming the models
/// there are, or saying that nobody serves the pinned digest; 503 when suppliers exist
/// but none that the rules allow.
pub async fn lookup<'a>(
    state: &'a ApiState,
    name: &str,
    headers: &HeaderMap,
) -> Result<Resolved<'a>, ApiError> {
    use crate::infer::resolve::ResolveError;
    let request = request_policy(headers)?;
    state
        .resolver
        .resolve(name, &request)
        .await
        .map_err(|e| match e {
            ResolveError::Rules(why) => ApiError::new(StatusCode::NOT_FOUND, why),
            ResolveError::Unknown { name, known } => ApiError::unknown_model(&name, &known),
            ResolveError::Backend(e) => e.into(),
        })
}

/// Names of every model this node can answer for: its own and the mesh's.
pub async fn all_model_names(state: &ApiState) -> Vec<String> {
    state.resolver.model_names().await
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
        format: None,
        logprobs: None,
    })
}

/// Refuses an output format the engine could not follow: a 400 naming `param`.
pub fn check_format(format: Option<&Format>, param: &str) -> Result<(), ApiError> {
    let Some(format) = format else {
        return Ok(());
    };
    let max = relaymesh_protocol::messages::infer::MAX_SCHEMA_BYTES;
    if format.schema().len() > max {
        return Err(ApiError::bad_param(
            param,
            format!("{param}: the JSON schema is over {max} bytes"),
        ));
    }
    crate::backend::embedded::grammar(format)
        .map(drop)
        .map_err(|e| ApiError::bad_param(param, format!("{param}: {e}")))
}

/// Starts `request` on `model` and runs it in a task that turns each event into
/// response parts with `render`, sent down a bounded channel. The task ends when the
/// generation ends or the receiver (the client's response) is dropped; dropping the
/// generation stops the engine and frees the slot.
pub async fn spawn_stream<T, F>(
    state: &super::ApiState,
    model: &ServedModel,
    request: GenRequest,
    mut render: F,
) -> Result<(mpsc::Receiver<T>, Option<Provenance>), ApiError>
where
    T: Send + 'static,
    F: FnMut(GenEvent, Option<&Provenance>) -> Vec<T> + Send + 'static,
{
    let mut generation: Measured = state.generate(model, request).await?;
    let provenance = generation.provenance().cloned();
    let served = provenance.clone();
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        loop {
            let event = generation.next().await.unwrap_or_else(|| {
                GenEvent::Failed("the backend stopped without finishing".into())
            });
            let last = matches!(event, GenEvent::Done(_) | GenEvent::Failed(_));
            for part in render(event, served.as_ref()) {
                if tx.send(part).await.is_err() {
                    return; // the client left
                }
            }
            if last {
                return;
            }
        }
    });
    Ok((rx, provenance))
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
