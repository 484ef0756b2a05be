//! `InferFrame`: the frames of an inference stream (`/relaymesh/<mesh>/infer/1`),
//! each sent length-prefixed and decoded with the same bounded, canonical rules as
//! every other message.
//!
//! One stream carries one request: the app proposes the session's terms (or resumes a
//! session it already holds), the supplier countersigns or refuses, the app sends its
//! signed request with the payload it commits to, the supplier streams one `Token`
//! frame per token and pauses at the window, the app acks, the supplier ends with
//! `Done` (or `Refuse`), and the app's last ack closes the request
//! (`metering::flow` holds the rules of the token and ack exchange). An embedding
//! request (version 6) gets one `Embedding` frame per input instead of tokens, then
//! `Done`, and the app's one last ack pays for its inputs.

use serde::{Deserialize, Serialize};
use serde_tuple::{Deserialize_tuple, Serialize_tuple};

use crate::identity::domain::{hash_tag, tagged_hash};
use crate::messages::ack::SignedAck;
use crate::messages::request::SignedRelayRequest;
use crate::messages::session::{SessionProposal, SignedSessionOpen};
use crate::wire::{to_canonical, BoundedString, BoundedVec, WireMessage};
use crate::Digest;

/// Largest prompt text, in bytes, one request may carry.
pub const MAX_PROMPT_BYTES: usize = 512 * 1024;
/// Most turns in a chat prompt.
pub const MAX_TURNS: usize = 256;
/// Largest text of one token frame.
pub const MAX_TOKEN_BYTES: usize = 1024;
/// Largest JSON schema one request may carry.
pub const MAX_SCHEMA_BYTES: usize = 16 * 1024;
/// Most inputs one embedding request may carry.
pub const MAX_EMBED_INPUTS: usize = 256;
/// Longest embedding vector a frame may carry (a 70B model's is 8,192).
pub const MAX_EMBEDDING_DIMS: usize = 8192;
/// Bytes an embedding input is billed at least: each input is a forward pass of its
/// own, whose fixed cost is about a generated token's (found by review: 256 one-byte
/// inputs were 256 passes billed as 256 bytes).
pub const MIN_EMBED_INPUT_BYTES: u64 = 16;
/// Most alternatives a request may ask to be told per token (OpenAI's bound).
pub const MAX_TOP_LOGPROBS: u8 = 20;
/// Longest token text a [`TokenChoice`] carries; a longer token's is cut.
pub const MAX_LOGPROB_TOKEN_BYTES: usize = 128;
/// Most tokens one `Logprobs` frame describes.
pub const MAX_LOGPROB_TOKENS: usize = 16;

/// Who wrote a chat turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TurnRole {
    /// Instructions.
    System,
    /// The person asking.
    User,
    /// The model.
    Assistant,
}

/// One turn of a chat prompt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct Turn {
    /// Who wrote it.
    pub role: TurnRole,
    /// What it says.
    pub content: BoundedString<MAX_PROMPT_BYTES>,
}

/// The prompt: a conversation for the model's chat template, or raw text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PromptBody {
    /// Turns, formatted by the supplier with the model's template.
    Chat(BoundedVec<Turn, MAX_TURNS>),
    /// Text continued as it is.
    Text(BoundedString<MAX_PROMPT_BYTES>),
    /// Texts to embed, one vector each (version 6). The request asks for no output
    /// (`max_output_bytes = 0`, `max_tokens = 0`) and sets no sampling, stop or format.
    Embed(BoundedVec<BoundedString<MAX_PROMPT_BYTES>, MAX_EMBED_INPUTS>),
}

/// The shape the answer must take: the supplier constrains its sampling so that the
/// text it generates parses as this (a grammar, in llama.cpp's engine). An answer cut
/// short by `max_tokens` may still end unfinished.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputFormat {
    /// A JSON object.
    Json,
    /// JSON valid under this JSON Schema (its JSON text). Its bytes count as prompt
    /// bytes: the supplier reads it, as it reads the prompt.
    JsonSchema(BoundedString<MAX_SCHEMA_BYTES>),
}

