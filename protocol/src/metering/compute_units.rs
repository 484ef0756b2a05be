//! Compute units (CUs): what a receipt weighs.
//!
//! A CU is counted over **UTF-8 bytes of text**, not over tokens. The app can check a
//! byte count with no tokenizer, byte counts of increments add up exactly to the
//! count of the whole stream (re-tokenising increments does not), and a supplier gains
//! nothing by emitting more, smaller tokens: the same text weighs the same however it
//! was cut. The per-byte factors let a mesh price prefill and generation differently
//! (generation is sequential and costs more per byte than prompt processing).

use serde_tuple::{Deserialize_tuple, Serialize_tuple};

/// CUs per byte of prompt and per byte of output, fixed for a session in `SessionOpen`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct CuFormula {
    /// CUs per UTF-8 byte of the prompt, billed once per request.
    pub prompt_per_byte: u32,
    /// CUs per UTF-8 byte of streamed output.
    pub output_per_byte: u32,
}

impl Default for CuFormula {
    /// One CU per prompt byte and four per output byte: roughly the ratio of prefill
    /// to generation cost per byte on CPU and GPU back ends alike.
    fn default() -> Self {
        Self {
            prompt_per_byte: 1,
            output_per_byte: 4,
        }
    }
}

impl CuFormula {
    /// CUs for a prompt of `bytes` bytes.
    pub fn prompt_units(&self, bytes: u32) -> u64 {
        u64::from(self.prompt_per_byte) * u64::from(bytes)
    }

    /// CUs for the output bytes `(prev, new]`; `None` if the range runs backwards.
    pub fn output_units(&self, prev: u32, new: u32) -> Option<u64> {
        let delta = new.checked_sub(prev)?;
        Some(u64::from(self.output_per_byte) * u64::from(delta))
    }
}
