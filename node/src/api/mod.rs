//! The local HTTP API (axum). This part: status, peers, models and metrics;
//! the OpenAI- and Ollama-compatible routes join with the serving work.

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::mesh::NodeHandle;
use crate::metrics::Metrics;

#[derive(Clone)]
struct ApiState {
    node: NodeHandle,
    metrics: Metrics,
}

/// An error as JSON, `{"error": {"message", "type"}}`, with its status.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": { "message": message.into(), "type": status.canonical_reason() } })),
    )
        .into_response()
}

fn gone() -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down")
}

/// The router.
pub fn router(node: NodeHandle, metrics: Metrics) -> Router {
    Router::new()
        .route("/relaymesh/v1/status", get(status))
        .route("/relaymesh/v1/peers", get(peers))
        .route("/relaymesh/v1/models", get(models))
        .route("/metrics", get(render_metrics))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such route; see /relaymesh/v1/status",
            )
        })
        .with_state(ApiState { node, metrics })
}

async fn status(State(s): State<ApiState>) -> Response {
    s.node
        .status()
        .await
        .map_or_else(|_| gone(), |v| Json(v).into_response())
}

async fn peers(State(s): State<ApiState>) -> Response {
    s.node
        .peers()
        .await
        .map_or_else(|_| gone(), |v| Json(v).into_response())
}

async fn models(State(s): State<ApiState>) -> Response {
    s.node
        .models()
        .await
        .map_or_else(|_| gone(), |v| Json(v).into_response())
}

async fn render_metrics(State(s): State<ApiState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

/// Binds `addr` and serves the API until the task is dropped; returns the bound
/// address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    node: NodeHandle,
    metrics: Metrics,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(api = %bound, "local API listening");
    let app = router(node, metrics);
    let task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::warn!(%err, "local API stopped");
        }
    });
    Ok((bound, task))
}
