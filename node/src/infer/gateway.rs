//! The app's side of `/relaymesh/<mesh>/infer/1`, as a [`Backend`]: pick the best
//! supplier of the model from the peer table, propose the session's terms, send the
//! signed request with its payload, stream the tokens back and ack them. A supplier that
//! refuses or cannot be reached before its first token is replaced by the next one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::AsyncReadExt;
use libp2p::{PeerId, StreamProtocol};
use relaymesh_protocol::identity::signed::Signed;
use relaymesh_protocol::messages::capability::ModelOffer;
use relaymesh_protocol::messages::infer::{FrameBody, InferRequest, RefuseCode};
use relaymesh_protocol::messages::reveal::commitment;
use relaymesh_protocol::messages::session::SessionOpen;
use relaymesh_protocol::metering::app::{RequestAcker, RequestTerms};
use relaymesh_protocol::metering::flow::AppFlow;
use relaymesh_protocol::params::MeshParams;
use relaymesh_protocol::{Digest, Ed25519Verifier, Keypair, PublicKey, Signer};
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::codec::{read_frame, write_frame};
use super::{payload, window};
use crate::backend::{
    Backend, BackendError, Finish, FinishReason, GenEvent, GenRequest, Generation, ModelDetails,
    ModelInfo, EVENT_BUFFER,
};
use crate::mesh::NodeHandle;

/// Suppliers tried, best first, before a request fails.
pub const MAX_ATTEMPTS: usize = 3;
/// How long opening a stream and the session exchange may take.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to wait for a supplier's next frame (the first covers prompt processing).
pub const TOKEN_TIMEOUT: Duration = Duration::from_secs(120);

/// A model served by suppliers on the mesh.
pub struct MeshBackend {
    info: ModelInfo,
    handle: NodeHandle,
    key: Keypair,
    params: MeshParams,
    protocol: StreamProtocol,
}

impl MeshBackend {
    /// The mesh's suppliers of `model`, seen from the node behind `handle`.
    pub fn new(model: &str, handle: NodeHandle, key: Keypair, params: MeshParams) -> Self {
        let protocol = crate::mesh::names::infer_protocol(&params.mesh_id());
        Self {
            info: ModelInfo {
                name: model.to_owned(),
                digest: None,
                manifest: None,
                context_length: 0,
                kind: "mesh",
                details: ModelDetails::default(),
            },
            handle,
            key,
            params,
            protocol,
        }
    }
}

