//! Relay receipts: an app-signed ack together with the app-signed request it answers.
//! The rules here are what every verifier applies to a receipt in a proof.

use serde_tuple::{Deserialize_tuple, Serialize_tuple};

use crate::identity::domain::{hash_tag, tagged_hash, Domain};
use crate::identity::signed::Signable;
use crate::identity::verify::SignedItem;
use crate::messages::ack::{Ack, SignedAck};
use crate::messages::request::{RelayRequest, SignedRelayRequest};
use crate::messages::session::SessionOpen;
use crate::metering::ack_chain::{self, MAX_ACK_CHAIN};
use crate::metering::threshold::{is_mined, mined_value};
use crate::wire::to_canonical;
use crate::{Digest, PublicKey, Signature};

/// One receipt: the increment `(prev, new]` of a request, acknowledged by the app.
/// The first ack of a request (index 1) also bills the request's prompt ("ack 0").
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct Receipt {
    /// The app's request.
    pub request: SignedRelayRequest,
    /// The app's ack of one increment of it.
    pub ack: SignedAck,
}

/// Why a receipt is not valid for a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// Request or ack names another session.
    #[error("receipt belongs to another session")]
    WrongSession,
    /// The ack answers another request.
    #[error("ack refers to a different request")]
    WrongRequest,
    /// Ack index outside `1..=ack_chain_len`.
    #[error("ack index {index} outside 1..={len}")]
    BadIndex {
        /// Index in the ack.
        index: u16,
        /// Chain length in the request.
        len: u16,
    },
    /// The chain secret is not link `index` of the request's chain.
    #[error("ack chain link does not hash to the request's chain head")]
    BadChainLink,
    /// Counts run backwards, the first ack does not start at zero, or the count
    /// exceeds what the request allows.
    #[error("ack counts ({prev}, {new}] are not a valid increment")]
    BadCounts {
        /// Previous cumulative count.
        prev: u32,
        /// New cumulative count.
        new: u32,
    },
    /// The increment's bytes cannot have been carried by its tokens: more than
    /// `tokens × max_token_bytes`, or bytes with no token, or a token with no bytes.
    #[error("ack of {bytes} bytes in {tokens} tokens breaks the session's per-token cap")]
    BadTokens {
        /// Tokens in the ack.
        tokens: u16,
        /// Bytes of its increment.
        bytes: u32,
    },
    /// Weight overflows.
    #[error("receipt weight overflows")]
    Overflow,
}

/// What a verifier learns from a structurally valid receipt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiptFacts {
    /// Decides mining; the receipt's key in the sum tree.
    pub relay_hash: Digest,
    /// CUs of this increment (and of the prompt for the first ack).
    pub weight: u64,
    /// The receipt digest a sum-tree leaf stores as its value: the relay hash itself.
    /// The ack body names its request by hash, so the hash of the ack body binds the
    /// whole receipt (bodies only; signatures are checked separately), and hashing the
    /// request again beside it would bind nothing more.
    pub digest: Digest,
}

impl ReceiptFacts {
    /// The lottery that decides this receipt's mining: `H(s, relay hash)`, with `s` the
    /// supplier's mining secret for the session. The app signs the ack without knowing
    /// `s` (committed in the countersigned terms, revealed only in the proof), so it
    /// cannot tell a mined ack from another and withhold or reshape it; the supplier
    /// knows `s` but cannot know the ack's chain link before the app signs it, so it
    /// cannot shape output that mines.
    pub fn lottery(&self, mining_secret: &Digest) -> Digest {
        tagged_hash(hash_tag::LOTTERY, &[&mining_secret.0, &self.relay_hash.0])
    }

    /// Whether the session's τ and mining secret mine this receipt.
    pub fn is_mined(&self, mining_secret: &Digest, tau: u64) -> bool {
        // Weightless receipts are never mined and heavy ones always: no hash needed.
        if self.weight == 0 || self.weight >= tau {
            return self.weight > 0;
        }
        is_mined(&self.lottery(mining_secret), self.weight, tau)
    }

    /// What this receipt pays if mined.
    pub fn mined_value(&self, tau: u64) -> u64 {
        mined_value(self.weight, tau)
    }
}

/// A receipt's facts and its bodies' canonical encodings (the request's perhaps
/// borrowed from an [`EncodedRequest`]).
type Checked<'a> = (ReceiptFacts, std::borrow::Cow<'a, [u8]>, Vec<u8>);

/// A signed request with its body's canonical encoding and hash, made once for all of
/// its receipts (every ack of a request travels with the same request). A receipt
/// checked against it uses them only if its request is this one.
#[derive(Clone, Debug)]
pub struct EncodedRequest {
    request: SignedRelayRequest,
    bytes: Vec<u8>,
    hash: Digest,
}

