//! One generation inside the shared decode loop: its prompt, how far it got, its
//! sampler, and the events on their way to its consumer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc::{self, error::TrySendError};

use super::super::{
    Finish, FinishReason, GenEvent, SlotGuard, StopMatcher, Tenant, TokenLogprob, TokenProb,
};
use super::schedule::Want;
use super::utf8::Utf8Pieces;

/// A generation handed to the decode loop.
pub struct Job {
    /// The prompt's tokens (not empty, shorter than the context).
    pub prompt: Vec<LlamaToken>,
    /// Its own sampler chain (seeded per request).
    pub sampler: LlamaSampler,
    /// The output format's grammar, if it has one (sampled with guards).
    pub grammar: Option<LlamaSampler>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Most tokens to generate (already capped by the room left in the context).
    pub max_new: usize,
    /// Where its events go; a closed receiver cancels it.
    pub events: mpsc::Sender<GenEvent>,
    /// Every sampled token id, the end-of-generation one included (for comparisons
    /// with other engines).
    pub record: Option<Arc<Mutex<Vec<u32>>>>,
    /// The slot it holds; freed when the sequence leaves the loop.
    pub slot: Option<SlotGuard>,
    /// On whose behalf it runs (each tenant gets its turn in every step).
    pub tenant: Tenant,
    /// Alternatives to tell with each token's log probability; `None`: none told.
    pub logprobs: Option<u8>,
}

/// What the loop does with a sequence after delivering its events.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Still running, or still has events to deliver.
    Keep,
    /// Finished and delivered, or its consumer is gone: free its KV cells and slot.
    Retire,
}

/// A job with a llama.cpp sequence id.
pub struct Sequence {
    /// The llama.cpp sequence id (0 to slots).
    pub id: i32,
    job: Job,
    /// Tokens of this sequence in the KV cache (the next token's position).
    pub n_past: usize,
    /// Those tokens (what a later request of the same tenant may reuse).
    in_cache: Vec<LlamaToken>,
    /// Prompt tokens that were in the cache already when it started.
    cached: usize,
    failed: bool,
    /// Sampled and streamed, not yet decoded.
    next: Option<LlamaToken>,
    generated: usize,
    stop: StopMatcher,
    text: Utf8Pieces,
    /// Log probabilities of tokens whose text has not gone out yet.
    told: Vec<TokenLogprob>,
    outbox: VecDeque<GenEvent>,
    finished: bool,
    /// The loop's step it last had tokens in (0: never).
    pub last_turn: u64,
    /// Time spent under its grammar, if it has one.
    grammar_clock: super::sampler::GrammarClock,
}

impl Sequence {
    /// Starts `job` as sequence `id`, whose KV cells hold `kept`, the start of the
    /// job's prompt (shorter than the prompt: its last token is always read again,
    /// for the logits).
    pub fn new(id: i32, job: Job, kept: Vec<LlamaToken>) -> Self {
        debug_assert!(kept.len() < job.prompt.len() && job.prompt.starts_with(&kept));
        Self {
            id,
            stop: StopMatcher::new(&job.stop),
            job,
            n_past: kept.len(),
            cached: kept.len(),
            in_cache: kept,
            failed: false,
            next: None,
            generated: 0,
            text: Utf8Pieces::default(),
            told: Vec::new(),
            outbox: VecDeque::new(),
            finished: false,
            last_turn: 0,
            grammar_clock: Default::default(),
        }
    }

    /// Whose it is.
    pub fn tenant(&self) -> Tenant {
        self.job.tenant
    }

    /// The tokens its KV cells hold, unless a failed decode left them unknown.
    pub fn into_cached(self) -> Option<Vec<LlamaToken>> {
        (!self.failed).then_some(self.in_cache)
    }

    /// What it could put in the next step.
    pub fn want(&self) -> Want {
        Want {
            tenant: self.job.tenant,
            next: self.next_token().is_some(),
            prompt_left: self.prompt_left().len(),
            last_turn: self.last_turn,
        }
    }

    /// Whether it can take part in the next step: not finished, and its consumer has
    /// taken everything so far (a slow consumer pauses only its own sequence).
    fn ready(&self) -> bool {
        !self.finished && self.outbox.is_empty()
    }

    /// Prompt tokens not yet in the KV cache, if it is ready for them.
    pub fn prompt_left(&self) -> &[LlamaToken] {
        if self.ready() && self.next.is_none() {
            &self.job.prompt[self.n_past.min(self.job.prompt.len())..]
        } else {
            &[]
        }
    }

    /// Whether the prompt is all in.
    pub fn prefilled(&self) -> bool {
        self.n_past >= self.job.prompt.len()
    }

