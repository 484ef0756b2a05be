//! Embedding requests on the supplier's side (protocol version 6): the request asks for
//! no output, the engine embeds its inputs, the supplier sends `Done`, the app's one
//! last ack pays for the inputs (their bytes at the session's `embed_per_byte`), and
//! only then do the vectors go out, one `Embedding` frame per input. Vectors are the
//! whole answer at once, so unlike text they are not given before they are paid for
//! (found by review: sent first, an app took them and left owing a token per 64 bytes
//! beyond 8 KiB). An app that leaves before its ack took nothing and owes what an app
//! leaving before its first token does (`allowance::owed`).

use futures::io::{ReadHalf, WriteHalf};
use libp2p::{PeerId, Stream};
use relaymesh_protocol::messages::infer::{
    Done, DoneReason, Embedding, FrameBody, InferPayload, RefuseCode,
};
use relaymesh_protocol::messages::request::RelayRequest;
use relaymesh_protocol::messages::session::SignedSessionOpen;
use relaymesh_protocol::metering::allowance;
use relaymesh_protocol::metering::flow::SupplierFlow;
use relaymesh_protocol::Digest;
use tracing::{debug, info};

use super::clash::still_admitted;
use super::{accept_ack, engine_refusal, keep_receipt, next_frame, refusal, SupplierContext};
use crate::backend::{ServedModel, Tenant};
use crate::infer::app_limits::StreamTicket;
use crate::infer::codec::{read_frame, write_frame};

/// Why a request cannot be served as the embedding request it is (or is not): an
/// embedding request asks for no output and carries an `Embed` payload shaped as one,
/// for a model the supplier embeds with; every other request asks for output.
pub(super) fn shape_problem(
    request: &RelayRequest,
    payload: &InferPayload,
    served: Option<&ServedModel>,
) -> Option<(RefuseCode, String)> {
    let invalid = |why: &str| Some((RefuseCode::Invalid, why.to_owned()));
    match (request.is_embedding(), payload.embedding()) {
        (false, None) => None,
        (true, None) => invalid("a request that asks for no output must embed"),
        (false, Some(_)) => invalid("an embedding request asks for no output (max_output_bytes 0)"),
        (true, Some(Err(why))) => invalid(why),
        (true, Some(Ok(_))) => match served {
            Some(s) if s.embedding_dims().is_none() => Some((
                RefuseCode::UnknownModel,
                format!("model {:?} makes no embeddings here", s.backend.info().name),
            )),
            _ => None,
        },
    }
}

/// One embedding request, its terms checked and its flow begun.
pub(super) struct EmbeddingStream<'a> {
    pub peer: PeerId,
    pub r: ReadHalf<Stream>,
    pub w: WriteHalf<Stream>,
    pub ctx: &'a SupplierContext,
    pub session: SignedSessionOpen,
    pub flow: SupplierFlow,
    pub ticket: StreamTicket<'a>,
    pub served: &'a ServedModel,
    pub mining_secret: Digest,
    pub inputs: Vec<String>,
    /// The inputs' worth in tokens, owed and paid (`allowance::owed_tokens`,
    /// `paid_tokens`, under the supplier's own formula).
    pub prompt_worth: (u32, u32),
    /// The request's signed input bytes.
    pub prompt_bytes: u32,
}

