//! Embeddings over the mesh (protocol version 6): the request goes to the best
//! supplier whose ad says it embeds with the model, the vectors come back one frame per
//! input, and the app's one last ack pays for the inputs. A supplier that refuses,
//! breaks or sends malformed vectors is replaced by the next, which embeds the inputs
//! again (nothing of a broken answer is kept or paid for).

use super::*;

impl MeshBackend {
    /// Embeds `inputs` on the best supplier that embeds with this model.
    pub(super) async fn embed_on_mesh(&self, inputs: &[String]) -> Result<Embedded, BackendError> {
        let model = self.info.name.as_str();
        let ranked: Vec<_> = self
            .ranked
            .iter()
            .filter(|(_, o)| o.embedding_dims.is_some())
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
            let why = match gateway.embeddings(&mut leg, inputs.len()).await {
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

impl Gateway {
    /// Reads an embedding request's answer from `leg`: a vector for each of its
    /// `inputs`, all of one length, then `Done`, which the last ack answers.
    async fn embeddings(&self, leg: &mut Leg, inputs: usize) -> Result<Embedded, String> {
        let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(inputs);
        loop {
            let body = match leg.first.take() {
                Some(body) => body,
                None => {
                    match tokio::time::timeout(self.timeouts.stall, read_frame(&mut leg.r)).await {
                        Ok(Ok(frame)) => frame.body,
                        Ok(Err(e)) => return Err(format!("the stream broke: {e}")),
                        Err(_) => return Err("the supplier stalled between vectors".into()),
                    }
                }
            };
            match body {
                FrameBody::Embedding(e) => {
                    let v = e.values();
                    let well_formed = !v.is_empty()
                        && v.iter().all(|x| x.is_finite())
                        && vectors.first().is_none_or(|first| first.len() == v.len());
                    if !well_formed || vectors.len() == inputs {
                        return Err("the supplier sent a malformed or extra vector".into());
                    }
                    vectors.push(v);
                }
                FrameBody::Done(done) => {
                    if vectors.len() != inputs {
                        return Err(format!(
                            "the supplier sent {} vectors for {inputs} inputs",
                            vectors.len()
                        ));
                    }
                    let ack = leg
                        .flow
                        .finish(&self.key)
                        .map_err(|e| format!("no last ack: {e}"))?;
                    self.keep(leg, &ack);
                    if write_frame(&mut leg.w, FrameBody::Ack(ack)).await.is_err() {
                        debug!(supplier = %leg.peer, "the last ack was not delivered");
                    }
                    return Ok(Embedded {
                        vectors,
                        prompt_tokens: done.prompt_tokens,
                        mesh: Some(crate::backend::MeshReport {
                            suppliers: vec![leg.peer.to_string()],
                            answer_bytes: vec![0],
                            compute_units: leg.compute_units(),
                            acked_bytes: 0,
                            queued_ms: 0,
                        }),
                    });
                }
                FrameBody::Refuse(r) => return Err(r.message.as_str().to_owned()),
                other => return Err(format!("unexpected frame {other:?}")),
            }
        }
    }
}
