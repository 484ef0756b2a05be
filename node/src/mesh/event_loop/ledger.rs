//! The ledger's side of the event loop. The swarm's task only moves bytes: checking
//! signatures, applying messages and writing them to sled (gossip, and anti-entropy
//! answers of up to 4 MiB in both directions) run on one settlement thread fed by a
//! bounded queue, and its verdicts and answers come back to the loop as they are ready.
//! A node applying a large sync batch therefore still answers pings, streams and its
//! own API; what does not fit in the queue is dropped and counted
//! (`relaymesh_limited_total{reason="ledger_queue"}`), and anti-entropy brings it again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use libp2p::request_response::ResponseChannel;
use libp2p::{gossipsub, PeerId};
use relaymesh_protocol::wire::WireMessage;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{now_ms, EventLoop};
use crate::mesh::behaviour::{LedgerSyncRequest, LedgerSyncResponse};
use crate::metrics::Metrics;
use crate::settle::{Ingested, Settlement};

/// Jobs waiting for the settlement thread at most.
const MAX_JOBS: usize = 128;

/// Bytes waiting for the settlement thread at most: a few full anti-entropy answers
/// (each at most `2 × MAX_SYNC_BYTES`) or gossiped proofs (at most 1 MiB each).
const MAX_QUEUED_BYTES: usize = 24 * 1024 * 1024;

/// Peers' anti-entropy requests being answered at once at most. A request costs the
/// thread an answer of up to 4 MiB however little it says, so a peer keeping many in
/// flight would otherwise fill the queue and crowd out gossip and the node's own
/// rounds; with this bound the rest of the queue stays theirs.
const MAX_ANSWERS: usize = 4;

/// Least time between two of one peer's anti-entropy requests that are answered (an
/// honest peer asks one peer per round, rounds at least a second apart), and one at a
/// time.
const ANSWER_GAP: std::time::Duration = std::time::Duration::from_millis(500);

/// Work for the settlement thread.
pub(super) enum Job {
    /// A gossiped ledger message awaiting its verdict.
    Gossip {
        id: gossipsub::MessageId,
        source: PeerId,
        bytes: Vec<u8>,
    },
    /// A peer's anti-entropy request, received at `at_ms`.
    Answer {
        peer: PeerId,
        request: LedgerSyncRequest,
        channel: ResponseChannel<LedgerSyncResponse>,
        at_ms: u64,
    },
    /// A peer's answer to our request, received at `at_ms`.
    Learn {
        peer: PeerId,
        response: LedgerSyncResponse,
        at_ms: u64,
    },
    /// An anti-entropy round with `peer`: what we hold, to ask it for the rest.
    Ask { peer: PeerId },
}

impl Job {
    fn bytes(&self) -> usize {
        match self {
            Job::Gossip { bytes, .. } => bytes.len(),
            Job::Answer { request, .. } => request.have.iter().map(Vec::len).sum(),
            Job::Learn { response, .. } => response.messages.iter().map(Vec::len).sum(),
            Job::Ask { .. } => 0,
        }
    }
}

/// What the settlement thread hands back to the swarm.
pub(super) enum Done {
    Verdict {
        id: gossipsub::MessageId,
        source: PeerId,
        acceptance: gossipsub::MessageAcceptance,
    },
    Answer {
        peer: PeerId,
        channel: ResponseChannel<LedgerSyncResponse>,
        response: LedgerSyncResponse,
    },
    Ask {
        peer: PeerId,
        request: LedgerSyncRequest,
    },
    /// A message to gossip (one this node learned and must pass on, or made itself).
    Publish(Vec<u8>),
}

/// The settlement thread and the queues to and from it.
pub(super) struct LedgerWorker {
    jobs: Option<mpsc::Sender<(Job, usize)>>,
    done: mpsc::Receiver<Done>,
    queued_bytes: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Which peers' anti-entropy requests are being answered.
    answering: AnswerGate,
    /// Whether the thread's end was said (it ends only with the node).
    gone_said: bool,
}

