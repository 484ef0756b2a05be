//! Inference over the mesh: the `/relaymesh/<mesh>/infer/1` stream protocol.
//! [`supplier`] serves a node's models to the mesh; [`gateway`] is the app side, a
//! [`crate::backend::Backend`] that sends a request to the best supplier of a model,
//! so the local API serves mesh models exactly like local ones. Both drive the protocol
//! crate's IO-free flow machines (`metering::flow`).

pub mod app_limits;
pub mod claims;
pub mod codec;
pub mod escrow;
pub mod gateway;
pub mod queue;
pub mod resolve;
pub mod router;
pub mod shun;
pub mod stream_slots;
pub mod supplier;
pub mod verify;

use relaymesh_protocol::messages::infer::{
    InferPayload, OutputFormat, PromptBody, TokenChoice, TokenLogprobs, Turn, TurnRole,
    MAX_LOGPROB_TOKENS,
};
use relaymesh_protocol::metering::compute_units::CuFormula;
use relaymesh_protocol::metering::flow::Window;
use relaymesh_protocol::params::MeshParams;
use relaymesh_protocol::{BoundedString, BoundedVec};

use crate::backend::{
    told_logprob, ChatMessage, Format, GenRequest, Prompt, Role, Sampling, Tenant, TokenLogprob,
    TokenProb, LOGPROB_FLOOR,
};

/// Tokens generated when a request sets no limit.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

/// The mesh's flow-control window.
pub fn window(params: &MeshParams) -> Window {
    Window {
        ack_every: params.ack_every_tokens.max(1),
        max_unacked: params
            .max_unacked_tokens
            .max(params.ack_every_tokens.max(1)),
    }
}

/// The CU formula this node serves by: the default factors, tokens paid for up to
/// the mesh's `max_paid_token_bytes` (a mesh whose models' text runs longer per token
/// raises it, and its suppliers then ask for it).
pub fn supplier_cu(params: &MeshParams) -> CuFormula {
    CuFormula {
        token_bytes: params.max_paid_token_bytes,
        ..CuFormula::default()
    }
}

