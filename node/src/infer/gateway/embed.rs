//! Embeddings over the mesh (protocol version 6): the request goes to the best
//! supplier whose ad says it embeds with the model; the supplier embeds, sends `Done`,
//! and sends the vectors (one frame per input) once the app's one last ack has paid for
//! the inputs. A supplier that refuses, breaks or sends malformed vectors is replaced by
//! the next, which embeds the inputs again. Embedding requests are not hedged.

use relaymesh_protocol::messages::infer::{MAX_EMBEDDING_DIMS, MAX_EMBED_INPUTS};

use super::*;

/// How long the vectors may take to arrive once they are paid for.
pub const VECTORS_TIMEOUT: Duration = Duration::from_secs(30);

impl MeshBackend {
    /// Embeds `inputs` on the best supplier that embeds with this model.
    pub(super) async fn embed_on_mesh(&self, inputs: &[String]) -> Result<Embedded, BackendError> {
        let model = self.info.name.as_str();
        // What every supplier would refuse is refused here, before a session or a
        // request id is spent on it.
        if inputs.is_empty() || inputs.len() > MAX_EMBED_INPUTS {
            return Err(BackendError::Invalid(format!(
                "embed 1 to {MAX_EMBED_INPUTS} inputs at once, not {}",
                inputs.len()
            )));
        }
        if let Some(i) = inputs.iter().position(String::is_empty) {
            return Err(BackendError::Invalid(format!("input {i} is empty")));
        }
        let ranked: Vec<_> = self
            .ranked
            .iter()
            .filter(|(_, o)| dims(o).is_some())
            .cloned()
            .collect();
        if ranked.is_empty() {
            return Err(BackendError::Invalid(format!(
                "no supplier of {model} on the mesh makes embeddings with it"
            )));
        }
        let asked = Asked::Embed(inputs);
        let (mut leg, mut candidates, mut attempts, _) = self.first_leg(asked, &ranked).await?;
        let gateway = &self.gateway;
        loop {
            let expected = ranked
                .iter()
                .find(|(k, _)| *k == leg.supplier)
                .and_then(|(_, o)| dims(o));
            let why = match gateway.embeddings(&mut leg, inputs.len(), expected).await {
                Ok(embedded) => {
                    info!(supplier = %leg.peer, %model, inputs = inputs.len(), "mesh embeddings received");
                    return Ok(embedded);
                }
                Err(why) => why,
            };
            gateway.router.observe_error(leg.supplier, model);
            warn!(supplier = %leg.peer, %why, "supplier failed an embedding request; asking the next");
            leg = gateway
                .open_next(model, &mut candidates, &mut attempts, asked)
                .await
                .map_err(|e| {
                    BackendError::Unavailable(format!(
                        "{why}; and no other supplier could embed: {e}"
                    ))
                })?;
        }
    }
}

/// The length of the vectors an offer's supplier makes, if it embeds and they fit a
/// frame.
fn dims(offer: &ModelOffer) -> Option<usize> {
    offer
        .embedding_dims
        .map(|d| d as usize)
        .filter(|d| (1..=MAX_EMBEDDING_DIMS).contains(d))
}

/// Whether `v` may be the next of an answer's vectors: as long as its supplier's ad
/// says, every component a finite number.
fn well_formed(v: &[f32], expected: Option<usize>) -> bool {
    expected.is_some_and(|d| v.len() == d) && v.iter().all(|x| x.is_finite())
}

/// A frame named for an error message (never its contents, which may be large).
fn kind(body: &FrameBody) -> &'static str {
    match body {
        FrameBody::Propose(_) => "Propose",
        FrameBody::Accept(_) => "Accept",
        FrameBody::Request(_) => "Request",
        FrameBody::Token(_) => "Token",
        FrameBody::Embedding(_) => "Embedding",
        FrameBody::Ack(_) => "Ack",
        FrameBody::Done(_) => "Done",
        FrameBody::Refuse(_) => "Refuse",
        FrameBody::Resume(_) => "Resume",
    }
}

impl Gateway {
    /// Reads an embedding request's answer from `leg`: `Done`, which the last ack
    /// answers, then a vector for each of its `inputs`, each of the `expected` length.
    async fn embeddings(
        &self,
        leg: &mut Leg,
        inputs: usize,
        expected: Option<usize>,
    ) -> Result<Embedded, String> {
        let done = match leg.first.take() {
            Some(FrameBody::Done(done)) => done,
            Some(FrameBody::Refuse(r)) => return Err(r.message.as_str().to_owned()),
            Some(other) => return Err(format!("a {} frame before Done", kind(&other))),
            None => return Err("no answer".into()),
        };
        let ack = leg
            .flow
            .finish(&self.key)
            .map_err(|e| format!("no last ack: {e}"))?;
        self.keep(leg, &ack);
        write_frame(&mut leg.w, FrameBody::Ack(ack))
            .await
            .map_err(|e| format!("the last ack was not delivered: {e}"))?;
        let reading = async {
            let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(inputs);
            while vectors.len() < inputs {
                match read_frame(&mut leg.r).await {
                    Ok(frame) => match frame.body {
                        FrameBody::Embedding(e) => {
                            let v = e.values();
                            if !well_formed(&v, expected) {
                                return Err(format!(
                                    "the supplier sent a malformed vector ({} components, {expected:?} advertised)",
                                    v.len()
                                ));
                            }
                            vectors.push(v);
                        }
                        FrameBody::Refuse(r) => return Err(r.message.as_str().to_owned()),
                        other => return Err(format!("a {} frame among the vectors", kind(&other))),
                    },
                    Err(e) => {
                        return Err(format!(
                            "the stream broke after {} of {inputs} vectors: {e}",
                            vectors.len()
                        ))
                    }
                }
            }
            Ok(vectors)
        };
        let vectors = tokio::time::timeout(VECTORS_TIMEOUT, reading)
            .await
            .map_err(|_| "the vectors did not come in time".to_string())??;
        Ok(Embedded {
            vectors,
            prompt_tokens: done.prompt_tokens,
            mesh: Some(crate::backend::MeshReport {
                suppliers: vec![leg.peer.to_string()],
                answer_bytes: vec![0],
                compute_units: leg.compute_units(),
                acked_bytes: 0,
                queued_ms: 0,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors of another length than the ad's, or with a NaN or an infinity, are
    /// refused (found by review: a one-component vector of junk was accepted).
    #[test]
    fn only_vectors_of_the_advertised_length_and_finite_are_taken() {
        assert!(well_formed(&[0.6, 0.8], Some(2)));
        assert!(!well_formed(&[1.0], Some(2)));
        assert!(!well_formed(&[0.6, f32::NAN], Some(2)));
        assert!(!well_formed(&[0.6, f32::INFINITY], Some(2)));
        assert!(!well_formed(&[0.6, 0.8], None));
        let mut offer = crate::infer::router::tests::offer(1, 1, 1);
        offer.embedding_dims = Some(0);
        assert_eq!(dims(&offer), None);
        offer.embedding_dims = Some(MAX_EMBEDDING_DIMS as u32 + 1);
        assert_eq!(dims(&offer), None);
        offer.embedding_dims = Some(576);
        assert_eq!(dims(&offer), Some(576));
    }
}
