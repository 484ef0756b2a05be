//! Output formats: the shape an answer must take (JSON, or JSON under a schema), and
//! the checks a schema from an app passes before an engine compiles it.
//!
//! A schema is the app's choice, and the supplier pays for it on every token: llama.cpp
//! keeps one grammar stack per way the text so far can be read, so alternatives nested
//! in alternatives (`anyOf` in `anyOf`, through `$ref`s too) multiply the stacks each
//! sampled token is checked against, and a schema of a few hundred bytes could make one
//! token take minutes in the engine's one decode thread; and llama.cpp's compilation of
//! a schema costs more than linear time in some of its parts (an object's optional
//! properties, long names, literals repeated in patterns). So a schema is refused unless
//! it is JSON nested at most 128 deep, its alternatives multiply to at most
//! [`MAX_BRANCHES`] along any path (a reference back into itself through alternatives
//! multiplies without end, and is refused), it has at most [`MAX_PARTS`] parts with its
//! references followed, and its objects, names, patterns and counts stay within the
//! bounds below. References are local JSON pointers without escapes, read as llama.cpp
//! reads them. The engine also times each token under a grammar
//! (`embedded::sampler::GrammarClock`), for what a static check cannot see.
//! (Written here: no crate bounds a schema's ambiguity.)

use serde_json::Value;

/// Most ways one text may be read under a schema: the product of the alternatives
/// (`anyOf`, `oneOf`, a list of types, `|` in a pattern) nested along any path.
pub const MAX_BRANCHES: u64 = 256;

/// Most parts (subschemas) a schema may have, counted with its `$ref`s followed.
pub const MAX_PARTS: usize = 4096;

/// Most properties one object may list.
pub const MAX_PROPERTIES: usize = 128;

/// Longest property name or reference, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// Longest `pattern`, in bytes.
pub const MAX_PATTERN_BYTES: usize = 1024;

/// Largest count a schema may ask for: `minLength`, `maxLength`, `minItems`,
/// `maxItems`, `minProperties`, `maxProperties`, and `{n,m}` in a pattern.
pub const MAX_COUNT: u64 = 1024;

/// The shape an answer must take. The embedded engine constrains its sampling with a
/// grammar made from it, so the answer always parses (unless `max_tokens` cuts it
/// short); upstream backends pass it on as their API's own field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    /// A JSON object.
    Json,
    /// JSON valid under this JSON Schema (its JSON text).
    JsonSchema(String),
}

impl Format {
    /// The JSON schema the answer must follow, as given.
    pub fn schema(&self) -> &str {
        match self {
            Format::Json => r#"{"type":"object"}"#,
            Format::JsonSchema(schema) => schema,
        }
    }

    /// The schema, checked (see the module's doc) and in compact JSON text; or why it
    /// is refused.
    pub fn checked_schema(&self) -> Result<String, String> {
        let schema: Value = serde_json::from_str(self.schema())
            .map_err(|e| format!("the JSON schema is not JSON (nested at most 128 deep): {e}"))?;
        if !schema.is_object() && !schema.is_boolean() {
            return Err("a JSON schema is an object".into());
        }
        let mut walk = Walk {
            root: &schema,
            parts: 0,
            path: Vec::new(),
        };
        walk.visit(&schema, 1)?;
        Ok(schema.to_string())
    }
}

struct Walk<'a> {
    root: &'a Value,
    parts: usize,
    /// The `$ref`s being followed, with the ways a text could be read when each was
    /// met (one met again is recursion: the grammar recurses).
    path: Vec<(&'a str, u64)>,
}

