//! Relay mining's settlement on a node: the ledger every node keeps, and the duties of
//! the two parties of a session.
//!
//! - **Every node** validates ledger messages (claims, reveals, proofs, transfers,
//!   equivocation evidence) with the protocol crate before gossip forwards them, applies
//!   them to its [`Ledger`], and keeps the validated ones in sled tree `ledger` (key
//!   `kind ‖ epoch (8 B) ‖ id (32 B)`, value the encoded [`LedgerMessage`]); at start it
//!   replays that log, so balances survive restarts. Nodes reconcile the messages of
//!   unfrozen epochs with a random peer every anti-entropy round, so one that was
//!   offline or partitioned converges: the ledger is a function of the message *set*.
//! - **A supplier**, once a session has ended, closes it for mining, signs its `Claim`
//!   and (after storing it durably) gossips it; when the app's reveal arrives it builds
//!   the sampled proof, and when none comes within [`reveal_wait_ms`] it gossips the
//!   full-reveal proof instead. It admits a new session only if its escrow is funded
//!   by the app's final credit line and clashes with no debit of the app it knows, and
//!   announces the session (its escrow) to the mesh.
//! - **An app** (a gateway, for its clients) numbers its debits (session escrows,
//!   transfers) on its credit line, persisting where the next one starts before it
//!   signs it, and reveals its secret `r` for the first root claimed for each of its
//!   sessions, never for a second.
//!
//! The rules are the protocol crate's; what is here is storage, timing and plumbing.
//!
//! Files: `ingest` (validating, applying and storing messages, anti-entropy),
//! `duties` (what a supplier and an app do as sessions end), `credit` (escrow slots,
//! admission, transfers, announcements), `report` (what the API shows).

mod clock;
mod credit;
mod duties;
mod ingest;
mod report;
#[cfg(test)]
mod tests;

pub use clock::ClockReport;
pub use credit::{Available, SESSION_ESCROW_CAP, SESSION_SHARE};
pub use report::{balances, AccountRow, ClaimRow, LedgerReport};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use relaymesh_protocol::ledger::{Ledger, LedgerError, LedgerSnapshot};
use relaymesh_protocol::messages::ledger::{LedgerBody, LedgerMessage};
use relaymesh_protocol::params::MeshParams;
use relaymesh_protocol::wire::WireMessage;
use relaymesh_protocol::{Digest, Ed25519Verifier, Keypair, PublicKey, Signer};
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::mining::Miner;

pub use relaymesh_protocol::settlement::duty::CLAIM_DELAY_MS;

/// How long a supplier waits for the app's reveal before it proves with the full
/// reveal: two epochs, at least 10 s, and always well inside the freeze horizon.
pub fn reveal_wait_ms(params: &MeshParams) -> u64 {
    params.reveal_wait_ms()
}

/// Most log keys one anti-entropy request lists.
pub const MAX_SYNC_KEYS: usize = 16_384;
/// Most bytes of messages one anti-entropy response carries.
pub const MAX_SYNC_BYTES: usize = 4 * 1024 * 1024;

/// A ledger message that was not applied, and why (a short label for metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The message kind.
    pub kind: &'static str,
    /// Metric label.
    pub reason: &'static str,
    /// For logs.
    pub detail: String,
    /// Whether the sender misbehaved (gossip then punishes it); a late or out-of-order
    /// message is only ignored.
    pub invalid: bool,
}

/// What became of a message that was not refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// New: applied and stored. `publish` lists what the node should gossip as a
    /// consequence (equivocation evidence).
    New {
        /// Messages to gossip.
        publish: Vec<LedgerMessage>,
    },
    /// Known already.
    Duplicate,
}

fn kind_of(body: &LedgerBody) -> &'static str {
    match body {
        LedgerBody::Open(_) => "open",
        LedgerBody::Claim(_) => "claim",
        LedgerBody::Reveal(_) => "reveal",
        LedgerBody::Proof(_) => "proof",
        LedgerBody::Transfer(_) => "transfer",
        LedgerBody::Evidence(_) => "evidence",
        LedgerBody::Withdraw(_) => "withdraw",
    }
}

