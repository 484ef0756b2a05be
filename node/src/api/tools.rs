//! Tool calling for every API shape (OpenAI, Ollama, Anthropic), on any model.
//!
//! The tools become a system message that lists them and says how to answer, and a
//! JSON schema the answer must follow: `{"tool_calls": [{"name", "arguments"}, …]}` to
//! call, or `{"response": …}` to answer (only the first with `tool_choice` required or
//! a named function). The schema travels to the supplier as the request's output
//! format, where grammar-constrained sampling makes the answer parse, so a call always
//! names a listed tool with arguments valid under its parameters. Earlier calls and
//! their results go back into the conversation in the same JSON, so the model reads
//! what it wrote. This is the generic format llama.cpp's server uses for models whose
//! templates know no tools; a model's own tool template is not used yet.

use serde_json::{json, Value};

use super::error::ApiError;
use super::infer::new_id;
use crate::backend::{ChatMessage, Format, GenRequest, Prompt, Role};

/// Most tools one request may list.
pub const MAX_TOOLS: usize = 64;

/// A function the model may call.
#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: String,
    /// A JSON schema of its arguments (an object).
    pub parameters: Value,
}

/// Which calls the model may make.
#[derive(Clone, Debug, PartialEq)]
pub enum ToolChoice {
    /// Call tools or answer.
    Auto,
    /// Call at least one tool.
    Required,
    /// Call this one.
    Named(String),
}

/// The tools of a request and how they may be used (`tool_choice: none` means none).
#[derive(Clone, Debug, PartialEq)]
pub struct Tools {
    pub tools: Vec<Tool>,
    pub choice: ToolChoice,
    /// Whether the model may make several calls at once.
    pub parallel: bool,
    /// The schema of a direct answer (`response_format`), if the client gave one: the
    /// answer is then that JSON instead of text.
    pub response: Option<Value>,
}

/// A call the model made.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    /// The id clients answer with (`call_…`).
    pub id: String,
    pub name: String,
    pub arguments: Value,
}

/// What the model answered.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Text(String),
    Calls(Vec<ToolCall>),
}