impl<'a> Walk<'a> {
    fn visit(&mut self, node: &'a Value, branches: u64) -> Result<(), String> {
        self.parts += 1;
        if self.parts > MAX_PARTS {
            return Err(format!(
                "the JSON schema has more than {MAX_PARTS} parts (its references followed)"
            ));
        }
        let Value::Object(map) = node else {
            return Ok(());
        };
        let mut here: u64 = 1;
        for key in ["anyOf", "oneOf"] {
            if let Some(Value::Array(alternatives)) = map.get(key) {
                here = here.saturating_mul(alternatives.len().max(1) as u64);
            }
        }
        if let Some(Value::Array(types)) = map.get("type") {
            here = here.saturating_mul(types.len().max(1) as u64);
        }
        if let Some(Value::String(pattern)) = map.get("pattern") {
            check_pattern(pattern)?;
            here = here.saturating_mul(pattern.matches('|').count() as u64 + 1);
        }
        for key in [
            "minLength",
            "maxLength",
            "minItems",
            "maxItems",
            "minProperties",
            "maxProperties",
        ] {
            if let Some(n) = map.get(key).and_then(Value::as_f64) {
                if n > MAX_COUNT as f64 {
                    return Err(format!("the JSON schema's {key} is over {MAX_COUNT}"));
                }
            }
        }
        // Bounds no value meets: the grammar would allow no token at all.
        for (low, high) in [
            ("minimum", "maximum"),
            ("exclusiveMinimum", "exclusiveMaximum"),
            ("minimum", "exclusiveMaximum"),
            ("exclusiveMinimum", "maximum"),
            ("minLength", "maxLength"),
            ("minItems", "maxItems"),
            ("minProperties", "maxProperties"),
        ] {
            let (Some(l), Some(h)) = (
                map.get(low).and_then(Value::as_f64),
                map.get(high).and_then(Value::as_f64),
            ) else {
                continue;
            };
            if l > h || (l == h && (low.starts_with("exclusive") || high.starts_with("exclusive")))
            {
                return Err(format!(
                    "the JSON schema's {low} {l} and {high} {h} leave no value: the answer could not be written"
                ));
            }
        }
        if map
            .get("enum")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
        {
            return Err("the JSON schema's enum is empty: the answer could not be written".into());
        }
        if let Some(Value::Object(properties)) = map.get("properties") {
            if properties.len() > MAX_PROPERTIES {
                return Err(format!(
                    "an object in the JSON schema has more than {MAX_PROPERTIES} properties"
                ));
            }
            if let Some(name) = properties.keys().find(|n| n.len() > MAX_NAME_BYTES) {
                return Err(format!(
                    "the JSON schema's property name {:?}… is over {MAX_NAME_BYTES} bytes",
                    name.chars().take(16).collect::<String>()
                ));
            }
        }
        let branches = branches.saturating_mul(here);
        if branches > MAX_BRANCHES {
            return Err(format!(
                "the JSON schema nests too many alternatives: a text could be read {branches} ways or more (at most {MAX_BRANCHES})"
            ));
        }
        if let Some(Value::String(reference)) = map.get("$ref") {
            match self.path.iter().find(|(r, _)| r == reference) {
                // Recursion: harmless unless alternatives lie on the way round, which
                // then multiply once per time round.
                Some((_, at)) if branches > *at => {
                    return Err(format!(
                        "the JSON schema refers back into itself ({reference}) through alternatives: a text could be read ever more ways"
                    ))
                }
                Some(_) => {}
                None => {
                    let target = self.resolve(reference)?;
                    self.path.push((reference, branches));
                    self.visit(target, branches)?;
                    self.path.pop();
                }
            }
        }
        for (key, value) in map {
            match key.as_str() {
                "anyOf" | "oneOf" | "allOf" | "prefixItems" | "items" => match value {
                    Value::Array(parts) => {
                        for part in parts {
                            self.visit(part, branches)?;
                        }
                    }
                    other => self.visit(other, branches)?,
                },
                "properties" | "patternProperties" | "dependentSchemas" => {
                    if let Value::Object(parts) = value {
                        for part in parts.values() {
                            self.visit(part, branches)?;
                        }
                    }
                }
                "additionalProperties"
                | "not"
                | "contains"
                | "if"
                | "then"
                | "else"
                | "propertyNames"
                | "unevaluatedItems"
                | "unevaluatedProperties"
                | "additionalItems" => self.visit(value, branches)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// A local reference: `#`, or `#/` and a JSON pointer into the schema without
    /// escapes (`~`, `%`), which llama.cpp would read otherwise than serde_json.
    fn resolve(&self, reference: &str) -> Result<&'a Value, String> {
        let plain = reference.len() <= MAX_NAME_BYTES
            && (reference == "#" || reference.starts_with("#/"))
            && reference
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"#/_-$.".contains(&b));
        if !plain {
            return Err(format!(
                "the JSON schema's $ref {reference:?} is not a plain local reference (#/… of letters, digits, _-$.)"
            ));
        }
        self.root
            .pointer(&reference[1..])
            .ok_or_else(|| format!("the JSON schema's $ref {reference:?} leads nowhere"))
    }
}

/// A pattern's length and the counts it asks for (`{n}`, `{n,m}`) are bounded.
fn check_pattern(pattern: &str) -> Result<(), String> {
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err(format!(
            "the JSON schema's pattern is over {MAX_PATTERN_BYTES} bytes"
        ));
    }
    for count in pattern.split('{').skip(1) {
        let Some((inside, _)) = count.split_once('}') else {
            continue;
        };
        for n in inside.split(',') {
            if n.trim().parse::<u64>().is_ok_and(|n| n > MAX_COUNT) {
                return Err(format!(
                    "the JSON schema's pattern asks for {{{inside}}}: counts are at most {MAX_COUNT}"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(schema: &str) -> Result<String, String> {
        Format::JsonSchema(schema.into()).checked_schema()
    }

    #[test]
    fn ordinary_schemas_pass_in_compact_text() {
        assert_eq!(
            Format::Json.checked_schema().unwrap(),
            r#"{"type":"object"}"#
        );
        let person = r##"{
            "type": "object",
            "properties": {
                "name": { "type": "string" },
                "age": { "type": ["integer", "null"] },
                "pets": { "type": "array", "items": { "$ref": "#/$defs/pet" } }
            },
            "required": ["name"],
            "$defs": { "pet": { "type": "object", "properties": {
                "name": { "type": "string" },
                "friends": { "type": "array", "items": { "$ref": "#/$defs/pet" } }
            } } }
        }"##;
        let compact = check(person).unwrap();
        assert!(!compact.contains('\n'));
    }

    #[test]
    fn schemas_that_would_multiply_grammar_stacks_are_refused() {
        // Nine levels of two alternatives, written out and through references.
        let mut nested = r#"{"type":"string"}"#.to_string();
        for _ in 0..9 {
            nested = format!(r#"{{"anyOf":[{nested},{nested}]}}"#);
        }
        assert!(check(&nested).unwrap_err().contains("alternatives"));
        let mut defs = Vec::new();
        for i in 0..9 {
            defs.push(format!(
                r##""d{i}":{{"anyOf":[{{"$ref":"#/$defs/d{n}"}},{{"$ref":"#/$defs/d{n}"}}]}}"##,
                n = i + 1
            ));
        }
        defs.push(r#""d9":{"type":"string"}"#.into());
        let chained = format!(
            r##"{{"$ref":"#/$defs/d0","$defs":{{{}}}}}"##,
            defs.join(",")
        );
        assert!(check(&chained).unwrap_err().contains("alternatives"));
        // Eight levels (256 ways) are within the bound.
        let mut eight = r#"{"type":"string"}"#.to_string();
        for _ in 0..8 {
            eight = format!(r#"{{"anyOf":[{eight},{eight}]}}"#);
        }
        assert!(check(&eight).is_ok());
    }

    #[test]
    fn ways_round_recursion_tuples_and_escaped_references_are_caught() {
        // Two alternatives on the way round a reference into itself (found by review).
        let round = r##"{"$ref":"#/$defs/x","$defs":{"x":{"anyOf":[
            {"type":"array","items":{"$ref":"#/$defs/x"},"minItems":1},
            {"type":"array","items":{"$ref":"#/$defs/x"},"minItems":1}]}}}"##;
        assert!(check(round).unwrap_err().contains("refers back"));
        // Recursion without alternatives on the way round is fine.
        let tree = r##"{"$ref":"#/$defs/t","$defs":{"t":{"type":"object",
            "properties":{"children":{"type":"array","items":{"$ref":"#/$defs/t"}}}}}}"##;
        assert!(check(tree).is_ok());
        // Alternatives under a tuple's items are counted (found by review).
        let mut nested = r#"{"type":"string"}"#.to_string();
        for _ in 0..9 {
            nested = format!(r#"{{"anyOf":[{nested},{nested}]}}"#);
        }
        let tuple = format!(r#"{{"type":"array","items":[{nested}]}}"#);
        assert!(check(&tuple).unwrap_err().contains("alternatives"));
        // A pointer serde_json and llama.cpp would read differently (found by review).
        let escaped = r##"{"$ref":"#/$defs/a~1b","$defs":{"a/b":{"type":"string"}}}"##;
        assert!(check(escaped)
            .unwrap_err()
            .contains("plain local reference"));
    }

    #[test]
    fn bounds_no_value_meets_are_refused() {
        for schema in [
            r#"{"type":"integer","minimum":5,"maximum":3}"#,
            r#"{"type":"number","exclusiveMinimum":1,"exclusiveMaximum":1}"#,
            r#"{"type":"string","minLength":9,"maxLength":2}"#,
            r#"{"type":"array","minItems":3,"maxItems":1}"#,
            r#"{"enum":[]}"#,
        ] {
            assert!(check(schema).unwrap_err().contains("no"), "{schema}");
        }
        assert!(check(r#"{"type":"integer","minimum":3,"maximum":3}"#).is_ok());
    }

    #[test]
    fn costly_compilations_are_refused() {
        let many = format!(
            r#"{{"type":"object","properties":{{{}}}}}"#,
            (0..200)
                .map(|i| format!(r#""p{i}":{{}}"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(check(&many).unwrap_err().contains("properties"));
        let long_name = format!(
            r#"{{"type":"object","properties":{{"{}":{{}}}}}}"#,
            " ".repeat(300)
        );
        assert!(check(&long_name).unwrap_err().contains("bytes"));
        let repeated = format!(
            r#"{{"type":"string","pattern":"^{}{{2000}}$"}}"#,
            "a".repeat(10)
        );
        assert!(check(&repeated).unwrap_err().contains("counts"));
        assert!(check(r#"{"type":"string","maxLength":100000}"#)
            .unwrap_err()
            .contains("maxLength"));
        assert!(check(r#"{"type":"string","pattern":"^[a-z]{2,8}$","maxLength":64}"#).is_ok());
    }

    #[test]
    fn deep_broken_and_dangling_schemas_are_refused() {
        let deep = "{\"items\":".repeat(200) + "{}" + &"}".repeat(200);
        assert!(check(&deep).unwrap_err().contains("128"));
        assert!(check("{not json").is_err());
        assert!(check("[1]").is_err());
        assert!(check(r##"{"$ref":"#/$defs/missing"}"##)
            .unwrap_err()
            .contains("leads nowhere"));
        // Many parts through references: 64 objects of 100 properties each.
        let defs: Vec<String> = (0..64)
            .map(|d| {
                let props: Vec<String> = (0..100).map(|i| format!(r#""p{i}":{{}}"#)).collect();
                format!(
                    r#""d{d}":{{"type":"object","properties":{{{}}}}}"#,
                    props.join(",")
                )
            })
            .collect();
        let refs: Vec<String> = (0..64)
            .map(|d| format!(r##""r{d}":{{"$ref":"#/$defs/d{d}"}}"##))
            .collect();
        let wide = format!(
            r#"{{"type":"object","properties":{{{}}},"$defs":{{{}}}}}"#,
            refs.join(","),
            defs.join(",")
        );
        assert!(check(&wide).unwrap_err().contains("parts"));
    }
}
