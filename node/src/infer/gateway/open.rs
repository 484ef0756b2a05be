//! Opening a leg: the session held with a supplier resumed or new terms proposed and
//! countersigned, the request sent, the first frame awaited; and the next supplier
//! when one refuses or cannot be reached.

use super::*;

impl Gateway {
    /// Sends `request` to `supplier` in the session held with it (or a new one, also
    /// when it will not resume ours), and waits for the first frame.
    pub(super) async fn open(
        self: &Arc<Self>,
        model: &str,
        supplier: PublicKey,
        offer: &ModelOffer,
        request: Asked<'_>,
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

    pub(super) async fn open_once(
        self: &Arc<Self>,
        model: &str,
        supplier: PublicKey,
        offer: &ModelOffer,
        request: Asked<'_>,
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
        let payload = request.payload(model).map_err(|e| Attempt {
            error: BackendError::Invalid(e),
            retry_elsewhere: false,
            stale_session: false,
            busy: None,
        })?;
        let flow_window = window(&self.params);
        // A token of the model is one frame, or more where the supplier splits a piece
        // longer than the cap: twice the tokens' links leaves room for that.
        let max_acks = chain_links(payload.max_tokens, flow_window);
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
        let flow =
            AppFlow::new(acker, flow_window, &session.body).with_max_tokens(payload.max_tokens);
        let mut told = LogprobsCheck::new(&payload);
        write_frame(
            &mut w,
            FrameBody::Request(InferRequest {
                request: flow.request().clone(),
                payload,
            }),
        )
        .await
        .map_err(|e| io(&e))?;

        // Wait for the first frame here, so a refusal can still go elsewhere. Unpaid
        // log probabilities before it are kept for the stream, and are no first token.
        let deadline = tokio::time::Instant::now() + self.timeouts.first_token;
        let mut held = Vec::new();
        let first = loop {
            match tokio::time::timeout_at(deadline, read_frame(&mut r)).await {
                Ok(Ok(InferFrame {
                    body: FrameBody::Logprobs(tokens),
                    ..
                })) => {
                    told.told(&tokens).map_err(|e| {
                        Attempt::elsewhere(format!("{peer}: bad log probabilities: {e}"))
                    })?;
                    held.extend(crate::infer::told_logprobs(&tokens));
                }
                Ok(Ok(frame)) => break frame.body,
                Ok(Err(e)) => return Err(io(&e)),
                Err(_) => return Err(Attempt::elsewhere(format!("{peer} sent nothing in time"))),
            }
        };
        if matches!(&first, FrameBody::Token(t) if t.as_str().is_empty()) {
            return Err(Attempt::elsewhere(format!(
                "{peer} sent a token without text"
            )));
        }
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
        // An embedding's first frame comes after all its work: no time to first token.
        if alone && matches!(request, Asked::Generate(_)) {
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
            told,
            session,
            first: Some(first),
            held,
            first_at: Instant::now(),
            _in_flight: in_flight,
        })
    }

    /// Proposes new terms to `supplier` and keeps the countersigned session.
    pub(super) async fn propose(
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
            cu: session_cu(offer, &self.params),
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
    pub(super) async fn proposed(
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
    pub(super) async fn open_next(
        self: &Arc<Self>,
        model: &str,
        candidates: &mut VecDeque<(PublicKey, ModelOffer)>,
        attempts: &mut usize,
        request: Asked<'_>,
    ) -> Result<Leg, BackendError> {
        let mut last = None;
        // Whether every supplier tried refused as busy, and the longest wait they hinted.
        let (mut all_busy, mut busy_hint) = (true, Duration::ZERO);
        let mut racing = futures::stream::FuturesUnordered::new();
        let mut hedge_now = false;
        loop {
            if racing.is_empty() || hedge_now {
                hedge_now = false;
                // A supplier shunned since the candidates were ranked is skipped (found
                // by review: the chunks of one batch kept going to it).
                while candidates
                    .front()
                    .is_some_and(|(k, _)| self.router.is_shunned(*k))
                {
                    candidates.pop_front();
                }
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
            // An embedding request is not hedged: its first frame comes only after all
            // the work (found by review: a batch slower than the hedge was embedded twice).
            let hedged = matches!(request, Asked::Generate(_));
            let hedge = match self.timeouts.hedge {
                Some(after) if hedged && racing.len() < 2 && next_has_room => after,
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
