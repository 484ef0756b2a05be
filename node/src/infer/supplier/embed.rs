//! Embedding requests on the supplier's side (protocol version 6): the request asks for
//! no output, the engine embeds its inputs, one `Embedding` frame goes out per input,
//! then `Done`, and the app's one last ack pays for the inputs (its weight is their
//! bytes at the session's `embed_per_byte`). An app that leaves without that ack owes
//! what an app leaving before its first token does (`pace::owed`).

use futures::io::{ReadHalf, WriteHalf};
use libp2p::{PeerId, Stream};
use relaymesh_protocol::messages::infer::{
    Done, DoneReason, Embedding, FrameBody, InferPayload, RefuseCode,
};
use relaymesh_protocol::messages::request::RelayRequest;
use relaymesh_protocol::messages::session::SignedSessionOpen;
use relaymesh_protocol::metering::flow::SupplierFlow;
use relaymesh_protocol::Digest;
use tracing::{debug, info};

use super::clash::still_admitted;
use super::{accept_ack, engine_refusal, keep_receipt, next_frame, pace, refusal, SupplierContext};
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
            Some(s) if s.backend.embedding_dims().is_none() => Some((
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
    pub prompt_bytes: u32,
}

impl EmbeddingStream<'_> {
    /// Embeds, sends the vectors and `Done`, and keeps the app's last ack as the
    /// request's receipt.
    pub(super) async fn serve(mut self) -> Result<(), String> {
        let asked = tokio::time::Instant::now();
        let app = Tenant::App(*self.session.body.app.as_bytes());
        // Before its vectors an app has nothing to send: a frame (the stream closing,
        // above all) means it left. The engine finishes the work anyway (it holds its
        // place), so leaving owes what leaving before a first token does.
        let embedded = tokio::select! {
            biased;
            embedded = self.served.backend.embed(&self.inputs, app) => Some(embedded),
            _ = read_frame(&mut self.r) => None,
        };
        let queued = asked.elapsed();
        let Some(embedded) = embedded else {
            debug!(peer = %self.peer, "the app left before its embeddings");
            self.end(false, 0, queued);
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
        let result = self.deliver(embedded).await;
        let (paid, sent) = (self.flow.is_closed(), self.inputs.len() as u32);
        self.end(paid, sent, queued);
        result
    }

    /// Sends the vectors (a fresh session's after the clash window, as a text answer's
    /// tokens past its first window: they are the whole answer) and `Done`, and takes
    /// the last ack.
    async fn deliver(&mut self, embedded: crate::backend::Embedded) -> Result<(), String> {
        let ctx = self.ctx;
        if let Some(at) = ctx.fresh.wait_until(&self.session.session_key()) {
            tokio::time::sleep_until(at).await;
            still_admitted(&self.session.body, ctx, &mut self.w).await?;
        }
        let frames = embedded
            .vectors
            .iter()
            .map(|v| Embedding::new(v).ok_or("a vector longer than the protocol carries"))
            .collect::<Result<Vec<_>, _>>()?;
        if frames.len() != self.inputs.len() {
            let _ = write_frame(
                &mut self.w,
                refusal(RefuseCode::Failed, "the engine lost an input", 0),
            )
            .await;
            return Err("the engine returned another number of vectors".into());
        }
        info!(peer = %self.peer, model = %self.served.backend.info().name, inputs = frames.len(), "serving a mesh embedding request");
        for frame in frames {
            write_frame(&mut self.w, FrameBody::Embedding(frame))
                .await
                .map_err(|e| e.to_string())?;
        }
        self.flow.finish();
        let done = Done {
            reason: DoneReason::Stop,
            prompt_tokens: embedded.prompt_tokens,
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

    /// Ends the app's stream here: what it owes unless `paid` (its last ack came),
    /// counted as for an app that leaves before its first token (`pace::owed`), with
    /// `sent` vectors taken after `queued` waiting for the engine.
    fn end(self, paid: bool, sent: u32, queued: std::time::Duration) {
        let owed = pace::owed(&pace::Ending {
            clean: paid,
            acked: 0,
            sent,
            unacked: 0,
            ack_every: self.ticket.window().ack_every,
            queued,
            prompt_bytes: self.prompt_bytes,
        });
        self.ticket.end(0, owed);
    }
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
