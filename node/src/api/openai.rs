//! The OpenAI-compatible API: `POST /v1/chat/completions`, `POST /v1/completions`,
//! `GET /v1/models` (and `/v1/models/{id}`). `stream: true` answers with server-sent
//! events ending in `data: [DONE]`.

use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio_stream::wrappers::ReceiverStream;

use super::error::{ApiError, OpenAiError};
use super::infer::{
    all_model_names, lookup, new_id, refuse_unsupported, sampling, spawn_stream, unix_now,
};
use super::tools::{self, Answer, ToolCall, ToolChoice, Tools};
use super::{body, logprobs, ApiState};
use crate::backend::{
    ChatMessage, Finish, Format, GenEvent, GenRequest, Prompt, Provenance, Role, ServedModel,
    TokenLogprob,
};

/// Fields we do not implement; sent with a non-default value they get a 400 naming
/// them rather than being silently ignored.
const UNSUPPORTED: &[&str] = &[
    "functions",
    "function_call",
    "n",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "audio",
    "modalities",
    "prediction",
    "best_of",
    "echo",
    "suffix",
];

fn supported_value(name: &str, value: &Value) -> bool {
    match name {
        "n" | "best_of" => value.as_u64() == Some(1),
        _ => false,
    }
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// `stop`: one string or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    fn into_vec(stop: Option<Stop>) -> Vec<String> {
        match stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        }
    }
}

#[derive(Deserialize)]
struct Common {
    model: String,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    seed: Option<i64>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    stop: Option<Stop>,
    response_format: Option<Value>,
    #[serde(default)]
    tools: Vec<Value>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    /// Chat: true or false; completions: a count of alternatives.
    logprobs: Option<Value>,
    top_logprobs: Option<Value>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Deserialize)]
struct ChatBody {
    messages: Vec<InMessage>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Deserialize)]
struct InMessage {
    role: String,
    #[serde(default)]
    content: Value,
    /// An assistant's calls.
    #[serde(default)]
    tool_calls: Vec<Value>,
    /// A tool result's call.
    tool_call_id: Option<String>,
}

#[derive(Deserialize)]
struct CompletionBody {
    prompt: Value,
    #[serde(flatten)]
    common: Common,
}

/// Converts message `index`; `calls` holds the names of the calls made so far, by id,
/// so a tool's result can say which tool it came from.
fn message(
    index: usize,
    m: InMessage,
    calls: &mut std::collections::HashMap<String, String>,
) -> Result<ChatMessage, ApiError> {
    let param = format!("messages[{index}]");
    if m.role == "assistant" && !m.tool_calls.is_empty() {
        let mut made = Vec::new();
        for (id, name, arguments) in tools::assistant_calls(&m.tool_calls, &param)? {
            if let Some(id) = id {
                calls.insert(id, name.clone());
            }
            made.push((name, arguments));
        }
        return Ok(tools::calls_turn(&made));
    }
    let role = match m.role.as_str() {
        "system" | "developer" => Role::System,
        "user" | "tool" => Role::User,
        "assistant" => Role::Assistant,
        other => {
            return Err(ApiError::bad_param(
                &param,
                format!(
                    "role '{other}' is not supported (system, developer, user, assistant, tool)"
                ),
            ))
        }
    };
    let content = match m.content {
        Value::String(s) => s,
        Value::Null => String::new(),
        // Content parts: text parts are joined; other kinds (images, audio) refused.
        Value::Array(parts) => {
            let mut text = String::new();
            for part in parts {
                match (part["type"].as_str(), part["text"].as_str()) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    (kind, _) => {
                        return Err(ApiError::bad_param(
                            &format!("{param}.content"),
                            format!(
                                "content part type '{}' is not supported (text only)",
                                kind.unwrap_or("?")
                            ),
                        ))
                    }
                }
            }
            text
        }
        _ => {
            return Err(ApiError::bad_param(
                &format!("{param}.content"),
                "content must be a string or a list of text parts",
            ))
        }
    };
    if m.role == "tool" {
        let name = m.tool_call_id.as_ref().and_then(|id| calls.get(id));
        return Ok(tools::result_turn(name.map(String::as_str), &content));
    }
    Ok(ChatMessage { role, content })
}