    /// The token to decode this step, if it is generating and ready.
    pub fn next_token(&self) -> Option<LlamaToken> {
        self.next.filter(|_| self.ready())
    }

    /// Marks `n` prompt tokens as added to this step's batch.
    pub fn prefill(&mut self, n: usize) {
        self.in_cache
            .extend_from_slice(&self.job.prompt[self.n_past..self.n_past + n]);
        self.n_past += n;
    }

    /// Marks the next token as added to this step's batch.
    pub fn take_next(&mut self) {
        if let Some(token) = self.next.take() {
            self.in_cache.push(token);
        }
        self.n_past += 1;
    }

    /// Samples from the logits at `batch_index` and handles the token.
    pub fn sample(
        &mut self,
        model: &LlamaModel,
        ctx: &llama_cpp_2::context::LlamaContext<'_>,
        batch_index: i32,
    ) {
        let token = if let Some(grammar) = &mut self.job.grammar {
            match super::sampler::guarded(
                &mut self.job.sampler,
                grammar,
                ctx,
                batch_index,
                &mut self.grammar_clock,
            ) {
                Ok(token) => token,
                Err(why) => return self.fail(why),
            }
        } else {
            self.job.sampler.sample(ctx, batch_index)
        };
        if let Some(record) = &self.job.record {
            record
                .lock()
                .expect("record lock")
                .push(token.0.try_into().unwrap_or(0));
        }
        let vocab = model.vocab();
        if vocab.is_eog(token) {
            return self.finish(FinishReason::Stop, None);
        }
        self.generated += 1;
        let bytes = vocab.token_to_piece(token, false, None);
        // A token without text (a control token) makes none to tell it with.
        if let Some(top) = self.job.logprobs.filter(|_| !bytes.is_empty()) {
            let (logprob, best) = super::sampler::logprobs(
                ctx.get_logits_ith(batch_index),
                usize::try_from(token.0).unwrap_or(usize::MAX),
                usize::from(top),
            );
            let prob = TokenProb::new;
            self.told.push(TokenLogprob {
                chosen: prob(bytes.clone(), logprob),
                top: best
                    .into_iter()
                    .map(|(id, lp)| {
                        let id = LlamaToken(i32::try_from(id).unwrap_or(i32::MAX));
                        prob(vocab.token_to_piece(id, false, None), lp)
                    })
                    .collect(),
            });
        }
        let piece = self.text.push(&bytes);
        let (text, stopped) = self.stop.push(&piece);
        self.say(text);
        if stopped.is_some() {
            self.finish(FinishReason::Stop, stopped)
        } else if self.generated >= self.job.max_new {
            self.finish(FinishReason::Length, None)
        } else {
            self.next = Some(token);
        }
    }

    fn finish(&mut self, reason: FinishReason, stopped: Option<String>) {
        // After a stop string nothing more is said; otherwise what was held back (an
        // unfinished character, a possible start of a stop string) goes out.
        let rest = if stopped.is_some() {
            String::new()
        } else {
            let (mut rest, _) = self.stop.push(&self.text.finish());
            rest.push_str(&self.stop.finish());
            rest
        };
        self.say(rest);
        self.outbox.push_back(GenEvent::Done(Finish {
            reason,
            prompt_tokens: self.job.prompt.len().try_into().unwrap_or(u32::MAX),
            completion_tokens: self.generated.try_into().unwrap_or(u32::MAX),
            cached_tokens: self.cached.try_into().unwrap_or(u32::MAX),
            stop: stopped,
        }));
        self.next = None;
        self.finished = true;
    }

    /// Queues `text` (if any), after the log probabilities of the tokens told so far:
    /// theirs is the text that begins here.
    fn say(&mut self, text: String) {
        if text.is_empty() {
            return;
        }
        if !self.told.is_empty() {
            self.outbox
                .push_back(GenEvent::Logprobs(std::mem::take(&mut self.told)));
        }
        self.outbox.push_back(GenEvent::Text(text));
    }

    /// Ends it with an error (a failed decode).
    pub fn fail(&mut self, why: String) {
        tracing::warn!(%why, sequence = self.id, "generation failed");
        self.outbox.push_back(GenEvent::Failed(why));
        self.next = None;
        self.finished = true;
        self.failed = true;
    }

    /// Hands queued events to the consumer as far as its channel has room.
    pub fn deliver(&mut self) -> Delivery {
        while let Some(event) = self.outbox.pop_front() {
            match self.job.events.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(event)) => {
                    self.outbox.push_front(event);
                    return Delivery::Keep;
                }
                Err(TrySendError::Closed(_)) => return Delivery::Retire,
            }
        }
        if self.finished || self.job.events.is_closed() {
            Delivery::Retire
        } else {
            Delivery::Keep
        }
    }
}
