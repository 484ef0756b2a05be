//! The app's side of `/relaymesh/<mesh>/infer/1`, as a [`Backend`]: rank the suppliers
//! of the model ([`Router`]), propose the session's terms, send the signed request with
//! its payload, stream the tokens back and ack them.
//!
//! A supplier that refuses or cannot be reached before its first token is replaced by
//! the next one. A supplier whose stream breaks or stalls after that is replaced too:
//! the next one gets a continuation (the original prompt, and the answer so far as the
//! start of the assistant's turn, which it continues), so the client reads one stream
//! with nothing repeated and nothing missing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::io::{ReadHalf, WriteHalf};
use futures::AsyncReadExt;
use libp2p::{PeerId, Stream, StreamProtocol};
use relaymesh_protocol::identity::signed::Signed;
use relaymesh_protocol::messages::capability::ModelOffer;
use relaymesh_protocol::messages::infer::{
    DoneReason, FrameBody, InferRequest, RefuseCode, MAX_TOKEN_BYTES,
};
use relaymesh_protocol::messages::reveal::commitment;
use relaymesh_protocol::messages::session::{SessionOpen, SessionProposal, SignedSessionOpen};
use relaymesh_protocol::metering::ack_chain::MAX_ACK_CHAIN;
use relaymesh_protocol::metering::app::{RequestAcker, RequestTerms};
use relaymesh_protocol::metering::flow::AppFlow;
use relaymesh_protocol::params::MeshParams;
use relaymesh_protocol::{Digest, Ed25519Verifier, Keypair, PublicKey, Signer};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::codec::{read_frame, write_frame};
use super::queue::{any_room, retry_after_busy, room, Place, Queue};
use super::router::{InFlight, NoRoute, Router};
use super::{payload, window, DEFAULT_MAX_TOKENS};
use crate::backend::{
    Backend, BackendError, ChatMessage, Finish, FinishReason, GenEvent, GenRequest, Generation,
    ModelDetails, ModelInfo, Prompt, Provenance, Role, EVENT_BUFFER,
};
use crate::mesh::NodeHandle;

/// Suppliers tried for one request, failovers included, before it fails.
pub const MAX_ATTEMPTS: usize = 4;
/// How long opening a stream and the session exchange may take.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the gateway waits for a supplier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// For the first token (it covers queueing and reading the prompt).
    pub first_token: Duration,
    /// Between tokens: a supplier silent this long has stalled and is replaced.
    pub stall: Duration,
    /// Without a first token this long, the next supplier is tried beside the first
    /// (hedging); `None`: one at a time.
    pub hedge: Option<Duration>,
    /// How long a request may wait in this node's queue while every supplier of its
    /// model is busy (`queue`); zero: refused at once.
    pub queue: Duration,
    /// Places in each model's queue.
    pub queue_places: usize,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            first_token: Duration::from_secs(120),
            stall: Duration::from_secs(15),
            hedge: Some(Duration::from_secs(5)),
            queue: Duration::from_secs(30),
            queue_places: super::queue::MAX_WAITING,
        }
    }
}

/// What every mesh request of a node shares.
pub struct Gateway {
    /// The node.
    pub handle: NodeHandle,
    /// The app's key: it signs sessions, requests and acks.
    pub key: Keypair,
    /// The mesh's parameters.
    pub params: MeshParams,
    /// The node's ledger: every session's escrow is a slot of this app's credit line.
    pub settlement: Arc<crate::settle::Settlement>,
    /// Supplier statistics and ranking.
    pub router: Arc<Router>,
    /// Stall and first-token limits.
    pub timeouts: Timeouts,
    /// Requests waiting for a free supplier slot.
    pub queue: Arc<Queue>,
    protocol: StreamProtocol,
    held: std::sync::Mutex<std::collections::HashMap<(PublicKey, Digest), Held>>,
    /// The acks this app sent, as receipts (request and ack), in sled tree `acks` under
    /// the receipt's digest; `None` for a node without a data dir.
    acks: Option<sled::Tree>,
    /// Every session this app opened, with its secret `r` and next request id, in sled
    /// tree `app_sessions` under the session key: resumed after a restart, and kept
    /// (after the session ends too) for the reveal relay mining asks of the app.
    sessions: Option<sled::Tree>,
}

/// A stored app session: the countersigned terms, the secret `r`, the next request id.
type StoredSession = (SignedSessionOpen, Digest, u64);

