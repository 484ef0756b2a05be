//! Embeddings: OpenAI's `POST /v1/embeddings` (floats or base64) and Ollama's
//! `POST /api/embed` and `POST /api/embeddings`, for models this node runs itself from a
//! GGUF file (see `backend::embedded::embed`) or that mesh suppliers embed with (see
//! `infer::gateway::embed`). A mesh answer names its supplier in `x-relaymesh-supplier`
//! and what the app's ack metered in `usage.relaymesh` (OpenAI) or `relaymesh`
//! (Ollama), as chat answers do.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::{ApiError, OllamaError, OpenAiError};
use super::infer::{lookup, refuse_unsupported};
use super::{body, ApiState, SUPPLIER_HEADER};
use crate::backend::{Embedded, Tenant};

/// `input`: one text or a list of texts (token arrays are not supported).
fn texts(input: Value, param: &str) -> Result<Vec<String>, ApiError> {
    let refused = || {
        ApiError::bad_param(
            param,
            format!("{param} is a string or a list of strings (token arrays are not supported)"),
        )
    };
    match input {
        Value::String(s) => Ok(vec![s]),
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(refused()),
            })
            .collect(),
        _ => Err(refused()),
    }
}

async fn embed(
    state: &ApiState,
    model: &str,
    headers: &HeaderMap,
    inputs: &[String],
) -> Result<Embedded, ApiError> {
    let served = lookup(state, model, headers).await?;
    Ok(served.backend.embed(inputs, Tenant::Local).await?)
}

#[derive(Deserialize)]
struct OpenAiBody {
    model: String,
    input: Value,
    encoding_format: Option<String>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// The texts an OpenAI body asks to embed, and whether in base64.
fn openai_inputs(body: OpenAiBody) -> Result<(Vec<String>, bool), ApiError> {
    refuse_unsupported(&body.extra, &["dimensions"], |_, _| false)?;
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_param(
                "encoding_format",
                format!("encoding_format is float or base64, not {other:?}"),
            ))
        }
    };
    Ok((texts(body.input, "input")?, base64))
}

/// What `POST /v1/embeddings` checks of a body before it runs, without a node (the
/// fuzz harness drives this; the handler calls the same steps).
pub(crate) fn openai_request(bytes: &[u8]) -> Result<Vec<String>, ApiError> {
    let body: OpenAiBody = body::parse_bytes(bytes)?;
    openai_inputs(body).map(|(inputs, _)| inputs)
}

/// As [`openai_request`], for `POST /api/embed`.
pub(crate) fn ollama_request(bytes: &[u8]) -> Result<Vec<String>, ApiError> {
    let body: EmbedBody = body::parse_bytes(bytes)?;
    texts(body.input, "input")
}

/// `POST /v1/embeddings`
pub async fn openai(
    State(state): State<ApiState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, OpenAiError> {
    let body: OpenAiBody = state.parse(raw)?;
    let model = body.model.clone();
    let (inputs, base64) = openai_inputs(body)?;
    let embedded = embed(&state, &model, &headers, &inputs).await?;
    let data: Vec<Value> = embedded
        .vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                // OpenAI's base64: the little-endian f32s.
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    let mut usage =
        json!({ "prompt_tokens": embedded.prompt_tokens, "total_tokens": embedded.prompt_tokens });
    if let Some(report) = &embedded.mesh {
        usage["relaymesh"] = json!(report);
    }
    let header = [(SUPPLIER_HEADER, state.made_by(embedded.mesh.as_ref()))];
    let body = json!({ "object": "list", "data": data, "model": model, "usage": usage });
    Ok((header, Json(body)).into_response())
}

#[derive(Deserialize)]
struct EmbedBody {
    #[serde(alias = "name")]
    model: String,
    input: Value,
    /// Ollama cuts inputs longer than the context by default; this node refuses them.
    truncate: Option<bool>,
}

/// `POST /api/embed`
pub async fn ollama_embed(
    State(state): State<ApiState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, OllamaError> {
    let started = Instant::now();
    let body: EmbedBody = state.parse(raw)?;
    let _ = body.truncate;
    let inputs = texts(body.input, "input")?;
    let embedded = embed(&state, &body.model, &headers, &inputs).await?;
    let mut answer = json!({
        "model": body.model,
        "embeddings": embedded.vectors,
        "total_duration": started.elapsed().as_nanos() as u64,
        "load_duration": 0,
        "prompt_eval_count": embedded.prompt_tokens,
    });
    if let Some(report) = &embedded.mesh {
        answer["relaymesh"] = json!(report);
    }
    let header = [(SUPPLIER_HEADER, state.made_by(embedded.mesh.as_ref()))];
    Ok((header, Json(answer)).into_response())
}

#[derive(Deserialize)]
struct EmbeddingsBody {
    #[serde(alias = "name")]
    model: String,
    prompt: String,
}

/// `POST /api/embeddings` (Ollama's older route: one prompt, one vector).
pub async fn ollama_embeddings(
    State(state): State<ApiState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, OllamaError> {
    let body: EmbeddingsBody = state.parse(raw)?;
    let embedded = embed(&state, &body.model, &headers, &[body.prompt]).await?;
    let header = [(SUPPLIER_HEADER, state.made_by(embedded.mesh.as_ref()))];
    let vector = embedded.vectors.into_iter().next().unwrap_or_default();
    Ok((header, Json(json!({ "embedding": vector }))).into_response())
}
