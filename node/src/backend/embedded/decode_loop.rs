//! The decode loop: one thread owns the llama.cpp context and runs every generation of
//! a model as a sequence in it (continuous batching).
//!
//! Each step it admits new jobs (as long as a sequence id is free), retires finished or
//! cancelled sequences (removing their cells from the KV cache), and decodes one batch
//! holding the next token of every generating sequence plus a chunk of the prompts
//! still being read (with several tenants, each gets its turn: see [`schedule`]), then
//! samples each sequence that got logits with its own sampler.
//! A prompt is read in chunks of [`PREFILL_CHUNK`] tokens while others generate, so a
//! long prompt delays the other streams by one chunk's time per step, not by the
//! whole prompt. A consumer whose channel is full pauses its own sequence only: its
//! events wait in the sequence's outbox and it skips steps until they are taken.
//!
//! A finished sequence leaves its KV cells as they are. A new job takes the free
//! sequence whose cells hold the longest start of its prompt, if that sequence last
//! ran for the same tenant (a conversation's next turn reads only the new turn), else
//! the one freed longest ago, whose cells are cleared. Only the same tenant's cells are
//! reused: another's would tell, by the time to first token, whether it had sent the
//! same words.

use std::sync::Arc;
use std::time::Duration;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc::{self, error::TryRecvError};

use super::super::Tenant;
use super::schedule::{Scheduler, PREFILL_CHUNK};
use super::sequence::{Delivery, Job, Sequence};

/// Prompt tokens read in one step when nothing else is generating (also the smallest
/// batch llama.cpp is given).
const PREFILL_ALONE: usize = 512;

/// How long the loop waits when every sequence is paused by its consumer.
const PAUSED_WAIT: Duration = Duration::from_millis(2);

/// How the context is made.
#[derive(Clone, Copy, Debug)]
pub struct LoopConfig {
    /// Sequences at once (the node's slots and the spare).
    pub sequences: usize,
    /// KV cache tokens per sequence.
    pub context: u32,
    /// CPU threads for decoding.
    pub threads: i32,
}

impl LoopConfig {
    /// Tokens one batch holds: a token per sequence plus a prompt chunk.
    fn batch_tokens(&self) -> usize {
        PREFILL_ALONE.max(self.sequences + PREFILL_CHUNK)
    }
}

/// Starts the loop on its own thread; returns once the context exists (or could not
/// be made). The loop ends, and with it every generation still running, when every
/// sender of `jobs` is gone: join the thread then, so that no decode outlives the
/// backend (one still in llama.cpp while the process exits can crash it).
pub fn spawn(
    model: Arc<LlamaModel>,
    config: LoopConfig,
    jobs: mpsc::Receiver<Job>,
) -> Result<std::thread::JoinHandle<()>, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("llama-decode".into())
        .spawn(move || {
            let batch_tokens = config.batch_tokens();
            let n_ctx = (config.context as usize).saturating_mul(config.sequences);
            let params = LlamaContextParams::default()
                .with_n_ctx(std::num::NonZeroU32::new(
                    u32::try_from(n_ctx).unwrap_or(u32::MAX),
                ))
                .with_n_seq_max(u32::try_from(config.sequences).unwrap_or(u32::MAX))
                // One KV stream per sequence: each gets its own `context` cells.
                .with_kv_unified(false)
                .with_n_batch(u32::try_from(batch_tokens).unwrap_or(u32::MAX))
                .with_n_ubatch(u32::try_from(batch_tokens).unwrap_or(u32::MAX))
                .with_n_threads(config.threads)
                .with_n_threads_batch(config.threads);
            let ctx = match model.new_context(super::llama_backend(), params) {
                Ok(ctx) => ctx,
                Err(e) => {
                    let why = super::log::take_last_error().unwrap_or_else(|| e.to_string());
                    let _ = ready_tx.send(Err(format!(
                        "llama.cpp could not make a context of {n_ctx} tokens \
                         ({} slots × {}): {why}; lower --slots or --context",
                        config.sequences, config.context
                    )));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            DecodeLoop {
                model: &model,
                ctx,
                batch: LlamaBatch::new(batch_tokens, 1),
                batch_tokens,
                free: (0..config.sequences as i32)
                    .map(|id| Free {
                        id,
                        tenant: Tenant::Local,
                        tokens: Vec::new(),
                    })
                    .collect(),
                sequences: Vec::new(),
                jobs,
                turn: 0,
                scheduler: Scheduler::default(),
            }
            .run();
        })
        .map_err(|e| format!("starting the decode thread: {e}"))?;
    ready_rx
        .recv()
        .map_err(|_| "the decode thread ended while starting".to_string())??;
    Ok(thread)
}

/// A sequence id not in use, and what its KV cells still hold.
struct Free {
    id: i32,
    /// Whose they are.
    tenant: Tenant,
    tokens: Vec<LlamaToken>,
}

struct DecodeLoop<'m> {
    model: &'m LlamaModel,
    ctx: llama_cpp_2::context::LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    batch_tokens: usize,
    /// Sequences not in use, the one freed longest ago first.
    free: Vec<Free>,
    /// Running sequences, in the order they came.
    sequences: Vec<Sequence>,
    jobs: mpsc::Receiver<Job>,
    /// Steps decoded so far.
    turn: u64,
    /// Who gets tokens in each step.
    scheduler: Scheduler,
}

