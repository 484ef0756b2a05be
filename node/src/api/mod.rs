//! The local HTTP API (axum): the node's own routes (`/relaymesh/v1/...`, `/metrics`),
//! the OpenAI-compatible routes (`/v1/...`) and the Ollama-compatible ones (`/api/...`).

mod anthropic;
pub(crate) mod body;
pub mod dashboard;
mod embeddings;
pub mod error;
pub(crate) mod fuzz;
mod infer;
pub mod keys;
mod logprobs;
mod members;
mod ollama;
mod openai;
mod origin;
mod server;
mod tools;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

pub use infer::{parse_digest, DIGEST_HEADER, MAX_PRICE_HEADER, SUPPLIERS_HEADER};
pub use keys::ApiKeys;
pub use server::{serve, ApiServer, HEADER_TIMEOUT, MAX_CONNECTIONS, WRITE_STALL};

use crate::backend::{Models, ServedModel};
use crate::mesh::NodeHandle;
use crate::metrics::Metrics;

/// What the API serves from.
#[derive(Clone)]
pub struct ApiState {
    node: NodeHandle,
    metrics: Metrics,
    models: Arc<Models>,
    keys: Option<Arc<ApiKeys>>,
    /// When the node started (RFC 3339), shown as the models' `modified_at`.
    started_at: String,
    /// The ledger, and the supplier's metered sessions (`/relaymesh/v1/sessions`).
    settlement: Arc<crate::settle::Settlement>,
    /// The node stopping: answers in flight get a grace period, then an error.
    stopping: crate::stopping::Stopping,
    /// Requests through this API, for the dashboard.
    requests: Arc<dashboard::RequestLog>,
    /// Places for `/relaymesh/v1/events` streams (each holds a connection for good).
    event_streams: Arc<tokio::sync::Semaphore>,
    /// When the API started (the node's uptime).
    started: std::time::Instant,
    /// Chooses the model that answers a request.
    resolver: crate::infer::resolve::Resolver,
    /// Largest request body read (`--limit http_body_bytes`).
    body_limit: usize,
}

/// The response header naming who served a request.
pub const SUPPLIER_HEADER: &str = "x-relaymesh-supplier";

impl ApiState {
    /// The state for a node's API: its swarm, models, gateway and ledger come with the
    /// resolver that chooses who answers.
    pub fn new(
        metrics: Metrics,
        keys: Option<Arc<ApiKeys>>,
        resolver: crate::infer::resolve::Resolver,
    ) -> Self {
        Self {
            node: resolver.node.clone(),
            models: resolver.models.clone(),
            settlement: resolver.settlement.clone(),
            resolver,
            metrics,
            keys,
            started_at: ollama::created_at(),
            stopping: Default::default(),
            requests: Default::default(),
            event_streams: Arc::new(tokio::sync::Semaphore::new(dashboard::MAX_EVENT_STREAMS)),
            started: std::time::Instant::now(),
            body_limit: body::MAX_BODY,
        }
    }

    /// Request bodies over `bytes` are refused (413).
    pub fn with_body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Parses a JSON request body read under this API's body limit.
    fn parse<T: serde::de::DeserializeOwned>(
        &self,
        raw: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
    ) -> Result<T, error::ApiError> {
        body::parse(raw, self.body_limit)
    }

    /// Answers in flight end (after a grace period) when `stopping` fires.
    pub fn with_stopping(mut self, stopping: crate::stopping::Stopping) -> Self {
        self.stopping = stopping;
        self
    }

    /// Starts `request` on `model`, to end with an error if the node stops before it
    /// finishes (after a grace period).
    async fn generate(
        &self,
        model: &ServedModel,
        request: crate::backend::GenRequest,
    ) -> Result<crate::backend::Measured, crate::backend::BackendError> {
        use crate::backend::BackendError;
        use crate::stopping::{STOPPED, STOP_GRACE};
        if self.stopping.is_stopping() {
            return Err(BackendError::Unavailable(STOPPED.into()));
        }
        // Waiting for a place (the mesh's queue, a session) ends with the grace too.
        let stop = self.stopping.stopped();
        let generation = tokio::select! {
            generation = model.generate(request) => generation?,
            () = async move {
                stop.await;
                tokio::time::sleep(STOP_GRACE).await;
            } => return Err(BackendError::Unavailable(STOPPED.into())),
        };
        let (log, name) = (self.requests.clone(), model.backend.info().name.clone());
        let (me, mesh) = (
            self.node.peer_id().to_string(),
            generation.provenance().cloned(),
        );
        Ok(generation
            .until_stopped(&self.stopping)
            .on_end(move |ended| {
                log.record(dashboard::RequestRecord::of(name, me, mesh.as_ref(), ended))
            }))
    }

