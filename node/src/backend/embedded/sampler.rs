//! A request's sampling options as a llama.cpp sampler chain.

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;

use super::super::{BackendError, Format, Sampling};

/// Temperature when a request names none (Ollama's default).
pub const DEFAULT_TEMPERATURE: f64 = 0.8;

/// The grammar (GBNF) an answer in `format` follows: llama.cpp's own conversion of the
/// JSON schema, as llama-server makes it.
pub fn grammar(format: &Format) -> Result<String, BackendError> {
    let schema = format.checked_schema().map_err(BackendError::Invalid)?;
    llama_cpp_2::json_schema_to_grammar(&schema)
        .map_err(|e| BackendError::Invalid(format!("the JSON schema cannot be used: {e}")))
}

/// The chain for `sampling`: the output format's grammar first, if any; then greedy at
/// temperature 0, or top-k, then top-p, then temperature, then a draw seeded by the
/// request's seed (a random one without).
pub fn chain(model: &LlamaModel, sampling: &Sampling) -> Result<LlamaSampler, BackendError> {
    check(sampling)?;
    let temperature = sampling.temperature.unwrap_or(DEFAULT_TEMPERATURE);
    let mut steps = Vec::new();
    if let Some(format) = &sampling.format {
        let rules = grammar(format)?;
        steps.push(LlamaSampler::grammar(model, &rules, "root").map_err(|e| {
            BackendError::Invalid(format!("the JSON schema's grammar cannot be used: {e}"))
        })?);
    }
    if temperature <= 1e-7 {
        steps.push(LlamaSampler::greedy());
        return Ok(LlamaSampler::chain_simple(steps));
    }
    if let Some(k) = sampling.top_k.filter(|k| *k > 0) {
        steps.push(LlamaSampler::top_k(i32::try_from(k).unwrap_or(i32::MAX)));
    }
    if let Some(p) = sampling.top_p.filter(|p| *p < 1.0) {
        steps.push(LlamaSampler::top_p(p as f32, 1));
    }
    steps.push(LlamaSampler::temp(temperature as f32));
    let seed = sampling
        .seed
        .unwrap_or_else(|| rand_core::RngCore::next_u64(&mut rand_core::OsRng));
    // llama.cpp seeds with 32 bits: fold the request's 64 so both halves count.
    steps.push(LlamaSampler::dist((seed ^ (seed >> 32)) as u32));
    Ok(LlamaSampler::chain_simple(steps))
}

/// Refuses sampling values that mean nothing.
fn check(sampling: &Sampling) -> Result<(), BackendError> {
    let temperature = sampling.temperature.unwrap_or(DEFAULT_TEMPERATURE);
    if !temperature.is_finite() || temperature < 0.0 {
        return Err(BackendError::Invalid(format!(
            "temperature {temperature} is not a number of 0 or more"
        )));
    }
    if let Some(p) = sampling.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
        return Err(BackendError::Invalid(format!("top_p {p} is not in (0, 1]")));
    }
    Ok(())
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
        assert!(check(&with(0.0, None)).is_ok());
        assert!(check(&with(0.7, Some(0.9))).is_ok());
        assert!(check(&with(-0.1, None)).is_err());
        assert!(check(&with(f64::NAN, None)).is_err());
        assert!(check(&with(0.7, Some(0.0))).is_err());
        assert!(check(&with(0.7, Some(1.5))).is_err());
    }

    #[test]
    fn json_schemas_become_grammars_and_broken_ones_are_refused() {
        let json = grammar(&Format::Json).unwrap();
        assert!(json.contains("root ::="), "{json}");
        let schema = r#"{"type":"object","properties":{"city":{"type":"string"},"n":{"type":"integer"}},"required":["city","n"]}"#;
        let rules = grammar(&Format::JsonSchema(schema.into())).unwrap();
        assert!(rules.contains("city"), "{rules}");
        for broken in ["{not json", r##"{"$ref":"#/nowhere"}"##] {
            match grammar(&Format::JsonSchema(broken.into())) {
                Err(BackendError::Invalid(m)) => assert!(m.contains("schema"), "{m}"),
                other => panic!("{broken}: {other:?}"),
            }
        }
    }
}
