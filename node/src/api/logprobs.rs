//! Log probabilities as the APIs ask for and tell them: OpenAI chat's and Ollama's
//! `logprobs` / `top_logprobs` (one entry per token with its alternatives), and the
//! legacy completions API's `logprobs: n` (parallel lists).

use serde_json::{json, Map, Value};

use super::error::ApiError;
use crate::backend::{TokenLogprob, TokenProb, MAX_TOP_LOGPROBS};

/// What a request asks for: `logprobs` (true, or for the legacy completions API a
/// count of alternatives) and `top_logprobs`; `None` when it asks for none.
pub fn asked(logprobs: Option<&Value>, top: Option<&Value>) -> Result<Option<u8>, ApiError> {
    let count = |name: &str, v: &Value| match v.as_u64() {
        Some(n) if n <= u64::from(MAX_TOP_LOGPROBS) => Ok(n as u8),
        _ => Err(ApiError::bad_param(
            name,
            format!("{name} is a whole number from 0 to {MAX_TOP_LOGPROBS}"),
        )),
    };
    let top = top
        .filter(|v| !v.is_null())
        .map(|v| count("top_logprobs", v))
        .transpose()?;
    match logprobs.unwrap_or(&Value::Null) {
        Value::Null | Value::Bool(false) => match top {
            Some(n) if n > 0 => Err(ApiError::bad_param(
                "top_logprobs",
                "top_logprobs needs logprobs set to true",
            )),
            _ => Ok(None),
        },
        Value::Bool(true) => Ok(Some(top.unwrap_or(0))),
        // The completions API's `logprobs: n` asks for n alternatives.
        n @ Value::Number(_) => count("logprobs", n).map(Some),
        _ => Err(ApiError::bad_param(
            "logprobs",
            "logprobs is true or false (or, for completions, a number of alternatives)",
        )),
    }
}

/// Refuses log probabilities asked together with tools: an answer made under tools is
/// read whole and becomes calls, which have no tokens of their own to tell.
pub fn refuse_with_tools(asked: Option<u8>, tools: bool) -> Result<(), ApiError> {
    if asked.is_some() && tools {
        return Err(ApiError::bad_param(
            "logprobs",
            "logprobs cannot be asked for together with tools on this node",
        ));
    }
    Ok(())
}

fn choice(p: &TokenProb) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("token".into(), json!(p.text()));
    m.insert("logprob".into(), json!(p.logprob));
    m.insert("bytes".into(), json!(p.bytes));
    m
}

/// The entries OpenAI's chat API (`logprobs.content`) and Ollama's API (`logprobs`)
/// give: each token, its log probability, its bytes and its alternatives.
pub fn entries(tokens: &[TokenLogprob]) -> Value {
    tokens
        .iter()
        .map(|t| {
            let mut entry = choice(&t.chosen);
            let top: Vec<Value> = t.top.iter().map(|p| Value::Object(choice(p))).collect();
            entry.insert("top_logprobs".into(), Value::Array(top));
            Value::Object(entry)
        })
        .collect()
}

/// Where the next token's text begins in an answer: the characters so far, and the
/// bytes of a character a token's end cut, which the next token finishes.
#[derive(Default)]
pub struct Offset {
    chars: usize,
    cut: Vec<u8>,
}

impl Offset {
    /// The offset of a token of `bytes`, and moves past it.
    fn take(&mut self, bytes: &[u8]) -> usize {
        let at = self.chars;
        self.cut.extend_from_slice(bytes);
        let mut from = 0;
        loop {
            match std::str::from_utf8(&self.cut[from..]) {
                Ok(text) => {
                    self.chars += text.chars().count();
                    from = self.cut.len();
                    break;
                }
                Err(e) => {
                    let good = &self.cut[from..from + e.valid_up_to()];
                    self.chars += std::str::from_utf8(good).map_or(0, |t| t.chars().count());
                    from += e.valid_up_to();
                    match e.error_len() {
                        // A character still cut at the end waits for the next token.
                        None => break,
                        // Bytes that can never be one count as one character (as a
                        // lossy decode shows them).
                        Some(len) => {
                            self.chars += 1;
                            from += len;
                        }
                    }
                }
            }
        }
        self.cut.drain(..from);
        at
    }
}

