//! A request's sampling options as a llama.cpp sampler chain.

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;

use super::super::{BackendError, Format, Sampling};

/// Temperature when a request names none (Ollama's default).
pub const DEFAULT_TEMPERATURE: f64 = 0.8;

/// Grammars made lately, by their schema's text: the API checks a request's format by
/// making its grammar, and the engine needs the same grammar moments later.
static MADE: std::sync::Mutex<std::collections::VecDeque<(String, String)>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());
/// How many grammars [`MADE`] keeps (each from a schema of at most 16 KiB).
const MADE_KEPT: usize = 8;

/// The grammar (GBNF) an answer in `format` follows: llama.cpp's own conversion of the
/// JSON schema, as llama-server makes it (made once for the last few schemas).
pub fn grammar(format: &Format) -> Result<String, BackendError> {
    let schema = format.checked_schema().map_err(BackendError::Invalid)?;
    let made = |m: &std::collections::VecDeque<(String, String)>| {
        m.iter().find(|(s, _)| *s == schema).map(|(_, g)| g.clone())
    };
    if let Some(rules) = made(&MADE.lock().expect("grammar cache lock")) {
        return Ok(rules);
    }
    let rules = llama_cpp_2::json_schema_to_grammar(&schema)
        .map_err(|e| BackendError::Invalid(format!("the JSON schema cannot be used: {e}")))?;
    let mut cache = MADE.lock().expect("grammar cache lock");
    if made(&cache).is_none() {
        if cache.len() == MADE_KEPT {
            cache.pop_front();
        }
        cache.push_back((schema, rules.clone()));
    }
    Ok(rules)
}

/// The grammar sampler of an output format's `rules` (made by [`grammar`]).
pub fn grammar_sampler(model: &LlamaModel, rules: &str) -> Result<LlamaSampler, BackendError> {
    LlamaSampler::grammar(model, rules, "root").map_err(|e| {
        BackendError::Invalid(format!("the JSON schema's grammar cannot be used: {e}"))
    })
}

/// The chain for `sampling`: greedy at temperature 0; otherwise top-k, then top-p, then
/// temperature, then a draw seeded by the request's seed (a random one without). An
/// output format's grammar is a sampler of its own ([`guarded`]).
pub fn chain(sampling: &Sampling) -> Result<LlamaSampler, BackendError> {
    check(sampling)?;
    let temperature = sampling.temperature.unwrap_or(DEFAULT_TEMPERATURE);
    let mut steps = Vec::new();
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

/// How every failure of an output format's grammar begins: it is the app's request,
/// not the supplier, that could not be followed (the supplier bills what it sent).
pub const FORMAT_FAILURE: &str = "the output format";

/// Longest one token's sampling under a grammar may take, and the most it may take on
/// average (after the first [`GRAMMAR_GRACE_TOKENS`] tokens): past either, the format's
/// grammar is too costly to follow (its stacks have multiplied) and the sequence ends,
/// before its next tokens cost every stream of the model more. An honest JSON grammar
/// takes a few milliseconds a token.
pub const GRAMMAR_STEP_BUDGET: std::time::Duration = std::time::Duration::from_secs(1);
/// See [`GRAMMAR_STEP_BUDGET`].
pub const GRAMMAR_MEAN_BUDGET: std::time::Duration = std::time::Duration::from_millis(50);
/// See [`GRAMMAR_STEP_BUDGET`].
pub const GRAMMAR_GRACE_TOKENS: u32 = 20;

/// The time a sequence spent sampling under its grammar, against the budgets.
#[derive(Default)]
pub struct GrammarClock {
    spent: std::time::Duration,
    tokens: u32,
}

impl GrammarClock {
    /// Counts one token's sampling; why the sequence must end, if it must.
    pub fn add(&mut self, took: std::time::Duration) -> Result<(), String> {
        self.spent += took;
        self.tokens += 1;
        let mean_over =
            self.tokens > GRAMMAR_GRACE_TOKENS && self.spent > GRAMMAR_MEAN_BUDGET * self.tokens;
        if took > GRAMMAR_STEP_BUDGET || mean_over {
            return Err(format!(
                "the output format is too costly to follow: {} ms for its last token under its grammar, {} ms for {} tokens",
                took.as_millis(),
                self.spent.as_millis(),
                self.tokens
            ));
        }
        Ok(())
    }
}

/// Samples a token under a grammar, as llama-server does and without trusting it.
/// The token is drawn without the grammar first, and only that one is checked against
/// it (one candidate, not the vocabulary); only when the grammar refuses it is every
/// candidate checked and the draw made again among those allowed. llama.cpp's own
/// `sample` aborts the process (or throws across the FFI boundary) when a grammar
/// allows no token at all, so a token is taken here only if some token is allowed, and
/// the grammar is advanced with the call that catches its exceptions. The time it took
/// is counted on `clock`.
pub fn guarded(
    chain: &mut LlamaSampler,
    grammar: &mut LlamaSampler,
    ctx: &llama_cpp_2::context::LlamaContext<'_>,
    batch_index: i32,
    clock: &mut GrammarClock,
) -> Result<llama_cpp_2::token::LlamaToken, String> {
    use llama_cpp_2::token::data_array::LlamaTokenDataArray;
    let started = std::time::Instant::now();
    let drawn = |candidates: &LlamaTokenDataArray| {
        candidates
            .selected
            .and_then(|i| candidates.data.get(i))
            .filter(|d| d.logit().is_finite())
            .copied()
    };
    let mut candidates = ctx.token_data_array_ith(batch_index);
    candidates.apply_sampler(chain);
    let first = drawn(&candidates).filter(|d| {
        let mut one = LlamaTokenDataArray::new(vec![*d], false);
        one.apply_sampler(grammar);
        one.data[0].logit().is_finite()
    });
    let chosen = match first {
        Some(d) => d.id(),
        None => {
            let mut candidates = ctx.token_data_array_ith(batch_index);
            candidates.apply_sampler(grammar);
            candidates.apply_sampler(chain);
            drawn(&candidates)
                .map(|d| d.id())
                .ok_or("the output format allows no next token: the schema cannot be met")?
        }
    };
    grammar
        .try_accept(chosen)
        .map_err(|e| format!("the output format's grammar failed: {e}"))?;
    chain.accept(chosen);
    clock.add(started.elapsed())?;
    Ok(chosen)
}

/// Refuses sampling values that mean nothing.
pub(super) fn check(sampling: &Sampling) -> Result<(), BackendError> {
    let temperature = sampling.temperature.unwrap_or(DEFAULT_TEMPERATURE);
    if !temperature.is_finite() || temperature < 0.0 {
        return Err(BackendError::Invalid(format!(
            "temperature {temperature} is not a number of 0 or more"
        )));
    }
    if let Some(p) = sampling.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
        return Err(BackendError::Invalid(format!("top_p {p} is not in (0, 1]")));
    }
    if let Some(n) = sampling
        .logprobs
        .filter(|n| *n > super::super::MAX_TOP_LOGPROBS)
    {
        return Err(BackendError::Invalid(format!(
            "top_logprobs {n} is more than {}",
            super::super::MAX_TOP_LOGPROBS
        )));
    }
    Ok(())
}