impl MeshBackend {
    /// Describes the model as the best supplier's ad does (context, digest).
    pub fn with_offer(mut self, offer: &ModelOffer) -> Self {
        self.info.context_length = offer.context_length;
        self.info.digest = offer.gguf_digest.map(crate::backend::ModelDigest::Gguf);
        self.info.manifest = offer.manifest.clone();
        self
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

/// Best first: free slots, then speed, then price.
fn rank(offers: &mut [(PublicKey, ModelOffer)]) {
    offers.sort_by(|(_, a), (_, b)| {
        (b.free_slots > 0)
            .cmp(&(a.free_slots > 0))
            .then(b.tokens_per_sec_milli.cmp(&a.tokens_per_sec_milli))
            .then(a.price_per_cu.cmp(&b.price_per_cu))
    });
}

/// Why one supplier did not work out, and whether another may.
struct Attempt {
    error: BackendError,
    retry_elsewhere: bool,
}

impl Attempt {
    fn elsewhere(why: impl Into<String>) -> Self {
        Self {
            error: BackendError::Upstream(why.into()),
            retry_elsewhere: true,
        }
    }
}

impl MeshBackend {
    async fn attempt(
        &self,
        supplier: PublicKey,
        offer: &ModelOffer,
        request: &GenRequest,
    ) -> Result<Generation, Attempt> {
        let peer = PeerId::from_bytes(&supplier.peer_id_bytes())
            .map_err(|e| Attempt::elsewhere(format!("bad supplier key: {e}")))?;
        let mut control = self.handle.streams();
        let stream = tokio::time::timeout(
            OPEN_TIMEOUT,
            control.open_stream(peer, self.protocol.clone()),
        )
        .await
        .map_err(|_| Attempt::elsewhere(format!("{peer} did not open a stream in time")))?
        .map_err(|e| Attempt::elsewhere(format!("{peer}: {e}")))?;
        let (mut r, mut w) = stream.split();
        let io = |e: &dyn std::fmt::Display| Attempt::elsewhere(format!("{peer}: {e}"));

        // The session: our terms, countersigned by the supplier.
        let secret = random_digest();
        let terms = SessionOpen {
            version: 1,
            mesh_id: self.params.mesh_id(),
            app: self.key.public_key(),
            supplier,
            model_digest: offer.gguf_digest.unwrap_or(Digest::ZERO),
            manifest: offer.manifest.clone(),
            cu: offer.cu,
            price_per_cu: offer.price_per_cu,
            tau: offer.tau.clamp(self.params.tau_min, self.params.tau_max),
            start_ms: now_ms(),
            max_duration_ms: self.params.max_session_ms,
            reveal_commitment: commitment(&secret),
            nonce: rand_core::RngCore::next_u64(&mut rand_core::OsRng),
        };
        let proposal = Signed::sign(terms.clone(), &self.key);
        write_frame(&mut w, FrameBody::Propose(proposal))
            .await
            .map_err(|e| io(&e))?;
        let session = match tokio::time::timeout(OPEN_TIMEOUT, read_frame(&mut r)).await {
            Ok(Ok(frame)) => match frame.body {
                FrameBody::Accept(s) => s,
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
        if session.body != terms || session.validate(&self.params, &Ed25519Verifier).is_err() {
            return Err(Attempt::elsewhere(format!(
                "{peer} countersigned other terms"
            )));
        }

        // The request and its payload.
        let payload = payload(&self.info.name, request).map_err(|e| Attempt {
            error: BackendError::Invalid(e),
            retry_elsewhere: false,
        })?;
        let flow_window = window(&self.params);
        let max_acks = (payload.max_tokens / flow_window.ack_every + 2).min(u32::from(
            relaymesh_protocol::metering::ack_chain::MAX_ACK_CHAIN,
        )) as u16;
        let acker = RequestAcker::new(
            RequestTerms {
                session_key: session.session_key(),
                request_id: 0,
                prompt_digest: payload.digest(),
                prompt_bytes: payload.prompt_bytes().min(u64::from(u32::MAX)) as u32,
                max_output_bytes: payload
                    .max_tokens
                    .saturating_mul(relaymesh_protocol::messages::infer::MAX_TOKEN_BYTES as u32),
                max_acks,
            },
            random_digest(),
            &self.key,
        );
        let mut flow = AppFlow::new(acker, flow_window);
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
        let first = match tokio::time::timeout(TOKEN_TIMEOUT, read_frame(&mut r)).await {
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
                error: BackendError::Upstream(format!("{peer}: {}", refusal.message)),
                retry_elsewhere: elsewhere,
            });
        }
        info!(supplier = %peer, model = %self.info.name, "mesh request accepted");

        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let key = self.key.clone();
        tokio::spawn(async move {
            let mut next = Some(first);
            loop {
                let body = match next.take() {
                    Some(body) => body,
                    None => match tokio::time::timeout(TOKEN_TIMEOUT, read_frame(&mut r)).await {
                        Ok(Ok(frame)) => frame.body,
                        Ok(Err(e)) => {
                            let _ = tx.send(GenEvent::Failed(format!("{peer}: {e}"))).await;
                            return;
                        }
                        Err(_) => {
                            let _ = tx.send(GenEvent::Failed(format!("{peer} stalled"))).await;
                            return;
                        }
                    },
                };
                match body {
                    FrameBody::Token(text) => {
                        let ack = match flow.on_token(text.as_str(), &key) {
                            Ok(ack) => ack,
                            Err(e) => {
                                let _ = tx.send(GenEvent::Failed(format!("{peer}: {e}"))).await;
                                return;
                            }
                        };
                        if tx
                            .send(GenEvent::Text(text.as_str().to_owned()))
                            .await
                            .is_err()
                        {
                            debug!(supplier = %peer, "client left; ending the mesh request");
                            return; // dropping the stream tells the supplier
                        }
                        if let Some(ack) = ack {
                            if write_frame(&mut w, FrameBody::Ack(ack)).await.is_err() {
                                let _ = tx.send(GenEvent::Failed(format!("{peer} left"))).await;
                                return;
                            }
                        }
                    }
                    FrameBody::Done(done) => {
                        let closed = match flow.finish(&key) {
                            Ok(ack) => write_frame(&mut w, FrameBody::Ack(ack)).await.is_ok(),
                            Err(_) => false,
                        };
                        if !closed {
                            debug!(supplier = %peer, "the final ack was not delivered");
                        }
                        let _ = tx
                            .send(GenEvent::Done(Finish {
                                reason: match done.reason {
                                    relaymesh_protocol::messages::infer::DoneReason::Stop => {
                                        FinishReason::Stop
                                    }
                                    relaymesh_protocol::messages::infer::DoneReason::Length => {
                                        FinishReason::Length
                                    }
                                },
                                prompt_tokens: done.prompt_tokens,
                                completion_tokens: done.completion_tokens,
                            }))
                            .await;
                        return;
                    }
                    FrameBody::Refuse(r) => {
                        let _ = tx
                            .send(GenEvent::Failed(format!("{peer}: {}", r.message)))
                            .await;
                        return;
                    }
                    other => {
                        let _ = tx
                            .send(GenEvent::Failed(format!("{peer} sent {other:?}")))
                            .await;
                        return;
                    }
                }
            }
        });
        Ok(Generation::new(rx, None).with_supplier(peer.to_string()))
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
        let me = self.key.public_key();
        let mut offers: Vec<(PublicKey, ModelOffer)> = self
            .handle
            .offers(&self.info.name)
            .await
            .map_err(|_| BackendError::Internal("the node is shutting down".into()))?
            .into_iter()
            .filter(|(k, _)| *k != me)
            .collect();
        if offers.is_empty() {
            return Err(BackendError::Upstream(format!(
                "no supplier of {} on the mesh",
                self.info.name
            )));
        }
        rank(&mut offers);
        let mut last = None;
        for (supplier, offer) in offers.iter().take(MAX_ATTEMPTS) {
            match self.attempt(*supplier, offer, &request).await {
                Ok(generation) => return Ok(generation),
                Err(attempt) => {
                    info!(supplier = %supplier.peer_id(), error = %attempt.error, "supplier failed; trying the next");
                    if !attempt.retry_elsewhere {
                        return Err(attempt.error);
                    }
                    last = Some(attempt.error);
                }
            }
        }
        Err(last.unwrap_or_else(|| BackendError::Upstream("no supplier answered".into())))
    }
}
