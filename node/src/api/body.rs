//! Request bodies: read with a size limit and parsed as JSON whatever the
//! `Content-Type` (curl's `-d` sends form encoding, and Ollama accepts that), with
//! errors that say what is wrong.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Largest request body accepted by default (`--limit http_body_bytes`).
pub const MAX_BODY: usize = 2 << 20;

/// Parses a JSON body; 413 when it was over `limit` (the node's `http_body_bytes`,
/// which the router's body limit applied), 400 when it is not the JSON expected.
pub fn parse<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is over this node's {limit}-byte limit (--limit http_body_bytes)"
                ),
            )
        } else {
            ApiError::new(rejection.status(), rejection.body_text())
        }
    })?;
    parse_bytes(&bytes)
}

/// Parses a body already read: 400 when it is not the JSON expected.
pub fn parse_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let what = if e.is_data() {
            "the request does not have the expected fields"
        } else {
            "the request body is not valid JSON"
        };
        ApiError::new(StatusCode::BAD_REQUEST, format!("{what}: {e}"))
    })
}