/// What the app asks for. Its digest is the request's `prompt_digest`, so the
/// supplier cannot answer another prompt than the one the app signed for. Sampling
/// values are integers (canonical encodings have no floats).
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct InferPayload {
    /// The model's name in the supplier's ad.
    pub model: BoundedString<128>,
    /// The prompt.
    pub prompt: PromptBody,
    /// Temperature in thousandths (0 = greedy); `None`: the supplier's default.
    pub temperature_milli: Option<u32>,
    /// Nucleus sampling in millionths; `None`: off.
    pub top_p_micro: Option<u32>,
    /// Top-k; `None`: off.
    pub top_k: Option<u32>,
    /// Sampler seed.
    pub seed: Option<u64>,
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Stop sequences.
    pub stop: BoundedVec<BoundedString<MAX_STOP_BYTES>, 4>,
    /// The shape the answer must take; `None`: free text.
    pub format: Option<OutputFormat>,
    /// Whether to tell each token's log probability, and how many of the most likely
    /// alternatives with it (0 to [`MAX_TOP_LOGPROBS`]); `None`: not told (version 7).
    pub logprobs: Option<u8>,
}

impl InferPayload {
    /// The digest the signed request commits to.
    pub fn digest(&self) -> Digest {
        tagged_hash(hash_tag::PROMPT, &[&to_canonical(self)])
    }

    /// UTF-8 bytes of prompt text and of the output format's schema, what the request
    /// bills (`prompt_bytes`); an embedding input counts at least
    /// [`MIN_EMBED_INPUT_BYTES`].
    pub fn prompt_bytes(&self) -> u64 {
        let prompt: u64 = match &self.prompt {
            PromptBody::Chat(turns) => turns.iter().map(|t| t.content.as_str().len() as u64).sum(),
            PromptBody::Text(text) => text.as_str().len() as u64,
            PromptBody::Embed(inputs) => inputs
                .iter()
                .map(|t| (t.as_str().len() as u64).max(MIN_EMBED_INPUT_BYTES))
                .sum(),
        };
        let schema = match &self.format {
            Some(OutputFormat::JsonSchema(schema)) => schema.as_str().len() as u64,
            Some(OutputFormat::Json) | None => 0,
        };
        prompt + schema
    }

    /// The payload of an embedding request of `inputs` to `model`, shaped as
    /// [`InferPayload::embedding`] requires: no output, sampling, stop or format.
    pub fn embed(
        model: BoundedString<128>,
        inputs: BoundedVec<BoundedString<MAX_PROMPT_BYTES>, MAX_EMBED_INPUTS>,
    ) -> Self {
        Self {
            model,
            prompt: PromptBody::Embed(inputs),
            temperature_milli: None,
            top_p_micro: None,
            top_k: None,
            seed: None,
            max_tokens: 0,
            stop: BoundedVec::new(),
            format: None,
            logprobs: None,
        }
    }

    /// Whether the payload asks for embeddings, and is shaped as such a request must
    /// be: no output, no sampling, stop or format. `None`: not an embedding request.
    pub fn embedding(&self) -> Option<Result<&[BoundedString<MAX_PROMPT_BYTES>], &'static str>> {
        let PromptBody::Embed(inputs) = &self.prompt else {
            return None;
        };
        let plain = self.max_tokens == 0
            && self.temperature_milli.is_none()
            && self.top_p_micro.is_none()
            && self.top_k.is_none()
            && self.seed.is_none()
            && self.stop.is_empty()
            && self.format.is_none()
            && self.logprobs.is_none();
        Some(if !plain {
            Err("an embedding request sets no max_tokens, sampling, stop, format or logprobs")
        } else if inputs.is_empty() {
            Err("an embedding request embeds at least one input")
        } else {
            Ok(inputs)
        })
    }
}

/// One input's embedding: its vector's components as IEEE 754 single-precision bit
/// patterns (canonical encodings carry no floats).
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct Embedding {
    /// The components, `f32::to_bits` each.
    pub bits: BoundedVec<u32, MAX_EMBEDDING_DIMS>,
}

impl Embedding {
    /// The frame of `vector`; `None` if it is longer than [`MAX_EMBEDDING_DIMS`].
    pub fn new(vector: &[f32]) -> Option<Self> {
        BoundedVec::try_from_vec(vector.iter().map(|x| x.to_bits()).collect())
            .ok()
            .map(|bits| Self { bits })
    }