    /// Who served: the mesh suppliers (comma-separated after a failover), or this node.
    fn served_by(&self, mesh: Option<&crate::backend::Provenance>) -> axum::http::HeaderValue {
        self.made_by(mesh.map(|p| p.report()).as_ref())
    }

    /// The `x-relaymesh-supplier` header: the suppliers of `mesh`, or this node.
    fn made_by(&self, mesh: Option<&crate::backend::MeshReport>) -> axum::http::HeaderValue {
        let id = mesh.map_or_else(|| self.node.peer_id().to_string(), |r| r.header());
        axum::http::HeaderValue::from_str(&id)
            .unwrap_or(axum::http::HeaderValue::from_static("unknown"))
    }
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
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down");
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from(error::UNAVAILABLE_RETRY.as_secs()),
    );
    response
}

/// The router.
pub fn router(state: ApiState) -> Router {
    let keyed = state.keys.is_some();
    let body_limit = state.body_limit;
    let router = Router::new()
        .route("/relaymesh/v1/status", get(status))
        .route("/relaymesh/v1/doctor", get(doctor))
        .route("/relaymesh/v1/peers", get(peers))
        .route("/relaymesh/v1/models", get(models))
        .route("/relaymesh/v1/sessions", get(sessions))
        .route("/relaymesh/v1/ledger", get(ledger))
        .route("/relaymesh/v1/claims", get(claims))
        .route("/relaymesh/v1/transfers", post(transfer))
        .route("/relaymesh/v1/membership", get(members::membership))
        .route("/relaymesh/v1/revocations", post(members::revoke))
        .route("/metrics", get(render_metrics))
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(openai::models))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route("/v1/embeddings", post(embeddings::openai))
        .route("/api/embed", post(embeddings::ollama_embed))
        .route("/api/embeddings", post(embeddings::ollama_embeddings))
        .route("/v1/models/{id}", get(openai::model))
        .route("/api/chat", post(ollama::chat))
        .route("/api/generate", post(ollama::generate))
        .route("/api/tags", get(ollama::tags))
        .route("/api/ps", get(ollama::ps))
        .route("/api/version", get(ollama::version))
        .route("/api/show", post(ollama::show))
        .merge(dashboard::routes())
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such route; see /relaymesh/v1/status, /v1/models or /api/tags",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            keys::require_key,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            origin::same_origin,
        ))
        .layer(DefaultBodyLimit::max(body_limit));
    // Pages on other origins may call a node with keys (a key is the permission: a
    // browser never attaches one by itself), so it answers their preflights to its
    // inference routes and lets them read the answers: a chat page's "direct
    // connection", a browser extension. A node without keys refuses them (`origin.rs`)
    // and sends no CORS headers.
    let router = if keyed { router.layer(cors()) } else { router };
    router.with_state(state)
}

/// CORS for a node with API keys: any origin, on the inference routes only (`/v1/…`,
/// `/api/…`: a key given to a chat page must not let it move the node's credit or read
/// its ledger), the methods and headers they take, no cookies (keys travel in headers).
fn cors() -> tower_http::cors::CorsLayer {
    use axum::http::{header, HeaderName, Method};
    let inference = |path: &str| path.starts_with("/v1/") || path.starts_with("/api/");
    tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::AllowOrigin::predicate(
            move |_, parts: &axum::http::request::Parts| inference(parts.uri.path()),
        ))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers(tower_http::cors::Any)
        .expose_headers([
            header::RETRY_AFTER,
            HeaderName::from_static(SUPPLIER_HEADER),
        ])
        .max_age(std::time::Duration::from_secs(600))
}

