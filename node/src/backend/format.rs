//! Output formats: the shape an answer must take (JSON, or JSON under a schema), and
//! the checks a schema from an app passes before an engine compiles it.
//!
//! A schema is the app's choice, and the supplier pays for it on every token: llama.cpp
//! keeps one grammar stack per way the text so far can be read, so alternatives nested
//! in alternatives (`anyOf` in `anyOf`, through `$ref`s too) multiply the stacks each
//! sampled token is checked against, and a schema of a few hundred bytes could make one
//! token take minutes in the engine's one decode thread. So a schema is refused unless
//! it is JSON nested at most 128 deep, its alternatives multiply to at most
//! [`MAX_BRANCHES`] along any path, and it has at most [`MAX_PARTS`] parts with its
//! references followed. (Written here: no crate bounds a schema's ambiguity.)

use serde_json::Value;

/// Most ways one text may be read under a schema: the product of the alternatives
/// (`anyOf`, `oneOf`, a list of types, `|` in a pattern) nested along any path.
pub const MAX_BRANCHES: u64 = 64;

/// Most parts (subschemas) a schema may have, counted with its `$ref`s followed.
pub const MAX_PARTS: usize = 4096;

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
    /// The `$ref`s being followed (one met again is recursion: the grammar recurses).
    path: Vec<&'a str>,
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
            here = here.saturating_mul(pattern.matches('|').count() as u64 + 1);
        }
        let branches = branches.saturating_mul(here);
        if branches > MAX_BRANCHES {
            return Err(format!(
                "the JSON schema nests too many alternatives: a text could be read {branches} ways or more (at most {MAX_BRANCHES})"
            ));
        }
        if let Some(Value::String(reference)) = map.get("$ref") {
            if !self.path.contains(&reference.as_str()) {
                let target = self
                    .resolve(reference)
                    .ok_or_else(|| format!("the JSON schema's $ref {reference:?} leads nowhere"))?;
                self.path.push(reference);
                self.visit(target, branches)?;
                self.path.pop();
            }
        }
        for (key, value) in map {
            match key.as_str() {
                "anyOf" | "oneOf" | "allOf" | "prefixItems" => {
                    if let Value::Array(parts) = value {
                        for part in parts {
                            self.visit(part, branches)?;
                        }
                    }
                }
                "properties" | "patternProperties" => {
                    if let Value::Object(parts) = value {
                        for part in parts.values() {
                            self.visit(part, branches)?;
                        }
                    }
                }
                "items"
                | "additionalProperties"
                | "not"
                | "contains"
                | "if"
                | "then"
                | "else"
                | "propertyNames" => self.visit(value, branches)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// A local reference (`#`, `#/$defs/name`, any JSON pointer into the schema).
    fn resolve(&self, reference: &str) -> Option<&'a Value> {
        let pointer = reference.strip_prefix('#')?;
        self.root.pointer(pointer)
    }
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
            "$defs": { "pet": { "anyOf": [{ "type": "string" }, { "$ref": "#/$defs/pet" }] } }
        }"##;
        let compact = check(person).unwrap();
        assert!(!compact.contains('\n'));
    }

    #[test]
    fn schemas_that_would_multiply_grammar_stacks_are_refused() {
        // Seven levels of two alternatives, written out and through references.
        let mut nested = r#"{"type":"string"}"#.to_string();
        for _ in 0..7 {
            nested = format!(r#"{{"anyOf":[{nested},{nested}]}}"#);
        }
        assert!(check(&nested).unwrap_err().contains("alternatives"));
        let mut defs = Vec::new();
        for i in 0..7 {
            defs.push(format!(
                r##""d{i}":{{"anyOf":[{{"$ref":"#/$defs/d{n}"}},{{"$ref":"#/$defs/d{n}"}}]}}"##,
                n = i + 1
            ));
        }
        defs.push(r#""d7":{"type":"string"}"#.into());
        let chained = format!(
            r##"{{"$ref":"#/$defs/d0","$defs":{{{}}}}}"##,
            defs.join(",")
        );
        assert!(check(&chained).unwrap_err().contains("alternatives"));
        // Six levels (64 ways) are within the bound.
        let mut six = r#"{"type":"string"}"#.to_string();
        for _ in 0..6 {
            six = format!(r#"{{"anyOf":[{six},{six}]}}"#);
        }
        assert!(check(&six).is_ok());
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
        let wide = format!(
            r#"{{"type":"object","properties":{{{}}}}}"#,
            (0..5000)
                .map(|i| format!(r#""p{i}":{{}}"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(check(&wide).unwrap_err().contains("parts"));
    }
}
