//! Fuzz targets for the HTTP API: every JSON body a route parses, taken through the
//! same steps as its handler up to the backend request (all but the model lookup, which
//! needs a node), with errors rendered as the client would get them; and the routing
//! headers. Bodies over the router's limit never reach a handler and are not tried.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::IntoResponse;
use relaymesh_protocol::{Keypair, Signer};
use serde_json::json;

use super::error::{ApiError, OllamaError, OpenAiError};
use super::infer::{request_policy, DIGEST_HEADER, MAX_PRICE_HEADER, SUPPLIERS_HEADER};
use super::{anthropic, body::MAX_BODY, embeddings, ollama, openai};
use crate::backend::{GenRequest, Prompt};
use crate::fuzz::{FuzzTarget, Mutation};

/// What any request the API hands a backend must satisfy.
fn assert_checked(req: &GenRequest) {
    let s = &req.sampling;
    assert!(s.temperature.is_none_or(|t| (0.0..=2.0).contains(&t)));
    assert!(s.top_p.is_none_or(|p| p > 0.0 && p <= 1.0));
    assert!(s.top_k.is_none_or(|k| k > 0));
    assert!(s.max_tokens.is_none_or(|n| n > 0));
    assert!(s.stop.len() <= 4 && s.stop.iter().all(|x| x.len() <= 256));
    if let Prompt::Chat(messages) = &req.prompt {
        assert!(!messages.is_empty());
    }
}

fn openai_verdict(result: Result<GenRequest, ApiError>) -> bool {
    match result {
        Ok(req) => {
            assert_checked(&req);
            true
        }
        Err(e) => {
            assert!(e.status.is_client_error(), "{}: {}", e.status, e.message);
            drop(OpenAiError(e).into_response());
            false
        }
    }
}

fn ollama_verdict(result: Result<Option<GenRequest>, ApiError>) -> bool {
    match result {
        Ok(req) => {
            if let Some(req) = &req {
                assert_checked(req);
            }
            true
        }
        Err(e) => {
            assert!(e.status.is_client_error(), "{}: {}", e.status, e.message);
            drop(OllamaError(e).into_response());
            false
        }
    }
}

fn bodies(values: &[serde_json::Value]) -> Vec<Vec<u8>> {
    values
        .iter()
        .map(|v| serde_json::to_vec(v).expect("serialises"))
        .collect()
}

fn within_limit(bytes: &[u8]) -> bool {
    bytes.len() <= MAX_BODY
}

fn openai_targets() -> Vec<FuzzTarget> {
    let chat = bodies(&[
        json!({"model": "tiny", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": null},
            {"role": "developer", "content": "Answer in French."}],
            "temperature": 0.7, "top_p": 0.9, "max_tokens": 16, "stop": ["\n", "."],
            "seed": 42, "stream": true, "stream_options": {"include_usage": true}}),
        json!({"model": "tiny", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}],
            "n": 1, "best_of": 1, "response_format": {"type": "text"},
            "max_completion_tokens": 8, "top_k": 40, "logprobs": false, "tools": []}),
        json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}],
            "stop": "END", "temperature": 0, "seed": -1, "max_tokens": -1}),
        json!({"model": "tiny", "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "22 degrees"}],
            "tools": [{"type": "function", "function": {"name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": "auto", "parallel_tool_calls": false}),
        json!({"model": "tiny", "messages": [{"role": "user", "content": "A city?"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "c", "strict": true,
                "schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                    "kind": {"enum": ["a", "b"]}, "tags": {"type": "array", "items": {"$ref": "#/$defs/t"}}},
                    "$defs": {"t": {"type": "string", "pattern": "^[a-z]{1,4}$"}}}}}}),
    ]);
    let completions = bodies(&[
        json!({"model": "tiny", "prompt": "Once upon a time", "max_tokens": 8, "stop": "."}),
        json!({"model": "tiny", "prompt": ["x"], "temperature": 2, "top_p": 1,
            "echo": false, "suffix": null, "stream": false}),
    ]);
    vec![
        FuzzTarget::new("POST /v1/chat/completions", chat, Mutation::Json, |bytes| {
            within_limit(bytes) && openai_verdict(openai::chat_request(bytes))
        }),
        FuzzTarget::new(
            "POST /v1/completions",
            completions,
            Mutation::Json,
            |bytes| within_limit(bytes) && openai_verdict(openai::completion_request(bytes)),
        ),
    ]
}

