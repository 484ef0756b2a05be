//! The supplier's side of `/relaymesh/<mesh>/infer/1`: countersign acceptable terms,
//! check the signed request against its payload, run the local backend, stream one
//! `Token` frame per piece while the window allows, and keep every ack the app sends
//! as a receipt in sled.

mod clash;
mod embed;
mod frames;
mod pace;
mod seen;

use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt, StreamExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use relaymesh_protocol::messages::ack::SignedAck;
use relaymesh_protocol::messages::infer::{
    Done, DoneReason, FrameBody, InferRequest, LogprobsCheck, Refuse, RefuseCode, TokenLogprobs,
    MAX_LOGPROB_TOKENS, MAX_TOKEN_BYTES, MAX_TOP_LOGPROBS,
};
use relaymesh_protocol::messages::session::{SessionOpen, SessionProposal, SignedSessionOpen};
use relaymesh_protocol::metering::allowance::{self, owed_tokens, paid_tokens, HEDGE_GRACE_MS};
use relaymesh_protocol::metering::flow::{Accepted, SupplierFlow};
use relaymesh_protocol::params::MeshParams;
use relaymesh_protocol::{
    BoundedString, Digest, Ed25519Verifier, Keypair, SignatureVerifier, Signer,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::codec::{read_frame, write_frame, FrameError};
use super::gen_request;
use super::stream_slots::{StreamSlot, StreamSlots};
use crate::backend::{
    BackendError, FinishReason, GenEvent, Models, ServedModel, Tenant, TokenLogprob,
};
use crate::infer::app_limits::StreamTicket;
use crate::mesh::now_ms;
use clash::still_admitted;
use frames::{first_frame, next_event, next_frame};
pub use seen::SeenRequests;

/// A token frame's text waiting for the window, and the log probabilities of the
/// tokens whose text it begins (sent right before it, or not at all).
struct Out {
    told: Vec<relaymesh_protocol::BoundedVec<TokenLogprobs, MAX_LOGPROB_TOKENS>>,
    piece: String,
}
pub use clash::{FreshSessions, CLASH_WAIT};

/// Shortest session a supplier countersigns (or the mesh's longest, if shorter).
pub const MIN_SESSION_MS: u64 = 60_000;

/// How long the app has to send its next frame (request, an owed ack) once the first
/// came (the first has [`FIRST_FRAME_TIMEOUT`]).
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an app's request may wait for a generation place before the app may leave
/// owing nothing (a gateway's default hedge deadline; `allowance::HEDGE_GRACE_MS`).
pub const HEDGE_GRACE: Duration = Duration::from_millis(HEDGE_GRACE_MS);

/// How long a stream whose window is full waits for an ack while every slot of its
/// model is taken (an honest app acks within a round trip).
pub const CONTENDED_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the supplier side needs.
pub struct SupplierContext {
    /// This node's key: it countersigns sessions.
    pub key: Keypair,
    /// The mesh's parameters (window, τ bounds).
    pub params: MeshParams,
    /// Their hash, the mesh id.
    pub mesh_id: Digest,
    /// The models served here.
    pub models: Arc<Models>,
    /// Request ids already served, per session.
    pub seen: SeenRequests,
    /// Stores, counts and mines receipts into each session's sum tree (in a temporary
    /// database without a data dir; `None` where nothing is served).
    pub miner: Option<Arc<crate::mining::Miner>>,
    /// The ledger: sessions are admitted against the app's balance.
    pub settlement: Option<Arc<crate::settle::Settlement>>,
    /// Receipt counters.
    pub metrics: crate::metrics::Metrics,
    /// Verifies ack signatures in batches across streams.
    pub acks: super::verify::AckVerifier,
    /// What each app may take: streams, sessions, unacknowledged tokens.
    pub limits: super::app_limits::AppLimits,
    /// What running streams hold of their sessions' escrows.
    pub budgets: super::escrow::EscrowBudgets,
    /// A private mesh's membership: only members admitted as apps are served.
    pub membership: Option<Arc<crate::mesh::membership::Membership>>,
    /// The inference streams served at once, and from each peer.
    pub stream_slots: StreamSlots,
    /// Sessions countersigned in the last [`CLASH_WAIT`] (the double-commit race).
    pub fresh: FreshSessions,
    /// The node stopping: streams end with a refusal the app fails over on.
    pub stopping: crate::stopping::Stopping,
    /// Longest prompt read, bytes (`--limit prompt_bytes`).
    pub prompt_bytes: usize,
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long a stopping supplier waits for its streams to send their last frame.
const STREAMS_END_GRACE: Duration = Duration::from_secs(3);

/// The digest a session pins for a served model: its GGUF's, or zero for an opaque
/// upstream.
pub fn model_digest(model: &ServedModel) -> Digest {
    model
        .backend
        .info()
        .digest
        .as_ref()
        .and_then(|d| d.gguf())
        .unwrap_or(Digest::ZERO)
}

mod terms;
use terms::{check_proposal, check_resumed, escrow_use};

/// Accepts inference streams until the control is dropped or the node stops; then
/// waits (at most [`STREAMS_END_GRACE`]) for the streams to end.
pub fn spawn(
    mut control: libp2p_stream::Control,
    protocol: StreamProtocol,
    ctx: Arc<SupplierContext>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let mut incoming = control
        .accept(protocol)
        .map_err(|e| format!("cannot accept inference streams: {e}"))?;
    Ok(tokio::spawn(async move {
        let slots = ctx.stream_slots.clone();
        // Ended sessions' request ids are forgotten once a minute, in this task, so
        // aborting it (the node stopping) stops everything that holds the database.
        let mut prune = tokio::time::interval(Duration::from_secs(60));
        let mut streams = tokio::task::JoinSet::new();
        let stop = ctx.stopping.stopped();
        tokio::pin!(stop);
        loop {
            while streams.try_join_next().is_some() {}
            let (peer, stream) = tokio::select! {
                next = incoming.next() => match next {
                    Some(next) => next,
                    None => break,
                },
                _ = prune.tick() => {
                    ctx.seen.prune(now_ms());
                    continue;
                }
                () = &mut stop => break,
            };
            let slot = match slots.open(peer) {
                Ok(slot) => slot,
                Err(no) => {
                    debug!(%peer, ?no, "inference stream dropped: no slot for it");
                    ctx.metrics.limited(no.reason());
                    continue;
                }
            };
            let ctx = ctx.clone();
            streams.spawn(async move {
                if let Err(why) = serve(peer, stream, slot, &ctx).await {
                    debug!(%peer, %why, "inference stream ended early");
                }
            });
        }
        drop(incoming);
        let ending = async { while streams.join_next().await.is_some() {} };
        if tokio::time::timeout(STREAMS_END_GRACE, ending)
            .await
            .is_err()
        {
            debug!("inference streams still running at shutdown are cut");
        }
    }))
}

fn refusal(code: RefuseCode, message: impl Into<String>, retry_after_ms: u64) -> FrameBody {
    // Cut on a character boundary: the text may quote a peer's (a schema's `$ref`).
    FrameBody::Refuse(Refuse {
        code,
        message: BoundedString::truncated(&message.into()),
        retry_after_ms,
    })
}

/// The refusal that tells the app why the engine did not take its request: busy (the
/// next free slot is this app's, over apps that hold as many or more, if it comes back
/// as told), invalid, or failed.
fn engine_refusal(e: &BackendError, ticket: &mut StreamTicket<'_>, peer: PeerId) -> FrameBody {
    let (code, retry) = match e {
        BackendError::Busy { retry_after, .. } => {
            let retry = ticket.busy(peer).unwrap_or(*retry_after);
            (RefuseCode::Busy, retry.as_millis() as u64)
        }
        BackendError::PromptTooLong { .. } | BackendError::Invalid(_) => (RefuseCode::Invalid, 0),
        _ => (RefuseCode::Failed, 0),
    };
    refusal(code, e.to_string(), retry)
}

/// An ack the app sent, checked: its signature (verified in batches across streams)
/// and the flow's rules. Counted as a receipt.
async fn accept_ack(
    ack: SignedAck,
    flow: &mut SupplierFlow,
    session: &SignedSessionOpen,
    ctx: &SupplierContext,
) -> Result<Accepted, String> {
    let item = ack.signed_item(session.body.app);
    if !ctx.acks.verify(item.clone()).await {
        return Err("an ack's signature does not verify".into());
    }
    let accepted = flow
        .on_ack(ack, &super::verify::Verified(item))
        .map_err(|e| e.to_string())?;
    ctx.metrics.receipts.inc();
    Ok(accepted)
}

/// Stores, counts and mines an accepted receipt into its session's sum tree.
fn keep_receipt(
    ctx: &SupplierContext,
    session: &SignedSessionOpen,
    mining_secret: &Digest,
    accepted: &Accepted,
) {
    if let Some(miner) = &ctx.miner {
        match miner.offer(session, mining_secret, &accepted.receipt, &accepted.facts) {
            Ok(Some(_)) => {
                ctx.metrics.mined_receipts.inc();
            }
            Ok(None) => {}
            Err(e) => warn!(%e, "cannot store a receipt"),
        }
    }
}

async fn serve(
    peer: PeerId,
    stream: Stream,
    mut slot: StreamSlot,
    ctx: &SupplierContext,
) -> Result<(), String> {
    let (mut r, mut w) = stream.split();
    let refuse = |code, msg: String| refusal(code, msg, 0);
    if let Some(membership) = &ctx.membership {
        if !membership.role_of(&peer).is_some_and(|role| role.uses()) {
            let msg =
                "this private mesh admitted you as a supplier only: you may not use its suppliers"
                    .to_string();
            let _ = write_frame(&mut w, refuse(RefuseCode::Terms, msg.clone())).await;
            return Err(msg);
        }
    }

    // 1. The terms: proposed now, or countersigned by us before.
    let session = match first_frame(&mut r, &mut slot, ctx).await? {
        FrameBody::Propose(proposal) => {
            if let Some((code, msg)) = check_proposal(&proposal, ctx) {
                let _ = write_frame(&mut w, refuse(code, msg.clone())).await;
                return Err(msg);
            }
            let mining_secret = proposal.body.mining_secret(&ctx.key);
            let session = proposal.countersign(&ctx.key, &mining_secret);
            if let Err(e) = session.check_terms(&ctx.params, &ctx.mesh_id) {
                let _ = write_frame(&mut w, refuse(RefuseCode::Terms, e.to_string())).await;
                return Err(e.to_string());
            }
            if let Some(settlement) = &ctx.settlement {
                settlement.announce(&session, now_ms());
                if ctx.params.has_credit() {
                    ctx.fresh.countersigned(session.session_key());
                }
            }
            write_frame(&mut w, FrameBody::Accept(session.clone()))
                .await
                .map_err(|e| e.to_string())?;
            session
        }
        FrameBody::Resume(session) => {
            if let Some((code, msg)) = check_resumed(&session, ctx) {
                let _ = write_frame(&mut w, refuse(code, msg.clone())).await;
                return Err(msg);
            }
            session
        }
        other => {
            let _ = write_frame(
                &mut w,
                refuse(RefuseCode::Invalid, "expected Propose or Resume".into()),
            )
            .await;
            return Err(format!("expected Propose or Resume, got {other:?}"));
        }
    };

    // 2. The request, which must commit to the payload it comes with.
    let InferRequest { request, payload } = match next_frame(&mut r, ctx).await? {
        FrameBody::Request(r) => r,
        other => return Err(format!("expected Request, got {other:?}")),
    };
    let served = ctx
        .models
        .get(payload.model.as_str())
        .filter(|m| model_digest(m) == session.body.model_digest);
    let end_ms = session.body.end_ms();
    // The signature first: a request id is used up only by its app (found by review:
    // anyone holding a gossiped session could burn its ids with unsigned requests, and
    // its app then opened a new session for each).
    let signed = request.signed_item(session.body.app);
    let problem = if Ed25519Verifier
        .verify(&signed.key, &signed.message, &signed.signature)
        .is_err()
        || request.body.session_key != session.session_key()
    {
        Some((
            RefuseCode::Invalid,
            "the request is not signed by the session's app".to_string(),
        ))
    } else if !ctx
        .seen
        .first_use(&session.session_key(), request.body.request_id, end_ms)
    {
        Some((
            RefuseCode::Invalid,
            format!(
                "request {} of this session was served already",
                request.body.request_id
            ),
        ))
    } else if payload.digest() != request.body.prompt_digest
        || payload.prompt_bytes() != u64::from(request.body.prompt_bytes)
    {
        Some((
            RefuseCode::Invalid,
            "the payload is not what the request signs".into(),
        ))
    } else if request.body.prompt_bytes as usize > ctx.prompt_bytes {
        // The operator's bound on prefill work; another supplier may read it. Not
        // `Terms`: on a resumed session a gateway takes that as a session this supplier
        // will not resume, and opens another (found by review: each oversized prompt
        // then cost the app a session and an escrow slot here).
        ctx.metrics.limited("prompt_bytes");
        Some((
            RefuseCode::Failed,
            format!(
                "this supplier reads prompts of at most {} bytes (its limit prompt_bytes); this one has {}",
                ctx.prompt_bytes, request.body.prompt_bytes
            ),
        ))
    } else if served.is_none() {
        Some((
            RefuseCode::UnknownModel,
            format!(
                "model {:?} with the session's digest is not served here",
                payload.model.as_str()
            ),
        ))
    } else if payload.logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
        Some((
            RefuseCode::Invalid,
            format!("a request asks for at most {MAX_TOP_LOGPROBS} alternatives per token"),
        ))
    } else {
        embed::shape_problem(&request.body, &payload, served)
    };
    // The stream reserves what it may bill of the escrow: at least its prompt and a
    // token, at most its prompt and its whole output bound.
    let prompt_bytes_signed = request.body.prompt_bytes;
    let embedding = request.body.is_embedding();
    let prompt_cu = session.body.cu.input_units(prompt_bytes_signed, embedding);
    let prompt_worth = prompt_worth(&ctx.params, prompt_bytes_signed, embedding);
    let most_cu = prompt_cu.saturating_add(
        session
            .body
            .cu
            .output_units(0, request.body.max_output_bytes)
            .unwrap_or(u64::MAX),
    );
    let token_cu = if embedding {
        0
    } else {
        session
            .body
            .cu
            .output_units(0, session.body.max_token_bytes)
            .unwrap_or(u64::MAX)
    };
    let reservation = match escrow_use(&session, ctx) {
        None => Ok(None),
        Some((usable, spent)) => ctx
            .budgets
            .reserve(
                session.session_key(),
                usable,
                spent,
                prompt_cu.saturating_add(token_cu),
                most_cu,
            )
            .map(Some)
            .ok_or(()),
    };
    let problem = problem.or_else(|| {
        reservation.is_err().then(|| {
            (
                RefuseCode::Terms,
                "the session's escrow is spent: open a new session".to_string(),
            )
        })
    });
    let free_slots = served.as_ref().map_or(0, |s| s.backend.slots().0);
    let ticket = match problem {
        Some((code, msg)) => Err((code, msg, 0)),
        None => ctx
            .limits
            .begin(&session.body.app, payload.model.as_str(), peer, free_slots)
            .map_err(|r| {
                ctx.metrics.limited("app_streams");
                (RefuseCode::Busy, r.why, r.retry_after.as_millis() as u64)
            }),
    };
    let mut ticket = match ticket {
        Ok(ticket) => ticket,
        Err((code, msg, retry)) => {
            let _ = write_frame(&mut w, refusal(code, msg.clone(), retry)).await;
            return Err(msg);
        }
    };
    let served = served.expect("checked above");
    let mining_secret = session.body.mining_secret(&ctx.key);
    let cap = terms::frame_cap(&session.body, served.backend.info().kind);
    // The output this request may still bill: its reservation, less the prompt.
    let reservation = reservation.ok().flatten();
    let mut output_budget = reservation.as_ref().map(|r| r.cu.saturating_sub(prompt_cu));
    // Its signature was checked above: the flow takes that one as verified.
    let verified = super::verify::Verified(signed);
    let flow = SupplierFlow::new(&session, request, ticket.window(), &verified)
        .and_then(|flow| flow.with_max_tokens(payload.max_tokens));
    let mut flow = match flow {
        Ok(flow) => flow,
        Err(e) => {
            let _ = write_frame(&mut w, refuse(RefuseCode::Invalid, e.to_string())).await;
            return Err(e.to_string());
        }
    };
    // A session past the clash window is checked before anything is generated (an
    // exclusion may have come since it was countersigned).
    if ctx.fresh.wait_until(&session.session_key()).is_none() {
        still_admitted(&session.body, ctx, &mut w).await?;
    }
    if let Some(Ok(inputs)) = payload.embedding() {
        return embed::EmbeddingStream {
            peer,
            r,
            w,
            ctx,
            inputs: inputs.iter().map(|t| t.as_str().to_owned()).collect(),
            session,
            flow,
            ticket,
            served,
            mining_secret,
            prompt_worth,
            prompt_bytes: prompt_bytes_signed,
        }
        .serve()
        .await;
    }
    let asked = tokio::time::Instant::now();
    let Some(mut request) = gen_request(&payload) else {
        return Err("an embedding request was not served as one".into());
    };
    request.tenant = Tenant::App(*session.body.app.as_bytes());
    // The app's frames are read from here on, by their own task, so that a full window
    // waits for acks while generation and writing go on otherwise.
    let (ack_tx, mut acks) = mpsc::channel(64);
    // Aborted when the stream ends, or when its task is (a stopping node's).
    let reader = AbortOnDrop(tokio::spawn(async move {
        loop {
            let frame = read_frame(&mut r).await;
            let stop = frame.is_err();
            if ack_tx.send(frame).await.is_err() || stop {
                return;
            }
        }
    }));
    // Before its first token an app has nothing to send: whatever comes while the
    // request waits for a generation place (the stream closing, above all) means the
    // app has gone, and the wait ends with it, giving the place in the engine's queue
    // and the app's allowance back at once.
    let waited = tokio::select! {
        biased;
        generated = served.generate(request) => Some(generated),
        _ = acks.recv() => None,
    };
    let Some(generated) = waited else {
        debug!(%peer, model = payload.model.as_str(), "the app left while its request waited for a place");
        // The embedded engine's wait ends before anything is read. An upstream's may
        // include its prefill (it lasts until the upstream answers), which is owed as
        // when an app leaves before its first token (found by review).
        let owed = if served.backend.info().kind == "embedded" {
            0
        } else {
            allowance::owed(&allowance::Ending {
                clean: false,
                acked: 0,
                sent: 0,
                unacked: 0,
                ack_every: ticket.window().ack_every,
                queued_ms: millis(asked.elapsed()),
                prompt_bytes: prompt_bytes_signed,
                prompt_tokens: prompt_worth.0,
            })
        };
        ticket.end(0, owed);
        return Err("the app left while its request waited".into());
    };
    let mut generation = match generated {
        Ok(g) => {
            ticket.started();
            Some(g)
        }
        Err(e) => {
            let _ = write_frame(&mut w, engine_refusal(&e, &mut ticket, peer)).await;
            return Err(e.to_string());
        }
    };
    let queued = asked.elapsed();
    info!(%peer, model = payload.model.as_str(), "serving a mesh request");

    // 3. Tokens out, acks in.
    let first_window = ticket.window().max_unacked;
    // A fresh session's streams wait out the clash window within their first window.
    let mut clash_check = ctx.fresh.wait_until(&session.session_key());
    let mut sent = 0u32;
    // Whether `Done` went out: an answer with no text (a stop string first) told the
    // app something, and a stream left after it owes as one left after a token.
    let mut answered = false;
    let mut checked = tokio::time::Instant::now();
    let mut clock = pace::AckClock::new(std::time::Instant::now());
    let model = payload.model.as_str();
    let stop = ctx.stopping.stopped();
    tokio::pin!(stop);
    // Whether the stream ended for want of the supplier (its tokens are then no debt).
    let mut our_fault = false;
    let result = async {
        let mut done: Option<Done> = None;
        let mut generated = false;
        let mut pending: std::collections::VecDeque<Out> = Default::default();
        // Log probabilities of tokens whose text has not come yet, and the app's check
        // of what it takes.
        let mut told: Vec<TokenLogprob> = Vec::new();
        let mut told_check = LogprobsCheck::new(&payload);
        loop {
            if flow.is_closed() {
                return Ok(());
            }
            // A full window while generating holds a place: is it one others want?
            let holding = !generated
                && !flow.can_send()
                && ctx.limits.contended(model, served.backend.slots().0);
            // Once the output is done, the last ack is owed too; one that would pay for
            // nothing is waited for only a round trip or so, and the stream then ends
            // cleanly.
            let now = std::time::Instant::now();
            if flow.is_finished()
                && clock.weightless_wait_over(now, flow.acked_tokens(), flow.unacked_tokens())
            {
                debug!(%peer, "no last ack, which would pay for nothing: the stream ends");
                return Ok(());
            }
            let owed = flow.unacked_tokens() > 0 || (flow.is_finished() && !flow.is_closed());
            clock.look(now, owed, holding)?;
            // Send what is pending while the window allows. Output the escrow cannot pay
            // for, or past the frames the app takes (pieces cut into frames can outrun
            // the tokens asked for), is not sent: the answer ends there, as if at its
            // length limit.
            while flow.can_send() && (clash_check.is_none() || sent < first_window) {
                let Some(Out { told, piece }) = pending.pop_front() else { break };
                let units = session.body.cu.output_units(0, piece.len() as u32).unwrap_or(u64::MAX);
                let spent = output_budget.is_some_and(|left| units > left);
                if spent || flow.frames_left() == 0 {
                    let why = if spent { "the session's escrow is spent" } else { "the request's frames are used up" };
                    info!(%peer, "{why}: the answer stops here");
                    pending.clear();
                    generated = true;
                    // Its engine place goes at once (dropping the generation cancels it).
                    generation = None;
                    let prompt_tokens = done.as_ref().map_or(0, |d| d.prompt_tokens);
                    done = Some(Done {
                        reason: DoneReason::Length,
                        prompt_tokens,
                        completion_tokens: flow.sent_tokens(),
                        stop: None,
                    });
                    break;
                }
                if let Some(left) = output_budget.as_mut() {
                    *left -= units;
                }
                flow.send(&piece).map_err(|e| e.to_string())?;
                sent += 1;
                clock.heard(std::time::Instant::now());
                // Unpaid: the log probabilities of the tokens that made this text.
                for tokens in told {
                    write_frame(&mut w, FrameBody::Logprobs(tokens)).await.map_err(|e| e.to_string())?;
                }
                write_frame(&mut w, FrameBody::Token(BoundedString::new(piece).expect("split to fit")))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            if pending.is_empty() {
                if let Some(d) = done.take() {
                    flow.finish();
                    write_frame(&mut w, FrameBody::Done(d)).await.map_err(|e| e.to_string())?;
                    answered = true;
                    clock.heard(std::time::Instant::now());
                }
            }
            let generating = !generated && pending.is_empty();
            let clash_due = async {
                match clash_check {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut stop => {
                    // The app's gateway fails over on this at once.
                    our_fault = true;
                    let _ = write_frame(&mut w, refuse(RefuseCode::Failed, "the supplier is shutting down".into())).await;
                    return Err("the node is stopping".to_string());
                }
                _ = clash_due, if clash_check.is_some() => {
                    clash_check = None;
                    still_admitted(&session.body, ctx, &mut w).await?;
                }
                event = next_event(&mut generation), if generating => match event.inspect(|_| clock.heard(std::time::Instant::now())) {
                    Some(GenEvent::Text(text)) => {
                        let pieces = terms::token_frames(&text, cap);
                        // Only what the app's check takes goes out (the pieces go in
                        // this order, so the check sees them as the app will).
                        let mut frames = match payload.logprobs {
                            Some(asked) => {
                                let mut tokens = std::mem::take(&mut told);
                                tokens.truncate(told_check.room(pieces.first().map_or(0, |p| p.len())));
                                let frames = super::logprob_frames(&tokens, asked);
                                for f in &frames {
                                    let _ = told_check.told(f);
                                }
                                frames
                            }
                            None => Vec::new(),
                        };
                        for piece in pieces {
                            let _ = told_check.token(piece.len());
                            pending.push_back(Out { told: std::mem::take(&mut frames), piece: piece.to_owned() });
                        }
                    }
                    // Kept for the text they made, as many as the app takes before it.
                    Some(GenEvent::Logprobs(tokens)) if payload.logprobs.is_some() => {
                        crate::backend::hold_logprobs(&mut told, tokens);
                    }
                    Some(GenEvent::Logprobs(_)) => {}
                    Some(GenEvent::Done(f)) => {
                        generated = true;
                        done = Some(Done {
                            reason: match f.reason {
                                FinishReason::Stop => DoneReason::Stop,
                                FinishReason::Length => DoneReason::Length,
                            },
                            prompt_tokens: f.prompt_tokens,
                            completion_tokens: f.completion_tokens,
                            stop: f.stop.as_deref().map(BoundedString::truncated),
                        });
                    }
                    // A format the answer could not follow is the app's request failing:
                    // it owes what it was sent, as any app leaving does.
                    Some(GenEvent::Failed(why)) if why.starts_with(crate::backend::embedded::FORMAT_FAILURE) => {
                        let _ = write_frame(&mut w, refuse(RefuseCode::Invalid, why)).await;
                        return Err("the request's output format could not be followed".to_string());
                    }
                    Some(GenEvent::Failed(why)) => {
                        our_fault = true;
                        let _ = write_frame(&mut w, refuse(RefuseCode::Failed, why)).await;
                        return Err("generation failed".to_string());
                    }
                    None => {
                        our_fault = true;
                        let _ = write_frame(&mut w, refuse(RefuseCode::Failed, "the backend stopped".into())).await;
                        return Err("the backend stopped".to_string());
                    }
                },
                frame = tokio::time::timeout(pace::LOOK_EVERY, acks.recv()) => match frame {
                    Ok(Some(Ok(f))) => match f.body {
                        FrameBody::Ack(ack) => {
                            clock.heard(std::time::Instant::now());
                            let accepted = accept_ack(ack, &mut flow, &session, ctx).await?;
                            if checked.elapsed() >= clash::RECHECK_EVERY {
                                checked = tokio::time::Instant::now();
                                still_admitted(&session.body, ctx, &mut w).await?;
                            }
                            keep_receipt(ctx, &session, &mining_secret, &accepted);
                        }
                        FrameBody::Refuse(r) => return Err(format!("the app stopped: {}", r.message)),
                        other => return Err(format!("unexpected frame {other:?}")),
                    },
                    Ok(Some(Err(FrameError::Io(e)))) => return Err(format!("the app left: {e}")),
                    Ok(Some(Err(e))) => return Err(e.to_string()),
                    Ok(None) => return Err("the app left".into()),
                    // Looked at again at the top of the loop.
                    Err(_) => {}
                },
            }
        }
    }
    .await;
    drop(reader);
    // What the app owes (`allowance::owed`), and what it paid: the tokens it
    // acknowledged and, once an ack came, its prompt's worth in tokens.
    let acked = flow.acked_tokens();
    let owed = allowance::owed(&allowance::Ending {
        clean: flow.is_closed() || our_fault,
        acked,
        // Found by review: a rider could read which stop string its answer met from a
        // `Done` with no text, and leave owing what a lost hedge owes.
        sent: if answered { sent.max(1) } else { sent },
        unacked: flow.unacked_tokens(),
        ack_every: ticket.window().ack_every,
        queued_ms: millis(queued),
        prompt_bytes: prompt_bytes_signed,
        prompt_tokens: prompt_worth.0,
    });
    let prompt_paid = if flow.prompt_paid() {
        prompt_worth.1
    } else {
        0
    };
    ticket.end(acked.saturating_add(prompt_paid), owed);
    result
}

/// What a request's prompt (or embedding inputs) of `bytes` is worth in its app's
/// allowance, as tokens owed if left unpaid and paid once acknowledged
/// (`allowance::owed_tokens`, `paid_tokens`): under this supplier's own formula for the
/// mesh, not the session's, whose factors the app proposes (found by review: an output
/// factor of 1,000 made an 8 KiB prompt owe 2 tokens, not 342).
fn prompt_worth(params: &MeshParams, bytes: u32, embedding: bool) -> (u32, u32) {
    let own = crate::infer::supplier_cu(params);
    let units = own.input_units(bytes, embedding);
    (owed_tokens(&own, units), paid_tokens(&own, units))
}

/// `d` in whole milliseconds (saturating), as the allowance rule counts time.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prompt is worth the same in the app's allowance whatever factors its session
    /// names: 8 KiB of prompt is 342 tokens owed and 341 paid at the mesh's formula.
    /// The worth takes no session: the app's own factors cannot shrink it.
    #[test]
    fn a_prompt_is_worth_its_bytes_at_the_suppliers_own_formula() {
        let params = MeshParams::new("worth", vec![]).unwrap();
        assert_eq!(prompt_worth(&params, 8192, false), (342, 341));
        assert_eq!(prompt_worth(&params, 1, false), (1, 0));
        // Embedding inputs at the mesh's embedding factor (1, as prompts).
        assert_eq!(prompt_worth(&params, 8192, true), (342, 341));
    }
}
