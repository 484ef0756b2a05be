//! The Ollama-compatible API: `POST /api/chat`, `POST /api/generate`, `GET /api/tags`,
//! `GET /api/version`, `POST /api/show`. Streaming (the default) is NDJSON, one
//! object per line; `"stream": false` gives one object.

use std::convert::Infallible;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use super::error::{ApiError, OllamaError};
use super::infer::{lookup, refuse_unsupported, sampling, spawn_stream};
use super::tools::{self, Answer, Tools};
use super::{body, logprobs, ApiState};
use crate::backend::{
    ChatMessage, Finish, Format, GenEvent, GenRequest, ModelDetails, Prompt, Provenance, Role,
    ServedModel,
};

/// The Ollama API level this node implements (clients check it).
pub const OLLAMA_API_VERSION: &str = "0.9.0";

/// Request fields we do not implement.
const UNSUPPORTED: &[&str] = &["images", "template", "suffix", "context"];

/// Options that change sampling in ways we do not implement; accepted only at their
/// neutral values (0, or 1 for the multiplicative penalties).
const UNSUPPORTED_OPTIONS: &[&str] = &[
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "mirostat",
    "min_p",
    "typical_p",
    "tfs_z",
];

#[derive(Deserialize, Default)]
struct Options {
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    seed: Option<i64>,
    num_predict: Option<i64>,
    stop: Option<Vec<String>>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Deserialize)]
struct Common {
    #[serde(alias = "name")]
    model: String,
    stream: Option<bool>,
    #[serde(default)]
    options: Option<Options>,
    /// `"json"` or a JSON schema.
    format: Option<Value>,
    #[serde(default)]
    tools: Vec<Value>,
    logprobs: Option<Value>,
    top_logprobs: Option<Value>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Deserialize)]
struct ChatBody {
    #[serde(default)]
    messages: Vec<InMessage>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Deserialize)]
struct InMessage {
    role: String,
    #[serde(default)]
    content: String,
    #[serde(default)]
    images: Option<Vec<Value>>,
    /// An assistant's calls.
    #[serde(default)]
    tool_calls: Vec<Value>,
    /// A tool result's tool.
    tool_name: Option<String>,
}

#[derive(Deserialize)]
struct GenerateBody {
    #[serde(default)]
    prompt: String,
    system: Option<String>,
    #[serde(default)]
    raw: bool,
    #[serde(flatten)]
    common: Common,
}

/// The request to run, and the tools its answer may call.
fn request(prompt: Prompt, common: &mut Common) -> Result<(GenRequest, Option<Tools>), ApiError> {
    refuse_unsupported(&common.extra, UNSUPPORTED, |_, _| false)?;
    let o = common.options.take().unwrap_or_default();
    refuse_unsupported(&o.extra, UNSUPPORTED_OPTIONS, |name, v| {
        matches!(name, "repeat_penalty") && v.as_f64() == Some(1.0)
    })
    .map_err(|mut e| {
        e.message = e.message.replace("parameter '", "option '");
        e
    })?;
    let sampling = sampling(
        o.temperature,
        o.top_p,
        o.top_k,
        o.seed,
        o.num_predict,
        o.stop.unwrap_or_default(),
    )?;
    let format = match common.format.take() {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) if s == "json" => Some(Format::Json),
        Some(schema @ Value::Object(_)) => Some(Format::JsonSchema(schema.to_string())),
        Some(_) => {
            return Err(ApiError::bad_param(
                "format",
                "format is \"json\" or a JSON schema object",
            ))
        }
    };
    let tools = ollama_tools(&common.tools, format.as_ref())?;
    let asked = match common.logprobs.as_ref() {
        // Ollama's logprobs is true or false; a number is the completions API's.
        Some(Value::Number(_)) => {
            return Err(ApiError::bad_param("logprobs", "logprobs is true or false"))
        }
        l => logprobs::asked(l, common.top_logprobs.as_ref())?,
    };
    logprobs::refuse_with_tools(asked, tools.is_some())?;
    let mut request = tools::shape(
        prompt,
        sampling,
        tools.as_ref(),
        format,
        "/api/chat",
        "format",
    )?;
    request.sampling.logprobs = asked;
    Ok((request, tools))
}

/// Ollama's `tools` (OpenAI's shape); the model chooses whether to call.
fn ollama_tools(list: &[Value], format: Option<&Format>) -> Result<Option<Tools>, ApiError> {
    Tools::new(
        tools::function_tools(list)?,
        None,
        true,
        tools::response_schema(format),
    )
}

