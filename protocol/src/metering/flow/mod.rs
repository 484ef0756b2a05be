//! One request's stream on both sides, IO-free: the supplier sends output token by
//! token and pauses with more than `W` tokens unacknowledged; the app acknowledges
//! every `K` tokens it received (and the rest when the stream ends). Every ack the
//! supplier accepts is a receipt, checked as a verifier of proofs will check it, and
//! more: ack `j` must cover exactly the first `j·K` tokens (the last ack, everything),
//! so the app has no choice of where its acks fall, and it must name the tokens it
//! covers, so its increment is paid for at most `tokens × cu.token_bytes` bytes; and no
//! token may be longer than the session's `max_token_bytes`, so a supplier cannot bill
//! junk bytes beyond that.
//!
//! Tokens are counted as the supplier's output frames (one frame per token); acks
//! carry bytes, which both sides can check, and the supplier maps an ack's byte count
//! back to its frame boundary. The node's stream code and netsim drive these same
//! machines.

use crate::metering::ack_chain::MAX_ACK_CHAIN;
use crate::metering::app::AckError;
use crate::metering::receipt::ReceiptError;

mod app;
mod supplier;

pub use app::AppFlow;
pub use supplier::{Accepted, SupplierFlow};

/// Flow-control bounds, from the mesh parameters (`ack_every_tokens`,
/// `max_unacked_tokens`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// K: the app acks every K tokens.
    pub ack_every: u32,
    /// W: the supplier sends at most W tokens beyond the last ack.
    pub max_unacked: u32,
}

/// The most tokens (frames) the stream of a request for `max_tokens` tokens may carry,
/// whose app signed an ack chain of `chain_len` links: twice the tokens asked for and
/// two more (a piece longer than a frame may hold is sent as several), and fewer than
/// the chain can acknowledge (a stream ending on its last link could not be closed).
/// Each frame is paid for up to `cu.token_bytes` bytes, so this bounds what junk can
/// bill a short request too: the chain alone leaves room for two ack steps (2K − 1
/// frames) more than a request of one token needs. The app refuses a frame beyond
/// it; the supplier ends the answer there (`Length`).
pub fn max_frames(max_tokens: u32, chain_len: u16, window: Window) -> u32 {
    let chain = u32::from(chain_len.min(MAX_ACK_CHAIN)).saturating_mul(window.ack_every);
    max_tokens
        .saturating_mul(2)
        .saturating_add(2)
        .min(chain.saturating_sub(1))
}

/// The ack chain an app signs for a request of `max_tokens` tokens: a link per K
/// tokens of twice the tokens (pieces longer than a frame go out as several), two
/// more (the last ack, and a partial step), at most [`MAX_ACK_CHAIN`]. A supplier
/// refuses a shorter one: it would end the answer early, its app owing nothing.
pub fn chain_links(max_tokens: u32, window: Window) -> u16 {
    let links = (max_tokens.saturating_mul(2) / window.ack_every.max(1)).saturating_add(2);
    links.min(u32::from(MAX_ACK_CHAIN)) as u16
}

/// Why a stream step is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    /// The supplier may not send: W tokens are unacknowledged.
    #[error("{0} tokens are unacknowledged; waiting for an ack")]
    WindowFull(u32),
    /// More output than the request pays for.
    #[error("output would reach {0} bytes, beyond the request's max_output_bytes")]
    TooMuchOutput(u64),
    /// The stream already ended.
    #[error("the stream is finished")]
    Finished,
    /// A `Token` frame without text.
    #[error("a token frame without text")]
    EmptyToken,
    /// The ack's signature is not the app's.
    #[error("ack signature is not the app's")]
    BadSignature,
    /// The ack fails a receipt rule (wrong session or request, chain link, counts).
    #[error("ack refused: {0}")]
    Receipt(#[from] ReceiptError),
    /// The ack does not continue from the last accepted one (a replay, or a skip).
    #[error("ack {index} does not follow ack {expected_prev} at {acked} bytes")]
    OutOfOrder {
        /// Index in the ack.
        index: u16,
        /// The last accepted index.
        expected_prev: u16,
        /// Bytes acknowledged so far.
        acked: u32,
    },
    /// The ack's byte count is not where a token ended, or beyond what was sent.
    #[error("ack covers {0} bytes, which is not the end of a token sent")]
    NotABoundary(u32),
    /// The ack's stream digest is not the digest of what was sent.
    #[error("ack's stream digest does not match the output sent")]
    WrongStream,
    /// `last` on an ack that does not cover the whole finished stream.
    #[error("ack marked last before the end of the stream")]
    EarlyLast,
    /// The ack names another number of tokens than its increment carried.
    #[error("ack names {named} tokens for an increment of {sent}")]
    WrongTokens {
        /// Tokens named in the ack.
        named: u16,
        /// Tokens the increment carried.
        sent: u32,
    },
    /// The supplier sent more than W tokens without an ack (app side).
    #[error("the supplier sent {0} tokens beyond the window without an ack")]
    WindowExceeded(u32),
    /// The app could not sign (chain exhausted, output too long).
    #[error(transparent)]
    Ack(#[from] AckError),
    /// An ack chain too short for the tokens the request asks for ([`chain_links`]).
    #[error("the request's ack chain has {links} links; {max_tokens} tokens need {need}")]
    ShortChain {
        /// Links signed.
        links: u16,
        /// Links needed.
        need: u16,
        /// Tokens asked for.
        max_tokens: u32,
    },
    /// More tokens than the request may carry ([`max_frames`]).
    #[error("token {0} is beyond what the request may carry")]
    TooManyFrames(u32),
    /// A token longer than the session's per-token byte cap.
    #[error("a token of {len} bytes exceeds the session's cap of {max} bytes per token")]
    TokenTooLong {
        /// Its length.
        len: usize,
        /// The cap.
        max: u32,
    },
}

#[cfg(test)]
mod tests;
