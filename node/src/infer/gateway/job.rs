//! One client request while it runs: the legs it streams from suppliers, the acks it
//! sends, and the failover to the next supplier with a continuation when a leg breaks.

use super::*;

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
pub(super) struct Job {
    pub(super) gateway: Arc<Gateway>,
    pub(super) model: String,
    pub(super) request: GenRequest,
    pub(super) candidates: VecDeque<(PublicKey, ModelOffer)>,
    pub(super) attempts: usize,
    pub(super) provenance: Provenance,
    pub(super) tx: mpsc::Sender<GenEvent>,
    /// Text sent to the client so far.
    pub(super) answer: String,
    /// Token frames sent to the client so far.
    pub(super) tokens: u32,
    /// The log probabilities passed to the client so far.
    pub(super) told: Told,
}

/// Most log probabilities one request passes to its client, weighed as 32 bytes and
/// the token's text for each token and alternative told: about what they take in
/// memory before they become JSON. Past it the rest of the answer's are dropped (the
/// stream goes on: they are unpaid, and a supplier gains nothing by sending more).
/// An honest answer of 4,096 tokens with 20 alternatives each weighs about 3 MiB.
/// Found by review: the suppliers' log probabilities of a long non-streamed answer
/// could make gigabytes of JSON at the gateway.
pub const MAX_TOLD_WEIGHT: u64 = 4 * 1024 * 1024;

/// The log probabilities one request has passed to its client, by weight.
#[derive(Default)]
pub(super) struct Told {
    weight: u64,
    /// Some were dropped: none pass after them.
    over: bool,
}

impl Told {
    /// Whether `tokens` go to the client: while their weight fits beside what went
    /// before within [`MAX_TOLD_WEIGHT`], and never again once some did not.
    fn admit(&mut self, tokens: &[TokenLogprob]) -> bool {
        let weight: u64 = tokens
            .iter()
            .flat_map(|t| std::iter::once(&t.chosen).chain(&t.top))
            .map(|p| 32 + p.bytes.len() as u64)
            .sum();
        match self.weight.checked_add(weight) {
            Some(total) if !self.over && total <= MAX_TOLD_WEIGHT => {
                self.weight = total;
                true
            }
            _ => {
                self.over = true;
                false
            }
        }
    }
}

impl Job {
    pub(super) async fn run(mut self, mut leg: Leg) {
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
                        cached_tokens: 0,
                        stop: None,
                    }))
                    .await;
                return;
            }
            // Another supplier's grammar starts the format again from its beginning: a
            // formatted answer begun by one cannot be finished by another.
            if self.request.sampling.format.is_some() && !self.answer.is_empty() {
                let _ = self
                    .tx
                    .send(GenEvent::Failed(format!(
                        "{why}; an answer in a set format cannot be continued by another supplier: ask again"
                    )))
                    .await;
                return;
            }
            let next = continuation(&self.request, &self.answer, self.tokens);
            let gateway = self.gateway.clone();
            match gateway
                .open_next(
                    &self.model,
                    &mut self.candidates,
                    &mut self.attempts,
                    Asked::Generate(&next),
                )
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
        // Log probabilities of tokens whose text has not come yet (bounded by the check).
        let mut held: Vec<TokenLogprob> = std::mem::take(&mut leg.held);
        // A stall is counted from the last token: unpaid frames do not keep a leg alive.
        let mut deadline = tokio::time::Instant::now() + stall;
        loop {
            let body = match leg.first.take() {
                Some(body) => body,
                None => match tokio::time::timeout_at(deadline, read_frame(&mut leg.r)).await {
                    Ok(Ok(frame)) => frame.body,
                    Ok(Err(e)) => return LegEnd::Broken(format!("the stream broke: {e}")),
                    Err(_) => {
                        return LegEnd::Broken(format!("no token for {} ms", stall.as_millis()))
                    }
                },
            };
            match body {
                FrameBody::Logprobs(tokens) => match leg.told.told(&tokens) {
                    Ok(()) => held.extend(crate::infer::told_logprobs(&tokens)),
                    Err(e) => return LegEnd::Broken(format!("bad log probabilities: {e}")),
                },
                FrameBody::Token(text) => {
                    let ack = match leg.flow.on_token(text.as_str(), &key) {
                        Ok(ack) => ack,
                        Err(e) => return LegEnd::Broken(format!("bad token frame: {e}")),
                    };
                    deadline = tokio::time::Instant::now() + stall;
                    if let Err(e) = leg.told.token(text.as_str().len()) {
                        return LegEnd::Broken(format!("bad log probabilities: {e}"));
                    }
                    let was_over = self.told.over;
                    if held.is_empty() {
                        // Nothing told with this token.
                    } else if self.told.admit(&held) {
                        let told = GenEvent::Logprobs(std::mem::take(&mut held));
                        if self.tx.send(told).await.is_err() {
                            return LegEnd::ClientGone;
                        }
                    } else {
                        if !was_over {
                            debug!(supplier = %leg.peer, "this answer's log probabilities reached the bound; the rest are dropped");
                        }
                        held.clear();
                    }
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
                        cached_tokens: 0,
                        // The supplier's word, kept only for a sequence the request named
                        // that ended it.
                        stop: done.stop.map(|s| s.to_string()).filter(|s| {
                            done.reason == DoneReason::Stop
                                && self.request.sampling.stop.contains(s)
                        }),
                    });
                }
                FrameBody::Refuse(r) => return LegEnd::Broken(r.message.as_str().to_owned()),
                other => return LegEnd::Broken(format!("unexpected frame {other:?}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::TokenProb;

    fn told(bytes: usize, top: usize) -> TokenLogprob {
        let p = TokenProb::new(vec![b'x'; bytes], -0.5);
        TokenLogprob {
            chosen: p.clone(),
            top: vec![p; top],
        }
    }

    /// Found by review: the log probabilities suppliers send with a long answer could
    /// make gigabytes of JSON at the gateway. Past [`MAX_TOLD_WEIGHT`] the rest of an
    /// answer's are dropped, small ones after it too (a client reads no gaps healed
    /// later). Fails without the bound: every token's pass.
    #[test]
    fn log_probabilities_past_the_bound_are_dropped_for_the_rest_of_the_answer() {
        let mut budget = Told::default();
        // 21 choices of 128 bytes: 3,360 bytes a token, 1,248 tokens fit in 4 MiB.
        let heavy = vec![told(128, 20)];
        let fit = (0..2_000).take_while(|_| budget.admit(&heavy)).count();
        assert_eq!(fit as u64, MAX_TOLD_WEIGHT / (21 * (32 + 128)));
        assert!(!budget.admit(&[told(1, 0)]), "nothing passes after a drop");
        // An honest long answer, 4,096 tokens of 4 bytes with 20 alternatives, fits.
        let mut honest = Told::default();
        assert!((0..4_096).all(|_| honest.admit(&[told(4, 20)])));
    }
}
