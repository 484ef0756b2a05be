//! The supplier's side of one request's stream.

use std::collections::VecDeque;

use crate::identity::verify::SignatureVerifier;
use crate::messages::ack::SignedAck;
use crate::messages::request::SignedRelayRequest;
use crate::messages::session::{SessionOpen, SignedSessionOpen};
use crate::metering::receipt::{EncodedRequest, Receipt, ReceiptError, ReceiptFacts};
use crate::Digest;

use super::{chain_links, max_frames, FlowError, Window};

/// A token boundary not yet acknowledged: cumulative bytes and the digest of the
/// output up to there.
#[derive(Clone, Debug)]
struct Boundary {
    tokens: u32,
    bytes: u32,
    digest: Digest,
}

/// The supplier's side of one request.
#[derive(Clone, Debug)]
pub struct SupplierFlow {
    terms: SessionOpen,
    session_key: Digest,
    /// The request, encoded and hashed once for all its acks.
    request: EncodedRequest,
    pub(super) window: Window,
    /// Most tokens the stream may carry ([`max_frames`]).
    max_frames: u32,
    stream: blake3::Hasher,
    sent_tokens: u32,
    sent_bytes: u32,
    /// Boundaries after the last ack, oldest first (at most W + 1).
    unacked: VecDeque<Boundary>,
    acked_tokens: u32,
    acked_bytes: u32,
    /// Digest of the output up to the last ack.
    acked_digest: Digest,
    last_index: u16,
    /// `c_{last_index}`: the head before the first ack.
    last_link: Digest,
    finished: bool,
    closed: bool,
}

/// What an accepted ack yields.
#[derive(Clone, Debug)]
pub struct Accepted {
    /// The receipt (request + ack) to store.
    pub receipt: Receipt,
    /// Its relay hash, weight and digest, for mining.
    pub facts: ReceiptFacts,
    /// Whether this was the request's last ack.
    pub last: bool,
}

impl SupplierFlow {
    /// Starts the supplier's side of `request` in the countersigned `session`. The
    /// request's signature is checked here.
    pub fn new(
        session: &SignedSessionOpen,
        request: SignedRelayRequest,
        window: Window,
        verifier: &impl SignatureVerifier,
    ) -> Result<Self, FlowError> {
        let terms = session.body.clone();
        request
            .verify(&terms.app, verifier)
            .map_err(|_| FlowError::BadSignature)?;
        let session_key = session.session_key();
        if request.body.session_key != session_key {
            return Err(ReceiptError::WrongSession.into());
        }
        let head = request.body.ack_chain_head;
        let max_frames = max_frames(u32::MAX, request.body.ack_chain_len, window);
        Ok(Self {
            terms,
            session_key,
            request: EncodedRequest::new(&request),
            window,
            max_frames,
            stream: blake3::Hasher::new(),
            sent_tokens: 0,
            sent_bytes: 0,
            unacked: VecDeque::new(),
            acked_tokens: 0,
            acked_bytes: 0,
            acked_digest: Digest(*blake3::Hasher::new().finalize().as_bytes()),
            last_index: 0,
            last_link: head,
            finished: false,
            closed: false,
        })
    }

    /// Bounds the stream to what a request for `max_tokens` tokens may carry
    /// ([`max_frames`]), as its app does. Refuses a request whose ack chain is shorter
    /// than [`chain_links`] asks for those tokens: it would end the answer early with
    /// nothing acknowledged, and leave no link for a last ack, so the stream would be
    /// held for nothing (found by review).
    pub fn with_max_tokens(mut self, max_tokens: u32) -> Result<Self, FlowError> {
        let links = self.request.request().body.ack_chain_len;
        let need = chain_links(max_tokens, self.window);
        if links < need {
            return Err(FlowError::ShortChain {
                links,
                need,
                max_tokens,
            });
        }
        self.max_frames = max_frames(max_tokens, links, self.window);
        Ok(self)
    }

    /// Tokens acknowledged so far.
    pub fn acked_tokens(&self) -> u32 {
        self.acked_tokens
    }

    /// Whether an ack was accepted: the first pays the prompt.
    pub fn prompt_paid(&self) -> bool {
        self.last_index > 0
    }

    /// Tokens sent so far.
    pub fn sent_tokens(&self) -> u32 {
        self.sent_tokens
    }

    /// Whether the output is complete (the last ack may still be owed).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Tokens the stream may still carry: at 0 the answer must end (`Length`).
    pub fn frames_left(&self) -> u32 {
        self.max_frames.saturating_sub(self.sent_tokens)
    }

    /// Tokens sent and not yet acknowledged.
    pub fn unacked_tokens(&self) -> u32 {
        self.sent_tokens - self.acked_tokens
    }

    /// Whether another token may be sent now.
    pub fn can_send(&self) -> bool {
        !self.finished && self.unacked_tokens() < self.window.max_unacked
    }