/// The log probability of token `chosen` under `logits` (their log-softmax: the
/// model's own distribution, before temperature, top-k or top-p), and the `top` most
/// likely tokens with theirs, most likely first (the lower id first among equals).
pub fn logprobs(logits: &[f32], chosen: usize, top: usize) -> (f32, Vec<(usize, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let norm = f64::from(max) + sum.ln();
    // A logit that is not a number makes every value meaningless: none is told as a
    // probability then (negative infinity, told as -9999).
    let logprob = |l: f32| match f64::from(l) - norm {
        v if v.is_nan() => f32::NEG_INFINITY,
        v => v.min(0.0) as f32,
    };
    // A short sorted list beats sorting the vocabulary: `top` is at most 20.
    let mut best: Vec<(usize, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (id, &l) in logits.iter().enumerate() {
            if best.len() < top || l > best[best.len() - 1].1 {
                let at = best.partition_point(|&(_, b)| b >= l);
                best.insert(at, (id, l));
                best.truncate(top);
            }
        }
    }
    let chosen = logits
        .get(chosen)
        .map_or(f32::NEG_INFINITY, |&l| logprob(l));
    (
        chosen,
        best.into_iter().map(|(id, l)| (id, logprob(l))).collect(),
    )
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
        let asking = |n| Sampling {
            logprobs: Some(n),
            ..Sampling::default()
        };
        assert!(check(&asking(20)).is_ok());
        assert!(check(&asking(21)).is_err());
    }

    #[test]
    fn log_probabilities_are_the_logits_log_softmax() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, -1.0];
        let (chosen, top) = logprobs(&logits, 2, 3);
        let norm = logits.iter().map(|&l| f64::from(l).exp()).sum::<f64>().ln();
        let expect = |l: f32| (f64::from(l) - norm) as f32;
        assert!((chosen - expect(2.0)).abs() < 1e-6);
        // Most likely first, the lower id first among equals.
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 3, 2]);
        assert!((top[0].1 - expect(3.0)).abs() < 1e-6);
        let total: f32 = (0..logits.len())
            .map(|i| logprobs(&logits, i, 0).0.exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-5);
        // No alternatives asked, none told; and a large vocabulary's every logit
        // very negative still gives probabilities that sum to one.
        assert!(logprobs(&logits, 0, 0).1.is_empty());
        let far = vec![-1e4f32; 50_000];
        assert!((logprobs(&far, 7, 1).0 - -(50_000f32).ln()).abs() < 1e-3);
        // A logit that is not a number gives no probability anywhere, not 1.
        let broken = [1.0, f32::NAN, 2.0];
        assert_eq!(logprobs(&broken, 0, 0).0, f32::NEG_INFINITY);
    }

    #[test]
    fn a_schema_s_grammar_is_made_once_for_the_api_and_the_engine() {
        let schema =
            |n: usize| Format::JsonSchema(format!(r#"{{"type":"string","maxLength":{n}}}"#));
        let first = grammar(&schema(901)).unwrap();
        let kept = |n: usize| {
            let text = schema(n).checked_schema().unwrap();
            MADE.lock().unwrap().iter().any(|(s, _)| *s == text)
        };
        assert!(kept(901));
        assert_eq!(grammar(&schema(901)).unwrap(), first);
        // Bounded: older schemas make way (other tests may add theirs meanwhile).
        for n in 0..MADE_KEPT {
            grammar(&schema(910 + n)).unwrap();
        }
        assert!(MADE.lock().unwrap().len() <= MADE_KEPT);
        assert!(!kept(901));
    }

    #[test]
    fn a_grammar_too_costly_to_follow_ends_its_sequence() {
        let ms = std::time::Duration::from_millis;
        let mut honest = GrammarClock::default();
        for _ in 0..500 {
            honest.add(ms(5)).unwrap();
        }
        let mut slow_start = GrammarClock::default();
        slow_start.add(ms(900)).unwrap();
        for _ in 0..100 {
            slow_start.add(ms(5)).unwrap();
        }
        assert!(GrammarClock::default().add(ms(1500)).is_err());
        let mut growing = GrammarClock::default();
        let ended = (0..1000).find(|_| growing.add(ms(80)).is_err());
        assert_eq!(ended, Some(GRAMMAR_GRACE_TOKENS as usize));
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
