//! Ack chains: the app's pre-committed randomness that makes relay hashes ungrindable.
//!
//! Mining depends on a hash of the ack. If that hash covered the app's signature, the
//! app could re-sign (ed25519 lets the signer pick its nonce) until no receipt is mined
//! and pay nothing; if it covered only what the supplier streamed, the supplier could
//! vary its output until every receipt is mined and be paid τ for each. So every ack
//! carries the next link of a hash chain whose head the app signed in the request:
//! `c_0 = head`, `H(c_j) = c_{j-1}`. The supplier cannot know `c_j` before the app
//! acks increment `j` (a preimage), and the app cannot change `c_j` (committed before
//! the output existed), so neither side can steer which receipts are mined.

use crate::identity::domain::{hash_tag, tagged_hash};
use crate::Digest;

/// Hard bound on a chain's length: bounds a verifier's work per receipt.
pub const MAX_ACK_CHAIN: u16 = 1024;

/// One chain step, `H(c)`.
pub fn step(link: &Digest) -> Digest {
    tagged_hash(hash_tag::ACK_CHAIN, &[&link.0])
}

/// Whether `secret` is link `index` of the chain with head `head` (`H^index = head`).
pub fn verify_link(head: &Digest, index: u16, secret: &Digest) -> bool {
    if index == 0 || index > MAX_ACK_CHAIN {
        return false;
    }
    let mut link = *secret;
    for _ in 0..index {
        link = step(&link);
    }
    link == *head
}

/// The app's side: a chain of `len` links from a secret seed.
#[derive(Clone, Debug)]
pub struct AckChain {
    /// `links[j] = c_j`; `links[0]` is the head.
    links: Vec<Digest>,
}

impl AckChain {
    /// Builds the chain `c_len = seed, c_{j-1} = H(c_j)`. `len` is clamped to
    /// [`MAX_ACK_CHAIN`].
    pub fn new(seed: Digest, len: u16) -> Self {
        let len = usize::from(len.min(MAX_ACK_CHAIN));
        let mut links = vec![seed; len + 1];
        for j in (0..len).rev() {
            links[j] = step(&links[j + 1]);
        }
        Self { links }
    }

    /// The head `c_0`, signed into the request.
    pub fn head(&self) -> Digest {
        self.links[0]
    }

    /// Number of acks the chain can pay for.
    pub fn len(&self) -> u16 {
        (self.links.len() - 1) as u16
    }

    /// Whether the chain has no links beyond its head.
    pub fn is_empty(&self) -> bool {
        self.links.len() == 1
    }

    /// The secret revealed with ack `index` (1-based).
    pub fn link(&self, index: u16) -> Option<Digest> {
        if index == 0 {
            return None;
        }
        self.links.get(usize::from(index)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_verify_against_head_and_only_at_their_index() {
        let chain = AckChain::new(Digest([7; 32]), 10);
        for j in 1..=10 {
            let link = chain.link(j).unwrap();
            assert!(verify_link(&chain.head(), j, &link));
            assert!(!verify_link(&chain.head(), j + 1, &link));
        }
        assert!(chain.link(11).is_none());
        assert!(!verify_link(&chain.head(), 0, &chain.head()));
    }
}