/// The legacy completions API's `logprobs` object for `tokens`, whose text begins at
/// `offset` in the answer (moved past them).
pub fn legacy(tokens: &[TokenLogprob], offset: &mut Offset) -> Value {
    let text_offset: Vec<usize> = tokens
        .iter()
        .map(|t| offset.take(&t.chosen.bytes))
        .collect();
    let top: Vec<Value> = tokens
        .iter()
        .map(|t| {
            t.top
                .iter()
                .map(|p| (p.text(), json!(p.logprob)))
                .collect::<Map<_, _>>()
                .into()
        })
        .collect();
    json!({
        "tokens": tokens.iter().map(|t| t.chosen.text()).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.chosen.logprob).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": text_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str, logprob: f32, top: &[(&str, f32)]) -> TokenLogprob {
        let prob = |text: &str, logprob| TokenProb {
            bytes: text.as_bytes().to_vec(),
            logprob,
        };
        TokenLogprob {
            chosen: prob(text, logprob),
            top: top.iter().map(|(t, l)| prob(t, *l)).collect(),
        }
    }

    #[test]
    fn what_a_request_asks_for() {
        let ask = |l: Value, t: Value| asked(Some(&l), Some(&t));
        assert_eq!(ask(json!(true), json!(3)).unwrap(), Some(3));
        assert_eq!(ask(json!(true), Value::Null).unwrap(), Some(0));
        assert_eq!(ask(json!(false), Value::Null).unwrap(), None);
        assert_eq!(ask(Value::Null, json!(0)).unwrap(), None);
        assert_eq!(ask(json!(2), Value::Null).unwrap(), Some(2));
        for (l, t) in [
            (json!(true), json!(21)),
            (json!(true), json!(-1)),
            (json!(false), json!(2)),
            (json!("yes"), Value::Null),
            (json!(99), Value::Null),
        ] {
            let e = ask(l.clone(), t.clone()).unwrap_err();
            assert!(e.message.contains("logprobs"), "{l} {t}: {}", e.message);
        }
    }

    #[test]
    fn entries_and_the_legacy_lists() {
        let tokens = [
            token("Hé", -0.5, &[("Hé", -0.5), ("Hi", -1.0)]),
            token("llo", -0.25, &[("llo", -0.25), ("y", -2.0)]),
        ];
        let e = entries(&tokens);
        assert_eq!(e[0]["token"], "Hé");
        assert_eq!(e[0]["bytes"], json!([72, 195, 169]));
        assert_eq!(e[1]["top_logprobs"][1]["token"], "y");
        let mut offset = Offset::default();
        offset.take(b"abc");
        let l = legacy(&tokens, &mut offset);
        assert_eq!(l["text_offset"], json!([3, 5]));
        assert_eq!(offset.chars, 8);
        // A character cut across two tokens counts once, after both.
        let mut offset = Offset::default();
        let e_acute = "é".as_bytes();
        let at: Vec<usize> = [&e_acute[..1], &e_acute[1..], b"x"]
            .iter()
            .map(|b| offset.take(b))
            .collect();
        assert_eq!(at, [0, 0, 1]);
        assert_eq!(offset.chars, 2);
        // Bytes that are no character count one each, and what follows them counts.
        offset.take(&[0xff, b'a', 0xfe, b'b', 0xe2]);
        assert_eq!((offset.chars, offset.cut.len()), (6, 1));
        assert_eq!(l["tokens"], json!(["Hé", "llo"]));
        assert_eq!(l["token_logprobs"], json!([-0.5, -0.25]));
        assert_eq!(l["top_logprobs"][0]["Hi"], json!(-1.0));
    }
}
