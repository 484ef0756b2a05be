//! Anthropic's Messages API: `POST /v1/messages`, so clients written for Anthropic
//! (its official SDKs among them) work against any node, over the mesh and metered
//! like chat. `stream: true` answers with Anthropic's named server-sent events
//! (`message_start`, `content_block_start`, `ping`, `content_block_delta`,
//! `content_block_stop`, `message_delta`, `message_stop`; `error` when an answer fails
//! after it began). Tool use is not implemented yet: `tools` gets a clear 400.

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
use super::{body, ApiState};
use crate::backend::{
    ChatMessage, Finish, FinishReason, GenEvent, GenRequest, Prompt, Provenance, Role, Tenant,
};

/// Fields we do not implement; sent with a non-default value they get a 400 naming
/// them rather than being silently ignored.
const UNSUPPORTED: &[&str] = &[
    "tools",
    "tool_choice",
    "thinking",
    "mcp_servers",
    "container",
];

#[derive(Deserialize)]
struct MessagesBody {
    model: String,
    /// Required by Anthropic's API.
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
                    (kind, _) => {
                        return Err(ApiError::bad_param(
                            param,
                            format!(
                                "content block type '{}' is not supported (text only)",
                                kind.unwrap_or("?")
                            ),
                        ))
                    }
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

/// The conversation: the system prompt first, then the turns.
fn prompt(system: Value, messages: Vec<InMessage>) -> Result<Prompt, ApiError> {
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
        let content = text_of(m.content, &format!("{param}.content"))?;
        out.push(ChatMessage { role, content });
    }
    Ok(Prompt::Chat(out))
}

fn stop_reason(finish: &Finish) -> &'static str {
    match finish.reason {
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

/// `POST /v1/messages`
pub async fn messages(
    State(state): State<ApiState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, AnthropicError> {
    let body: MessagesBody = body::parse(raw)?;
    refuse_unsupported(&body.extra, UNSUPPORTED, |_, _| false)?;
    if body.max_tokens < 1 {
        return Err(ApiError::bad_param("max_tokens", "max_tokens must be at least 1").into());
    }
    let model = lookup(&state, &body.model, &headers).await?;
    let request = GenRequest {
        prompt: prompt(body.system, body.messages)?,
        sampling: sampling(
            // Anthropic's default temperature is 1.
            Some(body.temperature.unwrap_or(1.0)),
            body.top_p,
            body.top_k,
            None,
            Some(body.max_tokens),
            body.stop_sequences,
        )?,
        tenant: Tenant::Local,
    };
    // Anthropic's ids are `msg_…`.
    let id = new_id("msg").replacen('-', "_", 1);
    let name = body.model;
    let message = |content: Value, finish: Option<&Finish>, mesh: Option<&Provenance>| {
        json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": name,
            "content": content,
            "stop_reason": finish.map(stop_reason),
            "stop_sequence": null,
            "usage": finish.map_or_else(
                || json!({ "input_tokens": 0, "output_tokens": 0 }),
                |f| usage(f, mesh),
            ),
        })
    };
    if !body.stream {
        let generation = state.generate(&model, request).await?;
        let mesh = generation.provenance().cloned();
        let (text, finish) = generation.collect().await?;
        let content = json!([{ "type": "text", "text": text }]);
        return Ok((
            [(super::SUPPLIER_HEADER, state.served_by(mesh.as_ref()))],
            Json(message(content, Some(&finish), mesh.as_ref())),
        )
            .into_response());
    }
    let start = json!({ "type": "message_start", "message": message(json!([]), None, None) });
    let mut started = false;
    let (rx, mesh) = spawn_stream(&state, &model, request, move |event, mesh| {
        let mut parts = Vec::new();
        if !std::mem::replace(&mut started, true) {
            parts.push(self::event("message_start", start.clone()));
            parts.push(self::event(
                "content_block_start",
                json!({ "type": "content_block_start", "index": 0,
                        "content_block": { "type": "text", "text": "" } }),
            ));
            parts.push(self::event("ping", json!({ "type": "ping" })));
        }
        match event {
            GenEvent::Text(piece) => parts.push(self::event(
                "content_block_delta",
                json!({ "type": "content_block_delta", "index": 0,
                        "delta": { "type": "text_delta", "text": piece } }),
            )),
            GenEvent::Done(finish) => {
                parts.push(self::event(
                    "content_block_stop",
                    json!({ "type": "content_block_stop", "index": 0 }),
                ));
                parts.push(self::event(
                    "message_delta",
                    json!({ "type": "message_delta",
                            "delta": { "stop_reason": stop_reason(&finish), "stop_sequence": null },
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
        let Prompt::Chat(chat) = prompt(
            json!([{ "type": "text", "text": "Be brief." }]),
            vec![
                turn("user", json!("Hi")),
                turn("assistant", json!([{ "type": "text", "text": "Hello" }])),
                turn("user", json!([{ "type": "text", "text": "Why " }, { "type": "text", "text": "blue?" }])),
            ],
        )
        .unwrap() else {
            panic!("a chat")
        };
        assert_eq!(chat.len(), 4);
        assert_eq!(
            (chat[0].role, chat[0].content.as_str()),
            (Role::System, "Be brief.")
        );
        assert_eq!(chat[3].content, "Why blue?");
    }

    #[test]
    fn images_tools_and_odd_roles_are_refused_by_name() {
        let image = prompt(
            Value::Null,
            vec![turn("user", json!([{ "type": "image", "source": {} }]))],
        );
        assert!(image.err().unwrap().message.contains("'image'"));
        let role = prompt(Value::Null, vec![turn("system", json!("x"))]);
        assert!(role.err().unwrap().message.contains("`system`"));
        assert!(prompt(Value::Null, vec![]).is_err());
        let mut extra = Map::new();
        extra.insert("tools".into(), json!([{ "name": "f" }]));
        let refused = refuse_unsupported(&extra, UNSUPPORTED, |_, _| false).unwrap_err();
        assert!(refused.message.contains("tools"), "{}", refused.message);
    }
}