impl LedgerWorker {
    pub(super) fn start(settlement: Arc<Settlement>, metrics: Metrics) -> std::io::Result<Self> {
        let (jobs_tx, jobs_rx) = mpsc::channel(MAX_JOBS);
        let (done_tx, done_rx) = mpsc::channel(MAX_JOBS);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let worker = Worker {
            settlement,
            metrics,
            done: done_tx,
            queued_bytes: queued_bytes.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("relaymesh-ledger".into())
            .spawn(move || worker.run(jobs_rx))?;
        Ok(Self {
            jobs: Some(jobs_tx),
            done: done_rx,
            queued_bytes,
            thread: Some(thread),
            answering: Default::default(),
            gone_said: false,
        })
    }

    fn take_request(&mut self, peer: PeerId) -> bool {
        self.answering.take(peer, std::time::Instant::now())
    }

    fn answered(&mut self, peer: &PeerId) {
        self.answering.answered(peer);
    }

    /// Queues `job`; hands it back when the queue is full (or the thread gone).
    fn offer(&self, job: Job) -> Option<Job> {
        let Some(jobs) = &self.jobs else {
            return Some(job);
        };
        let bytes = job.bytes();
        if self.queued_bytes.load(Ordering::Relaxed) + bytes > MAX_QUEUED_BYTES {
            return Some(job);
        }
        // Counted before it is sent, so the thread never takes away more than was added.
        self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        match jobs.try_send((job, bytes)) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full((job, _)))
            | Err(mpsc::error::TrySendError::Closed((job, _))) => {
                self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                Some(job)
            }
        }
    }

    /// Stops the thread: the job in hand is finished (a long anti-entropy answer is cut
    /// short at its next message), nothing queued is started.
    pub(super) async fn stop(&mut self) {
        self.jobs = None;
        self.done.close();
        while self.done.try_recv().is_ok() {}
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// The settlement thread's next result; pending forever when there is none to come.
pub(super) async fn next(worker: &mut Option<LedgerWorker>) -> Done {
    match worker {
        Some(worker) => match worker.done.recv().await {
            Some(done) => done,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// The peers whose anti-entropy requests are being answered, or were lately.
#[derive(Default)]
struct AnswerGate {
    /// When each was taken, and whether its answer is still being made.
    peers: std::collections::HashMap<PeerId, (std::time::Instant, bool)>,
}

impl AnswerGate {
    /// Whether `peer`'s request may be answered at `now` (see [`MAX_ANSWERS`],
    /// [`ANSWER_GAP`]); if so, it is counted as being answered.
    fn take(&mut self, peer: PeerId, now: std::time::Instant) -> bool {
        self.peers
            .retain(|_, (at, busy)| *busy || now.duration_since(*at) < ANSWER_GAP);
        let busy = self.peers.values().filter(|(_, busy)| *busy).count();
        if busy >= MAX_ANSWERS || self.peers.contains_key(&peer) {
            return false;
        }
        self.peers.insert(peer, (now, true));
        true
    }

    /// `peer`'s answer is made (or was dropped).
    fn answered(&mut self, peer: &PeerId) {
        if let Some((_, busy)) = self.peers.get_mut(peer) {
            *busy = false;
        }
    }
}

/// The thread's side.
struct Worker {
    settlement: Arc<Settlement>,
    metrics: Metrics,
    done: mpsc::Sender<Done>,
    queued_bytes: Arc<AtomicUsize>,
}

impl Worker {
    fn run(self, mut jobs: mpsc::Receiver<(Job, usize)>) {
        while let Some((job, bytes)) = jobs.blocking_recv() {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            if self.work(job).is_err() {
                // The loop is gone: the node is stopping.
                return;
            }
        }
    }

    fn hand_back(&self, done: Done) -> Result<(), ()> {
        self.done.blocking_send(done).map_err(|_| ())
    }

    fn work(&self, job: Job) -> Result<(), ()> {
        let s = &self.settlement;
        match job {
            Job::Gossip { id, source, bytes } => {
                let acceptance = self.ingest(&bytes)?;
                self.hand_back(Done::Verdict {
                    id,
                    source,
                    acceptance,
                })
            }
            Job::Answer {
                peer,
                request,
                channel,
                at_ms,
            } => {
                let messages = if request.have.len() <= crate::settle::MAX_SYNC_KEYS {
                    s.sync_answer(&request.have)
                } else {
                    Vec::new()
                };
                // The asker's clock, one way (its delay is far inside the skew).
                s.observe_peer_clock(&peer.to_string(), request.now_ms, at_ms);
                s.compare_checkpoint(&peer.to_string(), request.frozen.0, request.frozen.1);
                let response = LedgerSyncResponse {
                    messages,
                    echo_ms: request.now_ms,
                    now_ms: now_ms(),
                    frozen: s.frozen_digest(),
                };
                self.hand_back(Done::Answer {
                    peer,
                    channel,
                    response,
                })
            }
            Job::Learn {
                peer,
                response,
                at_ms,
            } => {
                // The answerer's clock against the midpoint of our round trip.
                let midpoint = response.echo_ms / 2 + at_ms / 2;
                s.observe_peer_clock(&peer.to_string(), response.now_ms, midpoint);
                s.compare_checkpoint(&peer.to_string(), response.frozen.0, response.frozen.1);
                let count = response.messages.len();
                let mut new = 0;
                for bytes in &response.messages {
                    if self.ingest(bytes)? == gossipsub::MessageAcceptance::Accept {
                        new += 1;
                    }
                }
                if new > 0 {
                    info!(%peer, new, "ledger messages learned by anti-entropy");
                } else {
                    debug!(%peer, count, "ledger in sync");
                }
                Ok(())
            }
            Job::Ask { peer } => {
                let request = LedgerSyncRequest {
                    have: s.sync_keys(),
                    now_ms: now_ms(),
                    frozen: s.frozen_digest(),
                };
                self.hand_back(Done::Ask { peer, request })
            }
        }
    }

    /// Applies a ledger message from gossip or sync: the verdict for gossip. `Err` when
    /// the loop is gone.
    fn ingest(&self, bytes: &[u8]) -> Result<gossipsub::MessageAcceptance, ()> {
        if self.done.is_closed() {
            return Err(());
        }
        Ok(match self.settlement.ingest_bytes(bytes, now_ms()) {
            Ok(Ingested::New { publish }) => {
                for message in publish {
                    if let Ok(bytes) = message.encode() {
                        self.hand_back(Done::Publish(bytes))?;
                    }
                }
                gossipsub::MessageAcceptance::Accept
            }
            Ok(Ingested::Duplicate) => gossipsub::MessageAcceptance::Ignore,
            Err(refused) if refused.invalid => {
                info!(kind = refused.kind, reason = refused.reason, detail = %refused.detail, "invalid ledger message dropped");
                self.metrics.invalid(refused.reason);
                gossipsub::MessageAcceptance::Reject
            }
            Err(_) => gossipsub::MessageAcceptance::Ignore,
        })
    }
}

impl EventLoop {
    /// Hands a job to the settlement thread; a job that does not fit is dropped, counted,
    /// and (for gossip) not forwarded.
    fn offer_ledger(&mut self, job: Job) {
        let Some(worker) = &mut self.ledger else {
            return;
        };
        let Some(job) = worker.offer(job) else {
            return;
        };
        if worker.jobs.as_ref().is_some_and(|j| j.is_closed()) && !worker.gone_said {
            worker.gone_said = true;
            tracing::error!("the ledger thread has stopped: ledger messages are no longer applied");
        }
        self.metrics.limited("ledger_queue");
        match job {
            Job::Gossip { id, source, .. } => {
                debug!(peer = %source, "ledger queue full: gossip dropped");
                self.verdict(&id, &source, gossipsub::MessageAcceptance::Ignore);
            }
            // The asker's request fails; it asks again next round.
            Job::Answer { peer, .. } => {
                worker.answered(&peer);
                debug!(%peer, "ledger queue full: sync request dropped");
            }
            Job::Learn { peer, .. } => warn!(%peer, "ledger queue full: sync answer dropped"),
            Job::Ask { .. } => {}
        }
    }

    pub(super) fn on_ledger_gossip(
        &mut self,
        id: gossipsub::MessageId,
        source: PeerId,
        bytes: Vec<u8>,
    ) {
        if self.ledger.is_none() {
            self.verdict(&id, &source, gossipsub::MessageAcceptance::Ignore);
            return;
        }
        self.offer_ledger(Job::Gossip { id, source, bytes });
    }

    pub(super) fn on_ledger_request(
        &mut self,
        peer: PeerId,
        request: LedgerSyncRequest,
        channel: ResponseChannel<LedgerSyncResponse>,
    ) {
        let Some(worker) = &mut self.ledger else {
            return;
        };
        if !worker.take_request(peer) {
            // Its request fails; an honest peer asks again next round.
            self.metrics.limited("ledger_sync_requests");
            debug!(%peer, "anti-entropy request not answered: too many, or too soon");
            return;
        }
        let at_ms = now_ms();
        self.offer_ledger(Job::Answer {
            peer,
            request,
            channel,
            at_ms,
        });
    }

    pub(super) fn on_ledger_response(&mut self, peer: PeerId, response: LedgerSyncResponse) {
        let at_ms = now_ms();
        self.offer_ledger(Job::Learn {
            peer,
            response,
            at_ms,
        });
    }

    /// Asks one connected relaymesh peer (a different one each round) for the ledger
    /// messages we lack.
    pub(super) fn ledger_sync(&mut self) {
        let Some(settlement) = &self.settlement else {
            return;
        };
        let now = std::time::Instant::now();
        if now < self.next_ledger_sync {
            return;
        }
        self.next_ledger_sync = now + crate::settle::sync_interval(settlement.params());
        let mut peers: Vec<PeerId> = self
            .connections
            .keys()
            .filter(|p| {
                self.agents
                    .get(p)
                    .is_some_and(|a| a.starts_with("relaymesh"))
            })
            .copied()
            .collect();
        if peers.is_empty() {
            return;
        }
        peers.sort();
        let peer = peers[self.ledger_rounds % peers.len()];
        self.ledger_rounds += 1;
        self.offer_ledger(Job::Ask { peer });
    }

    /// Carries out what the settlement thread handed back.
    pub(super) fn on_ledger_done(&mut self, done: Done) {
        match done {
            Done::Verdict {
                id,
                source,
                acceptance,
            } => self.verdict(&id, &source, acceptance),
            Done::Answer {
                peer,
                channel,
                response,
            } => {
                let sync = &mut self.swarm.behaviour_mut().ledger_sync;
                let _ = sync.send_response(channel, response);
                if let Some(worker) = &mut self.ledger {
                    worker.answered(&peer);
                }
            }
            Done::Ask { peer, request } => {
                let sync = &mut self.swarm.behaviour_mut().ledger_sync;
                sync.send_request(&peer, request);
            }
            Done::Publish(bytes) => {
                let _ = self.publish_ledger(bytes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by review: one peer keeping many requests in flight filled the thread's
    /// queue with answers, and gossip from everyone was dropped.
    #[test]
    fn few_answers_at_once_one_per_peer_and_not_too_soon() {
        let mut gate = AnswerGate::default();
        let t0 = std::time::Instant::now();
        let flooder = PeerId::random();
        assert!(gate.take(flooder, t0));
        assert!(
            !gate.take(flooder, t0),
            "a second request while one is answered"
        );
        gate.answered(&flooder);
        assert!(
            !gate.take(flooder, t0 + ANSWER_GAP / 2),
            "too soon after the last"
        );
        assert!(gate.take(flooder, t0 + ANSWER_GAP));
        let others: Vec<PeerId> = (0..MAX_ANSWERS).map(|_| PeerId::random()).collect();
        let taken = others
            .iter()
            .filter(|p| gate.take(**p, t0 + ANSWER_GAP))
            .count();
        assert_eq!(taken, MAX_ANSWERS - 1, "at most {MAX_ANSWERS} at once");
        gate.answered(&flooder);
        assert!(gate.take(others[MAX_ANSWERS - 1], t0 + ANSWER_GAP));
    }
}