fn log_key(kind: u8, epoch: u64, id: &Digest) -> Vec<u8> {
    let mut k = Vec::with_capacity(41);
    k.push(kind);
    k.extend_from_slice(&epoch.to_be_bytes());
    k.extend_from_slice(&id.0);
    k
}

/// The sled tree of the acks a gateway sent (`store::app`): the app's own record of
/// what it will be billed, pruned with its session.
pub const APP_ACKS_TREE: &str = crate::store::app::ACKS_TREE;

/// The ledger and the settlement duties of one node.
pub struct Settlement {
    key: Keypair,
    params: MeshParams,
    ledger: Mutex<Ledger>,
    log: sled::Tree,
    /// App side: the root revealed for each session (`session key → root`), so no
    /// session is ever revealed for two roots.
    revealed: sled::Tree,
    /// App side: the sessions this node opened, with their secrets, and the acks it
    /// sent (written by the gateway).
    app: crate::store::app::AppStore,
    /// Supplier side.
    miner: Option<Arc<Miner>>,
    metrics: Metrics,
    /// The frozen epoch boundary the app's sessions were last pruned at.
    pruned_before: std::sync::atomic::AtomicU64,
    /// App side: where this node's next debit starts on its credit line (tree `credit`,
    /// key `next`), written and flushed before the debit is signed.
    credit: sled::Tree,
    /// The lock that numbers this node's debits one at a time.
    cursor: Mutex<()>,
    /// Messages made outside the duties' tick (a supplier's session announcements), for
    /// the settlement task to gossip at once.
    outbox: tokio::sync::mpsc::Sender<LedgerMessage>,
    outbox_rx: Mutex<Option<tokio::sync::mpsc::Receiver<LedgerMessage>>>,
    /// The stored checkpoint of the frozen epochs (tree `ledger_checkpoint`).
    checkpoint: sled::Tree,
    /// The frozen epochs' end and digest, as last frozen.
    frozen: Mutex<(u64, Digest)>,
    /// This node's clock against its peers'.
    clock: clock::ClockWatch,
    /// The last claims and proofs this node's ledger refused, with why (newest last).
    refused: Mutex<std::collections::VecDeque<report::RefusedRow>>,
}

impl Settlement {
    /// The app's records (its sessions and sent acks), which the gateway writes.
    pub fn app_store(&self) -> &crate::store::app::AppStore {
        &self.app
    }
}

/// The tree and key of the stored ledger checkpoint.
const CHECKPOINT_TREE: &str = "ledger_checkpoint";
const CHECKPOINT_KEY: &[u8] = b"snapshot";

/// Messages waiting to be gossiped outside the tick; more are dropped (the claim carries
/// the session's terms anyway).
pub const OUTBOX: usize = 256;

impl std::fmt::Debug for Settlement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settlement").finish_non_exhaustive()
    }
}