/// The request to run, and the tools its answer may call.
fn request(prompt: Prompt, common: &mut Common) -> Result<(GenRequest, Option<Tools>), ApiError> {
    refuse_unsupported(&common.extra, UNSUPPORTED, supported_value)?;
    let max = common.max_completion_tokens.or(common.max_tokens);
    let sampling = sampling(
        // OpenAI's default temperature is 1.
        Some(common.temperature.unwrap_or(1.0)),
        common.top_p,
        common.top_k,
        common.seed,
        max,
        Stop::into_vec(common.stop.take()),
    )?;
    let format = response_format(common.response_format.as_ref())?;
    let tools = openai_tools(common, format.as_ref())?;
    let asked = logprobs::asked(common.logprobs.as_ref(), common.top_logprobs.as_ref())?;
    logprobs::refuse_with_tools(asked, tools.is_some())?;
    let mut request = tools::shape(
        prompt,
        sampling,
        tools.as_ref(),
        format,
        "chat completions",
        "response_format",
    )?;
    request.sampling.logprobs = asked;
    Ok((request, tools))
}

/// `response_format`: text, `json_object` or `json_schema`.
fn response_format(value: Option<&Value>) -> Result<Option<Format>, ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    match value["type"].as_str() {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Format::Json)),
        Some("json_schema") => match &value["json_schema"]["schema"] {
            schema @ Value::Object(_) => Ok(Some(Format::JsonSchema(schema.to_string()))),
            _ => Err(ApiError::bad_param(
                "response_format.json_schema.schema",
                "json_schema needs its schema (an object)",
            )),
        },
        _ => Err(ApiError::bad_param(
            "response_format.type",
            "response_format's type is text, json_object or json_schema",
        )),
    }
}

/// `tools`, `tool_choice` and `parallel_tool_calls`; `None` when no call can be made.
fn openai_tools(common: &Common, format: Option<&Format>) -> Result<Option<Tools>, ApiError> {
    let choice = match &common.tool_choice {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) => match c.as_str() {
            "none" => return Ok(None),
            "auto" => Some(ToolChoice::Auto),
            "required" => Some(ToolChoice::Required),
            other => {
                return Err(ApiError::bad_param(
                    "tool_choice",
                    format!("tool_choice '{other}' is not none, auto or required"),
                ))
            }
        },
        Some(named) => match named["function"]["name"].as_str() {
            Some(name) => Some(ToolChoice::Named(name.to_owned())),
            None => {
                return Err(ApiError::bad_param(
                    "tool_choice",
                    "tool_choice is none, auto, required or {\"type\": \"function\", \"function\": {\"name\": …}}",
                ))
            }
        },
    };
    Tools::new(
        tools::function_tools(&common.tools)?,
        choice,
        common.parallel_tool_calls.unwrap_or(true),
        tools::response_schema(format),
    )
}

/// OpenAI's usage; for a mesh request also `relaymesh`: the suppliers and the compute
/// units and output bytes the acks metered (what the suppliers' receipts add up to).
fn usage(f: &Finish, mesh: Option<&Provenance>) -> Value {
    let mut usage = json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": f.cached_tokens },
    });
    if let Some(p) = mesh {
        usage["relaymesh"] = json!(p.report());
    }
    usage
}

/// Chat or text completion: the parts of the response that differ.
#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Text,
}

impl Kind {
    fn object(self, streamed: bool) -> &'static str {
        match (self, streamed) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text, _) => "text_completion",
        }
    }

    /// A choice: its text, why it ended, and (`told`, where the request asked) the
    /// log probabilities of the tokens of its text.
    fn choice(
        self,
        text: Option<&str>,
        finish: Option<&Finish>,
        streamed: bool,
        told: Option<Value>,
    ) -> Value {
        let reason = finish.map(|f| json!(f.reason)).unwrap_or(Value::Null);
        let mut choice = match (self, streamed) {
            (Kind::Chat, false) => chat_choice(
                json!({ "role": "assistant", "content": text.unwrap_or("") }),
                reason,
                false,
            ),
            (Kind::Chat, true) => chat_choice(
                match text {
                    Some(t) => json!({ "role": "assistant", "content": t }),
                    None => json!({}),
                },
                reason,
                true,
            ),
            (Kind::Text, _) => json!({
                "index": 0,
                "text": text.unwrap_or(""),
                "finish_reason": reason,
                "logprobs": null,
            }),
        };
        if let Some(told) = told {
            choice["logprobs"] = told;
        }
        choice
    }

    /// The `logprobs` of a choice whose text's tokens are `tokens`, beginning at
    /// `offset` in the answer (moved past them).
    fn logprobs(self, tokens: &[TokenLogprob], offset: &mut logprobs::Offset) -> Value {
        match self {
            Kind::Chat => json!({ "content": logprobs::entries(tokens), "refusal": null }),
            Kind::Text => logprobs::legacy(tokens, offset),
        }
    }
}

