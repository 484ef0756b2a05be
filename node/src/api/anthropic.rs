//! Anthropic's Messages API: `POST /v1/messages`, so clients written for Anthropic
//! (its official SDKs among them) work against any node, over the mesh and metered
//! like chat. `stream: true` answers with Anthropic's named server-sent events
//! (`message_start`, `content_block_start`, `ping`, `content_block_delta`,
//! `content_block_stop`, `message_delta`, `message_stop`; `error` when an answer fails
//! after it began). Tool use: `tools` and `tool_choice` (auto, any, a named tool,
//! none), `tool_use` blocks in the answer (streamed as `input_json_delta`s) and
//! `tool_result` blocks in the conversation (see `tools.rs`).

use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio_stream::wrappers::ReceiverStream;

use super::error::{anthropic_type, AnthropicError, ApiError};
use super::infer::{lookup, new_id, refuse_unsupported, sampling, spawn_stream};
use super::tools::{self, Answer, Tool, ToolChoice, Tools};
use super::{body, ApiState};
use crate::backend::{
    ChatMessage, Finish, FinishReason, GenEvent, GenRequest, Prompt, Provenance, Role,
};

/// Fields we do not implement; sent with a non-default value they get a 400 naming
/// them rather than being silently ignored.
const UNSUPPORTED: &[&str] = &["thinking", "mcp_servers", "container"];

#[derive(Deserialize)]
struct MessagesBody {
    model: String,
    /// Required by Anthropic's API for a message (`count_tokens` takes none: 0).
    #[serde(default)]
    max_tokens: i64,
    messages: Vec<InMessage>,
    #[serde(default)]
    system: Value,
    #[serde(default)]
    stream: bool,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    #[serde(default)]
    stop_sequences: Vec<String>,
    #[serde(default)]
    tools: Vec<Value>,
    tool_choice: Option<Value>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Deserialize)]
struct InMessage {
    role: String,
    content: Value,
}

/// Text of a `content` (a string, or a list of blocks of which only `text` ones are
/// supported), for error messages naming `param`.
fn text_of(content: Value, param: &str) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s),
        Value::Null => Ok(String::new()),
        Value::Array(blocks) => {
            let mut text = String::new();
            for block in blocks {
                match (block["type"].as_str(), block["text"].as_str()) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    (kind, _) => return Err(unsupported_block(kind, param)),
                }
            }
            Ok(text)
        }
        _ => Err(ApiError::bad_param(
            param,
            "content must be a string or a list of content blocks",
        )),
    }
}

fn unsupported_block(kind: Option<&str>, param: &str) -> ApiError {
    ApiError::bad_param(
        param,
        format!(
            "content block type '{}' is not supported (text, tool_use, tool_result)",
            kind.unwrap_or("?")
        ),
    )
}

/// The turns of one message: its text, its tool calls (an assistant's `tool_use`
/// blocks, whose names `calls` keeps by id) or the results it gives (a user's
/// `tool_result` blocks).
fn turns_of(
    role: Role,
    content: Value,
    param: &str,
    calls: &mut std::collections::HashMap<String, String>,
) -> Result<Vec<ChatMessage>, ApiError> {
    let Value::Array(blocks) = content else {
        let content = text_of(content, param)?;
        return Ok(vec![ChatMessage { role, content }]);
    };
    let mut text = String::new();
    let mut made = Vec::new();
    let mut results = Vec::new();
    for block in blocks {
        match block["type"].as_str() {
            Some("text") => text.push_str(block["text"].as_str().unwrap_or_default()),
            Some("tool_use") if role == Role::Assistant => {
                let name = block["name"].as_str().unwrap_or_default().to_owned();
                if let Some(id) = block["id"].as_str() {
                    calls.insert(id.to_owned(), name.clone());
                }
                made.push((name, block["input"].clone()));
            }
            Some("tool_result") if role == Role::User => {
                let name = block["tool_use_id"].as_str().and_then(|id| calls.get(id));
                let content = text_of(block["content"].clone(), param)?;
                results.push(tools::result_turn(name.map(String::as_str), &content));
            }
            kind => return Err(unsupported_block(kind, param)),
        }
    }
    if !made.is_empty() {
        // What the model wrote when it called: the call, as it reads its own calls.
        return Ok(vec![tools::calls_turn(&made)]);
    }
    if !text.is_empty() || results.is_empty() {
        results.push(ChatMessage {
            role,
            content: text,
        });
    }
    Ok(results)
}