    /// The vector.
    pub fn values(&self) -> Vec<f32> {
        self.bits.iter().map(|b| f32::from_bits(*b)).collect()
    }
}

/// One token and its log probability under the model (before sampling's
/// temperature, top-k or top-p), as the supplier's engine computed it: its word,
/// deciding nothing that is paid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct TokenChoice {
    /// The token's text as bytes (a token may end inside a character); cut at
    /// [`MAX_LOGPROB_TOKEN_BYTES`].
    pub bytes: BoundedVec<u8, MAX_LOGPROB_TOKEN_BYTES>,
    /// Its natural-log probability as an IEEE 754 single-precision bit pattern
    /// (canonical encodings carry no floats). A receiver refuses one that is not a
    /// finite number at most 0.
    pub logprob_bits: u32,
}

impl TokenChoice {
    /// The choice of `bytes` (cut to fit) at `logprob`.
    pub fn new(bytes: &[u8], logprob: f32) -> Self {
        let cut = &bytes[..bytes.len().min(MAX_LOGPROB_TOKEN_BYTES)];
        Self {
            bytes: BoundedVec::try_from_vec(cut.to_vec()).expect("cut to fit"),
            logprob_bits: logprob.to_bits(),
        }
    }

    /// The log probability, if it is one (finite, at most 0).
    pub fn logprob(&self) -> Option<f32> {
        let p = f32::from_bits(self.logprob_bits);
        (p.is_finite() && p <= 0.0).then_some(p)
    }
}

/// What one generated token's log probability frame says of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct TokenLogprobs {
    /// The token generated.
    pub chosen: TokenChoice,
    /// The most likely tokens at its place, most likely first: at most as many as the
    /// request asked for (an honest supplier gives that many where its backend tells
    /// them).
    pub top: BoundedVec<TokenChoice, { MAX_TOP_LOGPROBS as usize }>,
}

/// Most tokens whose log probabilities may come before one `Token` frame (a supplier
/// whose text was held back longer, behind a long stop sequence's start, tells the
/// first ones only).
pub const MAX_HELD_LOGPROBS: usize = 64;
/// The app's check of the `Logprobs` frames of one request's stream, so that what a
/// supplier sends unpaid stays bounded by what the request asked for and by the
/// text it paid for. A supplier keeps one too, to send only what the app takes
/// ([`LogprobsCheck::room`]).
#[derive(Clone, Debug)]
pub struct LogprobsCheck {
    asked: Option<u8>,
    max_tokens: u32,
    told: u64,
    held: usize,
    text_bytes: u64,
}

impl LogprobsCheck {
    /// The check of a stream answering `payload`.
    pub fn new(payload: &InferPayload) -> Self {
        Self {
            asked: payload.logprobs,
            max_tokens: payload.max_tokens,
            told: 0,
            held: 0,
            text_bytes: 0,
        }
    }