impl Tools {
    /// Checks tool names and the choice; `None` when there is nothing to call.
    pub fn new(
        tools: Vec<Tool>,
        choice: Option<ToolChoice>,
        parallel: bool,
        response: Option<Value>,
    ) -> Result<Option<Self>, ApiError> {
        if tools.is_empty() {
            return match choice {
                Some(ToolChoice::Required | ToolChoice::Named(_)) => Err(ApiError::bad_param(
                    "tool_choice",
                    "tool_choice asks for a call, but no tools are given",
                )),
                _ => Ok(None),
            };
        }
        if tools.len() > MAX_TOOLS {
            return Err(ApiError::bad_param(
                "tools",
                format!("at most {MAX_TOOLS} tools"),
            ));
        }
        for (i, tool) in tools.iter().enumerate() {
            let ok = !tool.name.is_empty()
                && tool.name.len() <= 64
                && tool
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                return Err(ApiError::bad_param(
                    &format!("tools[{i}].name"),
                    "a tool's name is 1 to 64 letters, digits, '_' or '-'",
                ));
            }
            if !tool.parameters.is_object() {
                return Err(ApiError::bad_param(
                    &format!("tools[{i}].parameters"),
                    "a tool's parameters are a JSON schema object",
                ));
            }
        }
        let choice = choice.unwrap_or(ToolChoice::Auto);
        if let ToolChoice::Named(name) = &choice {
            if !tools.iter().any(|t| &t.name == name) {
                return Err(ApiError::bad_param(
                    "tool_choice",
                    format!("tool_choice names '{name}', which is not among the tools"),
                ));
            }
        }
        Ok(Some(Self {
            tools,
            choice,
            parallel,
            response,
        }))
    }

    fn callable(&self) -> impl Iterator<Item = &Tool> {
        self.tools.iter().filter(move |t| match &self.choice {
            ToolChoice::Named(name) => &t.name == name,
            _ => true,
        })
    }

    /// The schema every answer follows. Each tool's parameters (and the direct answer's
    /// schema) are placed inside it, so their own definitions move to its `$defs`, under
    /// the tool's name, and their references are rewritten to match.
    pub fn format(&self) -> Format {
        let mut defs = serde_json::Map::new();
        let calls: Vec<Value> = self
            .callable()
            .map(|t| {
                json!({
                    "type": "object",
                    "properties": {
                        "name": { "const": t.name },
                        "arguments": hoist(&t.parameters, &t.name, &mut defs),
                    },
                    "required": ["name", "arguments"],
                    "additionalProperties": false,
                })
            })
            .collect();
        let mut list = json!({ "type": "array", "items": { "anyOf": calls }, "minItems": 1 });
        if !self.parallel {
            list["maxItems"] = json!(1);
        }
        let call = json!({
            "type": "object",
            "properties": { "tool_calls": list },
            "required": ["tool_calls"],
            "additionalProperties": false,
        });
        let response = match &self.response {
            Some(schema) => hoist(schema, "$response", &mut defs),
            None => json!({ "type": "string" }),
        };
        let mut schema = match self.choice {
            ToolChoice::Auto => json!({ "anyOf": [call, {
                "type": "object",
                "properties": { "response": response },
                "required": ["response"],
                "additionalProperties": false,
            }] }),
            ToolChoice::Required | ToolChoice::Named(_) => call,
        };
        if !defs.is_empty() {
            schema["$defs"] = Value::Object(defs);
        }
        Format::JsonSchema(schema.to_string())
    }

    /// The system text that lists the tools and says how to answer.
    pub fn instructions(&self) -> String {
        let listed: Vec<Value> = self
            .callable()
            .map(|t| json!({ "name": t.name, "description": t.description, "parameters": t.parameters }))
            .collect();
        let listed = serde_json::to_string_pretty(&listed).unwrap_or_default();
        let call = r#"{"tool_calls": [{"name": "<tool name>", "arguments": {<arguments>}}]}"#;
        let how = match &self.choice {
            ToolChoice::Auto => format!(
                "To call tools, answer with {call}. To answer directly, answer with {{\"response\": <your answer>}}."
            ),
            ToolChoice::Required => format!("Call at least one tool: answer with {call}."),
            ToolChoice::Named(name) => {
                format!("Call the tool {name}: answer with {call}.")
            }
        };
        format!(
            "You can call these tools:\n{listed}\n\n{how} Answer with that JSON only. A tool's result comes back to you as {{\"tool_response\": ...}}."
        )
    }

    /// `messages` with the instructions added to the first system message (or in one
    /// of their own before the rest).
    pub fn prompt(&self, mut messages: Vec<ChatMessage>) -> Vec<ChatMessage> {
        let instructions = self.instructions();
        match messages.first_mut() {
            Some(first) if first.role == Role::System => {
                first.content = format!("{}\n\n{instructions}", first.content);
            }
            _ => messages.insert(
                0,
                ChatMessage {
                    role: Role::System,
                    content: instructions,
                },
            ),
        }
        messages
    }

    /// Reads the model's answer. The grammar held it to the schema, but the supplier
    /// is not trusted to have used it: only calls to tools the choice allows, with
    /// arguments that are objects, are reported (one at most without parallel calls).
    /// Text that does not parse (an answer cut short by `max_tokens`, or a supplier
    /// that ignored the format) comes back as it is.
    pub fn parse(&self, text: &str) -> Answer {
        let Ok(value) = serde_json::from_str::<Value>(text) else {
            return Answer::Text(text.to_owned());
        };
        if let Some(calls) = value["tool_calls"].as_array() {
            let callable: Vec<&str> = self.callable().map(|t| t.name.as_str()).collect();
            let calls: Vec<ToolCall> = calls
                .iter()
                .filter_map(|c| {
                    let name = c["name"].as_str().filter(|n| callable.contains(n))?;
                    Some(ToolCall {
                        id: new_id("call").replace('-', "_"),
                        name: name.to_owned(),
                        arguments: c.get("arguments").filter(|a| a.is_object())?.clone(),
                    })
                })
                .take(if self.parallel { MAX_TOOLS } else { 1 })
                .collect();
            if !calls.is_empty() {
                return Answer::Calls(calls);
            }
        }
        match value.get("response") {
            Some(Value::String(text)) => Answer::Text(text.clone()),
            Some(other) => Answer::Text(other.to_string()),
            None => Answer::Text(text.to_owned()),
        }
    }
}