impl Settlement {
    /// Opens the settlement state in `db` (trees `ledger` and `revealed`, and the app's
    /// records) and replays the stored log into a fresh ledger.
    pub fn open(
        key: Keypair,
        params: MeshParams,
        db: &sled::Db,
        miner: Option<Arc<Miner>>,
        metrics: Metrics,
        now_ms: u64,
    ) -> Result<Self, sled::Error> {
        let log = db.open_tree("ledger")?;
        let revealed = db.open_tree("revealed")?;
        let app = crate::store::app::AppStore::open(db)?;
        let credit = db.open_tree("credit")?;
        let checkpoint = db.open_tree(CHECKPOINT_TREE)?;
        let params_skew = params.max_clock_skew_ms;
        let (outbox, outbox_rx) = tokio::sync::mpsc::channel(OUTBOX);
        // The frozen epochs come back from the stored checkpoint; their messages are gone
        // from the log (or refused as frozen, if a crash came between the two writes).
        let mut ledger = match checkpoint.get(CHECKPOINT_KEY)? {
            Some(bytes) => match LedgerSnapshot::from_bytes(&bytes) {
                Ok(snapshot) => {
                    info!(
                        frozen_before = snapshot.frozen_before,
                        "ledger checkpoint loaded"
                    );
                    Ledger::from_snapshot(params.clone(), snapshot)
                }
                Err(e) => {
                    warn!(%e, "the stored ledger checkpoint is unreadable; replaying the log from genesis");
                    Ledger::new(params.clone())
                }
            },
            None => Ledger::new(params.clone()),
        };
        let mut replayed = 0usize;
        // Key order puts claims before evidence, opens, proofs, reveals and transfers:
        // every proof finds its claim. Messages are replayed as of now's clock: the
        // checkpoint of the epochs frozen since is rebuilt by the advance below.
        for item in log.iter() {
            let (_, bytes) = item?;
            let Ok(message) = LedgerMessage::decode(&bytes) else {
                warn!("an unreadable ledger message was skipped");
                continue;
            };
            let v = &Ed25519Verifier;
            let result = match message.body {
                LedgerBody::Claim(c) => ledger.apply_claim(c, v).map(drop),
                LedgerBody::Proof(p) => ledger.apply_proof(&p, v).map(drop),
                LedgerBody::Transfer(t) => ledger.apply_transfer(&t, v).map(drop),
                LedgerBody::Evidence(e) => ledger.apply_evidence(e, v).map(drop),
                LedgerBody::Open(o) => ledger.apply_open(&o, v).map(drop),
                LedgerBody::Withdraw(p) => ledger.apply_withdraw(&p, v).map(drop),
                LedgerBody::Reveal(_) => Ok(()),
            };
            match result {
                Err(LedgerError::Frozen { .. }) => {}
                Err(e) => warn!(%e, "a stored ledger message no longer applies"),
                Ok(()) => {}
            }
            replayed += 1;
        }
        if replayed > 0 {
            info!(messages = replayed, "ledger replayed from disk");
        }
        let settlement = Self {
            key,
            params,
            ledger: Mutex::new(ledger),
            log,
            revealed,
            app,
            miner,
            metrics,
            pruned_before: std::sync::atomic::AtomicU64::new(u64::MAX),
            credit,
            cursor: Mutex::new(()),
            outbox,
            outbox_rx: Mutex::new(Some(outbox_rx)),
            checkpoint,
            frozen: Mutex::new((0, Digest::ZERO)),
            clock: clock::ClockWatch::new(params_skew),
            refused: Mutex::default(),
        };
        {
            let mut ledger = settlement.ledger.lock().expect("ledger lock");
            settlement.advance(&mut ledger, now_ms);
            let snapshot = ledger.snapshot();
            *settlement.frozen.lock().expect("frozen lock") =
                (snapshot.frozen_before, snapshot.digest());
        }
        Ok(settlement)
    }

    /// A peer's clock read `peer_ms` when this node's read `our_ms` (from an
    /// anti-entropy exchange).
    pub fn observe_peer_clock(&self, peer: &str, peer_ms: u64, our_ms: u64) {
        self.clock.observe(peer, peer_ms, our_ms);
        if let Some(offset) = self.clock.report().offset_ms {
            self.metrics.clock_offset_ms.set(offset);
        }
    }

    /// The last clock offset heard from `peer` (its clock minus ours, ms).
    pub fn peer_clock_offset(&self, peer: &str) -> Option<i64> {
        self.clock.offset_of(peer)
    }

    /// The end and digest of this node's frozen epochs, for peers to compare.
    pub fn frozen_digest(&self) -> (u64, Digest) {
        *self.frozen.lock().expect("frozen lock")
    }

    /// A peer's frozen epochs end at `frozen_before` with `digest`: compared with ours.
    pub fn compare_checkpoint(&self, peer: &str, frozen_before: u64, digest: Digest) {
        if self
            .clock
            .compare_checkpoint(peer, frozen_before, digest, self.frozen_digest())
        {
            self.metrics.checkpoint_mismatches.inc();
        }
    }