/// An answer made under `tools`, as Ollama's message: its text or its calls.
fn tool_message(tools: &Tools, text: &str) -> Value {
    match tools.parse(text) {
        Answer::Text(content) => json!({ "role": "assistant", "content": content }),
        Answer::Calls(calls) => json!({
            "role": "assistant",
            "content": "",
            "tool_calls": calls
                .iter()
                .map(|c| json!({ "function": { "name": c.name, "arguments": c.arguments } }))
                .collect::<Vec<_>>(),
        }),
    }
}

pub(super) fn created_at() -> String {
    // RFC 3339 in UTC, as Ollama writes it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_nanos()
    )
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Chat (`message`) or generate (`response`).
#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Generate,
}

impl Kind {
    fn part(self, model: &str, text: &str, done: bool) -> Value {
        let mut v = json!({ "model": model, "created_at": created_at(), "done": done });
        match self {
            Kind::Chat => v["message"] = json!({ "role": "assistant", "content": text }),
            Kind::Generate => v["response"] = json!(text),
        }
        v
    }

    fn last(
        self,
        model: &str,
        text: &str,
        finish: &Finish,
        started: Instant,
        mesh: Option<&Provenance>,
    ) -> Value {
        let mut v = self.part(model, text, true);
        if let Some(p) = mesh {
            // Who served and what the acks metered (an extra field clients ignore).
            v["relaymesh"] = json!(p.report());
        }
        let total = started.elapsed().as_nanos() as u64;
        v["done_reason"] = json!(finish.reason);
        v["total_duration"] = json!(total);
        v["load_duration"] = json!(0);
        v["prompt_eval_count"] = json!(finish.prompt_tokens);
        v["prompt_eval_duration"] = json!(0);
        v["eval_count"] = json!(finish.completion_tokens);
        v["eval_duration"] = json!(total);
        if let Kind::Generate = self {
            v["context"] = json!([]);
        }
        v
    }
}

async fn run(
    state: &ApiState,
    model: &ServedModel,
    kind: Kind,
    name: String,
    (req, tools): (GenRequest, Option<Tools>),
    stream: bool,
) -> Result<Response, OllamaError> {
    let started = Instant::now();
    let asked = req.sampling.logprobs;
    if !stream {
        let generation = state.generate(model, req).await?;
        let mesh = generation.provenance().cloned();
        let (text, tokens, finish) = generation.collect_all().await?;
        let mut last = kind.last(&name, &text, &finish, started, mesh.as_ref());
        if asked.is_some() {
            last["logprobs"] = logprobs::entries(&tokens);
        }
        if let Some(tools) = &tools {
            last["message"] = tool_message(tools, &text);
        }
        return Ok((
            [(super::SUPPLIER_HEADER, state.served_by(mesh.as_ref()))],
            Json(last),
        )
            .into_response());
    }
    // Under tools the answer is JSON to read whole: it is held back until it ends.
    let mut held = String::new();
    // Log probabilities wait for the text of their tokens.
    let mut told = Vec::new();
    let (rx, mesh) = spawn_stream(state, model, req, move |event, mesh| {
        let values = match event {
            GenEvent::Text(piece) if tools.is_some() => {
                held.push_str(&piece);
                Vec::new()
            }
            GenEvent::Logprobs(tokens) => {
                if asked.is_some() {
                    crate::backend::hold_logprobs(&mut told, tokens);
                }
                Vec::new()
            }
            GenEvent::Text(piece) => {
                let mut part = kind.part(&name, &piece, false);
                if asked.is_some() {
                    part["logprobs"] = logprobs::entries(&std::mem::take(&mut told));
                }
                vec![part]
            }
            GenEvent::Done(finish) => {
                let mut values = Vec::new();
                if let Some(tools) = &tools {
                    let mut part = kind.part(&name, "", false);
                    part["message"] = tool_message(tools, &held);
                    values.push(part);
                }
                values.push(kind.last(&name, "", &finish, started, mesh));
                values
            }
            // Headers are sent: the error is the stream's last line, as in Ollama.
            GenEvent::Failed(why) => vec![json!({ "error": why })],
        };
        values
            .into_iter()
            .map(|value| {
                let mut line = value.to_string();
                line.push('\n');
                line
            })
            .collect()
    })
    .await?;
    let body = Body::from_stream(ReceiverStream::new(rx).map(Ok::<_, Infallible>));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/x-ndjson"),
            ),
            (
                axum::http::HeaderName::from_static(super::SUPPLIER_HEADER),
                state.served_by(mesh.as_ref()),
            ),
        ],
        body,
    )
        .into_response())
}

/// What Ollama answers to an empty request: the model is "loaded".
fn loaded(kind: Kind, name: &str) -> Response {
    let mut v = kind.part(name, "", true);
    v["done_reason"] = json!("load");
    Json(v).into_response()
}