/// `schema`, to be placed inside another: its `$defs` (or `definitions`) move into
/// `defs` as `prefix.name`, its references to them (and to itself, `#`) are rewritten
/// to there.
fn hoist(schema: &Value, prefix: &str, defs: &mut serde_json::Map<String, Value>) -> Value {
    let mut root = schema.clone();
    if let Value::Object(map) = &mut root {
        for key in ["$defs", "definitions"] {
            if let Some(Value::Object(own)) = map.remove(key) {
                for (name, sub) in own {
                    defs.insert(format!("{prefix}.{name}"), rewrite(sub, prefix));
                }
            }
        }
    }
    let root = rewrite(root, prefix);
    if refers_to_root(&root, prefix) {
        defs.insert(prefix.to_owned(), root.clone());
    }
    root
}

/// `value` with its local references rewritten for [`hoist`].
fn rewrite(value: Value, prefix: &str) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => Value::String(moved(&r, prefix)),
                        (_, v) => rewrite(v, prefix),
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|v| rewrite(v, prefix)).collect())
        }
        other => other,
    }
}

/// Where a local reference of a hoisted schema points now.
fn moved(reference: &str, prefix: &str) -> String {
    if reference == "#" {
        return format!("#/$defs/{prefix}");
    }
    for old in ["#/$defs/", "#/definitions/"] {
        if let Some(rest) = reference.strip_prefix(old) {
            return format!("#/$defs/{prefix}.{rest}");
        }
    }
    reference.to_owned()
}

/// Whether `value` refers to the root it was hoisted from.
fn refers_to_root(value: &Value, prefix: &str) -> bool {
    let target = format!("#/$defs/{prefix}");
    match value {
        Value::Object(map) => map.iter().any(|(k, v)| {
            (k == "$ref" && v.as_str() == Some(target.as_str())) || refers_to_root(v, prefix)
        }),
        Value::Array(items) => items.iter().any(|v| refers_to_root(v, prefix)),
        _ => false,
    }
}

/// Tools in OpenAI's shape (`{"type": "function", "function": {name, description,
/// parameters}}`, which Ollama takes too); a tool without parameters takes none.
pub fn function_tools(list: &[Value]) -> Result<Vec<Tool>, ApiError> {
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            if t["type"] != "function" {
                return Err(ApiError::bad_param(
                    &format!("tools[{i}].type"),
                    "only function tools are supported",
                ));
            }
            let f = &t["function"];
            Ok(Tool {
                name: f["name"].as_str().unwrap_or_default().to_owned(),
                description: f["description"].as_str().unwrap_or_default().to_owned(),
                parameters: match &f["parameters"] {
                    Value::Null => json!({ "type": "object", "properties": {} }),
                    p => p.clone(),
                },
            })
        })
        .collect()
}