    /// Takes a `Logprobs` frame describing `tokens`, or says why it cannot: the
    /// request did not ask; the frame is empty; it gives more alternatives than
    /// asked, or a value that is not a log probability; more than
    /// [`MAX_HELD_LOGPROBS`] tokens come before one `Token` frame; or more tokens are
    /// described in all than the request may generate.
    pub fn told(&mut self, tokens: &[TokenLogprobs]) -> Result<(), &'static str> {
        let Some(asked) = self.asked else {
            return Err("log probabilities the request did not ask for");
        };
        let told = self.told + tokens.len() as u64;
        let held = self.held + tokens.len();
        if tokens.is_empty() {
            Err("a Logprobs frame describing no token")
        } else if told > u64::from(self.max_tokens) {
            Err("log probabilities of more tokens than the request may generate")
        } else if held > MAX_HELD_LOGPROBS {
            Err("log probabilities of too many tokens before their text")
        } else if tokens.iter().any(|t| t.top.len() > usize::from(asked)) {
            Err("more alternatives than the request asked for")
        } else if tokens.iter().any(|t| {
            std::iter::once(&t.chosen)
                .chain(t.top.iter())
                .any(|c| c.logprob().is_none())
        }) {
            Err("a log probability that is not a finite number at most 0")
        } else {
            self.told = told;
            self.held = held;
            Ok(())
        }
    }

    /// A `Token` frame of `bytes` bytes came: the tokens told so far have their text.
    /// Refused when more tokens have been told than the text so far has bytes (every
    /// token told has text), beyond the [`MAX_HELD_LOGPROBS`] whose text a stop
    /// sequence's start may still hold back.
    pub fn token(&mut self, bytes: usize) -> Result<(), &'static str> {
        self.held = 0;
        self.text_bytes += bytes as u64;
        if self.told > self.text_bytes + MAX_HELD_LOGPROBS as u64 {
            return Err("log probabilities of more tokens than the text has bytes");
        }
        Ok(())
    }

    /// How many more tokens may be told before a `Token` frame of `next_text` bytes
    /// and be taken: a supplier whose backend told more (text held back long behind a
    /// stop sequence's start, or tokens without text) sends that many only.
    pub fn room(&self, next_text: usize) -> usize {
        let by_text = (self.text_bytes + next_text as u64 + MAX_HELD_LOGPROBS as u64)
            .saturating_sub(self.told);
        let by_max = u64::from(self.max_tokens).saturating_sub(self.told);
        (MAX_HELD_LOGPROBS - self.held.min(MAX_HELD_LOGPROBS))
            .min(usize::try_from(by_text.min(by_max)).unwrap_or(usize::MAX))
    }
}

/// The signed request and the payload it commits to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct InferRequest {
    /// Signed by the app.
    pub request: SignedRelayRequest,
    /// The prompt and parameters.
    pub payload: InferPayload,
}

/// Longest stop sequence a request may name.
pub const MAX_STOP_BYTES: usize = 256;

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DoneReason {
    /// The model ended, or a stop sequence was met.
    Stop,
    /// `max_tokens` or the context was reached.
    Length,
}

/// The supplier's end of a stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct Done {
    /// Why.
    pub reason: DoneReason,
    /// Tokens in the prompt, as the supplier's engine counted them.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// The stop sequence of the request that ended the answer, if one did (Anthropic's
    /// clients are told which; version 5). The app keeps it only if the request named it.
    pub stop: Option<BoundedString<MAX_STOP_BYTES>>,
}

/// Why a supplier will not (or can no longer) serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefuseCode {
    /// Every slot is busy; try again after `retry_after_ms`, or elsewhere.
    Busy,
    /// The terms are not acceptable (price, τ, model digest, expired, wrong mesh).
    Terms,
    /// The app's balance does not cover the session.
    Balance,
    /// The model is not served here.
    UnknownModel,
    /// The request or payload is invalid (signature, digest, prompt too long).
    Invalid,
    /// The engine failed.
    Failed,
}

/// A refusal or failure, with a message for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct Refuse {
    /// What kind.
    pub code: RefuseCode,
    /// Why, for logs and users.
    pub message: BoundedString<512>,
    /// For `Busy`: when to retry, ms.
    pub retry_after_ms: u64,
}

/// What one frame says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrameBody {
    /// App → supplier: the terms it signed.
    Propose(SessionProposal),
    /// Supplier → app: the countersigned terms.
    Accept(SignedSessionOpen),
    /// App → supplier: a request in the accepted session.
    Request(InferRequest),
    /// Supplier → app: one token's text (never empty).
    Token(BoundedString<MAX_TOKEN_BYTES>),
    /// Supplier → app: the next input's embedding, for an embedding request (version
    /// 6), one per input in order, before `Done`.
    Embedding(Embedding),
    /// Supplier → app, for a request that asked (version 7): the log probabilities
    /// of the tokens whose text the next `Token` frame begins, in order. Unpaid and
    /// unacked; bounded by [`LogprobsCheck`].
    Logprobs(BoundedVec<TokenLogprobs, MAX_LOGPROB_TOKENS>),
    /// App → supplier: an ack.
    Ack(SignedAck),
    /// Supplier → app: generation ended.
    Done(Done),
    /// Either side: refused or failed; the stream ends.
    Refuse(Refuse),
    /// App → supplier, instead of `Propose`: a further request in a session the
    /// supplier countersigned earlier (the countersigned terms, which it re-verifies).
    /// The app may send its `Request` right after, without waiting.
    Resume(SignedSessionOpen),
}

