//! The app's side of one request's stream.

use crate::identity::verify::Signer;
use crate::messages::ack::SignedAck;
use crate::messages::request::SignedRelayRequest;
use crate::messages::session::SessionOpen;
use crate::metering::app::RequestAcker;
use crate::metering::compute_units::CuFormula;

use super::{max_frames, FlowError, Window};

/// The app's side of one request: acks every K tokens received, and the rest at the
/// end; refuses a supplier that runs past the window.
#[derive(Clone, Debug)]
pub struct AppFlow {
    pub(super) acker: RequestAcker,
    pub(super) window: Window,
    max_token_bytes: u32,
    cu: CuFormula,
    /// Most tokens the stream may carry ([`max_frames`]), and tokens received.
    max_frames: u32,
    received: u32,
    /// Output CUs of the acks signed so far: what their receipts weigh.
    paid_units: u64,
    pending: Vec<u8>,
    pending_tokens: u32,
}

impl AppFlow {
    /// Takes over a signed request (see [`RequestAcker::new`]) in the session of
    /// `terms`, which cap tokens at `max_token_bytes` and weigh them by `cu`.
    pub fn new(acker: RequestAcker, window: Window, terms: &SessionOpen) -> Self {
        let max_frames = max_frames(u32::MAX, acker.request().body.ack_chain_len, window);
        Self {
            acker,
            window,
            max_token_bytes: terms.max_token_bytes,
            cu: terms.cu,
            max_frames,
            received: 0,
            paid_units: 0,
            pending: Vec::new(),
            pending_tokens: 0,
        }
    }

    /// Bounds the stream to what a request for `max_tokens` tokens may carry
    /// ([`max_frames`]): a supplier sending more is refused.
    pub fn with_max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_frames = max_frames(
            max_tokens,
            self.acker.request().body.ack_chain_len,
            self.window,
        );
        self
    }

    /// Output CUs the acks signed so far pay for (the prompt's are apart): each
    /// increment's bytes, at most `cu.token_bytes` a token.
    pub fn paid_output_units(&self) -> u64 {
        self.paid_units
    }

    /// The signed request, sent before the stream.
    pub fn request(&self) -> &SignedRelayRequest {
        self.acker.request()
    }

    /// Output bytes acknowledged so far.
    pub fn acked_bytes(&self) -> u32 {
        self.acker.acked_bytes()
    }

    /// One token's text arrived: returns the ack to send when K tokens are unacked.
    /// Empty text is refused: a `Token` frame is never empty, and an empty one would
    /// look like work without being any (found by review: one every stall interval
    /// kept a stream, and its app's place, open).
    pub fn on_token(
        &mut self,
        text: &str,
        app: &impl Signer,
    ) -> Result<Option<SignedAck>, FlowError> {
        if text.is_empty() {
            return Err(FlowError::EmptyToken);
        }
        if self.pending_tokens >= self.window.max_unacked {
            return Err(FlowError::WindowExceeded(self.pending_tokens + 1));
        }
        if self.received >= self.max_frames {
            return Err(FlowError::TooManyFrames(self.received + 1));
        }
        if text.len() > self.max_token_bytes as usize {
            return Err(FlowError::TokenTooLong {
                len: text.len(),
                max: self.max_token_bytes,
            });
        }
        self.pending.extend_from_slice(text.as_bytes());
        self.pending_tokens += 1;
        self.received += 1;
        if self.pending_tokens < self.window.ack_every {
            return Ok(None);
        }
        self.sign(false, app).map(Some)
    }

    /// Tokens received since the last ack: at most K, which the mesh bounds to
    /// 1,024 (`MeshParams::validate`), so a `u16` holds it.
    fn pending_count(&self) -> u16 {
        u16::try_from(self.pending_tokens).unwrap_or(u16::MAX)
    }

    /// The stream ended: the final ack, covering what is left (possibly nothing).
    pub fn finish(&mut self, app: &impl Signer) -> Result<SignedAck, FlowError> {
        self.sign(true, app)
    }

    /// Signs the ack of what arrived since the last one, and counts what it pays.
    fn sign(&mut self, last: bool, app: &impl Signer) -> Result<SignedAck, FlowError> {
        let tokens = self.pending_count();
        let ack = self.acker.ack(&self.pending, tokens, last, app)?;
        let units = self
            .cu
            .increment_units(ack.body.prev_bytes, ack.body.new_bytes, tokens)
            .unwrap_or(0);
        self.paid_units = self.paid_units.saturating_add(units);
        self.pending.clear();
        self.pending_tokens = 0;
        Ok(ack)
    }
}
