//! Errors of the inference APIs, each rendered in its API's own JSON shape:
//! OpenAI's `{"error": {"message", "type", "param", "code"}}` and Ollama's
//! `{"error": "message"}`, with the right status and, for 503 and 429, `Retry-After`.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::backend::BackendError;

/// Which API shape an error is rendered in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `/v1/...`
    OpenAi,
    /// `/api/...`
    Ollama,
    /// `/v1/messages` (Anthropic's Messages API)
    Anthropic,
}

/// An API error, independent of its shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a person.
    pub message: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// OpenAI's machine-readable code (`model_not_found`, …).
    pub code: Option<&'static str>,
    /// For 429 and 503.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// An error with a status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400 naming the field at fault.
    pub fn bad_param(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.to_owned()),
            ..Self::new(StatusCode::BAD_REQUEST, message)
        }
    }

    /// 400 for a parameter this node does not implement.
    pub fn unsupported(param: &str) -> Self {
        Self {
            code: Some("unsupported_parameter"),
            ..Self::bad_param(
                param,
                format!("the parameter '{param}' is not supported by relaymesh"),
            )
        }
    }

    /// 404 naming the models there are.
    pub fn unknown_model(model: &str, known: &[String]) -> Self {
        let list = if known.is_empty() {
            "this node serves no models".to_owned()
        } else {
            format!("models served here: {}", known.join(", "))
        };
        Self {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..Self::new(
                StatusCode::NOT_FOUND,
                format!("model '{model}' not found; {list}"),
            )
        }
    }

    /// Renders in `shape`.
    pub fn render(self, shape: Shape) -> Response {
        let body = match shape {
            Shape::OpenAi => json!({ "error": {
                "message": self.message,
                "type": openai_type(self.status),
                "param": self.param,
                "code": self.code,
            }}),
            Shape::Ollama => json!({ "error": self.message }),
            Shape::Anthropic => json!({
                "type": "error",
                "error": { "type": anthropic_type(self.status), "message": self.message },
            }),
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(after) = self.retry_after {
            let secs = after.as_secs().max(1).to_string();
            if let Ok(value) = HeaderValue::from_str(&secs) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

/// The `Retry-After` of a 503 that no queue or slot count hints at.
pub const UNAVAILABLE_RETRY: Duration = Duration::from_secs(5);

fn openai_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        500..=599 if status == StatusCode::SERVICE_UNAVAILABLE => "overloaded_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    }
}

/// Anthropic's error types (its `api_error` for a failure of ours).
pub fn anthropic_type(status: StatusCode) -> &'static str {
    match (status.as_u16(), openai_type(status)) {
        (402, _) => "billing_error",
        (504, _) => "timeout_error",
        (_, "server_error") => "api_error",
        (_, other) => other,
    }
}

/// `text` on one line: a message from below (a libp2p dial error lists one line per
/// address tried) reads as one sentence in a JSON error and a log line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        let message = one_line(&e.to_string());
        match e {
            BackendError::Busy { retry_after, .. } => Self {
                retry_after: Some(retry_after),
                code: Some("slots_busy"),
                ..Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
            },
            BackendError::PromptTooLong { .. } => Self {
                code: Some("context_length_exceeded"),
                ..Self::bad_param("messages", message)
            },
            BackendError::Invalid(_) => Self::new(StatusCode::BAD_REQUEST, message),
            BackendError::Upstream(_) => Self::new(StatusCode::BAD_GATEWAY, message),
            // No supplier could be reached or took the request: worth asking again
            // once the mesh has had time to change (ads, back-off, restarts).
            BackendError::Unavailable(_) => Self {
                retry_after: Some(UNAVAILABLE_RETRY),
                ..Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
            },
            BackendError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, message),
            BackendError::PaymentRequired(_) => Self {
                code: Some("insufficient_credit"),
                ..Self::new(StatusCode::PAYMENT_REQUIRED, message)
            },
            BackendError::Internal(_) => Self::new(StatusCode::INTERNAL_SERVER_ERROR, message),
        }
    }
}

/// An error rendered as OpenAI's.
pub struct OpenAiError(pub ApiError);
/// An error rendered as Ollama's.
pub struct OllamaError(pub ApiError);
/// An error rendered as Anthropic's.
pub struct AnthropicError(pub ApiError);

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        self.0.render(Shape::Anthropic)
    }
}

impl<E: Into<ApiError>> From<E> for AnthropicError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        self.0.render(Shape::OpenAi)
    }
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        self.0.render(Shape::Ollama)
    }
}

impl<E: Into<ApiError>> From<E> for OpenAiError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl<E: Into<ApiError>> From<E> for OllamaError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_line_error_from_below_is_one_line() {
        let e = ApiError::from(BackendError::Unavailable(
            "12D3Koo: Failed to negotiate transport protocol(s): [\n  (/ip4/10.0.0.2/udp/4001/quic-v1: timeout)\n]".into(),
        ));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            e.retry_after,
            Some(UNAVAILABLE_RETRY),
            "every 503 says when to retry"
        );
        assert!(!e.message.contains('\n'), "{}", e.message);
        assert!(e
            .message
            .contains("[ (/ip4/10.0.0.2/udp/4001/quic-v1: timeout) ]"));
    }
}