impl EmbeddingStream<'_> {
    /// Embeds, sends `Done`, takes the app's last ack as the request's receipt, and
    /// then sends the vectors.
    pub(super) async fn serve(mut self) -> Result<(), String> {
        let app = Tenant::App(*self.session.body.app.as_bytes());
        // Before `Done` an app has nothing to send: a frame (the stream closing, above
        // all) means it left, and the work stops at the next input. Gateways do not
        // hedge embedding requests (their first frame comes after all the work), so a
        // wait here is not a hedge's: leaving it owes, wherever the time went (found by
        // review: a 5 s queue forgave the work of a batch left just after).
        let embedded = tokio::select! {
            biased;
            embedded = self.served.backend.embed(&self.inputs, app) => Some(embedded),
            _ = read_frame(&mut self.r) => None,
        };
        let Some(embedded) = embedded else {
            debug!(peer = %self.peer, "the app left before its embeddings");
            self.end(Ending::Left);
            return Err("the app left while its inputs were embedded".into());
        };
        let embedded = match embedded {
            Ok(e) => {
                self.ticket.started();
                e
            }
            Err(e) => {
                let frame = engine_refusal(&e, &mut self.ticket, self.peer);
                let _ = write_frame(&mut self.w, frame).await;
                return Err(e.to_string());
            }
        };
        let prompt_tokens = embedded.prompt_tokens;
        // The vectors are kept once, as frames (found by review: both copies were held).
        let frames = embedded
            .vectors
            .into_iter()
            .map(|v| Embedding::new(&v))
            .collect::<Option<Vec<_>>>()
            .filter(|f| f.len() == self.inputs.len());
        let Some(frames) = frames else {
            // Ours to answer for, not the app's.
            let why = "the engine made vectors the protocol cannot carry";
            let _ = write_frame(&mut self.w, refusal(RefuseCode::Failed, why, 0)).await;
            self.end(Ending::Ours);
            return Err(why.into());
        };
        let result = match self.paid(prompt_tokens).await {
            Ok(()) => self.deliver(frames).await,
            Err(e) => Err(e),
        };
        let ending = if self.flow.is_closed() {
            Ending::Paid
        } else {
            Ending::Left
        };
        self.end(ending);
        result
    }

    /// Sends `Done` (a fresh session's after the clash window, as a text answer's
    /// tokens past its first window) and takes the app's last ack.
    async fn paid(&mut self, prompt_tokens: u32) -> Result<(), String> {
        let ctx = self.ctx;
        if let Some(at) = ctx.fresh.wait_until(&self.session.session_key()) {
            tokio::time::sleep_until(at).await;
            still_admitted(&self.session.body, ctx, &mut self.w).await?;
        }
        self.flow.finish();
        let done = Done {
            reason: DoneReason::Stop,
            prompt_tokens,
            completion_tokens: 0,
            stop: None,
        };
        write_frame(&mut self.w, FrameBody::Done(done))
            .await
            .map_err(|e| e.to_string())?;
        match next_frame(&mut self.r, ctx).await? {
            FrameBody::Ack(ack) => {
                let accepted = accept_ack(ack, &mut self.flow, &self.session, ctx).await?;
                keep_receipt(ctx, &self.session, &self.mining_secret, &accepted);
                Ok(())
            }
            other => Err(format!("expected the last ack, got {other:?}")),
        }
    }

    /// Sends the vectors, each within [`DELIVERY_TIMEOUT`] (an app that does not read
    /// them would otherwise hold the stream: found by review).
    async fn deliver(&mut self, frames: Vec<Embedding>) -> Result<(), String> {
        info!(peer = %self.peer, model = %self.served.backend.info().name, inputs = frames.len(), "serving a mesh embedding request");
        for frame in frames {
            let sent = tokio::time::timeout(
                DELIVERY_TIMEOUT,
                write_frame(&mut self.w, FrameBody::Embedding(frame)),
            )
            .await
            .map_err(|_| "the app did not take its vectors in time".to_string())?;
            sent.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Ends the app's stream here: what it owes (`allowance::owed`) for `ending`, or,
    /// paid, what it paid, as the tokens at the most a token is paid that its inputs'
    /// units come to (so an app that pays for embeddings earns the allowance of one
    /// that pays for text: found by review, it stayed a stranger).
    fn end(self, ending: Ending) {
        if ending == Ending::Paid {
            self.ticket.end(self.prompt_worth.1, 0);
            return;
        }
        let owed = allowance::owed(&allowance::Ending {
            clean: ending != Ending::Left,
            acked: 0,
            // Counted as sent: gateways do not hedge embeddings, so an app that leaves
            // before paying owes the inputs' worth whatever the wait (found by review:
            // counted as left before a first token, an 8 KiB batch owed 16, not 358).
            sent: 1,
            unacked: 0,
            ack_every: self.ticket.window().ack_every,
            queued_ms: 0,
            prompt_bytes: self.prompt_bytes,
            prompt_tokens: self.prompt_worth.0,
        });
        self.ticket.end(0, owed);
    }
}

/// How long an app has to read each of its vectors once it paid for them.
pub const DELIVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How an embedding stream ended, for what its app owes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The app's last ack came: it paid.
    Paid,
    /// The supplier could not serve: nothing is owed.
    Ours,
    /// The app left before paying, having taken no vector: it owes as an app leaving
    /// before its first token does.
    Left,
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaymesh_protocol::PROTOCOL_VERSION;

    fn request(max_output_bytes: u32) -> RelayRequest {
        RelayRequest {
            version: PROTOCOL_VERSION,
            session_key: Digest::ZERO,
            request_id: 0,
            prompt_digest: Digest::ZERO,
            prompt_bytes: 5,
            max_output_bytes,
            ack_chain_head: Digest::ZERO,
            ack_chain_len: 2,
        }
    }

    /// A request is an embedding request exactly when it asks for no output, and then
    /// carries inputs and nothing else: a prompt answered for nothing, or vectors
    /// billed as a prompt, would otherwise be the app's choice.
    #[test]
    fn only_a_request_for_no_output_embeds_and_only_its_inputs() {
        let inputs = ["hello".to_string()];
        let embed = crate::infer::embed_payload("m", &inputs).unwrap();
        let chat = crate::infer::payload(
            "m",
            &crate::backend::GenRequest {
                prompt: crate::backend::Prompt::Text("hello".into()),
                sampling: Default::default(),
                tenant: Tenant::Local,
            },
        )
        .unwrap();
        assert_eq!(shape_problem(&request(0), &embed, None), None);
        assert_eq!(shape_problem(&request(64), &chat, None), None);
        let refused = |r: &RelayRequest, p: &InferPayload| {
            matches!(shape_problem(r, p, None), Some((RefuseCode::Invalid, _)))
        };
        // A prompt that asks for no output, and inputs that ask for some.
        assert!(refused(&request(0), &chat));
        assert!(refused(&request(64), &embed));
        // Inputs with sampling, and no inputs at all.
        let mut seeded = embed.clone();
        seeded.seed = Some(1);
        assert!(refused(&request(0), &seeded));
        let empty = crate::infer::embed_payload("m", &[]).unwrap();
        assert!(refused(&request(0), &empty));
    }
}