/// The sessions this node has served as a supplier: receipts, CUs, what τ mined and
/// the sum tree's root (an empty list for a node that serves nothing).
async fn sessions(State(s): State<ApiState>) -> Response {
    let Some(miner) = s.settlement.miner().cloned() else {
        return Json(json!({ "sessions": [] })).into_response();
    };
    match tokio::task::spawn_blocking(move || miner.sessions()).await {
        Ok(Ok(sessions)) => Json(json!({ "sessions": sessions })).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Balances, this node's account and the claims by status.
async fn ledger(State(s): State<ApiState>) -> Response {
    Json(s.settlement.report(crate::mesh::now_ms())).into_response()
}

/// Every claim of the unfrozen epochs, with its status, and the last claims and proofs
/// this node refused, with why.
async fn claims(State(s): State<ApiState>) -> Response {
    Json(json!({ "claims": s.settlement.claims(), "refused": s.settlement.refused() }))
        .into_response()
}

/// `POST /relaymesh/v1/transfers`: `{"to": PEER_ID, "amount": MICRO_CREDITS}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TransferBody {
    to: String,
    amount: u64,
}

/// Signs a transfer from this node's account and gossips it.
async fn transfer(State(s): State<ApiState>, body: axum::body::Bytes) -> Response {
    let (body, to) = match transfer_request(&body) {
        Ok(checked) => checked,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    match s
        .settlement
        .transfer(to, body.amount, crate::mesh::now_ms())
    {
        Ok((id, messages)) => {
            for message in messages {
                if let Ok(bytes) = relaymesh_protocol::WireMessage::encode(&message) {
                    if s.node.publish_ledger(bytes).await.is_err() {
                        return gone();
                    }
                }
            }
            Json(json!({ "id": id.to_hex(), "from": s.node.peer_id().to_string(), "to": body.to, "amount": body.amount }))
                .into_response()
        }
        Err(why) if why.starts_with("insufficient credit") => {
            error(StatusCode::PAYMENT_REQUIRED, why)
        }
        Err(why) => error(StatusCode::BAD_REQUEST, why),
    }
}

/// A transfer body parsed and its recipient's peer id read; a 400's message when not
/// (the fuzz harness drives this without a node).
pub(crate) fn transfer_request(
    bytes: &[u8],
) -> Result<(TransferBody, relaymesh_protocol::PublicKey), String> {
    let body: TransferBody = serde_json::from_slice(bytes)
        .map_err(|e| format!("expected {{\"to\": PEER_ID, \"amount\": MICRO_CREDITS}}: {e}"))?;
    match relaymesh_protocol::PublicKey::from_peer_id(&body.to) {
        Some(to) => Ok((body, to)),
        None => Err(format!("{:?} is not a peer id", body.to)),
    }
}

/// The swarm's status, with the ledger's view of this node's clock.
async fn full_status(s: &ApiState) -> Result<crate::mesh::NodeStatus, crate::mesh::NodeGone> {
    let mut status = s.node.status().await?;
    status.clock = Some(s.settlement.report(crate::mesh::now_ms()).clock);
    status.uptime_secs = Some(s.started.elapsed().as_secs());
    Ok(status)
}

async fn status(State(s): State<ApiState>) -> Response {
    full_status(&s)
        .await
        .map_or_else(|_| gone(), |v| Json(v).into_response())
}

/// `relaymesh doctor`: the status, the peers and what the two say, in plain words.
async fn doctor(State(s): State<ApiState>) -> Response {
    let (Ok(status), Ok(peers)) = (full_status(&s).await, s.node.peers().await) else {
        return gone();
    };
    let findings = crate::mesh::doctor::diagnose(
        &status,
        &peers,
        status.clock.as_ref(),
        s.settlement.params().max_clock_skew_ms,
    );
    Json(json!({ "status": status, "peers": peers, "findings": findings })).into_response()
}

async fn peers(State(s): State<ApiState>) -> Response {
    let Ok(mut rows) = s.node.peers().await else {
        return gone();
    };
    for row in &mut rows {
        row.clock_offset_ms = s.settlement.peer_clock_offset(&row.peer_id);
    }
    Json(rows).into_response()
}

/// The mesh's offers, each with what this node measured of it (`measured`: TTFT,
/// speed, recent errors and its routing score here; `null` for a supplier it cannot
/// place).
async fn models(State(s): State<ApiState>) -> Response {
    let Ok(rows) = s.node.models().await else {
        return gone();
    };
    let router = &s.resolver.gateway.router;
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|row| {
            let measured = relaymesh_protocol::PublicKey::from_peer_id(&row.supplier).map(|key| {
                let advertised = relaymesh_protocol::routing::score::SupplierStats::from_ad(
                    row.ttft_ms,
                    row.tokens_per_sec
                        .map_or(0, |t| (t * 1000.0).clamp(0.0, f64::from(u32::MAX)) as u32),
                    row.free_slots,
                    row.total_slots,
                    // As routing prices it: its CU factors counted.
                    row.list_price,
                );
                router.observed(key, &row.name, advertised, row.tokens_per_sec.is_some())
            });
            let mut value = serde_json::to_value(&row).unwrap_or(Value::Null);
            value["measured"] = serde_json::to_value(measured).unwrap_or(Value::Null);
            value
        })
        .collect();
    Json(rows).into_response()
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