/// The request for a prompt and sampling, shaped by its tools or, without tools, its
/// output `format`: tools add their instructions to the conversation and their schema
/// as the format (only a chat can have tools: `chat` names the route that takes them).
/// The format is checked as the engine would take it (a 400 naming `param`).
pub fn shape(
    prompt: Prompt,
    mut sampling: crate::backend::Sampling,
    tools: Option<&Tools>,
    format: Option<Format>,
    chat: &str,
    param: &str,
) -> Result<GenRequest, ApiError> {
    let prompt = match tools {
        Some(tools) => {
            let Prompt::Chat(messages) = prompt else {
                return Err(ApiError::bad_param(
                    "tools",
                    format!("tools are for {chat}"),
                ));
            };
            sampling.format = Some(tools.format());
            Prompt::Chat(tools.prompt(messages))
        }
        None => {
            sampling.format = format;
            prompt
        }
    };
    super::infer::check_format(sampling.format.as_ref(), param)?;
    Ok(GenRequest {
        prompt,
        sampling,
        tenant: crate::backend::Tenant::Local,
    })
}

/// The schema a direct answer takes under tools, from the request's output format.
pub fn response_schema(format: Option<&Format>) -> Option<Value> {
    format.map(|f| serde_json::from_str(f.schema()).unwrap_or(Value::Null))
}

/// An assistant message's calls in OpenAI's shape (Ollama's too: `{"id"?, "function":
/// {name, arguments}}`, arguments as text or as the object): each call's id, if it has
/// one, name and arguments. `param` names the message in errors.
pub fn assistant_calls(
    calls: &[Value],
    param: &str,
) -> Result<Vec<(Option<String>, String, Value)>, ApiError> {
    calls
        .iter()
        .enumerate()
        .map(|(i, call)| {
            let name = call["function"]["name"].as_str().ok_or_else(|| {
                ApiError::bad_param(
                    &format!("{param}.tool_calls[{i}]"),
                    "a tool call names its function (function.name)",
                )
            })?;
            Ok((
                call["id"].as_str().map(str::to_owned),
                name.to_owned(),
                arguments(&call["function"]["arguments"]),
            ))
        })
        .collect()
}

/// An assistant turn that called tools, as the model wrote it.
pub fn calls_turn(calls: &[(String, Value)]) -> ChatMessage {
    let calls: Vec<Value> = calls
        .iter()
        .map(|(name, arguments)| json!({ "name": name, "arguments": arguments }))
        .collect();
    ChatMessage {
        role: Role::Assistant,
        content: json!({ "tool_calls": calls }).to_string(),
    }
}

/// A tool's result, as the model reads it (a user turn: templates without tools know
/// no tool role).
pub fn result_turn(name: Option<&str>, content: &str) -> ChatMessage {
    let mut response = json!({ "content": content });
    if let Some(name) = name {
        response["name"] = json!(name);
    }
    ChatMessage {
        role: Role::User,
        content: json!({ "tool_response": response }).to_string(),
    }
}

