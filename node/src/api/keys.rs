//! API keys, for a node that serves others as a gateway. Off by default (a loopback
//! API needs none); `--api-keys FILE` turns them on: every request then needs
//! `Authorization: Bearer KEY`, and each key has its own quota of requests per minute.
//!
//! The file is TOML:
//!
//! ```toml
//! [[keys]]
//! name = "alice"            # shown in logs
//! key = "rm-4f0c…"          # the secret the client sends
//! requests_per_minute = 30  # optional, default 60
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::error::{ApiError, Shape};
use super::ApiState;

/// Reads of the node's state (GET `/relaymesh/v1/…`, `/metrics`) a key may make per
/// request of its quota.
pub const READS_PER_REQUEST: u32 = 10;
/// Requests per minute when a key names no quota.
pub const DEFAULT_REQUESTS_PER_MINUTE: u32 = 60;
/// Most keys in one file.
pub const MAX_KEYS: usize = 10_000;

#[derive(serde::Deserialize)]
struct File {
    #[serde(default)]
    keys: Vec<Entry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    key: String,
    requests_per_minute: Option<u32>,
}

struct Client {
    name: String,
    per_minute: u32,
    // (start of the current minute, requests in it)
    /// The current minute: when it began, requests and reads in it.
    window: Mutex<(Instant, u32, u32)>,
}

/// The keys and their quotas.
pub struct ApiKeys {
    by_key: HashMap<String, Client>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("keys", &self.by_key.len())
            .finish()
    }
}

impl ApiKeys {
    /// Reads a keys file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses the TOML text of a keys file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.keys.is_empty() {
            return Err("no [[keys]] entries".into());
        }
        if file.keys.len() > MAX_KEYS {
            return Err(format!("more than {MAX_KEYS} keys"));
        }
        let mut by_key = HashMap::new();
        for e in file.keys {
            if e.key.len() < 16 {
                return Err(format!(
                    "the key of {:?} is shorter than 16 characters",
                    e.name
                ));
            }
            let per_minute = e.requests_per_minute.unwrap_or(DEFAULT_REQUESTS_PER_MINUTE);
            let client = Client {
                name: e.name.clone(),
                per_minute,
                window: Mutex::new((Instant::now(), 0, 0)),
            };
            if by_key.insert(e.key, client).is_some() {
                return Err(format!("the key of {:?} is used twice", e.name));
            }
        }
        Ok(Self { by_key })
    }

    /// Checks a bearer token and counts the request against its quota.
    /// The key's client, counted against its quota of requests; or, for a read of the
    /// node's own state (`read`), against its own quota of [`READS_PER_REQUEST`] times
    /// as many (a dashboard polling them must not use up the requests).
    fn admit(&self, token: Option<&str>, read: bool) -> Result<&str, ApiError> {
        let token = token.ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this node needs an API key: send Authorization: Bearer <key>",
            )
        })?;
        let client = self
            .by_key
            .get(token)
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unknown API key"))?;
        let mut window = client.window.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = window.0.elapsed();
        if elapsed >= Duration::from_secs(60) {
            *window = (Instant::now(), 0, 0);
        }
        let (used, quota, what) = if read {
            (
                window.2,
                client.per_minute.saturating_mul(READS_PER_REQUEST),
                "reads",
            )
        } else {
            (window.1, client.per_minute, "requests")
        };
        if used >= quota {
            let wait = Duration::from_secs(60).saturating_sub(window.0.elapsed());
            return Err(ApiError {
                retry_after: Some(wait),
                code: Some("rate_limit_exceeded"),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("the quota of {quota} {what} per minute for this key is used up"),
                )
            });
        }
        if read {
            window.2 += 1;
        } else {
            window.1 += 1;
        }
        Ok(&client.name)
    }
}

/// Middleware: when keys are configured, admits only requests with a valid key
/// within its quota.
pub async fn require_key(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    // The dashboard's page and assets carry no data: a browser loads them without a
    // key, and the page asks for one.
    let Some(keys) = state
        .keys
        .as_ref()
        .filter(|_| !super::dashboard::is_asset(path))
    else {
        return next.run(request).await;
    };
    let read = request.method() == axum::http::Method::GET
        && (path.starts_with("/relaymesh/v1/") || path == "/metrics");
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        // Anthropic's clients send their key as `x-api-key`.
        .or_else(|| {
            request
                .headers()
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
        })
        .map(str::trim);
    let shape = if request.uri().path().starts_with("/api/") {
        Shape::Ollama
    } else if request.uri().path().starts_with("/v1/messages") {
        Shape::Anthropic
    } else {
        Shape::OpenAi
    };
    match keys.admit(token, read) {
        Ok(name) => {
            tracing::debug!(client = name, path = request.uri().path(), "API request");
            next.run(request).await
        }
        Err(err) => err.render(shape),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_and_unknown_keys() {
        let keys = ApiKeys::parse(
            "[[keys]]\nname = \"alice\"\nkey = \"rm-0123456789abcdef\"\nrequests_per_minute = 2\n",
        )
        .unwrap();
        assert_eq!(
            keys.admit(Some("rm-0123456789abcdef"), false).unwrap(),
            "alice"
        );
        assert!(keys.admit(Some("rm-0123456789abcdef"), false).is_ok());
        let over = keys.admit(Some("rm-0123456789abcdef"), false).unwrap_err();
        assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(over.retry_after.is_some());
        // Reads of the node's state (a dashboard polling) have their own quota.
        for _ in 0..2 * READS_PER_REQUEST {
            assert!(keys.admit(Some("rm-0123456789abcdef"), true).is_ok());
        }
        assert!(keys.admit(Some("rm-0123456789abcdef"), true).is_err());
        assert!(keys.admit(Some("nope"), true).is_err());
        assert_eq!(
            keys.admit(Some("nope"), false).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            keys.admit(None, false).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn bad_files_are_refused() {
        assert!(ApiKeys::parse("").is_err());
        assert!(ApiKeys::parse("[[keys]]\nname = \"a\"\nkey = \"short\"\n").is_err());
        assert!(ApiKeys::parse(
            "[[keys]]\nname = \"a\"\nkey = \"rm-0123456789abcdef\"\n[[keys]]\nname = \"b\"\nkey = \"rm-0123456789abcdef\"\n"
        )
        .is_err());
        assert!(ApiKeys::parse(
            "[[keys]]\nname = \"a\"\nkey = \"rm-0123456789abcdef\"\nquota = 1\n"
        )
        .is_err());
    }
}