impl DecodeLoop<'_> {
    fn run(mut self) {
        while self.admit() {
            self.deliver();
            if !self.step() {
                std::thread::sleep(PAUSED_WAIT);
            }
        }
        tracing::debug!("decode loop ended");
    }

    /// Takes new jobs while sequence ids are free; waits for one when idle. False when
    /// no job can come any more (the backend is gone: what still runs is dropped, and
    /// its consumers see their streams end).
    fn admit(&mut self) -> bool {
        if self.sequences.is_empty() {
            match self.jobs.blocking_recv() {
                Some(job) => self.start(job),
                None => return false,
            }
        }
        while !self.free.is_empty() {
            match self.jobs.try_recv() {
                Ok(job) => self.start(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
        true
    }

    fn start(&mut self, job: Job) {
        // The longest start of the prompt a free sequence of this tenant holds; ties
        // (none at all, most often) go to the one freed longest ago.
        let (k, common) = self
            .free
            .iter()
            .enumerate()
            .map(|(k, f)| {
                let same = f.tenant == job.tenant;
                let common = f
                    .tokens
                    .iter()
                    .zip(&job.prompt)
                    .take_while(|(a, b)| same && a == b)
                    .count();
                (k, common)
            })
            .max_by_key(|&(k, common)| (common, std::cmp::Reverse(k)))
            .expect("a job is only taken with a free sequence id");
        let free = self.free.remove(k);
        // The prompt's last token is always read again: its logits start the answer.
        let keep = common.min(job.prompt.len() - 1);
        let id = free.id.unsigned_abs();
        let kept = self
            .ctx
            .clear_kv_cache_seq(Some(id), Some(keep as u32), None)
            .unwrap_or(false);
        let kept = if kept && keep > 0 {
            job.prompt[..keep].to_vec()
        } else {
            // Cells that cannot be cut (some models' caches) are cleared whole.
            let _ = self.ctx.clear_kv_cache_seq(Some(id), None, None);
            Vec::new()
        };
        self.sequences.push(Sequence::new(free.id, job, kept));
    }

    /// Delivers events; retires finished and cancelled sequences, freeing their KV
    /// cells and their slots.
    fn deliver(&mut self) {
        let mut i = 0;
        while i < self.sequences.len() {
            if self.sequences[i].deliver() == Delivery::Retire {
                let sequence = self.sequences.remove(i);
                self.release(sequence);
            } else {
                i += 1;
            }
        }
    }

    /// Frees a sequence's id, its cells kept for a later request of its tenant.
    fn release(&mut self, sequence: Sequence) {
        let (id, tenant) = (sequence.id, sequence.tenant());
        let tokens = sequence.into_cached().unwrap_or_else(|| {
            // A failed decode left its cells unknown. Removing a whole sequence
            // always succeeds.
            let _ = self
                .ctx
                .clear_kv_cache_seq(Some(id.unsigned_abs()), None, None);
            Vec::new()
        });
        self.free.push(Free { id, tenant, tokens });
    }

    /// One decode of the next tokens and prompt chunks; false if nothing was ready.
    fn step(&mut self) -> bool {
        self.batch.clear();
        let wants: Vec<_> = self.sequences.iter().map(Sequence::want).collect();
        let plan = self.scheduler.plan(&wants, self.batch_tokens);
        self.turn += 1;
        let (mut tokens, mut prompt) = (0, 0);
        // (index in `sequences`, index in the batch) of each token that wants logits.
        let mut logits = Vec::with_capacity(self.sequences.len());
        for (i, (s, &n)) in self.sequences.iter_mut().zip(&plan.take).enumerate() {
            if n == 0 {
                continue;
            }
            s.last_turn = self.turn;
            let added = if let Some(token) = s.next_token() {
                logits.push((i, self.batch.n_tokens()));
                let pos = i32::try_from(s.n_past).unwrap_or(i32::MAX);
                s.take_next();
                tokens += 1;
                self.batch.add(token, pos, &[s.id], true)
            } else {
                let chunk = &s.prompt_left()[..n];
                let last = n == s.prompt_left().len();
                let start = s.n_past;
                let mut added = Ok(());
                for (k, token) in chunk.iter().enumerate() {
                    let pos = i32::try_from(start + k).unwrap_or(i32::MAX);
                    let want = last && k + 1 == n;
                    if want {
                        logits.push((i, self.batch.n_tokens()));
                    }
                    added = added.and(self.batch.add(*token, pos, &[s.id], want));
                }
                s.prefill(n);
                prompt += n;
                added
            };
            added.expect("the plan keeps within the batch");
        }
        if self.batch.n_tokens() == 0 {
            return false;
        }
        let started = std::time::Instant::now();
        let decoded = self.ctx.decode(&mut self.batch);
        self.scheduler
            .observe(&plan, tokens, prompt, started.elapsed());
        if let Err(e) = decoded {
            let why = format!("llama.cpp decode failed: {e}");
            for (i, _) in logits {
                self.sequences[i].fail(why.clone());
            }
            // Sequences whose prompt chunk was in the batch are failed too: their
            // cells are in an unknown state.
            for s in self.sequences.iter_mut().filter(|s| !s.prefilled()) {
                s.fail(why.clone());
            }
            return true;
        }
        for (i, at) in logits {
            self.sequences[i].sample(self.model, &self.ctx, at);
        }
        true
    }
}