/// One length-prefixed frame of an inference stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct InferFrame {
    /// Message version: the protocol version (`PROTOCOL_VERSION`).
    #[serde(deserialize_with = "crate::wire::current_version")]
    pub version: u16,
    /// The content.
    pub body: FrameBody,
}

impl WireMessage for InferFrame {
    const NAME: &'static str = "InferFrame";
    const VERSION: u16 = crate::PROTOCOL_VERSION;
    const MAX_SIZE: usize = MAX_PROMPT_BYTES + 64 * 1024;
    fn version(&self) -> u16 {
        self.version
    }
}

impl InferFrame {
    /// A version-1 frame.
    pub fn new(body: FrameBody) -> Self {
        Self {
            version: crate::PROTOCOL_VERSION,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(logprobs: Option<u8>, max_tokens: u32) -> InferPayload {
        let mut p = InferPayload::embed(BoundedString::new("m").unwrap(), BoundedVec::new());
        p.prompt = PromptBody::Text(BoundedString::new("Hi").unwrap());
        p.max_tokens = max_tokens;
        p.logprobs = logprobs;
        p
    }

    fn token(alternatives: usize, logprob: f32) -> TokenLogprobs {
        TokenLogprobs {
            chosen: TokenChoice::new(b"a", logprob),
            top: BoundedVec::try_from_vec(vec![TokenChoice::new(b"a", -0.5); alternatives])
                .unwrap(),
        }
    }

    /// What a supplier sends unpaid is bounded by what the request asked for: nothing
    /// unasked, no more alternatives, no more tokens than the request may generate or
    /// than come before one token's text, and only log probabilities.
    #[test]
    fn log_probabilities_are_taken_only_as_asked() {
        let mut unasked = LogprobsCheck::new(&payload(None, 8));
        assert!(unasked.told(&[token(0, -0.5)]).is_err());

        let mut check = LogprobsCheck::new(&payload(Some(2), 100));
        assert!(check.told(&[]).is_err());
        assert!(check.told(&[token(3, -0.5)]).is_err());
        for bad in [0.5, f32::NAN, f32::NEG_INFINITY, f32::INFINITY] {
            assert!(check.told(&[token(1, bad)]).is_err(), "{bad}");
        }
        assert!(check.told(&[token(2, -0.5), token(0, 0.0)]).is_ok());
        // More than MAX_HELD_LOGPROBS before a token's text.
        let many = vec![token(2, -1.0); MAX_LOGPROB_TOKENS];
        for _ in 0..3 {
            assert!(check.told(&many).is_ok());
        }
        assert!(check.told(&many).is_err());
        // 50 told: a token's text of 0 bytes leaves them within the 64 held back.
        assert!(check.token(0).is_ok());
        assert!(check.told(&many).is_ok());
        // 66 told against 1 byte of text: more than the text can have made.
        assert!(check.token(1).is_err());
        let mut check = LogprobsCheck::new(&payload(Some(2), 100));
        assert!(check.told(&many).is_ok());
        assert!(check.token(16).is_ok());
        // 16 × 6 = 96 told of 100; another frame of 16 would pass max_tokens.
        for _ in 0..5 {
            assert!(check.told(&many).is_ok());
            assert!(check.token(16).is_ok());
        }
        assert!(check.told(&many).is_err());
        assert!(check.told(&many[..4]).is_ok());
        // What a supplier may still tell: no more than the app takes.
        let mut check = LogprobsCheck::new(&payload(Some(2), 100));
        assert_eq!(check.room(1), MAX_HELD_LOGPROBS);
        assert!(check.told(&many).is_ok());
        assert_eq!(check.room(1), MAX_HELD_LOGPROBS - 16);
        assert!(check.token(1).is_ok());
        // 16 told against 1 byte: 49 more before another byte of text.
        assert_eq!(check.room(0), 49);
        assert_eq!(check.room(1), 50);
        let near_max = LogprobsCheck::new(&payload(Some(2), 3));
        assert_eq!(near_max.room(100), 3);
    }
}
