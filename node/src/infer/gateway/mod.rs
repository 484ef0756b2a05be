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
use std::time::{Duration, Instant};

use futures::io::{ReadHalf, WriteHalf};
use futures::AsyncReadExt;
use libp2p::{PeerId, Stream, StreamProtocol};
use relaymesh_protocol::identity::signed::Signed;
use relaymesh_protocol::messages::capability::ModelOffer;
use relaymesh_protocol::messages::infer::{
    DoneReason, FrameBody, InferFrame, InferPayload, InferRequest, LogprobsCheck, RefuseCode,
    MAX_TOKEN_BYTES,
};
use relaymesh_protocol::messages::reveal::commitment;
use relaymesh_protocol::messages::session::{SessionOpen, SessionProposal, SignedSessionOpen};
use relaymesh_protocol::metering::app::{RequestAcker, RequestTerms};
use relaymesh_protocol::metering::compute_units::CuFormula;
use relaymesh_protocol::metering::flow::{chain_links, AppFlow};
use relaymesh_protocol::params::MeshParams;
use relaymesh_protocol::{Digest, Ed25519Verifier, Keypair, PublicKey, Signer};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::codec::{read_frame, write_frame};
use super::queue::{any_room, retry_after_busy, room, Place, Queue};
use super::router::{InFlight, NoRoute, Router};
use super::{embed_payload, payload, window, DEFAULT_MAX_TOKENS};
use crate::backend::{
    Backend, BackendError, ChatMessage, Embedded, Finish, FinishReason, GenEvent, GenRequest,
    Generation, ModelDetails, ModelInfo, Prompt, Provenance, Role, Tenant, TokenLogprob,
    EVENT_BUFFER,
};
use crate::mesh::{now_ms, NodeHandle};

mod embed;
mod job;
mod open;
use job::Job;

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
    /// Every session this app opened (with its secret `r` and next request id: resumed
    /// after a restart, and kept after the session ends for the reveal relay mining
    /// asks of the app) and every ack it sent, as receipts.
    app: crate::store::app::AppStore,
}

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
    ) -> Arc<Self> {
        // The app's records have one owner, shared with settlement (which reveals and
        // prunes them).
        let app = settlement.app_store().clone();
        let protocol = crate::mesh::names::infer_protocol(&params.mesh_id());
        // Sessions still running are resumed where they left off.
        let mut held = std::collections::HashMap::new();
        let now = now_ms();
        for (session, secret, next_request_id) in app.sessions() {
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
            app,
        })
    }

    /// Writes a held session's record (before its next request goes out, so a restart
    /// never reuses a request id).
    fn store(&self, h: &Held) {
        self.app
            .put_session(&h.session, h.secret, h.next_request_id);
    }

    /// Stores an ack this app is about to send, before it is sent (`store::app`).
    fn keep(&self, leg: &Leg, ack: &relaymesh_protocol::messages::ack::SignedAck) {
        self.app
            .keep_ack(&relaymesh_protocol::metering::receipt::Receipt {
                request: leg.flow.request().clone(),
                ack: ack.clone(),
            });
    }

    /// A session held with `supplier` for `offer`'s model on the same terms, and the
    /// next request id in it.
    fn resume(&self, supplier: PublicKey, offer: &ModelOffer) -> Option<(SignedSessionOpen, u64)> {
        let digest = offer.gguf_digest.unwrap_or(Digest::ZERO);
        let mut held = self.held.lock().expect("held lock");
        let h = held.get_mut(&(supplier, digest))?;
        let t = &h.session.body;
        let same_terms = t.price_per_cu == offer.price_per_cu
            && t.cu == session_cu(offer, &self.params)
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
                details: best.map_or_else(ModelDetails::default, |o| ModelDetails {
                    format: if o.gguf_digest.is_some() { "gguf" } else { "" }.to_owned(),
                    family: o.details.family.to_string(),
                    parameter_size: o.details.parameter_size.to_string(),
                    quantization_level: o.details.quantization.to_string(),
                    ..ModelDetails::default()
                }),
            },
            gateway,
            ranked,
        }
    }
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
    /// The request's log probabilities, as they come.
    told: LogprobsCheck,
    session: SignedSessionOpen,
    first: Option<FrameBody>,
    /// Log probabilities that came before the first frame, checked, for its text.
    held: Vec<TokenLogprob>,
    /// When the first frame came: speed is measured from here, so time spent queueing
    /// at a busy supplier does not count as slowness.
    first_at: Instant,
    _in_flight: InFlight,
}

impl Leg {
    /// Compute units the app's acks on this leg pay for.
    fn compute_units(&self) -> u64 {
        let cu = self.session.body.cu;
        let request = &self.flow.request().body;
        cu.input_units(request.prompt_bytes, request.is_embedding()) + self.flow.paid_output_units()
    }
}

/// What a mesh request asks of a supplier.
#[derive(Clone, Copy)]
pub(super) enum Asked<'a> {
    /// Text, for a prompt.
    Generate(&'a GenRequest),
    /// A vector for each of these inputs.
    Embed(&'a [String]),
}

impl Asked<'_> {
    /// The payload an app sends for it to model `model`.
    fn payload(self, model: &str) -> Result<InferPayload, String> {
        match self {
            Asked::Generate(request) => payload(model, request),
            Asked::Embed(inputs) => embed_payload(model, inputs),
        }
    }
}

/// The CU formula of a session on `offer`: the supplier's, its bytes paid per token
/// held to the mesh's bound (a supplier asking more is refused by every verifier).
fn session_cu(offer: &ModelOffer, params: &MeshParams) -> CuFormula {
    CuFormula {
        token_bytes: offer.cu.token_bytes.clamp(1, params.max_paid_token_bytes),
        ..offer.cu
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

#[async_trait::async_trait]
impl Backend for MeshBackend {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn slots(&self) -> (usize, usize) {
        (1, 1)
    }

    fn embedding_dims(&self) -> Option<u32> {
        self.ranked.iter().find_map(|(_, o)| o.embedding_dims)
    }

    async fn embed(&self, inputs: &[String], _tenant: Tenant) -> Result<Embedded, BackendError> {
        self.embed_on_mesh(inputs).await
    }

    async fn generate(&self, request: GenRequest) -> Result<Generation, BackendError> {
        let gateway = &self.gateway;
        let model = self.info.name.clone();
        let (leg, candidates, attempts, queued) = self
            .first_leg(Asked::Generate(&request), &self.ranked)
            .await?;
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
            told: job::Told::default(),
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
    /// the attempt that succeeded was sent. `ranked`: the suppliers that may take it,
    /// best first.
    async fn first_leg(
        &self,
        request: Asked<'_>,
        ranked: &[(PublicKey, ModelOffer)],
    ) -> Result<FirstLeg, BackendError> {
        let since = Instant::now();
        let gateway = &self.gateway;
        let model = self.info.name.as_str();
        let (router, queue) = (&gateway.router, &gateway.queue);
        let slots: usize = ranked.iter().map(|(_, o)| room(o) as usize).sum();
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
            if turn && retry_at.is_none() && any_room(router, model, ranked) {
                // Suppliers with a slot free first, each group best first.
                let mut ranked = ranked.to_vec();
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
    use crate::backend::{Sampling, Tenant};

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
            tenant: Tenant::Local,
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
            tenant: Tenant::Local,
        };
        match continuation(&text, " upon", 1).prompt {
            Prompt::Text(t) => assert_eq!(t, "Once upon"),
            other => panic!("{other:?}"),
        }
    }
}