/// A chat choice: its message (or, streamed, its delta) and why it ended.
fn chat_choice(message: Value, reason: Value, streamed: bool) -> Value {
    json!({
        "index": 0,
        if streamed { "delta" } else { "message" }: message,
        "finish_reason": reason,
        "logprobs": null,
    })
}

/// A call in OpenAI's shape.
fn openai_call(call: &ToolCall) -> Value {
    json!({
        "id": call.id, "type": "function",
        "function": { "name": call.name, "arguments": call.arguments.to_string() },
    })
}

/// The calls as the deltas OpenAI streams: each call's index, id, type and name with
/// empty arguments, then its arguments; the first delta also says the role.
fn streamed_calls(calls: &[ToolCall]) -> Vec<Value> {
    let mut deltas = Vec::new();
    for (index, call) in calls.iter().enumerate() {
        let mut head = openai_call(call);
        head["index"] = json!(index);
        head["function"]["arguments"] = json!("");
        deltas.push(json!({ "tool_calls": [head] }));
        deltas.push(json!({ "tool_calls": [{
            "index": index, "function": { "arguments": call.arguments.to_string() },
        }] }));
    }
    deltas[0]["role"] = json!("assistant");
    deltas[0]["content"] = Value::Null;
    deltas
}

/// The choices that end an answer made under `tools`: its text or its calls, whole or
/// (`streamed`) as chunks' choices, the last one saying why it ended.
fn tool_answer(tools: &Tools, text: &str, finish: &Finish, streamed: bool) -> Vec<Value> {
    let (messages, reason) = match tools.parse(text) {
        Answer::Text(content) => (
            vec![json!({ "role": "assistant", "content": content })],
            json!(finish.reason),
        ),
        Answer::Calls(calls) if streamed => (streamed_calls(&calls), json!("tool_calls")),
        Answer::Calls(calls) => (
            vec![json!({
                "role": "assistant",
                "content": null,
                "tool_calls": calls.iter().map(openai_call).collect::<Vec<_>>(),
            })],
            json!("tool_calls"),
        ),
    };
    if !streamed {
        let message = messages.into_iter().next().unwrap_or(Value::Null);
        return vec![chat_choice(message, reason, false)];
    }
    let mut choices: Vec<Value> = messages
        .into_iter()
        .map(|m| chat_choice(m, Value::Null, true))
        .collect();
    choices.push(chat_choice(json!({}), reason, true));
    choices
}

async fn complete(
    state: &ApiState,
    model: &ServedModel,
    kind: Kind,
    prompt: Prompt,
    mut common: Common,
) -> Result<Response, OpenAiError> {
    let (req, tools) = request(prompt, &mut common)?;
    let asked = req.sampling.logprobs;
    let id = new_id(match kind {
        Kind::Chat => "chatcmpl",
        Kind::Text => "cmpl",
    });
    let created = unix_now();
    let name = common.model.clone();
    if !common.stream {
        let generation = state.generate(model, req).await?;
        let mesh = generation.provenance().cloned();
        let (text, tokens, finish) = generation.collect_all().await?;
        let told = asked.map(|_| kind.logprobs(&tokens, &mut Default::default()));
        let choice = match &tools {
            Some(tools) => tool_answer(tools, &text, &finish, false).remove(0),
            None => kind.choice(Some(&text), Some(&finish), false, told),
        };
        return Ok((
            [(super::SUPPLIER_HEADER, state.served_by(mesh.as_ref()))],
            Json(json!({
                "id": id,
                "object": kind.object(false),
                "created": created,
                "model": name,
                "system_fingerprint": null,
                "choices": [choice],
                "usage": usage(&finish, mesh.as_ref()),
            })),
        )
            .into_response());
    }
    let include_usage = common.stream_options.is_some_and(|o| o.include_usage);
    let chunk = move |choices: Value, usage: Option<Value>| {
        let mut c = json!({
            "id": id,
            "object": kind.object(true),
            "created": created,
            "model": name,
            "system_fingerprint": null,
            "choices": choices,
        });
        if include_usage {
            c["usage"] = usage.unwrap_or(Value::Null);
        }
        Ok::<Event, Infallible>(Event::default().data(c.to_string()))
    };
    // Under tools the answer is JSON to read whole: it is held back until it ends.
    let mut held = String::new();
    // Log probabilities wait for the text of their tokens.
    let (mut told, mut offset) = (Vec::new(), logprobs::Offset::default());
    let (rx, mesh) = spawn_stream(state, model, req, move |event, mesh| match event {
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
            let told = asked.map(|_| kind.logprobs(&std::mem::take(&mut told), &mut offset));
            vec![chunk(json!([kind.choice(Some(&piece), None, true, told)]), None)]
        }
        GenEvent::Done(finish) => {
            let mut parts: Vec<_> = match &tools {
                Some(tools) => tool_answer(tools, &held, &finish, true)
                    .into_iter()
                    .map(|choice| chunk(json!([choice]), None))
                    .collect(),
                None => vec![chunk(json!([kind.choice(None, Some(&finish), true, None)]), None)],
            };
            if include_usage {
                parts.push(chunk(json!([]), Some(usage(&finish, mesh))));
            }
            parts.push(Ok(Event::default().data("[DONE]")));
            parts
        }
        // Headers are sent: the error travels in the stream, as OpenAI does.
        GenEvent::Failed(why) => vec![Ok(Event::default().data(
            json!({ "error": { "message": why, "type": "server_error", "param": null, "code": null } })
                .to_string(),
        ))],
    })
    .await?;
    Ok((
        [(super::SUPPLIER_HEADER, state.served_by(mesh.as_ref()))],
        Sse::new(ReceiverStream::new(rx)),
    )
        .into_response())
}

