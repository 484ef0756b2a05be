//! Embeddings from the served model: each input's hidden states, mean-pooled over its
//! tokens and scaled to unit length (as llama-server's `/embeddings` with mean
//! pooling). They run on a context of their own, made for the request and sized to its
//! longest input, off the async threads, while the request holds one of the model's
//! generation places (they cost a prefill of every input).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use super::super::{BackendError, Embedded, Tenant};
use super::EmbeddedBackend;

/// Most inputs one request may embed.
pub const MAX_INPUTS: usize = 256;

/// Most tokens one request may embed in all (its work, done while it holds a place).
pub const MAX_TOKENS: usize = 32 * 1024;

impl EmbeddedBackend {
    /// Embeddings of `inputs` (see the module's doc), in their order.
    pub async fn embed_texts(
        &self,
        inputs: &[String],
        tenant: Tenant,
    ) -> Result<Embedded, BackendError> {
        if inputs.is_empty() || inputs.len() > MAX_INPUTS {
            return Err(BackendError::Invalid(format!(
                "embed 1 to {MAX_INPUTS} inputs at once, not {}",
                inputs.len()
            )));
        }
        let mut ids = Vec::with_capacity(inputs.len());
        for (i, text) in inputs.iter().enumerate() {
            let tokens = self.model.vocab().tokenize(text.as_bytes(), true, false);
            if text.is_empty() || tokens.is_empty() {
                return Err(BackendError::Invalid(format!("input {i} is empty")));
            }
            if tokens.len() > self.context as usize {
                return Err(BackendError::PromptTooLong {
                    prompt_tokens: tokens.len().try_into().unwrap_or(u32::MAX),
                    context_length: self.context,
                });
            }
            ids.push(tokens);
        }
        let prompt_tokens = ids.iter().map(Vec::len).sum::<usize>();
        if prompt_tokens > MAX_TOKENS {
            return Err(BackendError::Invalid(format!(
                "the inputs are {prompt_tokens} tokens; one request embeds at most {MAX_TOKENS}"
            )));
        }
        // The place is held by the work itself, not by the request; a client that
        // leaves (this future dropped) stops the work at the next input.
        let slot = self.slots.acquire(tenant).await?;
        let model = self.model.clone();
        let threads = self.threads;
        let cancel = Cancel::default();
        let cancelled = cancel.0.clone();
        let vectors = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            embed_blocking(&model, &ids, threads, &cancelled)
        })
        .await
        .map_err(|_| BackendError::Internal("the embedding task failed".into()))??;
        Ok(Embedded {
            vectors,
            prompt_tokens: prompt_tokens.try_into().unwrap_or(u32::MAX),
            mesh: None,
        })
    }
}

/// Set when the request that asked for an embedding is dropped.
#[derive(Default)]
struct Cancel(Arc<AtomicBool>);

impl Drop for Cancel {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn embed_blocking(
    model: &Arc<LlamaModel>,
    inputs: &[Vec<LlamaToken>],
    threads: i32,
    cancelled: &AtomicBool,
) -> Result<Vec<Vec<f32>>, BackendError> {
    let longest = inputs.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let n = u32::try_from(longest).unwrap_or(u32::MAX);
    let params = LlamaContextParams::default()
        .with_n_ctx(std::num::NonZeroU32::new(n))
        .with_n_batch(n)
        .with_n_ubatch(n)
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
        .with_embeddings(true)
        .with_pooling_type(LlamaPoolingType::Mean);
    let internal = |what: &str, e: &dyn std::fmt::Display| {
        let why = super::log::take_last_error().unwrap_or_else(|| e.to_string());
        BackendError::Internal(format!("{what}: {why}"))
    };
    let mut ctx = model
        .new_context(super::llama_backend(), params)
        .map_err(|e| internal("llama.cpp could not make an embedding context", &e))?;
    let mut vectors = Vec::with_capacity(inputs.len());
    for tokens in inputs {
        if cancelled.load(Ordering::Relaxed) {
            return Err(BackendError::Invalid("the embedding was cancelled".into()));
        }
        ctx.clear_kv_cache();
        let mut batch = LlamaBatch::new(tokens.len(), 1);
        for (position, token) in tokens.iter().enumerate() {
            let position = i32::try_from(position).unwrap_or(i32::MAX);
            batch
                .add(*token, position, &[0], true)
                .map_err(|e| internal("the input does not fit its batch", &e))?;
        }
        ctx.decode(&mut batch)
            .map_err(|e| internal("llama.cpp could not read the input", &e))?;
        let pooled = ctx
            .embeddings_seq_ith(0)
            .map_err(|e| internal("llama.cpp gave no embedding", &e))?;
        vectors.push(unit(pooled));
    }
    Ok(vectors)
}

/// `v` scaled to length 1 (a zero vector stays as it is).
fn unit(v: &[f32]) -> Vec<f32> {
    let norm = v
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return v.to_vec();
    }
    v.iter().map(|x| (f64::from(*x) / norm) as f32).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn vectors_are_scaled_to_unit_length() {
        let v = super::unit(&[3.0, 4.0]);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert_eq!(super::unit(&[0.0, 0.0]), vec![0.0, 0.0]);
    }
}