impl Gateway {
    /// The gateway of the node behind `handle`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        handle: NodeHandle,
        key: Keypair,
        params: MeshParams,
        settlement: Arc<crate::settle::Settlement>,
        router: Arc<Router>,
        timeouts: Timeouts,
        acks: Option<sled::Tree>,
        sessions: Option<sled::Tree>,
    ) -> Arc<Self> {
        let protocol = crate::mesh::names::infer_protocol(&params.mesh_id());
        // Sessions still running are resumed where they left off.
        let mut held = std::collections::HashMap::new();
        let now = now_ms();
        for (_, bytes) in sessions.iter().flat_map(|t| t.iter()).flatten() {
            let Ok((session, secret, next_request_id)) =
                ciborium::from_reader::<StoredSession, _>(bytes.as_ref())
            else {
                warn!("an unreadable stored session was skipped");
                continue;
            };
            let t = &session.body;
            if now + SESSION_MARGIN_MS < t.end_ms() && held.len() < MAX_HELD_SESSIONS {
                held.insert(
                    (t.supplier, t.model_digest),
                    Held {
                        session,
                        secret,
                        next_request_id,
                    },
                );
            }
        }
        Arc::new(Self {
            handle,
            key,
            params,
            settlement,
            router,
            timeouts,
            queue: Arc::new(Queue::new(timeouts.queue_places)),
            protocol,
            held: std::sync::Mutex::new(held),
            acks,
            sessions,
        })
    }

    /// Writes a held session's record (before its next request goes out, so a restart
    /// never reuses a request id).
    fn store(&self, h: &Held) {
        if let Some(tree) = &self.sessions {
            let record: StoredSession = (h.session.clone(), h.secret, h.next_request_id);
            let bytes = relaymesh_protocol::wire::to_canonical(&record);
            if let Err(e) = tree.insert(h.session.session_key().0, bytes) {
                warn!(%e, "cannot store a session");
            }
        }
    }

    /// Stores an ack this app is about to send, before it is sent: the app's copy of
    /// what the supplier will bill (the flush comes with the database's commit
    /// interval, like the supplier's receipts), under its session key and receipt
    /// digest, so it is pruned with the session (`settle::APP_ACKS_TREE`).
    fn keep(&self, leg: &Leg, ack: &relaymesh_protocol::messages::ack::SignedAck) {
        if let Some(tree) = &self.acks {
            let receipt = relaymesh_protocol::metering::receipt::Receipt {
                request: leg.flow.request().clone(),
                ack: ack.clone(),
            };
            let bytes = relaymesh_protocol::wire::to_canonical(&receipt);
            let mut key = [0u8; 64];
            key[..32].copy_from_slice(&ack.body.session_key.0);
            key[32..].copy_from_slice(&receipt.digest().0);
            if let Err(e) = tree.insert(key, bytes) {
                warn!(%e, "cannot store a sent ack");
            }
        }
    }

    /// A session held with `supplier` for `offer`'s model on the same terms, and the
    /// next request id in it.
    fn resume(&self, supplier: PublicKey, offer: &ModelOffer) -> Option<(SignedSessionOpen, u64)> {
        let digest = offer.gguf_digest.unwrap_or(Digest::ZERO);
        let mut held = self.held.lock().expect("held lock");
        let h = held.get_mut(&(supplier, digest))?;
        let t = &h.session.body;
        let same_terms = t.price_per_cu == offer.price_per_cu
            && t.cu == offer.cu
            && t.manifest == offer.manifest;
        let running = now_ms() + SESSION_MARGIN_MS < t.end_ms();
        if !(same_terms && running) {
            held.remove(&(supplier, digest));
            return None;
        }
        let id = h.next_request_id;
        h.next_request_id += 1;
        self.store(h);
        Some((h.session.clone(), id))
    }

    /// Keeps a new session for further requests (request 0 is the one opening it).
    fn hold(&self, session: SignedSessionOpen, secret: Digest) {
        let mut held = self.held.lock().expect("held lock");
        if held.len() >= MAX_HELD_SESSIONS {
            let now = now_ms();
            held.retain(|_, h| now < h.session.body.end_ms());
            if held.len() >= MAX_HELD_SESSIONS {
                held.clear();
            }
        }
        let h = Held {
            session,
            secret,
            next_request_id: 1,
        };
        self.store(&h);
        held.insert((h.session.body.supplier, h.session.body.model_digest), h);
    }

    /// Forgets a session the supplier will not resume.
    fn forget(&self, supplier: PublicKey, digest: Digest) {
        self.held
            .lock()
            .expect("held lock")
            .remove(&(supplier, digest));
    }

    /// Sessions held now (for tests and status).
    pub fn held_sessions(&self) -> usize {
        self.held.lock().expect("held lock").len()
    }
}

/// A model served by suppliers on the mesh, with the rules of one request.
pub struct MeshBackend {
    info: ModelInfo,
    gateway: Arc<Gateway>,
    /// The suppliers the request's rules allow, best first (never empty).
    ranked: Vec<(PublicKey, ModelOffer)>,
}

