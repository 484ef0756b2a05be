//! Compute units (CUs): what a receipt weighs.
//!
//! A CU is counted over **UTF-8 bytes of text**, not over tokens. The app can check a
//! byte count with no tokenizer, byte counts of increments add up exactly to the
//! count of the whole stream (re-tokenising increments does not), and a supplier gains
//! nothing by emitting more, smaller tokens: the same text weighs the same however it
//! was cut. The per-byte factors let a mesh price prefill and generation differently
//! (generation is sequential and costs more per byte than prompt processing).
//!
//! Output is paid by the byte, but an increment of `t` tokens at most `t ×
//! token_bytes` bytes: honest text runs about 4 bytes a token (SmolLM2's answers
//! average 4.0, and one 16-token increment in 20 passes 6), so a supplier streaming
//! every token at the session's `max_token_bytes` of junk is paid at most
//! `token_bytes / 4` times an honest answer, not `max_token_bytes / 4` times.
//!
//! An embedding request (one that asks for no output, `max_output_bytes = 0`, since
//! version 6) is weighed by its inputs' bytes at `embed_per_byte`: a mesh may price
//! embedding apart from reading a prompt before an answer.

use serde_tuple::{Deserialize_tuple, Serialize_tuple};

/// Bytes paid per token by default, and the mesh's default bound on it
/// (`MeshParams::max_paid_token_bytes`): above honest text's ~4, so an honest
/// increment is rarely cut (0.3% of SmolLM2's output bytes go unpaid), and a padding supplier
/// gains at most half again.
pub const DEFAULT_TOKEN_BYTES: u32 = 6;

/// CUs per byte of prompt, of output and of embedding input, fixed for a session in
/// `SessionOpen`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct CuFormula {
    /// CUs per UTF-8 byte of the prompt, billed once per request.
    pub prompt_per_byte: u32,
    /// CUs per UTF-8 byte of streamed output.
    pub output_per_byte: u32,
    /// Most output bytes paid per token, over an increment: an increment of `t`
    /// tokens is paid for at most `t × token_bytes` bytes whatever it carries.
    pub token_bytes: u32,
    /// CUs per UTF-8 byte of the inputs of an embedding request (version 6).
    pub embed_per_byte: u32,
}

impl Default for CuFormula {
    /// One CU per prompt byte and four per output byte: roughly the ratio of prefill
    /// to generation cost per byte on CPU and GPU back ends alike. Tokens are paid
    /// for up to 6 bytes each, the mesh's default bound. An embedding input costs what
    /// reading a prompt does (one forward pass over it): one CU a byte.
    fn default() -> Self {
        Self {
            prompt_per_byte: 1,
            output_per_byte: 4,
            token_bytes: DEFAULT_TOKEN_BYTES,
            embed_per_byte: 1,
        }
    }
}

impl CuFormula {
    /// CUs for a prompt of `bytes` bytes.
    pub fn prompt_units(&self, bytes: u32) -> u64 {
        self.input_units(bytes, false)
    }

    /// CUs for a request's input of `bytes` bytes: its prompt, or, for an embedding
    /// request (`embedding`: it asks for no output), its inputs at `embed_per_byte`.
    pub fn input_units(&self, bytes: u32, embedding: bool) -> u64 {
        let per_byte = if embedding {
            self.embed_per_byte
        } else {
            self.prompt_per_byte
        };
        u64::from(per_byte) * u64::from(bytes)
    }

    /// CUs for the output bytes `(prev, new]` paid in full, an upper bound on what
    /// they weigh however many tokens carry them; `None` if the range runs backwards.
    pub fn output_units(&self, prev: u32, new: u32) -> Option<u64> {
        let delta = new.checked_sub(prev)?;
        Some(u64::from(self.output_per_byte) * u64::from(delta))
    }

    /// CUs of an increment: the output bytes `(prev, new]` carried by `tokens`
    /// tokens, paid for at most `token_bytes` bytes a token; `None` if the range
    /// runs backwards.
    pub fn increment_units(&self, prev: u32, new: u32, tokens: u16) -> Option<u64> {
        let delta = u64::from(new.checked_sub(prev)?);
        let paid = delta.min(u64::from(tokens) * u64::from(self.token_bytes));
        Some(u64::from(self.output_per_byte) * paid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_increment_is_paid_by_the_byte_up_to_its_tokens_cap() {
        let cu = CuFormula::default();
        // Honest text, 16 tokens of 64 bytes: every byte paid.
        assert_eq!(cu.increment_units(0, 64, 16), Some(4 * 64));
        // 16 tokens padded to 32 bytes each: paid as 16 × 6 bytes.
        assert_eq!(cu.increment_units(100, 100 + 512, 16), Some(4 * 96));
        assert_eq!(cu.increment_units(0, 0, 0), Some(0));
        assert_eq!(cu.increment_units(5, 4, 1), None);
        assert_eq!(cu.output_units(0, 512), Some(4 * 512));
    }

    #[test]
    fn an_embedding_input_is_weighed_at_its_own_factor() {
        let cu = CuFormula {
            embed_per_byte: 3,
            ..CuFormula::default()
        };
        assert_eq!(cu.input_units(100, false), 100);
        assert_eq!(cu.input_units(100, true), 300);
    }
}
