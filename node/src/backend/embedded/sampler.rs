//! A request's sampling options as a llama.cpp sampler chain.

use llama_cpp_2::sampling::LlamaSampler;

use super::super::{BackendError, Sampling};

/// Temperature when a request names none (Ollama's default).
pub const DEFAULT_TEMPERATURE: f64 = 0.8;

/// The chain for `sampling`: greedy at temperature 0; otherwise top-k, then top-p, then
/// temperature, then a draw seeded by the request's seed (a random one without).
pub fn chain(sampling: &Sampling) -> Result<LlamaSampler, BackendError> {
    let temperature = sampling.temperature.unwrap_or(DEFAULT_TEMPERATURE);
    if !temperature.is_finite() || temperature < 0.0 {
        return Err(BackendError::Invalid(format!(
            "temperature {temperature} is not a number of 0 or more"
        )));
    }
    if temperature <= 1e-7 {
        return Ok(LlamaSampler::greedy());
    }
    let mut steps = Vec::new();
    if let Some(k) = sampling.top_k.filter(|k| *k > 0) {
        steps.push(LlamaSampler::top_k(i32::try_from(k).unwrap_or(i32::MAX)));
    }
    if let Some(p) = sampling.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(BackendError::Invalid(format!("top_p {p} is not in (0, 1]")));
        }
        if p < 1.0 {
            steps.push(LlamaSampler::top_p(p as f32, 1));
        }
    }
    steps.push(LlamaSampler::temp(temperature as f32));
    let seed = sampling
        .seed
        .unwrap_or_else(|| rand_core::RngCore::next_u64(&mut rand_core::OsRng));
    // llama.cpp seeds with 32 bits: fold the request's 64 so both halves count.
    steps.push(LlamaSampler::dist((seed ^ (seed >> 32)) as u32));
    Ok(LlamaSampler::chain_simple(steps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_values_that_mean_nothing() {
        let with = |temperature, top_p| Sampling {
            temperature: Some(temperature),
            top_p,
            ..Sampling::default()
        };
        assert!(chain(&with(0.0, None)).is_ok());
        assert!(chain(&with(0.7, Some(0.9))).is_ok());
        assert!(chain(&with(-0.1, None)).is_err());
        assert!(chain(&with(f64::NAN, None)).is_err());
        assert!(chain(&with(0.7, Some(0.0))).is_err());
        assert!(chain(&with(0.7, Some(1.5))).is_err());
    }
}