fn ollama_targets() -> Vec<FuzzTarget> {
    let chat = bodies(&[
        json!({"model": "tiny", "messages": [
            {"role": "system", "content": "terse"},
            {"role": "user", "content": "hi", "images": []},
            {"role": "assistant", "content": "hello"}],
            "stream": false, "options": {"temperature": 0.2, "num_predict": -1,
            "top_k": 0, "top_p": 0.5, "repeat_penalty": 1.0, "stop": ["</s>"], "seed": 7}}),
        json!({"name": "tiny", "messages": []}),
        json!({"model": "tiny", "messages": [{"role": "user", "content": "q"}],
            "format": "", "tools": [], "options": {"mirostat": 0}}),
        json!({"model": "tiny", "messages": [{"role": "user", "content": "q"},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]},
            {"role": "tool", "content": "ok", "tool_name": "f"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "format": {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0}}}}),
    ]);
    let generate = bodies(&[
        json!({"model": "tiny", "prompt": "Why?", "system": "terse", "raw": false,
            "options": {"num_predict": 32, "min_p": 0}}),
        json!({"model": "tiny", "prompt": "raw text", "raw": true, "stream": false,
            "context": [], "images": null}),
        json!({"model": "tiny"}),
    ]);
    let show = bodies(&[json!({"model": "tiny"}), json!({"name": "tiny:latest"})]);
    let embed = bodies(&[
        json!({"model": "tiny", "input": ["a", "b"], "truncate": true}),
        json!({"model": "tiny", "input": "one"}),
    ]);
    vec![
        FuzzTarget::new("POST /api/chat", chat, Mutation::Json, |bytes| {
            within_limit(bytes) && ollama_verdict(ollama::chat_request(bytes))
        }),
        FuzzTarget::new("POST /api/generate", generate, Mutation::Json, |bytes| {
            within_limit(bytes) && ollama_verdict(ollama::generate_request(bytes))
        }),
        FuzzTarget::new("POST /api/show", show, Mutation::Json, |bytes| {
            within_limit(bytes) && ollama_verdict(ollama::show_request(bytes).map(|_| None))
        }),
        FuzzTarget::new("POST /api/embed", embed, Mutation::Json, |bytes| {
            within_limit(bytes) && ollama_verdict(embeddings::ollama_request(bytes).map(|_| None))
        }),
    ]
}

fn other_targets() -> Vec<FuzzTarget> {
    let messages = bodies(&[
        json!({"model": "tiny", "max_tokens": 16, "system": "Be brief.", "temperature": 0,
            "stop_sequences": ["\n"], "messages": [{"role": "user", "content": "Hi"}]}),
        json!({"model": "tiny", "max_tokens": 16, "stream": true,
            "tools": [{"name": "get_weather", "input_schema": {"type": "object",
                "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "any"},
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1",
                    "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                    "content": "22"}]}]}),
    ]);
    let embeddings = bodies(&[
        json!({"model": "tiny", "input": ["a", "b"], "encoding_format": "base64"}),
        json!({"model": "tiny", "input": "one", "encoding_format": "float"}),
    ]);
    vec![
        FuzzTarget::new("POST /v1/messages", messages, Mutation::Json, |bytes| {
            within_limit(bytes) && openai_verdict(anthropic::messages_request(bytes))
        }),
        FuzzTarget::new("POST /v1/embeddings", embeddings, Mutation::Json, |bytes| {
            within_limit(bytes)
                && openai_verdict(embeddings::openai_request(bytes).map(|_| GenRequest::text("x")))
        }),
    ]
}

fn transfer_target() -> FuzzTarget {
    let to = Keypair::from_secret([3; 32]).public_key().peer_id();
    let corpus = bodies(&[
        json!({"to": to, "amount": 1_000}),
        json!({"to": to, "amount": u64::MAX}),
    ]);
    FuzzTarget::new(
        "POST /relaymesh/v1/transfers",
        corpus,
        Mutation::Json,
        |bytes| within_limit(bytes) && super::transfer_request(bytes).is_ok(),
    )
}

fn revocation_target() -> FuzzTarget {
    use relaymesh_protocol::identity::signed::Signed;
    use relaymesh_protocol::messages::membership::Revocation;
    use relaymesh_protocol::wire::WireMessage;
    let owner = Keypair::from_secret([7; 32]);
    let list = Signed::sign(
        Revocation {
            version: relaymesh_protocol::PROTOCOL_VERSION,
            mesh_id: relaymesh_protocol::Digest([1; 32]),
            owner: owner.public_key(),
            seq: 3,
            invites: relaymesh_protocol::BoundedVec::try_from_vec(vec![
                relaymesh_protocol::Digest([2; 32]),
            ])
            .expect("one"),
            peers: relaymesh_protocol::BoundedVec::try_from_vec(vec![owner.public_key()])
                .expect("one"),
        },
        &owner,
    );
    let corpus = bodies(&[json!({"revocation": hex::encode(list.encode().expect("fits"))})]);
    FuzzTarget::new(
        "POST /relaymesh/v1/revocations",
        corpus,
        Mutation::Json,
        |bytes| within_limit(bytes) && super::members::revocation_request(bytes).is_ok(),
    )
}

/// Three header values, one per line: max price, digest, suppliers.
fn headers_target() -> FuzzTarget {
    let peers = [1u8, 2].map(|n| Keypair::from_secret([n; 32]).public_key().peer_id());
    let corpus = [
        format!(
            "100\nblake3:{}\n{}, {}",
            "ab".repeat(32),
            peers[0],
            peers[1]
        ),
        format!("18446744073709551615\n{}\n{}", "0f".repeat(32), peers[0]),
        format!(" 7 \n\n{},,", peers[1]),
    ]
    .map(String::into_bytes)
    .to_vec();
    let names = [MAX_PRICE_HEADER, DIGEST_HEADER, SUPPLIERS_HEADER];
    FuzzTarget::new("routing headers", corpus, Mutation::Bytes, move |bytes| {
        let mut headers = HeaderMap::new();
        for (name, value) in names.iter().zip(bytes.split(|b| *b == b'\n')) {
            // What the HTTP server would not pass on never reaches the policy.
            let Ok(value) = HeaderValue::from_bytes(value) else {
                return false;
            };
            if !value.is_empty() {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
        match request_policy(&headers) {
            Ok(_) => true,
            Err(e) => {
                drop(OpenAiError(e).into_response());
                false
            }
        }
    })
}

/// Every API target.
pub fn targets() -> Vec<FuzzTarget> {
    let mut out = openai_targets();
    out.extend(ollama_targets());
    out.extend(other_targets());
    out.push(transfer_target());
    out.push(revocation_target());
    out.push(headers_target());
    out
}
