//! JSON-aware mutation for the HTTP API's bodies: edits of the parsed value (wrong
//! types, extreme numbers, long strings, big containers, fields added, removed or
//! moved from another body), raw tokens JSON has no value for (NaN, 1e999, lone
//! surrogates, nesting past the parser's depth limit, repeated keys), and now and then
//! the protocol crate's byte-level mutation of the text on top.

use relaymesh_protocol::wire::fuzz::{FuzzStats, Mutator};
use serde_json::{json, Map, Value};

/// Field names the API reads, tried as added fields.
const FIELDS: &[&str] = &[
    "model",
    "name",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "prompt",
    "system",
    "raw",
    "stream",
    "stream_options",
    "include_usage",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "max_tokens",
    "max_completion_tokens",
    "num_predict",
    "stop",
    "options",
    "images",
    "n",
    "best_of",
    "response_format",
    "repeat_penalty",
    "presence_penalty",
    "tools",
    "format",
    "context",
    "to",
    "amount",
];

/// Text JSON values cannot hold, spliced in where a value was.
const RAW: &[&str] = &[
    "NaN",
    "-NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1e999",
    "1e-999",
    "-0",
    "18446744073709551616",
    "-9223372036854775809",
    "123456789012345678901234567890",
    "0.1e",
    "01",
    "\"\\ud800\"",
    "\"\\udfff\\ud800\"",
    "\"\\u0000\"",
    "\"\\x\"",
    "{\"model\":\"a\",\"model\":\"b\"}",
    "{\"messages\":[],\"messages\":[{}]}",
    "tru",
    "nul",
    "[1,]",
    "{\"a\":1,}",
];

/// Marks the node a raw token replaces (quoted, as serde_json writes it).
const PLACEHOLDER: &str = "\u{1}raw\u{1}";
const PLACEHOLDER_JSON: &str = "\"\\u0001raw\\u0001\"";

fn count(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count).sum(),
        Value::Object(o) => o.values().map(count).sum(),
        _ => 0,
    }
}

/// The `k`th node in pre-order.
fn nth_mut<'a>(v: &'a mut Value, k: &mut usize) -> Option<&'a mut Value> {
    if *k == 0 {
        return Some(v);
    }
    *k -= 1;
    match v {
        Value::Array(a) => a.iter_mut().find_map(|x| nth_mut(x, k)),
        Value::Object(o) => o.values_mut().find_map(|x| nth_mut(x, k)),
        _ => None,
    }
}

fn random_node<'a>(m: &mut Mutator, v: &'a mut Value) -> &'a mut Value {
    let mut k = m.below(count(v));
    // Pre-order index below the count: always found.
    nth_mut(v, &mut k).expect("index within the tree")
}

fn long_string(m: &mut Mutator) -> String {
    let len = {
        let bits = m.below(19);
        m.below(1 << bits)
    };
    match m.below(3) {
        0 => "x".repeat(len),
        1 => "é🦀\u{0}\u{202e}\n\"\\".repeat(len / 8 + 1),
        _ => (0..len.min(4096))
            .map(|_| char::from_u32(m.below(0x11_0000) as u32).unwrap_or('\u{fffd}'))
            .collect(),
    }
}

fn odd_value(m: &mut Mutator, others: &[Value]) -> Value {
    match m.below(16) {
        0 => Value::Null,
        1 => Value::Bool(m.below(2) == 0),
        2 => json!([0, -1, 1, -2, 2, 3][m.below(6)]),
        3 => json!([u64::MAX, u64::from(u32::MAX), 1 << 53, (1 << 32) + 1][m.below(4)]),
        4 => json!([i64::MIN, i64::MAX, -(1 << 53), i64::from(i32::MIN)][m.below(4)]),
        5 => json!([f64::MAX, f64::MIN, f64::MIN_POSITIVE, 5e-324, -0.0, 0.5][m.below(6)]),
        6 => json!([2.0, 2.000_000_000_1, 1.0, 1.000_000_1, 0.0, 1e-300][m.below(6)]),
        7 | 8 => Value::String(long_string(m)),
        9 => json!(
            [
                "",
                "user",
                "system",
                "assistant",
                "developer",
                "tool",
                "text",
                "image_url"
            ][m.below(8)]
        ),
        10 => Value::Array(Vec::new()),
        11 => {
            let n = {
                let bits = m.below(14);
                m.below(1 << bits)
            };
            let item = odd_small(m);
            Value::Array(vec![item; n])
        }
        12 => Value::Object(Map::new()),
        13 => {
            let n = {
                let bits = m.below(12);
                m.below(1 << bits)
            };
            Value::Object(
                (0..n)
                    .map(|i| (format!("k{i}"), odd_small(m)))
                    .collect::<Map<String, Value>>(),
            )
        }
        14 if !others.is_empty() => {
            let mut other = others[m.below(others.len())].clone();
            random_node(m, &mut other).take()
        }
        _ => json!(["a", "b", "c", "d", "e"]),
    }
}