    /// Records one token's text as sent. Refused when the window is full, the stream is
    /// finished, or the request's output bound would be passed. Empty text is not a
    /// token (it bills nothing, and byte counts could not tell it apart): it is
    /// refused, as the app refuses a frame of it.
    pub fn send(&mut self, text: &str) -> Result<(), FlowError> {
        if self.finished {
            return Err(FlowError::Finished);
        }
        if text.is_empty() {
            return Err(FlowError::EmptyToken);
        }
        if !self.can_send() {
            return Err(FlowError::WindowFull(self.unacked_tokens()));
        }
        if self.frames_left() == 0 {
            return Err(FlowError::TooManyFrames(self.sent_tokens + 1));
        }
        if text.len() > self.terms.max_token_bytes as usize {
            return Err(FlowError::TokenTooLong {
                len: text.len(),
                max: self.terms.max_token_bytes,
            });
        }
        let bytes = u64::from(self.sent_bytes) + text.len() as u64;
        if bytes > u64::from(self.request.request().body.max_output_bytes) {
            return Err(FlowError::TooMuchOutput(bytes));
        }
        self.stream.update(text.as_bytes());
        self.sent_tokens += 1;
        self.sent_bytes = bytes as u32;
        self.unacked.push_back(Boundary {
            tokens: self.sent_tokens,
            bytes: self.sent_bytes,
            digest: Digest(*self.stream.finalize().as_bytes()),
        });
        Ok(())
    }

    /// The output is complete: nothing more will be sent; the app's last ack closes.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// Whether the final ack arrived.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Output bytes acknowledged so far.
    pub fn acked_bytes(&self) -> u32 {
        self.acked_bytes
    }

    /// Output bytes sent so far.
    pub fn sent_bytes(&self) -> u32 {
        self.sent_bytes
    }

    /// Checks an ack (signature, receipt rules with one chain step, order, its fixed
    /// token boundary, stream digest) and, if it holds, moves the window.
    pub fn on_ack(
        &mut self,
        ack: SignedAck,
        verifier: &impl SignatureVerifier,
    ) -> Result<Accepted, FlowError> {
        if self.closed {
            return Err(FlowError::Finished);
        }
        ack.verify(&self.terms.app, verifier)
            .map_err(|_| FlowError::BadSignature)?;
        let body = &ack.body;
        if body.index != self.last_index + 1 || body.prev_bytes != self.acked_bytes {
            return Err(FlowError::OutOfOrder {
                index: body.index,
                expected_prev: self.last_index,
                acked: self.acked_bytes,
            });
        }
        let receipt = Receipt {
            request: self.request.request().clone(),
            ack,
        };
        let facts = receipt.check_next_in(
            &self.request,
            &self.session_key,
            &self.terms,
            &self.last_link,
        )?;
        let body = &receipt.ack.body;
        // The ack must end at its fixed boundary: K tokens past the last ack, or, for
        // the last ack, at the end of the finished stream (at most K tokens past; an
        // empty final increment closes a stream that ended on a boundary). An app free
        // to pick among the boundaries in its window could pick its receipts. And it
        // must name those tokens: fewer would cut what the increment is paid.
        let (tokens, digest) = if body.new_bytes == self.acked_bytes {
            if !body.last {
                return Err(FlowError::NotABoundary(body.new_bytes));
            }
            (self.acked_tokens, self.acked_digest)
        } else {
            let at = self
                .unacked
                .iter()
                .position(|b| b.bytes == body.new_bytes)
                .ok_or(FlowError::NotABoundary(body.new_bytes))?;
            let boundary = &self.unacked[at];
            let step = boundary.tokens - self.acked_tokens;
            let fixed = if body.last {
                step <= self.window.ack_every
            } else {
                step == self.window.ack_every
            };
            if !fixed {
                return Err(FlowError::NotABoundary(body.new_bytes));
            }
            (boundary.tokens, boundary.digest)
        };
        if body.stream_digest != digest {
            return Err(FlowError::WrongStream);
        }
        let sent = tokens - self.acked_tokens;
        if u32::from(body.tokens) != sent {
            return Err(FlowError::WrongTokens {
                named: body.tokens,
                sent,
            });
        }
        if body.last && !(self.finished && body.new_bytes == self.sent_bytes) {
            return Err(FlowError::EarlyLast);
        }
        while self.unacked.front().is_some_and(|b| b.tokens <= tokens) {
            self.unacked.pop_front();
        }
        self.acked_digest = digest;
        self.acked_tokens = tokens;
        self.acked_bytes = body.new_bytes;
        self.last_index = body.index;
        self.last_link = body.chain_secret;
        self.closed = body.last;
        Ok(Accepted {
            last: body.last,
            facts,
            receipt,
        })
    }
}