/// `POST /v1/chat/completions`
pub async fn chat(
    State(state): State<ApiState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, OpenAiError> {
    let body: ChatBody = state.parse(raw)?;
    let model = lookup(&state, &body.common.model, &headers).await?;
    let prompt = chat_prompt(body.messages)?;
    complete(&state, &model, Kind::Chat, prompt, body.common).await
}

fn chat_prompt(messages: Vec<InMessage>) -> Result<Prompt, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad_param(
            "messages",
            "messages must not be empty",
        ));
    }
    let mut calls = std::collections::HashMap::new();
    let messages = messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| message(i, m, &mut calls))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Prompt::Chat(messages))
}

/// `POST /v1/completions`
pub async fn completions(
    State(state): State<ApiState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, OpenAiError> {
    let body: CompletionBody = state.parse(raw)?;
    let prompt = text_prompt(body.prompt)?;
    let model = lookup(&state, &body.common.model, &headers).await?;
    complete(&state, &model, Kind::Text, prompt, body.common).await
}

fn text_prompt(prompt: Value) -> Result<Prompt, ApiError> {
    match prompt {
        Value::String(s) => Ok(Prompt::Text(s)),
        Value::Array(items) if items.len() == 1 && items[0].is_string() => Ok(Prompt::Text(
            items[0].as_str().unwrap_or_default().to_owned(),
        )),
        _ => Err(ApiError::bad_param(
            "prompt",
            "prompt must be one string (token arrays and batches are not supported)",
        )),
    }
}

/// What `POST /v1/chat/completions` checks of a body before it runs, in the handler's
/// order but without a node: parsed, its messages converted, its sampling checked
/// (the fuzz harness drives this; the handlers call the same steps).
pub(crate) fn chat_request(bytes: &[u8]) -> Result<GenRequest, ApiError> {
    let mut body: ChatBody = body::parse_bytes(bytes)?;
    let prompt = chat_prompt(body.messages)?;
    request(prompt, &mut body.common).map(|(request, _)| request)
}

/// As [`chat_request`], for `POST /v1/completions`.
pub(crate) fn completion_request(bytes: &[u8]) -> Result<GenRequest, ApiError> {
    let mut body: CompletionBody = body::parse_bytes(bytes)?;
    let prompt = text_prompt(body.prompt)?;
    request(prompt, &mut body.common).map(|(request, _)| request)
}

fn model_entry(name: &str) -> Value {
    json!({ "id": name, "object": "model", "created": 0, "owned_by": "relaymesh" })
}

/// `GET /v1/models`
pub async fn models(State(state): State<ApiState>) -> Json<Value> {
    let data: Vec<Value> = all_model_names(&state)
        .await
        .iter()
        .map(|n| model_entry(n))
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

/// `GET /v1/models/{id}`
pub async fn model(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, OpenAiError> {
    lookup(&state, &id, &HeaderMap::new()).await?;
    Ok(Json(model_entry(&id)))
}
