//! The models a node serves, by name, with what the node measured of each.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use relaymesh_protocol::messages::capability::{ModelOffer, OfferDetails};
use relaymesh_protocol::metering::compute_units::CuFormula;
use relaymesh_protocol::BoundedString;

use super::{BackendError, Finish, GenEvent, GenRequest, Generation, SharedBackend, TokenLogprob};

/// A served model: the backend, its price and its measured speed.
pub struct ServedModel {
    /// The backend.
    pub backend: SharedBackend,
    /// Price per CU, in micro-credits.
    pub price_per_cu: u64,
    perf: Arc<Perf>,
}

/// Measured speed: the last request's time to first token and generation rate.
#[derive(Default, Debug)]
pub struct Perf {
    ttft_ms: AtomicU32,
    tokens_per_sec_milli: AtomicU32,
    requests: AtomicU64,
}

impl Perf {
    /// (time to first token in ms, thousandths of a token per second, requests).
    pub fn get(&self) -> (u32, u32, u64) {
        (
            self.ttft_ms.load(Ordering::Relaxed),
            self.tokens_per_sec_milli.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed),
        )
    }
}

impl ServedModel {
    /// Serves `backend` at `price_per_cu`.
    pub fn new(backend: SharedBackend, price_per_cu: u64) -> Self {
        Self {
            backend,
            price_per_cu,
            perf: Arc::default(),
        }
    }

    /// What was measured.
    pub fn perf(&self) -> &Perf {
        &self.perf
    }

    /// Starts a generation whose speed is measured as it is read.
    pub async fn generate(&self, request: GenRequest) -> Result<Measured, BackendError> {
        let started = Instant::now();
        let inner = self.backend.generate(request).await?;
        Ok(Measured {
            inner,
            perf: self.perf.clone(),
            started,
            first: None,
            stop: None,
            end: None,
        })
    }
}

/// A generation that records its speed when it finishes.
pub struct Measured {
    inner: Generation,
    perf: Arc<Perf>,
    started: Instant,
    first: Option<Instant>,
    stop: Option<Stop>,
    /// Told how the generation ended (once; a generation dropped before its end was
    /// cancelled).
    end: Option<EndHook>,
}

/// What [`Measured::on_end`] calls.
type EndHook = Box<dyn FnOnce(&Ended) + Send>;

/// How a generation ended, for whoever records requests.
#[derive(Clone, Debug)]
pub struct Ended {
    /// How it finished, if it did.
    pub finish: Option<Finish>,
    /// Why it failed, if it did.
    pub failure: Option<String>,
    /// Time to its first token.
    pub ttft: Option<std::time::Duration>,
    /// Time from its start to its end.
    pub took: std::time::Duration,
}

impl Drop for Measured {
    fn drop(&mut self) {
        self.ended(None, Some("cancelled: the client left".into()));
    }
}

/// How a generation ends when the node stops: [`STOP_GRACE`] after, with a failure.
///
/// [`STOP_GRACE`]: crate::stopping::STOP_GRACE
struct Stop {
    signal: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    deadline: Option<tokio::time::Instant>,
    /// Whether the generation was cut so.
    cut: bool,
}

impl Stop {
    async fn next(&mut self, inner: &mut Generation) -> Option<GenEvent> {
        use crate::stopping::{STOPPED, STOP_GRACE};
        loop {
            let deadline = self.deadline;
            let far = tokio::time::Instant::now() + std::time::Duration::from_secs(86_400);
            tokio::select! {
                event = inner.next() => return event,
                () = &mut self.signal, if deadline.is_none() => {
                    self.deadline = Some(tokio::time::Instant::now() + STOP_GRACE);
                }
                () = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                    self.cut = true;
                    return Some(GenEvent::Failed(STOPPED.into()));
                }
            }
        }
    }
}

impl Measured {
    /// Ends [`STOP_GRACE`](crate::stopping::STOP_GRACE) after the node stops, with a
    /// failure saying so, if it has not ended by then.
    pub fn until_stopped(mut self, stopping: &crate::stopping::Stopping) -> Self {
        self.stop = Some(Stop {
            signal: Box::pin(stopping.stopped()),
            deadline: None,
            cut: false,
        });
        self
    }

    /// Calls `f` once the generation ends (or is dropped unfinished).
    pub fn on_end(mut self, f: impl FnOnce(&Ended) + Send + 'static) -> Self {
        self.end = Some(Box::new(f));
        self
    }

    fn ended(&mut self, finish: Option<Finish>, failure: Option<String>) {
        if let Some(f) = self.end.take() {
            f(&Ended {
                finish,
                failure,
                ttft: self.first.map(|first| first.duration_since(self.started)),
                took: self.started.elapsed(),
            });
        }
    }

    /// Who serves it on the mesh; `None` when this node runs it itself.
    pub fn provenance(&self) -> Option<&crate::backend::Provenance> {
        self.inner.provenance()
    }

    /// Reads everything: the whole text and how it finished.
    pub async fn collect(self) -> Result<(String, Finish), BackendError> {
        self.collect_all()
            .await
            .map(|(text, _, finish)| (text, finish))
    }