/// A call's arguments as a JSON object: given as text (OpenAI) or as the object.
pub fn arguments(value: &Value) -> Value {
    match value {
        Value::String(text) => serde_json::from_str(text).unwrap_or_else(|_| json!(text)),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Tool {
        Tool {
            name: "get_weather".into(),
            description: "The weather in a city".into(),
            parameters: json!({
                "type": "object",
                "properties": { "city": { "type": "string" } },
                "required": ["city"],
            }),
        }
    }

    fn tools(choice: Option<ToolChoice>) -> Tools {
        Tools::new(vec![weather()], choice, true, None)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn the_schema_allows_calls_and_answers_as_the_choice_says() {
        let auto = tools(None).format();
        let schema: Value = serde_json::from_str(auto.schema()).unwrap();
        assert_eq!(schema["anyOf"].as_array().unwrap().len(), 2);
        let required = tools(Some(ToolChoice::Required)).format();
        let schema: Value = serde_json::from_str(required.schema()).unwrap();
        assert_eq!(schema["required"], json!(["tool_calls"]));
        assert_eq!(
            schema["properties"]["tool_calls"]["items"]["anyOf"][0]["properties"]["name"],
            json!({ "const": "get_weather" })
        );
        // Every schema made here passes the supplier's checks and compiles.
        for t in [auto, required] {
            crate::backend::embedded::grammar(&t).unwrap();
        }
    }

    #[test]
    fn tools_with_their_own_definitions_keep_them() {
        // As Pydantic writes a model with a nested one (found by review: the reference
        // led nowhere once the parameters sat inside the answer's schema).
        let booking = Tool {
            name: "book".into(),
            description: "Book a trip".into(),
            parameters: json!({
                "type": "object",
                "properties": { "from": { "$ref": "#/$defs/City" }, "to": { "$ref": "#/$defs/City" } },
                "required": ["from", "to"],
                "$defs": { "City": { "type": "object", "properties": { "name": { "type": "string" } } } },
            }),
        };
        let t = Tools::new(
            vec![booking, weather()],
            None,
            true,
            Some(json!({
                "type": "object", "properties": { "note": { "$ref": "#/definitions/Note" } },
                "definitions": { "Note": { "type": "string" } },
            })),
        )
        .unwrap()
        .unwrap();
        let format = t.format();
        let schema: Value = serde_json::from_str(format.schema()).unwrap();
        assert!(schema["$defs"]["book.City"].is_object(), "{schema}");
        assert!(schema["$defs"]["$response.Note"].is_object(), "{schema}");
        crate::backend::embedded::grammar(&format).unwrap();
    }

    #[test]
    fn answers_parse_into_calls_or_text() {
        let t = tools(None);
        match t.parse(r#"{"tool_calls":[{"name":"get_weather","arguments":{"city":"Paris"}}]}"#) {
            Answer::Calls(calls) => {
                assert_eq!(calls[0].name, "get_weather");
                assert_eq!(calls[0].arguments, json!({ "city": "Paris" }));
                assert!(calls[0].id.starts_with("call_"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            t.parse(r#"{"response":"It is sunny."}"#),
            Answer::Text("It is sunny.".into())
        );
        assert_eq!(
            t.parse(r#"{"tool_calls":[{"na"#),
            Answer::Text(r#"{"tool_calls":[{"na"#.into())
        );
        // A supplier that ignored the format cannot report a call to a tool not offered.
        let unoffered = r#"{"tool_calls":[{"name":"delete_files","arguments":{}}]}"#;
        assert_eq!(t.parse(unoffered), Answer::Text(unoffered.into()));
        let one = Tools::new(vec![weather()], None, false, None)
            .unwrap()
            .unwrap();
        let two = r#"{"tool_calls":[{"name":"get_weather","arguments":{"city":"A"}},{"name":"get_weather","arguments":{"city":"B"}}]}"#;
        match one.parse(two) {
            Answer::Calls(calls) => assert_eq!(calls.len(), 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_tools_and_choices_are_refused() {
        let named = |n: &str| {
            Tools::new(
                vec![weather()],
                Some(ToolChoice::Named(n.into())),
                true,
                None,
            )
        };
        assert!(named("get_weather").unwrap().is_some());
        assert!(named("nothing").is_err());
        assert!(Tools::new(vec![], Some(ToolChoice::Required), true, None).is_err());
        assert!(Tools::new(vec![], None, true, None).unwrap().is_none());
        let mut bad = weather();
        bad.name = "no spaces".into();
        assert!(Tools::new(vec![bad], None, true, None).is_err());
    }

    #[test]
    fn instructions_join_the_system_message() {
        let t = tools(None);
        let with_system = t.prompt(vec![
            ChatMessage {
                role: Role::System,
                content: "Be brief.".into(),
            },
            ChatMessage {
                role: Role::User,
                content: "Weather in Paris?".into(),
            },
        ]);
        assert_eq!(with_system.len(), 2);
        assert!(with_system[0]
            .content
            .starts_with("Be brief.\n\nYou can call"));
        let without = t.prompt(vec![ChatMessage {
            role: Role::User,
            content: "Hi".into(),
        }]);
        assert_eq!(without.len(), 2);
        assert_eq!(without[0].role, Role::System);
    }
}