    /// Advances the ledger's clock to `now_ms` (unless this node's clock is off from its
    /// peers': then nothing freezes). When epochs freeze, their checkpoint is
    /// stored (flushed) and then their messages are deleted from the log: what is final
    /// is kept once, as totals, instead of replayed from every message at each start.
    pub(super) fn advance(&self, ledger: &mut Ledger, now_ms: u64) {
        // A clock off from the peers' would freeze epochs at the wrong time, for good.
        if self.clock.is_off() || ledger.advance(now_ms) == 0 {
            return;
        }
        let snapshot = ledger.snapshot();
        *self.frozen.lock().expect("frozen lock") = (snapshot.frozen_before, snapshot.digest());
        if let Err(e) = self
            .checkpoint
            .insert(CHECKPOINT_KEY, snapshot.to_bytes())
            .and_then(|_| self.checkpoint.flush())
        {
            warn!(%e, "cannot store the ledger checkpoint; frozen messages stay in the log");
            return;
        }
        for kind in ingest::SYNC_KINDS {
            let from = log_key(kind, 0, &Digest::ZERO);
            let to = log_key(kind, snapshot.frozen_before, &Digest::ZERO);
            for key in self.log.range(from..to).keys().flatten() {
                let _ = self.log.remove(key);
            }
        }
        debug!(frozen_before = snapshot.frozen_before, digest = %snapshot.digest(), "epochs frozen and compacted");
    }

    fn me(&self) -> PublicKey {
        self.key.public_key()
    }

    /// The mesh parameters.
    pub fn params(&self) -> &MeshParams {
        &self.params
    }

    /// The supplier's miner (`None` if this node serves nothing).
    pub fn miner(&self) -> Option<&Arc<Miner>> {
        self.miner.as_ref()
    }

    /// The τ this supplier offers in new sessions (`None` if it serves nothing).
    pub fn tau(&self) -> Option<u64> {
        self.miner.as_ref().map(|m| m.tau())
    }

    /// Whether `supplier` was proven to equivocate.
    pub fn is_excluded(&self, supplier: &PublicKey) -> bool {
        self.ledger
            .lock()
            .expect("ledger lock")
            .is_excluded(supplier)
    }

    /// Holds the ledger until the guard is dropped, as a long anti-entropy batch holds
    /// it in turns: for tests that the node goes on without it.
    #[doc(hidden)]
    pub fn hold_ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().expect("ledger lock")
    }
}

/// How often a node runs its settlement duties.
pub fn tick_interval(params: &MeshParams) -> Duration {
    Duration::from_millis((params.epoch_ms / 5).clamp(200, 2_000))
}

/// How often a node reconciles its ledger with a random peer: twice an epoch, between
/// 1 s and 60 s.
pub fn sync_interval(params: &MeshParams) -> Duration {
    Duration::from_millis((params.epoch_ms / 2).clamp(1_000, 60_000))
}

/// Runs the node's settlement duties until the node goes away.
pub fn spawn(
    settlement: Arc<Settlement>,
    handle: crate::mesh::NodeHandle,
) -> tokio::task::JoinHandle<()> {
    let mut outbox = settlement
        .outbox_rx
        .lock()
        .expect("outbox lock")
        .take()
        .expect("one settlement task per node");
    tokio::spawn(async move {
        let mut every = tokio::time::interval(tick_interval(settlement.params()));
        loop {
            let messages = tokio::select! {
                _ = every.tick() => {
                    let s = settlement.clone();
                    let now = crate::mesh::now_ms();
                    let Ok(messages) = tokio::task::spawn_blocking(move || s.tick(now)).await
                    else {
                        return;
                    };
                    messages
                }
                Some(message) = outbox.recv() => vec![message],
            };
            for message in messages {
                let Ok(bytes) = message.encode() else {
                    continue;
                };
                if handle.publish_ledger(bytes).await.is_err() {
                    return;
                }
            }
        }
    })
}