fn odd_small(m: &mut Mutator) -> Value {
    match m.below(6) {
        0 => Value::Null,
        1 => json!("x"),
        2 => json!(1),
        3 => json!({"type": "text", "text": "t"}),
        4 => json!({"role": "user", "content": "c"}),
        _ => json!([]),
    }
}

/// A token nesting `depth` containers deep.
fn nested(m: &mut Mutator) -> String {
    let depth = 1 + m.below(300);
    if m.below(2) == 0 {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    } else {
        format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
    }
}

/// One mutant of `base` (a JSON body), drawing on `others` for spliced values.
pub fn mutate(m: &mut Mutator, base: &Value, others: &[Value], raw_base: &[u8]) -> Vec<u8> {
    // Byte-level only: broken syntax, truncation, stray bytes.
    if m.below(5) == 0 {
        return m.mutate(raw_base, &[]);
    }
    let mut v = base.clone();
    let mut raw = None;
    for _ in 0..1 + m.below(3) {
        match m.below(6) {
            0 | 1 => *random_node(m, &mut v) = odd_value(m, others),
            2 => {
                if let Value::Object(o) = random_node(m, &mut v) {
                    let field = FIELDS[m.below(FIELDS.len())];
                    o.insert(field.to_owned(), odd_value(m, others));
                }
            }
            3 => match random_node(m, &mut v) {
                Value::Object(o) if !o.is_empty() => {
                    let key = o.keys().nth(m.below(o.len())).cloned().unwrap_or_default();
                    o.remove(&key);
                }
                Value::Array(a) if !a.is_empty() => {
                    let i = m.below(a.len());
                    match m.below(2) {
                        0 => drop(a.remove(i)),
                        _ => a.push(a[i].clone()),
                    }
                }
                _ => {}
            },
            4 => {
                *random_node(m, &mut v) = Value::String(PLACEHOLDER.to_owned());
                raw = Some(if m.below(3) == 0 {
                    nested(m)
                } else {
                    RAW[m.below(RAW.len())].to_owned()
                });
            }
            _ => {
                // Numbers as strings and strings as numbers: the commonest client slip.
                let node = random_node(m, &mut v);
                *node = match node.take() {
                    Value::Number(n) => Value::String(n.to_string()),
                    Value::String(s) => s.parse::<f64>().map(|f| json!(f)).unwrap_or(json!(0)),
                    other => json!([other]),
                };
            }
        }
    }
    let mut text = serde_json::to_string(&v).expect("a Value serialises");
    if let Some(raw) = raw {
        text = text.replace(PLACEHOLDER_JSON, &raw);
    }
    let bytes = text.into_bytes();
    if m.below(4) == 0 {
        m.mutate(&bytes, &[])
    } else {
        bytes
    }
}

/// Throws `iterations` mutants of `corpus` (valid JSON bodies) at `target`, which says
/// whether it accepted each. A panic fails the caller.
pub fn fuzz_json(
    corpus: &[Vec<u8>],
    iterations: u64,
    seed: u64,
    mut target: impl FnMut(&[u8]) -> bool,
) -> FuzzStats {
    let values: Vec<Value> = corpus
        .iter()
        .map(|b| serde_json::from_slice(b).expect("the corpus is JSON"))
        .collect();
    let mut m = Mutator::new(seed);
    let mut stats = FuzzStats::default();
    if corpus.is_empty() {
        return stats;
    }
    for i in 0..iterations {
        let at = (i % corpus.len() as u64) as usize;
        let input = mutate(&mut m, &values[at], &values, &corpus[at]);
        stats.inputs += 1;
        if target(&input) {
            stats.accepted += 1;
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutants_differ_and_raw_tokens_land() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let raw = serde_json::to_vec(&base).unwrap();
        let mut m = Mutator::new(7);
        let mut changed = 0;
        let mut unparsable = 0;
        for _ in 0..2_000 {
            let out = mutate(&mut m, &base, std::slice::from_ref(&base), &raw);
            assert!(!String::from_utf8_lossy(&out).contains("\\u0001raw"));
            changed += usize::from(out != raw);
            unparsable += usize::from(serde_json::from_slice::<Value>(&out).is_err());
        }
        assert!(changed > 1_800, "{changed}");
        assert!(unparsable > 200 && unparsable < 1_500, "{unparsable}");
    }
}
