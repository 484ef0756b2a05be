//! The tokenizer, built from the GGUF file's own metadata.
//!
//! Only byte-level BPE (`tokenizer.ggml.model = "gpt2"`) is supported: vocabulary from
//! `tokenizer.ggml.tokens`, merges from `tokenizer.ggml.merges`, control tokens
//! (type 3) as special tokens, no prefix space, digits split one by one before the
//! byte-level split (llama.cpp's `smollm`, `llama-bpe` and similar pre-tokenizers).
//! candle's own GGUF tokenizer builder does not know these pre-tokenizers and gives
//! different ids, so the tokenizer is assembled here from the `tokenizers` crate's
//! parts.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

/// GGUF token type of control tokens (`<|im_start|>` and the like).
const TOKEN_TYPE_CONTROL: i32 = 3;

/// A tokenizer and the ids that end generation.
pub struct GgufTokenizer {
    inner: Tokenizer,
    /// Tokens that end an answer (the GGUF's eos, and `<|im_end|>`/`<|eot_id|>`/
    /// `<|endoftext|>` where present).
    pub end_ids: Vec<u32>,
    /// Bytes of the longest token text can be made of (not control tokens).
    longest: u32,
}

fn strings<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<Vec<&'a str>, String> {
    let values = md
        .get(key)
        .ok_or_else(|| format!("the GGUF has no {key}"))?
        .to_vec()
        .map_err(|e| format!("{key}: {e}"))?;
    values
        .iter()
        .map(|v| {
            v.to_string()
                .map(String::as_str)
                .map_err(|e| format!("{key}: {e}"))
        })
        .collect()
}

impl GgufTokenizer {
    /// Builds the tokenizer from the file's metadata.
    pub fn from_gguf(content: &Content) -> Result<Self, String> {
        let md = &content.metadata;
        let model = md
            .get("tokenizer.ggml.model")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
            .unwrap_or("");
        if model != "gpt2" {
            return Err(format!(
                "tokenizer {model:?} is not supported (only byte-level BPE, \"gpt2\")"
            ));
        }
        let tokens = strings(md, "tokenizer.ggml.tokens")?;
        let merges = strings(md, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| format!("malformed merge {m:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| e.to_string())?
                .iter()
                .map(|t| t.to_i32().unwrap_or(1))
                .collect(),
            None => vec![1; tokens.len()],
        };
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, t)| ((*t).to_owned(), id as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| format!("building the BPE model: {e}"))?;
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &ty)| ty == TOKEN_TYPE_CONTROL)
            .map(|(t, _)| AddedToken::from((*t).to_owned(), true))
            .collect();
        inner
            .add_special_tokens(specials)
            .map_err(|e| format!("adding control tokens: {e}"))?;

        let mut end_ids = Vec::new();
        if let Some(eos) = md
            .get("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.to_u32().ok())
        {
            end_ids.push(eos);
        }
        for name in ["<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end|>"] {
            if let Some(id) = tokens.iter().position(|t| *t == name) {
                let id = id as u32;
                if !end_ids.contains(&id) {
                    end_ids.push(id);
                }
            }
        }
        // Byte-level BPE writes each byte of a token as one character.
        let longest = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &ty)| ty != TOKEN_TYPE_CONTROL)
            .map(|(t, _)| t.chars().count() as u32)
            .max()
            .unwrap_or(1)
            .max(1);
        Ok(Self {
            inner,
            end_ids,
            longest,
        })
    }

    /// Bytes of the vocabulary's longest token: a session's per-token byte cap.
    pub fn longest_token_bytes(&self) -> u32 {
        self.longest
    }

    /// Token ids of `text`; special tokens written in the text are recognised (the
    /// chat template relies on it); no BOS is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| format!("tokenizing: {e}"))
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| format!("detokenizing: {e}"))
    }
}

/// Turns a growing list of token ids into text pieces, holding back bytes that do not
/// yet form whole characters.
#[derive(Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    emitted: usize,
}

impl Detokenizer {
    /// Adds a token; returns the new text it completes (possibly empty).
    pub fn push(&mut self, tokenizer: &GgufTokenizer, id: u32) -> Result<String, String> {
        self.ids.push(id);
        let text = tokenizer.decode(&self.ids)?;
        // An incomplete UTF-8 sequence decodes to U+FFFD: wait for the rest.
        if text.ends_with('\u{FFFD}') || text.len() <= self.emitted {
            return Ok(String::new());
        }
        let piece = text
            .get(self.emitted..)
            .map(str::to_owned)
            .unwrap_or_default();
        self.emitted = text.len();
        Ok(piece)
    }
}
