//! The node's web dashboard at `/`, embedded in the binary (the mesh may be offline:
//! nothing is loaded from elsewhere, and its Content-Security-Policy says so), and the
//! two endpoints it reads beyond the CLI's: recent requests and live events.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;
use tokio::sync::broadcast;

use super::ApiState;
use crate::backend::{Ended, Provenance};

const INDEX: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

/// Only this node: scripts, styles and requests (the page works on an offline mesh).
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

/// Requests remembered for `/relaymesh/v1/requests`.
pub const RECENT_REQUESTS: usize = 100;
/// `/relaymesh/v1/events` streams open at once (dashboards open on this node).
pub const MAX_EVENT_STREAMS: usize = 32;
/// How often the events stream says the node's state may have changed.
pub const TICK: Duration = Duration::from_secs(2);

/// Whether `path` is the page or one of its assets (they carry no data: no key needed).
pub fn is_asset(path: &str) -> bool {
    path == "/" || path.starts_with("/dashboard/")
}

/// The dashboard's routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(|| asset("text/html; charset=utf-8", INDEX)))
        .route(
            "/dashboard/app.js",
            get(|| asset("text/javascript; charset=utf-8", APP_JS)),
        )
        .route(
            "/dashboard/style.css",
            get(|| asset("text/css; charset=utf-8", STYLE)),
        )
        .route("/relaymesh/v1/requests", get(requests))
        .route("/relaymesh/v1/events", get(events))
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        body,
    )
        .into_response()
}

/// One request through this node's API, as the dashboard lists it.
#[derive(Clone, Debug, Serialize)]
pub struct RequestRecord {
    /// When it ended (unix ms).
    pub at_ms: u64,
    /// The model asked for.
    pub model: String,
    /// Peer ids of who served it, first to last (this node's, for its own models).
    pub served_by: Vec<String>,
    /// Tokens read and written.
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Time to the first token, ms.
    pub ttft_ms: Option<u64>,
    /// Tokens per second after the first.
    pub tokens_per_sec: Option<f64>,
    /// Suppliers given up on mid-answer.
    pub failovers: usize,
    /// `done`, or why it failed.
    pub outcome: String,
}

impl RequestRecord {
    /// The record of a generation of `model` that `ended`, served here (`me`) or on
    /// the mesh (`mesh`).
    pub fn of(model: String, me: String, mesh: Option<&Provenance>, ended: &Ended) -> Self {
        let served_by = mesh.map_or_else(|| vec![me], |p| p.report().suppliers);
        let (prompt_tokens, completion_tokens) = ended
            .finish
            .as_ref()
            .map_or((0, 0), |f| (f.prompt_tokens, f.completion_tokens));
        let tokens_per_sec = ended.ttft.and_then(|ttft| {
            let secs = ended.took.saturating_sub(ttft).as_secs_f64();
            (completion_tokens > 1 && secs > 0.0).then(|| f64::from(completion_tokens - 1) / secs)
        });
        Self {
            at_ms: crate::mesh::now_ms(),
            model,
            failovers: served_by.len().saturating_sub(1),
            served_by,
            prompt_tokens,
            completion_tokens,
            ttft_ms: ended.ttft.map(|t| t.as_millis() as u64),
            tokens_per_sec,
            outcome: ended.failure.clone().unwrap_or_else(|| "done".into()),
        }
    }
}

/// Recent requests, and a feed of new ones.
pub struct RequestLog {
    recent: Mutex<VecDeque<RequestRecord>>,
    live: broadcast::Sender<RequestRecord>,
}

impl Default for RequestLog {
    fn default() -> Self {
        Self {
            recent: Mutex::new(VecDeque::with_capacity(RECENT_REQUESTS)),
            live: broadcast::Sender::new(64),
        }
    }
}

impl RequestLog {
    /// Notes a request that ended.
    pub fn record(&self, record: RequestRecord) {
        let mut recent = self.recent.lock().expect("request log lock");
        if recent.len() >= RECENT_REQUESTS {
            recent.pop_front();
        }
        recent.push_back(record.clone());
        drop(recent);
        // Nobody listening is fine.
        let _ = self.live.send(record);
    }

    /// The requests remembered, newest first.
    pub fn recent(&self) -> Vec<RequestRecord> {
        let recent = self.recent.lock().expect("request log lock");
        recent.iter().rev().cloned().collect()
    }
}

async fn requests(State(s): State<ApiState>) -> Response {
    Json(json!({ "requests": s.requests.recent() })).into_response()
}

/// `text/event-stream`: a `request` event as each request through this node ends,
/// and a `tick` every [`TICK`] (time to read the state again); it ends when the node
/// stops.
async fn events(State(s): State<ApiState>) -> Response {
    let Ok(place) = s.event_streams.clone().try_acquire_owned() else {
        s.metrics.limited("event_streams");
        return super::error(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            format!("{MAX_EVENT_STREAMS} event streams are open on this node already"),
        );
    };
    let live = s.requests.live.subscribe();
    let ticks = tokio::time::interval(TICK);
    let stop = Box::pin(s.stopping.stopped());
    let stream = futures::stream::unfold(
        (live, ticks, stop, place),
        |(mut live, mut ticks, mut stop, place)| async move {
            let event = tokio::select! {
                () = &mut stop => return None,
                _ = ticks.tick() => Event::default().event("tick").data("{}"),
                record = live.recv() => match record {
                    Ok(record) => Event::default()
                        .event("request")
                        .json_data(&record)
                        .unwrap_or_else(|_| Event::default().event("tick").data("{}")),
                    // Fell behind, or the log is gone: a tick makes the page read anew.
                    Err(_) => Event::default().event("tick").data("{}"),
                },
            };
            Some((Ok::<_, Infallible>(event), (live, ticks, stop, place)))
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_the_newest_requests_first() {
        let log = RequestLog::default();
        let mut feed = log.live.subscribe();
        let ended = Ended {
            finish: None,
            failure: Some("cancelled".into()),
            ttft: None,
            took: Duration::from_millis(5),
        };
        for n in 0..RECENT_REQUESTS + 3 {
            log.record(RequestRecord::of(
                format!("m{n}"),
                "me".into(),
                None,
                &ended,
            ));
            if n == 0 {
                assert_eq!(feed.try_recv().unwrap().model, "m0", "fed live");
            }
        }
        let recent = log.recent();
        assert_eq!(recent.len(), RECENT_REQUESTS);
        assert_eq!(recent[0].model, format!("m{}", RECENT_REQUESTS + 2));
        assert_eq!(recent[0].served_by, vec!["me".to_string()]);
        assert_eq!(recent[0].outcome, "cancelled");
    }

    #[test]
    fn every_asset_is_local_and_small() {
        for asset in [INDEX, APP_JS, STYLE] {
            let asset = asset
                .replace("http://www.w3.org/2000/svg", "")
                .replace("http://www.w3.org/1999/xhtml", "");
            assert!(
                !asset.contains("http://")
                    && !asset.contains("https://")
                    && !asset.contains("//cdn")
            );
        }
        assert!(INDEX.len() + APP_JS.len() + STYLE.len() < 300 * 1024);
    }
}