/// A request body's canonical encoding and the request hash made from it.
fn encode_request(body: &RelayRequest) -> (Vec<u8>, Digest) {
    let bytes = to_canonical(body);
    let hash = tagged_hash(hash_tag::REQUEST, &[&bytes]);
    (bytes, hash)
}

impl EncodedRequest {
    /// Encodes and hashes `request`'s body.
    pub fn new(request: &SignedRelayRequest) -> Self {
        let (bytes, hash) = encode_request(&request.body);
        Self {
            request: request.clone(),
            bytes,
            hash,
        }
    }

    /// The request hash (what its acks name).
    pub fn hash(&self) -> Digest {
        self.hash
    }

    /// Whether this is `request`.
    pub fn is(&self, request: &SignedRelayRequest) -> bool {
        self.request == *request
    }

    /// The signed request.
    pub fn request(&self) -> &SignedRelayRequest {
        &self.request
    }
}

/// A signed item from a body's canonical encoding: what `signing_bytes` gives, the
/// domain tag then the body.
fn signed_item(app: PublicKey, domain: Domain, body: &[u8], signature: Signature) -> SignedItem {
    SignedItem {
        key: app,
        message: [domain.tag(), body].concat(),
        signature,
    }
}

impl Receipt {
    /// Every rule except signatures (which callers batch): session binding, request
    /// binding, chain link, counts, weight. Walks the ack chain from the link back to
    /// its head: `index` hashes, what a verifier of a proof does.
    pub fn check(
        &self,
        session_key: &Digest,
        terms: &SessionOpen,
    ) -> Result<ReceiptFacts, ReceiptError> {
        self.check_with(None, session_key, terms, Self::walk_link)
            .map(|(facts, _, _)| facts)
    }

    /// [`Receipt::check`], and the app's two signatures to verify, made from the same
    /// encodings of the bodies the checks hashed ([`Receipt::signed_items`] without
    /// encoding them again).
    pub fn check_signed(
        &self,
        session_key: &Digest,
        terms: &SessionOpen,
        app: PublicKey,
    ) -> Result<(ReceiptFacts, [SignedItem; 2]), ReceiptError> {
        self.check_signed_with(None, session_key, terms, app)
    }

    /// [`Receipt::check_signed`] with the request's encoding made before (used when it
    /// is this receipt's request; see [`EncodedRequest`]).
    pub fn check_signed_with(
        &self,
        request: Option<&EncodedRequest>,
        session_key: &Digest,
        terms: &SessionOpen,
        app: PublicKey,
    ) -> Result<(ReceiptFacts, [SignedItem; 2]), ReceiptError> {
        self.check_with(request, session_key, terms, Self::walk_link)
            .map(|(facts, request, ack)| (facts, self.items(app, &request, &ack)))
    }

    fn walk_link(ack: &Ack, request: &RelayRequest) -> bool {
        ack_chain::verify_link(&request.ack_chain_head, ack.index, &ack.chain_secret)
    }

    /// The same rules for the supplier, which saw the previous link (`c_{index-1}`, the
    /// head for the first ack) one ack ago: one hash instead of a walk.
    pub fn check_next(
        &self,
        session_key: &Digest,
        terms: &SessionOpen,
        previous_link: &Digest,
    ) -> Result<ReceiptFacts, ReceiptError> {
        self.check_next_with(None, session_key, terms, previous_link)
            .map(|(facts, _)| facts)
    }

    /// [`Receipt::check_next`] with the request's encoding made once for the stream
    /// (used when it is this receipt's request; see [`EncodedRequest`]), also giving
    /// the ack's canonical encoding.
    fn check_next_with(
        &self,
        request: Option<&EncodedRequest>,
        session_key: &Digest,
        terms: &SessionOpen,
        previous_link: &Digest,
    ) -> Result<(ReceiptFacts, Vec<u8>), ReceiptError> {
        self.check_with(request, session_key, terms, |ack, _| {
            ack_chain::step(&ack.chain_secret) == *previous_link
        })
        .map(|(facts, _, ack)| (facts, ack))
    }

    /// [`Receipt::check_next`] for a stream whose request is `request` (encoded once
    /// for the stream, and used when it is this receipt's request): what a supplier
    /// runs for every ack.
    pub fn check_next_in(
        &self,
        request: &EncodedRequest,
        session_key: &Digest,
        terms: &SessionOpen,
        previous_link: &Digest,
    ) -> Result<ReceiptFacts, ReceiptError> {
        self.check_next_with(Some(request), session_key, terms, previous_link)
            .map(|(facts, _)| facts)
    }