impl MeshBackend {
    /// `model` as served by `ranked` (the router's ranking of the suppliers a request
    /// may use, best first), described as the best one's ad does (context, digest).
    pub fn new(model: &str, gateway: Arc<Gateway>, ranked: Vec<(PublicKey, ModelOffer)>) -> Self {
        let best = ranked.first().map(|(_, o)| o);
        Self {
            info: ModelInfo {
                name: model.to_owned(),
                digest: best
                    .and_then(|o| o.gguf_digest)
                    .map(crate::backend::ModelDigest::Gguf),
                manifest: best.and_then(|o| o.manifest.clone()),
                context_length: best.map_or(0, |o| o.context_length),
                max_token_bytes: best
                    .map_or(crate::backend::OPAQUE_TOKEN_BYTES, |o| o.max_token_bytes),
                kind: "mesh",
                details: ModelDetails::default(),
            },
            gateway,
            ranked,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn random_digest() -> Digest {
    let mut bytes = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    Digest(bytes)
}

impl From<NoRoute> for BackendError {
    fn from(e: NoRoute) -> Self {
        match e {
            NoRoute::Digest { .. } => BackendError::NotFound(e.to_string()),
            _ => BackendError::Unavailable(e.to_string()),
        }
    }
}

/// Why one supplier did not work out, and whether another may.
struct Attempt {
    error: BackendError,
    retry_elsewhere: bool,
    /// The supplier would not resume the session we held (it ended, or the supplier
    /// lost it): a fresh session with the same supplier may work.
    stale_session: bool,
    /// The supplier refused as busy, hinting when to ask again.
    busy: Option<Duration>,
}

impl Attempt {
    fn elsewhere(why: impl Into<String>) -> Self {
        Self {
            error: BackendError::Unavailable(why.into()),
            retry_elsewhere: true,
            stale_session: false,
            busy: None,
        }
    }
}

/// A session this app holds with a supplier, for further requests.
struct Held {
    session: SignedSessionOpen,
    /// The app's secret `r`, committed to in the terms, revealed after the claim.
    secret: Digest,
    next_request_id: u64,
}

/// Most sessions held at once (one per supplier and model).
pub const MAX_HELD_SESSIONS: usize = 1024;
/// A held session is not resumed this close to its end.
pub const SESSION_MARGIN_MS: u64 = 60_000;

/// A stream on which a supplier has accepted a request and sent its first frame.
struct Leg {
    peer: PeerId,
    supplier: PublicKey,
    r: ReadHalf<Stream>,
    w: WriteHalf<Stream>,
    flow: AppFlow,
    session: SignedSessionOpen,
    first: Option<FrameBody>,
    /// When the first frame came: speed is measured from here, so time spent queueing
    /// at a busy supplier does not count as slowness.
    first_at: Instant,
    _in_flight: InFlight,
}

impl Leg {
    /// Compute units the app's acks on this leg pay for.
    fn compute_units(&self) -> u64 {
        let cu = self.session.body.cu;
        cu.prompt_units(self.flow.request().body.prompt_bytes)
            + cu.output_units(0, self.flow.acked_bytes()).unwrap_or(0)
    }
}

/// The request as the next supplier gets it: the prompt, continued by `answer` when
/// there is one, and what is left of the token budget.
fn continuation(request: &GenRequest, answer: &str, tokens_so_far: u32) -> GenRequest {
    let mut next = request.clone();
    let budget = request.sampling.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    next.sampling.max_tokens = Some(budget.saturating_sub(tokens_so_far).max(1));
    if answer.is_empty() {
        return next;
    }
    match &mut next.prompt {
        Prompt::Chat(messages) => match messages.last_mut() {
            // The client's own prefill: the answer continues it.
            Some(last) if last.role == Role::Assistant => last.content.push_str(answer),
            _ => messages.push(ChatMessage {
                role: Role::Assistant,
                content: answer.to_owned(),
            }),
        },
        Prompt::Text(text) => text.push_str(answer),
    }
    next
}

impl Gateway {
    /// Sends `request` to `supplier` in the session held with it (or a new one, also
    /// when it will not resume ours), and waits for the first frame.
    async fn open(
        self: &Arc<Self>,
        model: &str,
        supplier: PublicKey,
        offer: &ModelOffer,
        request: &GenRequest,
    ) -> Result<Leg, Attempt> {
        match self.open_once(model, supplier, offer, request, false).await {
            Err(a) if a.stale_session => {
                debug!(supplier = %supplier.peer_id(), error = %a.error, "session not resumed; opening a new one");
                self.forget(supplier, offer.gguf_digest.unwrap_or(Digest::ZERO));
                self.open_once(model, supplier, offer, request, true).await
            }
            other => other,
        }
    }

    async fn open_once(
        self: &Arc<Self>,
        model: &str,
        supplier: PublicKey,
        offer: &ModelOffer,
        request: &GenRequest,
        fresh: bool,
    ) -> Result<Leg, Attempt> {
        let peer = PeerId::from_bytes(&supplier.peer_id_bytes())
            .map_err(|e| Attempt::elsewhere(format!("bad supplier key: {e}")))?;
        let in_flight = self.router.begin(supplier, model);
        // A first token that waited behind our own requests says nothing new about
        // the supplier (the score counts those already): measure only when alone.
        let alone = self.router.in_flight(supplier, model) == 1;
        let opened = Instant::now();
        let open = || {
            let (mut control, protocol) = (self.handle.streams(), self.protocol.clone());
            async move { tokio::time::timeout(OPEN_TIMEOUT, control.open_stream(peer, protocol)).await }
        };
        let late = |_| Attempt::elsewhere(format!("{peer} did not open a stream in time"));
        let unreachable = |e: libp2p_stream::OpenStreamError| {
            Attempt::elsewhere(format!("{peer} cannot be reached: {e}"))
        };
        let stream = match open().await.map_err(late)? {
            Ok(stream) => stream,
            // No known address reached the supplier (an ad comes through gossip, its
            // supplier's address does not; a supplier restarted on another port is not
            // where it was): the node looks it up in the DHT once and dials what it
            // finds; if that reaches it, one more try. A supplier it cannot reach is
            // backed off, not forgotten. (A stream that did not open in time is not
            // retried: the peer is connected and slow, or gone, and failover should not
            // wait twice.)
            Err(e) => match tokio::time::timeout(OPEN_TIMEOUT, self.handle.locate(peer)).await {
                Ok(Ok(true)) => {
                    debug!(%peer, "supplier found through the DHT; opening the stream again");
                    open().await.map_err(late)?.map_err(unreachable)?
                }
                _ => return Err(unreachable(e)),
            },
        };
        if let Some(membership) = self.handle.membership() {
            if !membership
                .role_of(&peer)
                .is_some_and(|role| role.supplies())
            {
                return Err(Attempt::elsewhere(format!(
                    "{peer} is a member of this private mesh that may not serve"
                )));
            }
        }
        let (mut r, mut w) = stream.split();
        let io = |e: &dyn std::fmt::Display| Attempt::elsewhere(format!("{peer}: {e}"));

        // The session: one held with this supplier, resumed without a round trip, or
        // our new terms, countersigned by the supplier.
        let held = if fresh {
            None
        } else {
            self.resume(supplier, offer)
        };
        let resumed = held.is_some();
        let (session, request_id) = match held {
            Some((session, id)) => {
                write_frame(&mut w, FrameBody::Resume(session.clone()))
                    .await
                    .map_err(|e| io(&e))?;
                (session, id)
            }
            None => (
                self.propose(peer, supplier, offer, &mut r, &mut w).await?,
                0,
            ),
        };

        // The request and its payload.
        let payload = payload(model, request).map_err(|e| Attempt {
            error: BackendError::Invalid(e),
            retry_elsewhere: false,
            stale_session: false,
            busy: None,
        })?;
        let flow_window = window(&self.params);
        // A token of the model is one frame, or more where the supplier splits a piece
        // longer than the cap: twice the tokens' links leaves room for that.
        let max_acks = (payload.max_tokens.saturating_mul(2) / flow_window.ack_every + 2)
            .min(u32::from(MAX_ACK_CHAIN)) as u16;
        // The app pays for at most `max_tokens` tokens of at most the session's cap.
        let cap = session.body.max_token_bytes.min(MAX_TOKEN_BYTES as u32);
        let acker = RequestAcker::new(
            RequestTerms {
                session_key: session.session_key(),
                request_id,
                prompt_digest: payload.digest(),
                prompt_bytes: payload.prompt_bytes().min(u64::from(u32::MAX)) as u32,
                max_output_bytes: payload.max_tokens.saturating_mul(cap),
                max_acks,
            },
            random_digest(),
            &self.key,
        );
        let flow = AppFlow::new(acker, flow_window, cap);
        write_frame(
            &mut w,
            FrameBody::Request(InferRequest {
                request: flow.request().clone(),
                payload,
            }),
        )
        .await
        .map_err(|e| io(&e))?;

        // Wait for the first frame here, so a refusal can still go elsewhere.
        let first = match tokio::time::timeout(self.timeouts.first_token, read_frame(&mut r)).await
        {
            Ok(Ok(frame)) => frame.body,
            Ok(Err(e)) => return Err(io(&e)),
            Err(_) => return Err(Attempt::elsewhere(format!("{peer} sent nothing in time"))),
        };
        if let FrameBody::Refuse(refusal) = &first {
            let elsewhere = matches!(
                refusal.code,
                RefuseCode::Busy
                    | RefuseCode::Failed
                    | RefuseCode::UnknownModel
                    | RefuseCode::Terms
                    | RefuseCode::Balance
            );
            return Err(Attempt {
                error: if elsewhere {
                    BackendError::Unavailable(format!("{peer}: {}", refusal.message))
                } else {
                    BackendError::Invalid(format!("{peer}: {}", refusal.message))
                },
                retry_elsewhere: elsewhere,
                stale_session: resumed
                    && matches!(refusal.code, RefuseCode::Terms | RefuseCode::Invalid),
                busy: (refusal.code == RefuseCode::Busy)
                    .then(|| Duration::from_millis(refusal.retry_after_ms)),
            });
        }
        if alone {
            self.router
                .observe_ttft(supplier, model, opened.elapsed().as_secs_f64() * 1000.0);
        }
        info!(supplier = %peer, %model, "mesh request accepted");
        Ok(Leg {
            peer,
            supplier,
            r,
            w,
            flow,
            session,
            first: Some(first),
            first_at: Instant::now(),
            _in_flight: in_flight,
        })
    }

    /// Proposes new terms to `supplier` and keeps the countersigned session.
    async fn propose(
        &self,
        peer: PeerId,
        supplier: PublicKey,
        offer: &ModelOffer,
        r: &mut ReadHalf<Stream>,
        w: &mut WriteHalf<Stream>,
    ) -> Result<SignedSessionOpen, Attempt> {
        let secret = random_digest();
        let price = offer.price_per_cu;
        let tau = offer.tau.clamp(self.params.tau_min, self.params.tau_max);
        // The escrow and the start: the next slot of this app's credit line and a time
        // no earlier than its last debit's, given together (and stored) before the
        // terms are signed.
        let (escrow, start_ms) = self
            .settlement
            .session_escrow(now_ms(), price, tau)
            .map_err(|why| Attempt {
                error: BackendError::PaymentRequired(why),
                retry_elsewhere: true,
                stale_session: false,
                busy: None,
            })?;
        let terms = SessionOpen {
            version: relaymesh_protocol::PROTOCOL_VERSION,
            mesh_id: self.params.mesh_id(),
            app: self.key.public_key(),
            supplier,
            model_digest: offer.gguf_digest.unwrap_or(Digest::ZERO),
            manifest: offer.manifest.clone(),
            cu: offer.cu,
            price_per_cu: price,
            tau,
            max_token_bytes: offer
                .max_token_bytes
                .clamp(4, self.params.max_token_bytes.max(4)),
            escrow,
            start_ms,
            max_duration_ms: self.params.max_session_ms,
            reveal_commitment: commitment(&secret),
            nonce: rand_core::RngCore::next_u64(&mut rand_core::OsRng),
        };
        let proposal = Signed::sign(terms.clone(), &self.key);
        let mut unanswered = Unanswered {
            settlement: self.settlement.clone(),
            proposal: Some(proposal.clone()),
        };
        let session = self.proposed(peer, &proposal, &terms, r, w).await?;
        unanswered.proposal = None;
        self.hold(session.clone(), secret);
        Ok(session)
    }

    /// Sends the signed proposal and reads the supplier's answer: the countersigned
    /// terms, or why not.
    async fn proposed(
        &self,
        peer: PeerId,
        proposal: &SessionProposal,
        terms: &SessionOpen,
        r: &mut ReadHalf<Stream>,
        w: &mut WriteHalf<Stream>,
    ) -> Result<SignedSessionOpen, Attempt> {
        let io = |e: &dyn std::fmt::Display| Attempt::elsewhere(format!("{peer}: {e}"));
        write_frame(w, FrameBody::Propose(proposal.clone()))
            .await
            .map_err(|e| io(&e))?;
        let session = match tokio::time::timeout(OPEN_TIMEOUT, read_frame(r)).await {
            Ok(Ok(frame)) => match frame.body {
                FrameBody::Accept(s) => s,
                FrameBody::Refuse(r) if r.code == RefuseCode::Balance => {
                    return Err(Attempt {
                        error: BackendError::PaymentRequired(format!(
                            "{peer} refused the session: {}",
                            r.message
                        )),
                        retry_elsewhere: true,
                        stale_session: false,
                        busy: None,
                    })
                }
                FrameBody::Refuse(r) => {
                    return Err(Attempt::elsewhere(format!(
                        "{peer} refused the session: {}",
                        r.message
                    )))
                }
                other => return Err(Attempt::elsewhere(format!("{peer} answered {other:?}"))),
            },
            Ok(Err(e)) => return Err(io(&e)),
            Err(_) => return Err(Attempt::elsewhere(format!("{peer} did not answer in time"))),
        };
        if session.body != *terms || session.validate(&self.params, &Ed25519Verifier).is_err() {
            return Err(Attempt::elsewhere(format!(
                "{peer} countersigned other terms"
            )));
        }
        Ok(session)
    }

    /// The next supplier in `candidates` that takes `request`; `attempts` counts every
    /// supplier tried for the client's request. Hedging: when the one tried has sent no
    /// first token within `timeouts.hedge`, the next is tried beside it; the first token
    /// wins and the other stream is dropped (the supplier stops at once, and is paid
    /// for nothing, since nothing of it was acked).
    async fn open_next(
        self: &Arc<Self>,
        model: &str,
        candidates: &mut VecDeque<(PublicKey, ModelOffer)>,
        attempts: &mut usize,
        request: &GenRequest,
    ) -> Result<Leg, BackendError> {
        let mut last = None;
        // Whether every supplier tried refused as busy, and the longest wait they hinted.
        let (mut all_busy, mut busy_hint) = (true, Duration::ZERO);
        let mut racing = futures::stream::FuturesUnordered::new();
        let mut hedge_now = false;
        loop {
            if racing.is_empty() || hedge_now {
                hedge_now = false;
                let next = (*attempts < MAX_ATTEMPTS)
                    .then(|| candidates.pop_front())
                    .flatten();
                match next {
                    Some((supplier, offer)) => {
                        *attempts += 1;
                        if !racing.is_empty() {
                            info!(supplier = %supplier.peer_id(), "no first token yet; hedging with the next supplier");
                        }
                        racing.push(async move {
                            (supplier, self.open(model, supplier, &offer, request).await)
                        });
                    }
                    None if racing.is_empty() => break,
                    None => {}
                }
            }
            // One in the race and a hedge deadline: wait at most that long before the
            // next supplier joins, unless that one is as busy with our requests as it
            // has slots (under load, hedging would only double the work).
            let next_has_room = candidates.front().is_some_and(|(k, o)| {
                self.router.in_flight(*k, model) < u32::from(o.total_slots.max(1))
            });
            let hedge = match self.timeouts.hedge {
                Some(after) if racing.len() < 2 && next_has_room => after,
                _ => Duration::from_secs(86_400),
            };
            let (supplier, result) = tokio::select! {
                outcome = futures::StreamExt::next(&mut racing) => match outcome {
                    Some(outcome) => outcome,
                    None => continue,
                },
                _ = tokio::time::sleep(hedge) => {
                    hedge_now = true;
                    continue;
                }
            };
            match result {
                Ok(leg) => return Ok(leg),
                Err(attempt) => {
                    self.router.observe_error(supplier, model);
                    info!(supplier = %supplier.peer_id(), error = %attempt.error, "supplier failed; trying the next");
                    if !attempt.retry_elsewhere {
                        return Err(attempt.error);
                    }
                    match attempt.busy {
                        Some(hint) => busy_hint = busy_hint.max(hint),
                        None => all_busy = false,
                    }
                    last = Some(attempt.error);
                }
            }
        }
        Err(match last {
            // The last refusal was for credit: say so (402), not "unavailable".
            Some(e @ BackendError::PaymentRequired(_)) => e,
            // Every one was busy: the request may wait in the queue.
            Some(_) if all_busy => BackendError::Busy {
                slots: *attempts,
                queued: 0,
                retry_after: busy_hint,
            },
            Some(e) => {
                let mut why = e.to_string();
                if why.len() > 300 {
                    let mut cut = 300;
                    while !why.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    why.truncate(cut);
                    why.push('…');
                }
                BackendError::Unavailable(format!(
                    "no supplier of {model} could take the request ({attempts} tried); the last: {why}",
                    attempts = *attempts
                ))
            }
            None => {
                BackendError::Unavailable(format!("no other supplier of {model} is left to try"))
            }
        })
    }
}

/// How one leg ended.
enum LegEnd {
    /// The supplier finished.
    Done(Finish),
    /// The client left.
    ClientGone,
    /// The supplier broke, stalled or misbehaved; another may continue.
    Broken(String),
}

/// Everything one client request needs while it runs.
struct Job {
    gateway: Arc<Gateway>,
    model: String,
    request: GenRequest,
    candidates: VecDeque<(PublicKey, ModelOffer)>,
    attempts: usize,
    provenance: Provenance,
    tx: mpsc::Sender<GenEvent>,
    /// Text sent to the client so far.
    answer: String,
    /// Token frames sent to the client so far.
    tokens: u32,
}

impl Job {
    async fn run(mut self, mut leg: Leg) {
        loop {
            let before = self.tokens;
            let end = self.stream(&mut leg).await;
            self.provenance.update(|p| {
                p.compute_units += leg.compute_units();
                p.acked_bytes += u64::from(leg.flow.acked_bytes());
            });
            let why = match end {
                LegEnd::Done(mut finish) => {
                    // After a failover the last supplier's prompt held the answer so far.
                    finish.completion_tokens += before;
                    finish.prompt_tokens = finish.prompt_tokens.saturating_sub(before);
                    let _ = self.tx.send(GenEvent::Done(finish)).await;
                    return;
                }
                LegEnd::ClientGone => return,
                LegEnd::Broken(why) => why,
            };
            self.gateway.router.observe_error(leg.supplier, &self.model);
            warn!(supplier = %leg.peer, tokens = self.tokens, %why, "supplier broke mid-stream; continuing on the next");
            let budget = self
                .request
                .sampling
                .max_tokens
                .unwrap_or(DEFAULT_MAX_TOKENS);
            if self.tokens >= budget {
                let _ = self
                    .tx
                    .send(GenEvent::Done(Finish {
                        reason: FinishReason::Length,
                        prompt_tokens: 0,
                        completion_tokens: self.tokens,
                    }))
                    .await;
                return;
            }
            let next = continuation(&self.request, &self.answer, self.tokens);
            let gateway = self.gateway.clone();
            match gateway
                .open_next(&self.model, &mut self.candidates, &mut self.attempts, &next)
                .await
            {
                Ok(next_leg) => {
                    info!(from = %leg.peer, to = %next_leg.peer, "failover: the answer continues on another supplier");
                    self.provenance.update(|p| {
                        p.suppliers.push(next_leg.peer.to_string());
                        p.answer_bytes.push(0);
                    });
                    leg = next_leg;
                }
                Err(e) => {
                    let _ = self
                        .tx
                        .send(GenEvent::Failed(format!(
                            "{why}; and no other supplier could continue: {e}"
                        )))
                        .await;
                    return;
                }
            }
        }
    }

    /// Streams one leg to the client until it ends.
    async fn stream(&mut self, leg: &mut Leg) -> LegEnd {
        let key = self.gateway.key.clone();
        let stall = self.gateway.timeouts.stall;
        let mut leg_tokens = 0u32;
        loop {
            let body = match leg.first.take() {
                Some(body) => body,
                None => match tokio::time::timeout(stall, read_frame(&mut leg.r)).await {
                    Ok(Ok(frame)) => frame.body,
                    Ok(Err(e)) => return LegEnd::Broken(format!("the stream broke: {e}")),
                    Err(_) => {
                        return LegEnd::Broken(format!("no token for {} ms", stall.as_millis()))
                    }
                },
            };
            match body {
                FrameBody::Token(text) => {
                    let ack = match leg.flow.on_token(text.as_str(), &key) {
                        Ok(ack) => ack,
                        Err(e) => return LegEnd::Broken(format!("bad token frame: {e}")),
                    };
                    self.answer.push_str(text.as_str());
                    self.provenance.update(|p| {
                        if let Some(b) = p.answer_bytes.last_mut() {
                            *b += text.as_str().len() as u64;
                        }
                    });
                    self.tokens += 1;
                    leg_tokens += 1;
                    if self
                        .tx
                        .send(GenEvent::Text(text.as_str().to_owned()))
                        .await
                        .is_err()
                    {
                        debug!(supplier = %leg.peer, "client left; ending the mesh request");
                        return LegEnd::ClientGone; // dropping the stream tells the supplier
                    }
                    if let Some(ack) = ack {
                        self.gateway.keep(leg, &ack);
                        if let Err(e) = write_frame(&mut leg.w, FrameBody::Ack(ack)).await {
                            return LegEnd::Broken(format!("cannot send an ack: {e}"));
                        }
                    }
                }
                FrameBody::Done(done) => {
                    match leg.flow.finish(&key) {
                        Ok(ack) => {
                            self.gateway.keep(leg, &ack);
                            if write_frame(&mut leg.w, FrameBody::Ack(ack)).await.is_err() {
                                debug!(supplier = %leg.peer, "the final ack was not delivered");
                            }
                        }
                        Err(e) => debug!(supplier = %leg.peer, %e, "no final ack"),
                    }
                    let secs = leg.first_at.elapsed().as_secs_f64();
                    if leg_tokens > 1 && secs > 0.0 {
                        self.gateway.router.observe_speed(
                            leg.supplier,
                            &self.model,
                            f64::from(leg_tokens - 1) / secs,
                        );
                    }
                    return LegEnd::Done(Finish {
                        reason: match done.reason {
                            DoneReason::Stop => FinishReason::Stop,
                            DoneReason::Length => FinishReason::Length,
                        },
                        prompt_tokens: done.prompt_tokens,
                        completion_tokens: done.completion_tokens,
                    });
                }
                FrameBody::Refuse(r) => return LegEnd::Broken(r.message.as_str().to_owned()),
                other => return LegEnd::Broken(format!("unexpected frame {other:?}")),
            }
        }
    }
}

#[async_trait::async_trait]
impl Backend for MeshBackend {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn slots(&self) -> (usize, usize) {
        (1, 1)
    }

    async fn generate(&self, request: GenRequest) -> Result<Generation, BackendError> {
        let gateway = &self.gateway;
        let model = self.info.name.clone();
        let (leg, candidates, attempts, queued) = self.first_leg(&request).await?;
        if queued > Duration::from_millis(100) {
            info!(%model, queued_ms = queued.as_millis() as u64, "a supplier slot freed for a queued request");
        }
        let provenance = Provenance::default();
        provenance.update(|p| {
            p.suppliers.push(leg.peer.to_string());
            p.answer_bytes.push(0);
            p.queued_ms = queued.as_millis() as u64;
        });
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let job = Job {
            gateway: gateway.clone(),
            model,
            request,
            candidates,
            attempts,
            provenance: provenance.clone(),
            tx,
            answer: String::new(),
            tokens: 0,
        };
        tokio::spawn(job.run(leg));
        Ok(Generation::new(rx, None).with_provenance(provenance))
    }
}

/// The first leg of a request, the candidates left for failover, the suppliers tried,
/// and the time it waited in the queue.
type FirstLeg = (Leg, VecDeque<(PublicKey, ModelOffer)>, usize, Duration);

impl MeshBackend {
    /// The first supplier to take `request`: at once where the model's line is empty
    /// and a supplier has a slot free for this node, otherwise after waiting in the
    /// line (`queue`) for at most `timeouts.queue`. Returns the leg, the candidates
    /// left for failover, the suppliers tried and how long the request waited before
    /// the attempt that succeeded was sent.
    async fn first_leg(&self, request: &GenRequest) -> Result<FirstLeg, BackendError> {
        let since = Instant::now();
        let gateway = &self.gateway;
        let model = self.info.name.as_str();
        let (router, queue) = (&gateway.router, &gateway.queue);
        let slots: usize = self.ranked.iter().map(|(_, o)| room(o) as usize).sum();
        let deadline = Instant::now() + gateway.timeouts.queue;
        let mut place = None;
        // After a busy refusal, when the head of the line may ask again.
        let mut retry_at: Option<Instant> = None;
        loop {
            // Armed before looking, so a slot freed meanwhile is not missed.
            let freed = router.freed();
            let moved = queue.moved();
            tokio::pin!(freed, moved);
            freed.as_mut().enable();
            moved.as_mut().enable();
            let turn = match &place {
                None => queue.is_empty(model),
                Some(p) => Place::is_head(p),
            };
            let now = Instant::now();
            if retry_at.is_some_and(|t| now >= t) {
                retry_at = None;
            }
            if turn && retry_at.is_none() && any_room(router, model, &self.ranked) {
                // Suppliers with a slot free first, each group best first.
                let mut ranked = self.ranked.clone();
                ranked.sort_by_key(|(k, o)| router.in_flight(*k, model) >= room(o));
                let mut candidates: VecDeque<_> = ranked.into();
                let mut attempts = 0;
                let waited = since.elapsed();
                match gateway
                    .open_next(model, &mut candidates, &mut attempts, request)
                    .await
                {
                    Ok(leg) => return Ok((leg, candidates, attempts, waited)),
                    Err(BackendError::Busy { retry_after, .. }) => {
                        retry_at = Some(Instant::now() + retry_after_busy(retry_after));
                    }
                    Err(e) => return Err(e),
                }
            }
            let waiting = queue.waiting(model);
            if Instant::now() >= deadline {
                return Err(BackendError::Busy {
                    slots,
                    queued: waiting,
                    retry_after: super::queue::RETRY_MAX,
                });
            }
            if place.is_none() {
                place = Some(queue.join(model, slots)?);
                debug!(%model, waiting = waiting + 1, "every supplier is busy; the request waits in the queue");
                continue;
            }
            let until = retry_at.map_or(deadline, |t| t.min(deadline));
            tokio::select! {
                _ = freed => {}
                _ = moved => {}
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        }
    }
}

/// Terms proposed and not (yet) countersigned. Dropped armed — refused, unanswered,
/// countersigned wrongly, or the attempt dropped because another supplier answered
/// first — it withdraws them: the slot is spent either way (the supplier holds the
/// signed terms), and the withdrawal gets the escrow back when its epoch freezes.
struct Unanswered {
    settlement: Arc<crate::settle::Settlement>,
    proposal: Option<SessionProposal>,
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(proposal) = self.proposal.take() {
            self.settlement.withdraw(&proposal, now_ms());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Sampling;

    fn chat(messages: &[(Role, &str)], max: Option<u32>) -> GenRequest {
        GenRequest {
            prompt: Prompt::Chat(
                messages
                    .iter()
                    .map(|(role, content)| ChatMessage {
                        role: *role,
                        content: (*content).into(),
                    })
                    .collect(),
            ),
            sampling: Sampling {
                max_tokens: max,
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_continuation_carries_the_answer_so_far_and_the_rest_of_the_budget() {
        let first = chat(&[(Role::User, "Count")], Some(20));
        assert_eq!(continuation(&first, "", 0), first);
        let next = continuation(&first, "1, 2, 3", 5);
        assert_eq!(
            next,
            chat(
                &[(Role::User, "Count"), (Role::Assistant, "1, 2, 3")],
                Some(15)
            )
        );
        // A client's own prefill is extended, not doubled.
        let prefilled = chat(&[(Role::User, "Count"), (Role::Assistant, "0, ")], None);
        let next = continuation(&prefilled, "1, 2", 3);
        assert_eq!(
            next,
            chat(
                &[(Role::User, "Count"), (Role::Assistant, "0, 1, 2")],
                Some(DEFAULT_MAX_TOKENS - 3)
            )
        );
        let text = GenRequest {
            prompt: Prompt::Text("Once".into()),
            sampling: Sampling::default(),
        };
        match continuation(&text, " upon", 1).prompt {
            Prompt::Text(t) => assert_eq!(t, "Once upon"),
            other => panic!("{other:?}"),
        }
    }
}
