//! The app's side of metering one request: sign it, then sign one ack per increment
//! with the next link of the request's ack chain. `metering::flow` builds the request's
//! flow control on it.

use crate::identity::signed::Signed;
use crate::identity::verify::Signer;
use crate::messages::ack::{Ack, SignedAck};
use crate::messages::request::{RelayRequest, SignedRelayRequest};
use crate::metering::ack_chain::AckChain;
use crate::metering::receipt::Receipt;
use crate::Digest;

/// What the app decides about a request before signing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestTerms {
    /// The session.
    pub session_key: Digest,
    /// The app's number for the request.
    pub request_id: u64,
    /// blake3 of the request payload sent beside it.
    pub prompt_digest: Digest,
    /// UTF-8 bytes of prompt text billed.
    pub prompt_bytes: u32,
    /// Most output bytes the app will pay for.
    pub max_output_bytes: u32,
    /// Most acks (the chain's length); at most `MAX_ACK_CHAIN`.
    pub max_acks: u16,
}

/// Why the app will not sign an ack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// Every chain link is spent.
    #[error("the request's {0} acks are used up; the supplier sent more increments than it may")]
    ChainExhausted(u16),
    /// The supplier streamed more than the request allows.
    #[error("output of {0} bytes exceeds the request's max_output_bytes")]
    TooMuchOutput(u64),
    /// An ack after the last one.
    #[error("the request is finished")]
    Finished,
}

/// Signs a request and its acks.
#[derive(Clone, Debug)]
pub struct RequestAcker {
    request: SignedRelayRequest,
    /// The request's hash, which every ack names (hashed once, not per ack).
    request_hash: Digest,
    chain: AckChain,
    index: u16,
    acked: u32,
    finished: bool,
    stream: blake3::Hasher,
}

impl RequestAcker {
    /// Signs the request, committing to an ack chain grown from `chain_seed` (a secret
    /// the app draws per request).
    pub fn new(terms: RequestTerms, chain_seed: Digest, app: &impl Signer) -> Self {
        let chain = AckChain::new(chain_seed, terms.max_acks);
        let request = Signed::sign(
            RelayRequest {
                version: crate::PROTOCOL_VERSION,
                session_key: terms.session_key,
                request_id: terms.request_id,
                prompt_digest: terms.prompt_digest,
                prompt_bytes: terms.prompt_bytes,
                max_output_bytes: terms.max_output_bytes,
                ack_chain_head: chain.head(),
                ack_chain_len: chain.len(),
            },
            app,
        );
        Self {
            request_hash: request.body.hash(),
            request,
            chain,
            index: 0,
            acked: 0,
            finished: false,
            stream: blake3::Hasher::new(),
        }
    }

    /// The signed request ("ack 0").
    pub fn request(&self) -> &SignedRelayRequest {
        &self.request
    }

    /// Output bytes acknowledged so far.
    pub fn acked_bytes(&self) -> u32 {
        self.acked
    }

    /// Acknowledges the next increment of output, `increment` being its bytes and
    /// `tokens` the tokens (frames) that carried them.
    pub fn ack(
        &mut self,
        increment: &[u8],
        tokens: u16,
        last: bool,
        app: &impl Signer,
    ) -> Result<SignedAck, AckError> {
        if self.finished {
            return Err(AckError::Finished);
        }
        let new = u64::from(self.acked) + increment.len() as u64;
        if new > u64::from(self.request.body.max_output_bytes) {
            return Err(AckError::TooMuchOutput(new));
        }
        let index = self.index + 1;
        let link = self
            .chain
            .link(index)
            .ok_or(AckError::ChainExhausted(self.chain.len()))?;
        self.stream.update(increment);
        let ack = Signed::sign(
            Ack {
                version: crate::PROTOCOL_VERSION,
                session_key: self.request.body.session_key,
                request: self.request_hash,
                index,
                prev_bytes: self.acked,
                new_bytes: new as u32,
                tokens,
                stream_digest: Digest(*self.stream.finalize().as_bytes()),
                chain_secret: link,
                last,
            },
            app,
        );
        self.index = index;
        self.acked = new as u32;
        self.finished = last;
        Ok(ack)
    }

    /// The receipt an ack makes together with this request.
    pub fn receipt(&self, ack: SignedAck) -> Receipt {
        Receipt {
            request: self.request.clone(),
            ack,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Keypair;

    fn acker(max_output_bytes: u32, max_acks: u16) -> (RequestAcker, Keypair) {
        let app = Keypair::from_secret([1; 32]);
        let terms = RequestTerms {
            session_key: Digest([2; 32]),
            request_id: 0,
            prompt_digest: Digest([3; 32]),
            prompt_bytes: 10,
            max_output_bytes,
            max_acks,
        };
        (RequestAcker::new(terms, Digest([4; 32]), &app), app)
    }

    #[test]
    fn refuses_acks_beyond_its_bounds() {
        let (mut a, app) = acker(10, 2);
        assert_eq!(
            a.ack(b"0123456789x", 1, false, &app),
            Err(AckError::TooMuchOutput(11))
        );
        a.ack(b"01234", 1, false, &app).unwrap();
        a.ack(b"", 0, false, &app).unwrap();
        assert_eq!(
            a.ack(b"5", 1, false, &app),
            Err(AckError::ChainExhausted(2))
        );
        let (mut b, app) = acker(10, 4);
        let last = b.ack(b"done", 1, true, &app).unwrap();
        assert!(last.body.last && last.body.new_bytes == 4);
        assert_eq!(b.ack(b"more", 1, false, &app), Err(AckError::Finished));
        assert_eq!(b.acked_bytes(), 4);
    }
}