/// The payload an app sends for `request` to model `model`.
pub fn payload(model: &str, request: &GenRequest) -> Result<InferPayload, String> {
    let too_long =
        |e: relaymesh_protocol::TooLong| format!("the request is too large for the mesh: {e}");
    let prompt = match &request.prompt {
        Prompt::Chat(messages) => PromptBody::Chat(
            BoundedVec::try_from_vec(
                messages
                    .iter()
                    .map(|m| {
                        Ok(Turn {
                            role: match m.role {
                                Role::System => TurnRole::System,
                                Role::User => TurnRole::User,
                                Role::Assistant => TurnRole::Assistant,
                            },
                            content: BoundedString::new(m.content.as_str()).map_err(too_long)?,
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()?,
            )
            .map_err(too_long)?,
        ),
        Prompt::Text(text) => {
            PromptBody::Text(BoundedString::new(text.as_str()).map_err(too_long)?)
        }
    };
    let s = &request.sampling;
    Ok(InferPayload {
        model: BoundedString::new(model).map_err(too_long)?,
        prompt,
        temperature_milli: s.temperature.map(|t| (t * 1000.0).round() as u32),
        top_p_micro: s.top_p.map(|p| (p * 1e6).round() as u32),
        top_k: s.top_k.map(|k| k.min(u32::MAX as usize) as u32),
        seed: s.seed,
        max_tokens: s.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        stop: BoundedVec::try_from_vec(
            s.stop
                .iter()
                .map(|x| BoundedString::new(x.as_str()).map_err(too_long))
                .collect::<Result<Vec<_>, String>>()?,
        )
        .map_err(too_long)?,
        format: match &s.format {
            None => None,
            Some(Format::Json) => Some(OutputFormat::Json),
            Some(Format::JsonSchema(schema)) => Some(OutputFormat::JsonSchema(
                BoundedString::new(schema.as_str())
                    .map_err(|e| format!("the JSON schema is too large for the mesh: {e}"))?,
            )),
        },
        logprobs: s.logprobs,
    })
}

/// The backend request a supplier runs for a payload; `None` for an embedding
/// request, which generates nothing (`supplier::embed` serves it).
pub fn gen_request(payload: &InferPayload) -> Option<GenRequest> {
    let prompt = match &payload.prompt {
        PromptBody::Chat(turns) => Prompt::Chat(
            turns
                .iter()
                .map(|t| ChatMessage {
                    role: match t.role {
                        TurnRole::System => Role::System,
                        TurnRole::User => Role::User,
                        TurnRole::Assistant => Role::Assistant,
                    },
                    content: t.content.as_str().to_owned(),
                })
                .collect(),
        ),
        PromptBody::Text(text) => Prompt::Text(text.as_str().to_owned()),
        PromptBody::Embed(_) => return None,
    };
    Some(GenRequest {
        prompt,
        sampling: Sampling {
            temperature: payload.temperature_milli.map(|t| f64::from(t) / 1000.0),
            top_p: payload.top_p_micro.map(|p| f64::from(p) / 1e6),
            top_k: payload.top_k.map(|k| k as usize),
            seed: payload.seed,
            max_tokens: Some(payload.max_tokens),
            stop: payload.stop.iter().map(|s| s.as_str().to_owned()).collect(),
            format: payload.format.as_ref().map(|f| match f {
                OutputFormat::Json => Format::Json,
                OutputFormat::JsonSchema(schema) => Format::JsonSchema(schema.as_str().to_owned()),
            }),
            logprobs: payload.logprobs,
        },
        tenant: Tenant::Local,
    })
}

/// The `Logprobs` frames' contents for `tokens`, told by a backend to a request that
/// asked for `asked` alternatives: at most [`MAX_LOGPROB_TOKENS`] tokens a frame, the
/// alternatives cut to those asked for, a value that is not a log probability (the
/// log of a probability too small for an f32) told as [`LOGPROB_FLOOR`], as OpenAI
/// does.
pub fn logprob_frames(
    tokens: &[TokenLogprob],
    asked: u8,
) -> Vec<BoundedVec<TokenLogprobs, MAX_LOGPROB_TOKENS>> {
    let choice = |p: &TokenProb| TokenChoice::new(&p.bytes, told_logprob(p.logprob));
    tokens
        .chunks(MAX_LOGPROB_TOKENS)
        .map(|chunk| {
            let told = chunk
                .iter()
                .map(|t| TokenLogprobs {
                    chosen: choice(&t.chosen),
                    top: BoundedVec::try_from_vec(
                        t.top.iter().take(usize::from(asked)).map(choice).collect(),
                    )
                    .expect("asked for at most MAX_TOP_LOGPROBS"),
                })
                .collect();
            BoundedVec::try_from_vec(told).expect("chunked to fit")
        })
        .collect()
}

/// The log probabilities a `Logprobs` frame tells, once [`LogprobsCheck`] took it.
///
/// [`LogprobsCheck`]: relaymesh_protocol::messages::infer::LogprobsCheck
pub fn told_logprobs(tokens: &[TokenLogprobs]) -> Vec<TokenLogprob> {
    let prob =
        |c: &TokenChoice| TokenProb::new(c.bytes.to_vec(), c.logprob().unwrap_or(LOGPROB_FLOOR));
    tokens
        .iter()
        .map(|t| TokenLogprob {
            chosen: prob(&t.chosen),
            top: t.top.iter().map(prob).collect(),
        })
        .collect()
}

/// The payload an app sends to embed `inputs` with model `model`.
pub fn embed_payload(model: &str, inputs: &[String]) -> Result<InferPayload, String> {
    let too_long =
        |e: relaymesh_protocol::TooLong| format!("the request is too large for the mesh: {e}");
    let inputs = inputs
        .iter()
        .map(|t| BoundedString::new(t.as_str()).map_err(too_long))
        .collect::<Result<Vec<_>, String>>()?;
    Ok(InferPayload::embed(
        BoundedString::new(model).map_err(too_long)?,
        BoundedVec::try_from_vec(inputs).map_err(too_long)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_survives_the_trip_through_a_payload() {
        let request = GenRequest {
            prompt: Prompt::Chat(vec![
                ChatMessage {
                    role: Role::System,
                    content: "Be brief.".into(),
                },
                ChatMessage {
                    role: Role::User,
                    content: "Hi é".into(),
                },
            ]),
            sampling: Sampling {
                temperature: Some(0.7),
                top_p: Some(0.9),
                top_k: Some(40),
                seed: Some(7),
                max_tokens: Some(32),
                stop: vec!["\n\n".into()],
                format: Some(Format::JsonSchema(r#"{"type":"integer"}"#.into())),
                logprobs: Some(3),
            },
            tenant: Tenant::Local,
        };
        let p = payload("smollm2", &request).unwrap();
        // The schema is read and billed as the prompt is.
        assert_eq!(p.prompt_bytes(), 9 + 5 + 18);
        assert_eq!(gen_request(&p), Some(request));
    }

    #[test]
    fn log_probabilities_survive_the_trip_through_frames() {
        let prob = |text: &str, logprob| TokenProb {
            bytes: text.as_bytes().to_vec(),
            logprob,
        };
        let token = TokenLogprob {
            chosen: prob(" Paris", -0.5),
            top: vec![
                prob(" Paris", -0.5),
                prob(" Lyon", -1.5),
                prob(" Nice", -3.0),
            ],
        };
        let tokens = vec![token.clone(); 20];
        let frames = logprob_frames(&tokens, 2);
        assert_eq!(frames.iter().map(|f| f.len()).collect::<Vec<_>>(), [16, 4]);
        let back = told_logprobs(&frames[1]);
        // The alternatives are cut to those asked for.
        assert_eq!(back[0].top, token.top[..2]);
        assert_eq!(back[0].chosen, token.chosen);
        // A value that is not a log probability goes as -9999.
        let odd = TokenLogprob {
            chosen: prob("x", f32::NEG_INFINITY),
            top: vec![prob("x", f32::NAN)],
        };
        let back = told_logprobs(&logprob_frames(&[odd], 1)[0]);
        assert_eq!(
            (back[0].chosen.logprob, back[0].top[0].logprob),
            (-9999.0, -9999.0)
        );
    }
}