    /// [`Receipt::check_next_in`], and the ack's signature to verify (the request's is
    /// the stream's, checked once when the stream starts).
    pub fn check_next_signed(
        &self,
        request: &EncodedRequest,
        session_key: &Digest,
        terms: &SessionOpen,
        previous_link: &Digest,
        app: PublicKey,
    ) -> Result<(ReceiptFacts, SignedItem), ReceiptError> {
        self.check_next_with(Some(request), session_key, terms, previous_link)
            .map(|(facts, ack)| {
                (
                    facts,
                    signed_item(app, Ack::DOMAIN, &ack, self.ack.signature),
                )
            })
    }

    /// The signed items from the bodies' canonical encodings: what `signing_bytes`
    /// gives, the domain tag then the body.
    fn items(&self, app: PublicKey, request: &[u8], ack: &[u8]) -> [SignedItem; 2] {
        [
            signed_item(app, RelayRequest::DOMAIN, request, self.request.signature),
            signed_item(app, Ack::DOMAIN, ack, self.ack.signature),
        ]
    }

    /// The checks, returning the facts and both bodies' canonical encodings. `known` is
    /// used only if it is this receipt's request.
    fn check_with<'a>(
        &self,
        known: Option<&'a EncodedRequest>,
        session_key: &Digest,
        terms: &SessionOpen,
        link_ok: impl FnOnce(&Ack, &RelayRequest) -> bool,
    ) -> Result<Checked<'a>, ReceiptError> {
        let request = &self.request.body;
        let ack = &self.ack.body;
        if request.session_key != *session_key || ack.session_key != *session_key {
            return Err(ReceiptError::WrongSession);
        }
        // Each body is encoded once and its bytes serve every hash below (the request
        // hash, the relay hash and the leaf digest): this runs for every receipt. The
        // request's, shared by all its acks, may come encoded and hashed already.
        let (request_bytes, request_hash) = match known.filter(|r| r.is(&self.request)) {
            Some(known) => (
                std::borrow::Cow::Borrowed(known.bytes.as_slice()),
                known.hash,
            ),
            None => {
                let (bytes, hash) = encode_request(request);
                (std::borrow::Cow::Owned(bytes), hash)
            }
        };
        if ack.request != request_hash {
            return Err(ReceiptError::WrongRequest);
        }
        let len = request.ack_chain_len.min(MAX_ACK_CHAIN);
        if ack.index == 0 || ack.index > len {
            return Err(ReceiptError::BadIndex {
                index: ack.index,
                len,
            });
        }
        let counts_ok = ack.prev_bytes <= ack.new_bytes
            && ack.new_bytes <= request.max_output_bytes
            && (ack.index != 1 || ack.prev_bytes == 0);
        if !counts_ok {
            return Err(ReceiptError::BadCounts {
                prev: ack.prev_bytes,
                new: ack.new_bytes,
            });
        }
        let bytes = ack.new_bytes - ack.prev_bytes;
        let tokens_ok = (bytes == 0) == (ack.tokens == 0)
            && u64::from(bytes) <= u64::from(ack.tokens) * u64::from(terms.max_token_bytes);
        if !tokens_ok {
            return Err(ReceiptError::BadTokens {
                tokens: ack.tokens,
                bytes,
            });
        }
        if !link_ok(ack, request) {
            return Err(ReceiptError::BadChainLink);
        }
        let output = terms
            .cu
            .increment_units(ack.prev_bytes, ack.new_bytes, ack.tokens)
            .ok_or(ReceiptError::Overflow)?;
        let prompt = if ack.index == 1 {
            terms
                .cu
                .input_units(request.prompt_bytes, request.is_embedding())
        } else {
            0
        };
        let weight = output.checked_add(prompt).ok_or(ReceiptError::Overflow)?;
        let ack_bytes = to_canonical(ack);
        let relay_hash = tagged_hash(hash_tag::RELAY, &[&ack_bytes]);
        let facts = ReceiptFacts {
            relay_hash,
            weight,
            digest: relay_hash,
        };
        Ok((facts, request_bytes, ack_bytes))
    }

    /// The digest a sum-tree leaf stores: the relay hash, a hash of the ack body, which
    /// names the request by its hash (no signatures: anyone could re-encode them
    /// without the key).
    pub fn digest(&self) -> Digest {
        self.ack.body.relay_hash()
    }

    /// The app's two signatures, for batch verification.
    pub fn signed_items(&self, app: PublicKey) -> [SignedItem; 2] {
        [self.request.signed_item(app), self.ack.signed_item(app)]
    }
}