/// The conversation: the system prompt first, then the turns.
fn conversation(system: Value, messages: Vec<InMessage>) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad_param(
            "messages",
            "messages must not be empty",
        ));
    }
    let mut out = Vec::with_capacity(messages.len() + 1);
    let system = text_of(system, "system")?;
    if !system.is_empty() {
        out.push(ChatMessage {
            role: Role::System,
            content: system,
        });
    }
    let mut calls = std::collections::HashMap::new();
    for (i, m) in messages.into_iter().enumerate() {
        let param = format!("messages[{i}]");
        let role = match m.role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(ApiError::bad_param(
                    &param,
                    format!("role '{other}' is not supported (user, assistant; the system prompt is `system`)"),
                ))
            }
        };
        out.extend(turns_of(
            role,
            m.content,
            &format!("{param}.content"),
            &mut calls,
        )?);
    }
    Ok(out)
}

/// `tools` and `tool_choice`; `None` when no call can be made.
fn anthropic_tools(list: &[Value], choice: Option<&Value>) -> Result<Option<Tools>, ApiError> {
    let parallel = !choice.is_some_and(|c| c["disable_parallel_tool_use"] == true);
    let choice = match choice.map(|c| (c["type"].as_str(), c["name"].as_str())) {
        None | Some((Some("auto"), _)) => None,
        Some((Some("none"), _)) => return Ok(None),
        Some((Some("any"), _)) => Some(ToolChoice::Required),
        Some((Some("tool"), Some(name))) => Some(ToolChoice::Named(name.to_owned())),
        Some(_) => {
            return Err(ApiError::bad_param(
                "tool_choice",
                "tool_choice's type is auto, any, tool (with its name) or none",
            ))
        }
    };
    let tools = list
        .iter()
        .map(|t| Tool {
            name: t["name"].as_str().unwrap_or_default().to_owned(),
            description: t["description"].as_str().unwrap_or_default().to_owned(),
            parameters: match &t["input_schema"] {
                Value::Null => json!({ "type": "object", "properties": {} }),
                p => p.clone(),
            },
        })
        .collect();
    Tools::new(tools, choice, parallel, None)
}

/// An answer's content blocks: its text, or (under tools) its text or its calls.
fn blocks(tools: Option<&Tools>, text: &str) -> Vec<Value> {
    match tools.map(|t| t.parse(text)) {
        Some(Answer::Calls(calls)) => calls
            .into_iter()
            .map(|c| {
                json!({ "type": "tool_use", "id": c.id.replacen("call", "toolu", 1),
                        "name": c.name, "input": c.arguments })
            })
            .collect(),
        Some(Answer::Text(text)) => vec![json!({ "type": "text", "text": text })],
        None => vec![json!({ "type": "text", "text": text })],
    }
}

/// The events of one whole content block at `index` (under tools, blocks are sent
/// once the answer is read): its start with the block empty, its text or input as a
/// delta, its stop.
fn block_events(index: usize, block: &Value) -> Vec<Result<Event, Infallible>> {
    let (empty, delta) = if block["type"] == "tool_use" {
        let mut empty = block.clone();
        empty["input"] = json!({});
        (
            empty,
            json!({ "type": "input_json_delta", "partial_json": block["input"].to_string() }),
        )
    } else {
        (
            json!({ "type": "text", "text": "" }),
            json!({ "type": "text_delta", "text": block["text"] }),
        )
    };
    vec![
        event(
            "content_block_start",
            json!({ "type": "content_block_start", "index": index, "content_block": empty }),
        ),
        event(
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": index, "delta": delta }),
        ),
        event(
            "content_block_stop",
            json!({ "type": "content_block_stop", "index": index }),
        ),
    ]
}

fn stop_reason(finish: &Finish, blocks: &[Value]) -> &'static str {
    match finish.reason {
        FinishReason::Stop if blocks.iter().any(|b| b["type"] == "tool_use") => "tool_use",
        FinishReason::Stop if finish.stop.is_some() => "stop_sequence",
        FinishReason::Stop => "end_turn",
        FinishReason::Length => "max_tokens",
    }
}

/// Anthropic's usage; for a mesh request also `relaymesh`: the suppliers and what the
/// acks metered (clients ignore fields they do not know).
fn usage(finish: &Finish, mesh: Option<&Provenance>) -> Value {
    let mut usage = json!({
        // Anthropic's input tokens leave out those read from the cache.
        "input_tokens": finish.prompt_tokens.saturating_sub(finish.cached_tokens),
        "output_tokens": finish.completion_tokens,
        "cache_read_input_tokens": finish.cached_tokens,
    });
    if let Some(p) = mesh {
        usage["relaymesh"] = json!(p.report());
    }
    usage
}

fn event(name: &'static str, data: Value) -> Result<Event, Infallible> {
    Ok(Event::default().event(name).data(data.to_string()))
}

