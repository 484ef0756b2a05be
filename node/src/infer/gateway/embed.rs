//! Embeddings over the mesh (protocol version 6): the inputs go, in chunks of bounded
//! work, to the best supplier whose ad says it embeds with the model; the supplier
//! embeds, sends `Done`, and sends the vectors (one frame per input) once the app's one
//! last ack has paid for the inputs. A supplier that refuses, breaks or sends malformed
//! vectors is replaced by the next, which embeds the chunk again; one that took the
//! ack and did not deliver is shunned for an hour (`infer::shun`: at once for a
//! refusal or a malformed vector, at the third broken stream). Embedding requests are
//! not hedged.

use relaymesh_protocol::messages::infer::{
    MAX_EMBEDDING_DIMS, MAX_EMBED_INPUTS, MIN_EMBED_INPUT_BYTES,
};

use super::*;

/// How long each vector may take to arrive once they are paid for.
pub const VECTORS_TIMEOUT: Duration = Duration::from_secs(30);
/// Most inputs one mesh request embeds: a client's larger batch goes as several.
pub const CHUNK_INPUTS: usize = 32;
/// Most billed input bytes one mesh request carries (an input larger goes alone): a
/// supplier's work per request stays within the gateway's wait for an answer on a
/// slow CPU (about 2,000 tokens), and an app that leaves owes no more than an ack step.
pub const CHUNK_BYTES: u64 = 8 * 1024;

/// The inputs cut into consecutive chunks of at most [`CHUNK_INPUTS`] inputs and
/// [`CHUNK_BYTES`] billed bytes (an input larger alone).
fn chunks(inputs: &[String]) -> Vec<&[String]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, input) in inputs.iter().enumerate() {
        let billed = (input.len() as u64).max(MIN_EMBED_INPUT_BYTES);
        if i > start && (i - start == CHUNK_INPUTS || bytes + billed > CHUNK_BYTES) {
            out.push(&inputs[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += billed;
    }
    if start < inputs.len() {
        out.push(&inputs[start..]);
    }
    out
}

/// Why a leg did not give its vectors.
enum Failed {
    /// Before the app paid (or with its ack perhaps never delivered): another supplier
    /// may be asked.
    Unpaid(String),
    /// After the app's ack paid for them, the supplier answered otherwise: a refusal,
    /// another frame, a malformed vector.
    Cheated(String),
    /// After the app's ack, the stream broke or stalled: perhaps the network.
    Broke(String),
}

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
        let mut all = Embedded {
            vectors: Vec::with_capacity(inputs.len()),
            prompt_tokens: 0,
            mesh: Some(crate::backend::MeshReport::default()),
        };
        let router = &self.gateway.router;
        for chunk in chunks(inputs) {
            // Suppliers shunned by an earlier chunk are not asked for this one.
            let live: Vec<_> = ranked
                .iter()
                .filter(|(k, _)| !router.is_shunned(*k))
                .cloned()
                .collect();
            if live.is_empty() {
                return Err(NoRoute::Shunned {
                    model: model.to_owned(),
                    count: ranked.len(),
                }
                .into());
            }
            let part = self.embed_chunk(chunk, &live).await?;
            all.vectors.extend(part.vectors);
            all.prompt_tokens = all.prompt_tokens.saturating_add(part.prompt_tokens);
            if let (Some(report), Some(part)) = (all.mesh.as_mut(), part.mesh) {
                for supplier in part.suppliers {
                    if !report.suppliers.contains(&supplier) {
                        report.suppliers.push(supplier);
                        report.answer_bytes.push(0);
                    }
                }
                report.compute_units += part.compute_units;
            }
        }
        Ok(all)
    }

    /// Embeds one chunk of inputs on the best of `ranked` that will, failing over.
    async fn embed_chunk(
        &self,
        inputs: &[String],
        ranked: &[(PublicKey, ModelOffer)],
    ) -> Result<Embedded, BackendError> {
        let model = self.info.name.as_str();
        let asked = Asked::Embed(inputs);
        let (mut leg, mut candidates, mut attempts, _) = self.first_leg(asked, ranked).await?;
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
                Err(Failed::Unpaid(why)) => {
                    gateway.router.observe_error(leg.supplier, model);
                    why
                }
                Err(Failed::Cheated(why)) => {
                    gateway.router.caught(leg.supplier, model);
                    warn!(supplier = %leg.peer, %why, "supplier took the payment for embeddings and did not deliver them: shunned for an hour");
                    why
                }
                Err(Failed::Broke(why)) => {
                    gateway.router.struck(leg.supplier, model);
                    why
                }
            };
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
        FrameBody::Logprobs(_) => "Logprobs",
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
    ) -> Result<Embedded, Failed> {
        let done = match leg.first.take() {
            Some(FrameBody::Done(done)) => done,
            Some(FrameBody::Refuse(r)) => {
                return Err(Failed::Unpaid(r.message.as_str().to_owned()))
            }
            Some(other) => {
                return Err(Failed::Unpaid(format!(
                    "a {} frame before Done",
                    kind(&other)
                )))
            }
            None => return Err(Failed::Unpaid("no answer".into())),
        };
        let ack = leg
            .flow
            .finish(&self.key)
            .map_err(|e| Failed::Unpaid(format!("no last ack: {e}")))?;
        self.keep(leg, &ack);
        // From here on the supplier holds its pay.
        write_frame(&mut leg.w, FrameBody::Ack(ack))
            .await
            .map_err(|e| Failed::Unpaid(format!("the last ack was not delivered: {e}")))?;
        let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(inputs);
        while vectors.len() < inputs {
            let frame = match tokio::time::timeout(VECTORS_TIMEOUT, read_frame(&mut leg.r)).await {
                Ok(Ok(frame)) => frame,
                Ok(Err(e)) => {
                    return Err(Failed::Broke(format!(
                        "the stream broke after {} of {inputs} vectors: {e}",
                        vectors.len()
                    )))
                }
                Err(_) => return Err(Failed::Broke("a vector did not come in time".into())),
            };
            match frame.body {
                FrameBody::Embedding(e) => {
                    let v = e.values();
                    if !well_formed(&v, expected) {
                        return Err(Failed::Cheated(format!(
                            "the supplier sent a malformed vector ({} components, {expected:?} advertised)",
                            v.len()
                        )));
                    }
                    vectors.push(v);
                }
                FrameBody::Refuse(r) => return Err(Failed::Cheated(r.message.as_str().to_owned())),
                other => {
                    return Err(Failed::Cheated(format!(
                        "a {} frame among the vectors",
                        kind(&other)
                    )))
                }
            }
        }
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

    /// A client's batch goes as requests of at most 32 inputs and 8 KiB, in order, an
    /// input larger than that alone.
    #[test]
    fn a_batch_is_cut_into_chunks_of_bounded_work() {
        let small = vec!["x".to_string(); 70];
        let sizes: Vec<usize> = chunks(&small).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [32, 32, 6]);
        let big = "y".repeat(5000);
        let mixed = vec![
            big.clone(),
            big.clone(),
            "z".into(),
            "y".repeat(9000),
            "z".into(),
        ];
        let cut: Vec<Vec<String>> = chunks(&mixed).iter().map(|c| c.to_vec()).collect();
        assert_eq!(cut.concat(), mixed, "every input once, in order");
        let sizes: Vec<usize> = cut.iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, 2, 1, 1]);
        assert!(chunks(&[]).is_empty());
    }
}