fn role(index: usize, role: &str) -> Result<Role, ApiError> {
    match role {
        "system" => Ok(Role::System),
        "user" | "tool" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        other => Err(ApiError::bad_param(
            &format!("messages[{index}].role"),
            format!("role '{other}' is not supported (system, user, assistant, tool)"),
        )),
    }
}

/// `POST /api/chat`
pub async fn chat(
    State(state): State<ApiState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, OllamaError> {
    let mut body: ChatBody = state.parse(raw)?;
    let model = lookup(&state, &body.common.model, &headers).await?;
    if body.messages.is_empty() {
        return Ok(loaded(Kind::Chat, &body.common.model));
    }
    let prompt = chat_prompt(body.messages)?;
    let req = request(prompt, &mut body.common)?;
    let stream = body.common.stream.unwrap_or(true);
    run(&state, &model, Kind::Chat, body.common.model, req, stream).await
}

/// `POST /api/generate`
pub async fn generate(
    State(state): State<ApiState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, OllamaError> {
    let mut body: GenerateBody = state.parse(raw)?;
    let model = lookup(&state, &body.common.model, &headers).await?;
    if body.prompt.is_empty() {
        return Ok(loaded(Kind::Generate, &body.common.model));
    }
    let prompt = generate_prompt(body.prompt, body.system, body.raw);
    let req = request(prompt, &mut body.common)?;
    let stream = body.common.stream.unwrap_or(true);
    run(
        &state,
        &model,
        Kind::Generate,
        body.common.model,
        req,
        stream,
    )
    .await
}

fn chat_prompt(messages: Vec<InMessage>) -> Result<Prompt, ApiError> {
    let mut out = Vec::with_capacity(messages.len());
    // The tool a result without `tool_name` answers: the last one called.
    let mut last_called = None;
    for (i, m) in messages.into_iter().enumerate() {
        if m.images.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err(ApiError::unsupported("images"));
        }
        let role = role(i, &m.role)?;
        if m.role == "assistant" && !m.tool_calls.is_empty() {
            let mut made = Vec::new();
            let param = format!("messages[{i}]");
            for (_, name, arguments) in tools::assistant_calls(&m.tool_calls, &param)? {
                last_called = Some(name.clone());
                made.push((name, arguments));
            }
            out.push(tools::calls_turn(&made));
        } else if m.role == "tool" {
            let name = m.tool_name.or_else(|| last_called.clone());
            out.push(tools::result_turn(name.as_deref(), &m.content));
        } else {
            out.push(ChatMessage {
                role,
                content: m.content,
            });
        }
    }
    Ok(Prompt::Chat(out))
}

fn generate_prompt(prompt: String, system: Option<String>, raw: bool) -> Prompt {
    if raw {
        return Prompt::Text(prompt);
    }
    // Like Ollama: the prompt is a user turn in the model's template.
    let mut messages = Vec::new();
    if let Some(system) = system.filter(|s| !s.is_empty()) {
        messages.push(ChatMessage {
            role: Role::System,
            content: system,
        });
    }
    messages.push(ChatMessage {
        role: Role::User,
        content: prompt,
    });
    Prompt::Chat(messages)
}

/// What `POST /api/chat` checks of a body before it runs, in the handler's order but
/// without a node (the fuzz harness drives this; the handler calls the same steps).
/// `None`: no messages, which only loads the model.
pub(crate) fn chat_request(bytes: &[u8]) -> Result<Option<GenRequest>, ApiError> {
    let mut body: ChatBody = body::parse_bytes(bytes)?;
    if body.messages.is_empty() {
        return Ok(None);
    }
    let prompt = chat_prompt(body.messages)?;
    request(prompt, &mut body.common).map(|(r, _)| Some(r))
}

/// As [`chat_request`], for `POST /api/generate`.
pub(crate) fn generate_request(bytes: &[u8]) -> Result<Option<GenRequest>, ApiError> {
    let mut body: GenerateBody = body::parse_bytes(bytes)?;
    if body.prompt.is_empty() {
        return Ok(None);
    }
    let prompt = generate_prompt(body.prompt, body.system, body.raw);
    request(prompt, &mut body.common).map(|(r, _)| Some(r))
}

/// As [`chat_request`], for `POST /api/show`: the model's name.
pub(crate) fn show_request(bytes: &[u8]) -> Result<String, ApiError> {
    body::parse_bytes::<ShowBody>(bytes).map(|b| b.model)
}

fn details(model: &ServedModel) -> Value {
    details_json(&model.backend.info().details)
}

/// Ollama's `details` object.
fn details_json(d: &ModelDetails) -> Value {
    json!({
        "parent_model": "",
        "format": d.format,
        "family": d.family,
        "families": if d.family.is_empty() { json!(null) } else { json!([d.family]) },
        "parameter_size": d.parameter_size,
        "quantization_level": d.quantization_level,
    })
}

/// Ollama's digests are sha256 hex; ours are blake3 of the GGUF, hex as well.
fn digest(model: &ServedModel) -> String {
    match &model.backend.info().digest {
        Some(crate::backend::ModelDigest::Gguf(d)) => d.to_hex(),
        Some(crate::backend::ModelDigest::Ollama(d)) => d.clone(),
        None => String::new(),
    }
}

/// `GET /api/tags`: this node's models, then the mesh's.
pub async fn tags(State(state): State<ApiState>) -> Json<Value> {
    let mut models: Vec<Value> = state
        .models
        .iter()
        .map(|m| {
            let info = m.backend.info();
            json!({
                "name": info.name,
                "model": info.name,
                "modified_at": state.started_at,
                "size": info.details.size_bytes,
                "digest": digest(m),
                "details": details(m),
            })
        })
        .collect();
    // The mesh's models this node does not serve itself, once each.
    let mut seen: Vec<String> = state.models.names();
    for row in state.node.models().await.unwrap_or_default() {
        if seen.contains(&row.name) {
            continue;
        }
        seen.push(row.name.clone());
        models.push(json!({
            "name": row.name,
            "model": row.name,
            "modified_at": state.started_at,
            "size": 0,
            "details": details_json(&ModelDetails {
                format: if row.digest.is_some() { "gguf" } else { "" }.to_owned(),
                family: row.family,
                parameter_size: row.parameter_size,
                quantization_level: row.quantization,
                ..ModelDetails::default()
            }),
            "digest": row.digest.unwrap_or_default(),
        }));
    }
    Json(json!({ "models": models }))
}

/// `GET /api/ps`: the models loaded in this node (the ones it serves itself; the
/// mesh's are loaded elsewhere). They stay loaded while the node runs, so
/// `expires_at` is what Ollama says of a model kept loaded for good. `size_vram` is
/// the share of the file whose layers went to the GPU; `relaymesh` says where the
/// engine runs (`device`, `gpu_layers` as [on the GPU, of all]) and its free slots.
pub async fn ps(State(state): State<ApiState>) -> Json<Value> {
    let models: Vec<Value> = state
        .models
        .iter()
        .filter(|m| m.backend.info().kind != "mesh")
        .map(|m| {
            let info = m.backend.info();
            let (free, total) = m.backend.slots();
            let vram = info.details.gpu_layers.map_or(0, |(on_gpu, layers)| {
                u128::from(info.details.size_bytes) * u128::from(on_gpu) / u128::from(layers.max(1))
            });
            json!({
                "name": info.name,
                "model": info.name,
                "size": info.details.size_bytes,
                "digest": digest(m),
                "details": details(m),
                "expires_at": "2318-08-22T00:00:00Z",
                "size_vram": u64::try_from(vram).unwrap_or(u64::MAX),
                "relaymesh": {
                    "engine": info.kind,
                    "device": info.details.device,
                    "gpu_layers": info.details.gpu_layers,
                    "free_slots": free,
                    "total_slots": total,
                },
            })
        })
        .collect();
    Json(json!({ "models": models }))
}

/// `GET /api/version`
pub async fn version() -> Json<Value> {
    Json(json!({ "version": OLLAMA_API_VERSION, "relaymesh": env!("CARGO_PKG_VERSION") }))
}

#[derive(Deserialize)]
struct ShowBody {
    #[serde(alias = "name")]
    model: String,
}

/// `POST /api/show`
pub async fn show(
    State(state): State<ApiState>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, OllamaError> {
    let body: ShowBody = state.parse(raw)?;
    let model = lookup(&state, &body.model, &HeaderMap::new()).await?;
    let info = model.backend.info();
    let family = if info.details.family.is_empty() {
        "unknown"
    } else {
        info.details.family.as_str()
    };
    let mut model_info = json!({
        "general.architecture": family,
        format!("{family}.context_length"): info.context_length,
        "relaymesh.backend": info.kind,
        "relaymesh.digest": info.digest.as_ref().map(ToString::to_string),
    });
    let mut capabilities = vec!["completion", "tools"];
    // Where the model makes embeddings (here or on the mesh), as Ollama says it.
    if let Some(dims) = model.backend.embedding_dims() {
        model_info[format!("{family}.embedding_length")] = json!(dims);
        capabilities.push("embedding");
    }
    Ok(Json(json!({
        "license": "",
        "modelfile": format!("# served by relaymesh ({} backend)\nFROM {}\n", info.kind, info.name),
        "parameters": "",
        "template": info.details.template,
        "details": details(&model),
        "model_info": model_info,
        "capabilities": capabilities,
        "modified_at": state.started_at,
    })))
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_419), (2025, 11, 27));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