/// The request a body asks for, and the tools its answer may call.
fn prepare(body: MessagesBody) -> Result<(GenRequest, Option<Tools>), ApiError> {
    refuse_unsupported(&body.extra, UNSUPPORTED, |_, _| false)?;
    if body.max_tokens < 1 {
        return Err(ApiError::bad_param(
            "max_tokens",
            "max_tokens must be at least 1",
        ));
    }
    let tools = anthropic_tools(&body.tools, body.tool_choice.as_ref())?;
    let sampling = sampling(
        // Anthropic's default temperature is 1.
        Some(body.temperature.unwrap_or(1.0)),
        body.top_p,
        body.top_k,
        None,
        Some(body.max_tokens),
        body.stop_sequences,
    )?;
    let request = tools::shape(
        Prompt::Chat(conversation(body.system, body.messages)?),
        sampling,
        tools.as_ref(),
        None,
        "messages",
        "tools",
    )?;
    Ok((request, tools))
}

/// What `POST /v1/messages` checks of a body before it runs, without a node (the fuzz
/// harness drives this; the handler calls the same steps).
pub(crate) fn messages_request(bytes: &[u8]) -> Result<GenRequest, ApiError> {
    prepare(body::parse_bytes(bytes)?).map(|(request, _)| request)
}

/// `POST /v1/messages/count_tokens`: the tokens a message request's prompt comes to
/// as the model reads it (its chat template and the tool listing applied). Exact for
/// a model this node runs itself; a model served over the mesh or by an upstream keeps
/// its tokenizer elsewhere, so its count is an estimate of a token per 4 bytes of
/// text, said in `relaymesh.estimated`.
pub async fn count_tokens(
    State(state): State<ApiState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, AnthropicError> {
    let mut body: MessagesBody = state.parse(raw)?;
    body.max_tokens = body.max_tokens.max(1);
    body.stream = false;
    let model = lookup(&state, &body.model, &headers).await?;
    let (request, _) = prepare(body)?;
    let counted = model
        .backend
        .count_tokens(&request.prompt)
        .map_err(ApiError::from)?;
    let estimated = counted.is_none();
    let tokens = counted.unwrap_or_else(|| {
        let bytes: usize = match &request.prompt {
            Prompt::Chat(messages) => messages.iter().map(|m| m.content.len()).sum(),
            Prompt::Text(text) => text.len(),
        };
        u32::try_from(bytes.div_ceil(4)).unwrap_or(u32::MAX)
    });
    Ok(
        Json(json!({ "input_tokens": tokens, "relaymesh": { "estimated": estimated } }))
            .into_response(),
    )
}

/// `POST /v1/messages`
pub async fn messages(
    State(state): State<ApiState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, AnthropicError> {
    let body: MessagesBody = state.parse(raw)?;
    let model = lookup(&state, &body.model, &headers).await?;
    let (name, stream) = (body.model.clone(), body.stream);
    let (request, tools) = prepare(body)?;
    // Anthropic's ids are `msg_…`.
    let id = new_id("msg").replacen('-', "_", 1);
    let message = |content: Value, finish: Option<(&Finish, &str)>, mesh: Option<&Provenance>| {
        json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": name,
            "content": content,
            "stop_reason": finish.map(|(_, reason)| reason),
            "stop_sequence": finish.and_then(|(f, _)| f.stop.as_deref()),
            "usage": finish.map_or_else(
                || json!({ "input_tokens": 0, "output_tokens": 0 }),
                |(f, _)| usage(f, mesh),
            ),
        })
    };
    if !stream {
        let generation = state.generate(&model, request).await?;
        let mesh = generation.provenance().cloned();
        let (text, finish) = generation.collect().await?;
        let content = blocks(tools.as_ref(), &text);
        let reason = stop_reason(&finish, &content);
        return Ok((
            [(super::SUPPLIER_HEADER, state.served_by(mesh.as_ref()))],
            Json(message(
                json!(content),
                Some((&finish, reason)),
                mesh.as_ref(),
            )),
        )
            .into_response());
    }
    let mut start = json!({ "type": "message_start", "message": message(json!([]), None, None) });
    // The prompt's tokens, where this node holds the model's tokenizer (0 otherwise:
    // the count comes with `message_delta`, as it does in every case, less what the
    // prompt cache held, which is known only once the engine has looked).
    if let Ok(Some(tokens)) = model.backend.count_tokens(&request.prompt) {
        start["message"]["usage"]["input_tokens"] = json!(tokens);
    }
    let mut started = false;
    // Under tools the answer is JSON to read whole: it is held back until it ends.
    let mut held = String::new();
    let (rx, mesh) = spawn_stream(&state, &model, request, move |event, mesh| {
        let mut parts = Vec::new();
        if !std::mem::replace(&mut started, true) {
            parts.push(self::event("message_start", start.clone()));
            if tools.is_none() {
                parts.push(self::event(
                    "content_block_start",
                    json!({ "type": "content_block_start", "index": 0,
                            "content_block": { "type": "text", "text": "" } }),
                ));
            }
            parts.push(self::event("ping", json!({ "type": "ping" })));
        }
        match event {
            // Anthropic's API tells no log probabilities (none are asked for).
            GenEvent::Logprobs(_) => {}
            GenEvent::Text(piece) if tools.is_some() => held.push_str(&piece),
            GenEvent::Text(piece) => parts.push(self::event(
                "content_block_delta",
                json!({ "type": "content_block_delta", "index": 0,
                        "delta": { "type": "text_delta", "text": piece } }),
            )),
            GenEvent::Done(finish) => {
                let content = match &tools {
                    Some(tools) => {
                        let content = blocks(Some(tools), &held);
                        for (i, block) in content.iter().enumerate() {
                            parts.extend(block_events(i, block));
                        }
                        content
                    }
                    None => {
                        parts.push(self::event(
                            "content_block_stop",
                            json!({ "type": "content_block_stop", "index": 0 }),
                        ));
                        Vec::new()
                    }
                };
                parts.push(self::event(
                    "message_delta",
                    json!({ "type": "message_delta",
                            "delta": { "stop_reason": stop_reason(&finish, &content), "stop_sequence": finish.stop },
                            "usage": usage(&finish, mesh) }),
                ));
                parts.push(self::event("message_stop", json!({ "type": "message_stop" })));
            }
            // Headers are sent: the error travels in the stream, as Anthropic does.
            GenEvent::Failed(why) => parts.push(self::event(
                "error",
                json!({ "type": "error",
                        "error": { "type": anthropic_type(axum::http::StatusCode::BAD_GATEWAY), "message": why } }),
            )),
        }
        parts
    })
    .await?;
    Ok((
        [(super::SUPPLIER_HEADER, state.served_by(mesh.as_ref()))],
        Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(role: &str, content: Value) -> InMessage {
        InMessage {
            role: role.into(),
            content,
        }
    }

    #[test]
    fn the_system_prompt_comes_first_and_blocks_are_joined() {
        let chat = conversation(
            json!([{ "type": "text", "text": "Be brief." }]),
            vec![
                turn("user", json!("Hi")),
                turn("assistant", json!([{ "type": "text", "text": "Hello" }])),
                turn("user", json!([{ "type": "text", "text": "Why " }, { "type": "text", "text": "blue?" }])),
            ],
        )
        .unwrap();
        assert_eq!(chat.len(), 4);
        assert_eq!(
            (chat[0].role, chat[0].content.as_str()),
            (Role::System, "Be brief.")
        );
        assert_eq!(chat[3].content, "Why blue?");
    }

    #[test]
    fn images_and_odd_roles_are_refused_by_name() {
        let image = conversation(
            Value::Null,
            vec![turn("user", json!([{ "type": "image", "source": {} }]))],
        );
        assert!(image.err().unwrap().message.contains("'image'"));
        let role = conversation(Value::Null, vec![turn("system", json!("x"))]);
        assert!(role.err().unwrap().message.contains("`system`"));
        assert!(conversation(Value::Null, vec![]).is_err());
        let mut extra = Map::new();
        extra.insert("thinking".into(), json!({ "type": "enabled" }));
        let refused = refuse_unsupported(&extra, UNSUPPORTED, |_, _| false).unwrap_err();
        assert!(refused.message.contains("thinking"), "{}", refused.message);
    }

    #[test]
    fn tool_use_and_results_become_turns_the_model_reads() {
        let chat = conversation(
            Value::Null,
            vec![
                turn("user", json!("Weather in Paris?")),
                turn("assistant", json!([
                    { "type": "text", "text": "Let me look." },
                    { "type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": { "city": "Paris" } },
                ])),
                turn("user", json!([
                    { "type": "tool_result", "tool_use_id": "toolu_1", "content": "22 degrees" },
                ])),
            ],
        )
        .unwrap();
        assert_eq!(chat.len(), 3);
        assert_eq!(
            chat[1].content,
            r#"{"tool_calls":[{"name":"get_weather","arguments":{"city":"Paris"}}]}"#
        );
        assert_eq!(chat[2].role, Role::User);
        assert!(chat[2].content.contains("get_weather") && chat[2].content.contains("22 degrees"));
    }
}