    /// Reads everything: the whole text, its tokens' log probabilities (if the
    /// request asked) and how it finished.
    pub async fn collect_all(
        mut self,
    ) -> Result<(String, Vec<TokenLogprob>, Finish), BackendError> {
        let (mut text, mut logprobs, mut held) = (String::new(), Vec::new(), Vec::new());
        while let Some(event) = self.next().await {
            match event {
                GenEvent::Text(piece) => {
                    text.push_str(&piece);
                    logprobs.append(&mut held);
                }
                GenEvent::Logprobs(tokens) => super::hold_logprobs(&mut held, tokens),
                GenEvent::Done(finish) => return Ok((text, logprobs, finish)),
                GenEvent::Failed(why) if self.stop.as_ref().is_some_and(|s| s.cut) => {
                    return Err(BackendError::Unavailable(why))
                }
                GenEvent::Failed(why) => return Err(BackendError::Upstream(why)),
            }
        }
        Err(BackendError::Internal(
            "the backend stopped without finishing".into(),
        ))
    }

    /// The next event (see [`Generation::next`]).
    pub async fn next(&mut self) -> Option<GenEvent> {
        let event = match self.stop.as_mut() {
            Some(stop) => stop.next(&mut self.inner).await,
            None => self.inner.next().await,
        };
        match &event {
            Some(GenEvent::Text(_)) if self.first.is_none() => self.first = Some(Instant::now()),
            Some(GenEvent::Done(finish)) => {
                let first = self.first.unwrap_or_else(Instant::now);
                let ttft = first.duration_since(self.started).as_millis();
                self.perf
                    .ttft_ms
                    .store(ttft.min(u32::MAX as u128) as u32, Ordering::Relaxed);
                let gen_secs = first.elapsed().as_secs_f64();
                if finish.completion_tokens > 1 && gen_secs > 0.0 {
                    let rate = f64::from(finish.completion_tokens - 1) / gen_secs * 1000.0;
                    self.perf
                        .tokens_per_sec_milli
                        .store(rate.min(u32::MAX as f64) as u32, Ordering::Relaxed);
                }
                self.perf.requests.fetch_add(1, Ordering::Relaxed);
                let finish = finish.clone();
                self.ended(Some(finish), None);
            }
            Some(GenEvent::Failed(why)) => {
                let why = why.clone();
                self.ended(None, Some(why));
            }
            _ => {}
        }
        event
    }
}

/// Served models by name.
#[derive(Default)]
pub struct Models {
    by_name: BTreeMap<String, ServedModel>,
}

impl std::fmt::Debug for Models {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_name.keys()).finish()
    }
}

impl Models {
    /// Adds a model; a second one with the same name is refused.
    pub fn insert(&mut self, model: ServedModel) -> Result<(), String> {
        let name = model.backend.info().name.clone();
        if self.by_name.contains_key(&name) {
            return Err(format!(
                "two models are served as {name:?}; names must differ"
            ));
        }
        self.by_name.insert(name, model);
        Ok(())
    }

    /// The model called `name`.
    pub fn get(&self, name: &str) -> Option<&ServedModel> {
        self.by_name.get(name)
    }

    /// Every served model, by name.
    pub fn iter(&self) -> impl Iterator<Item = &ServedModel> {
        self.by_name.values()
    }

    /// The names, for "unknown model" errors.
    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

    /// Nothing served.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// What the node's capability ad says of each model now (see [`ServedModel::offer`]).
    pub fn offers(&self, tau: u64, cu: CuFormula) -> Vec<ModelOffer> {
        self.iter().filter_map(|m| m.offer(tau, cu)).collect()
    }
}

impl ServedModel {
    /// The length of the vectors it embeds with, where its backend makes them and a
    /// frame carries them (found by review: an upstream's longer ones were advertised,
    /// embedded, then not sent).
    pub fn embedding_dims(&self) -> Option<u32> {
        self.backend.embedding_dims().filter(|&d| {
            d > 0 && d as usize <= relaymesh_protocol::messages::infer::MAX_EMBEDDING_DIMS
        })
    }

    /// What a capability ad says of this model now: identity, slots, the speed
    /// measured on the last request, price, the CU formula `cu` and the threshold `tau`.
    pub fn offer(&self, tau: u64, cu: CuFormula) -> Option<ModelOffer> {
        let info = self.backend.info();
        let (free, total) = self.backend.slots();
        let (ttft_ms, tokens_per_sec_milli, _) = self.perf.get();
        let clamp = |n: usize| n.min(u16::MAX as usize) as u16;
        Some(ModelOffer {
            name: BoundedString::new(info.name.as_str()).ok()?,
            gguf_digest: info.digest.as_ref().and_then(|d| d.gguf()),
            manifest: info.manifest.clone(),
            context_length: info.context_length,
            free_slots: clamp(free),
            total_slots: clamp(total),
            tokens_per_sec_milli,
            ttft_ms,
            price_per_cu: self.price_per_cu,
            cu,
            tau,
            max_token_bytes: info.max_token_bytes,
            details: OfferDetails::new(
                &info.details.family,
                &info.details.parameter_size,
                &info.details.quantization_level,
            ),
            embedding_dims: self.embedding_dims(),
        })
    }
}
