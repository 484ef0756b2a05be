//! The supplier's receipts and mined receipts, persisted: every accepted ack is stored
//! and bumps its session's counters, and those the session's threshold τ selects
//! become leaves of the session's sparse sum tree (the protocol crate's `SumTree`)
//! whose nodes live in sled.
//!
//! Everything one receipt changes — the receipt, the tree nodes on its path, the mined
//! receipt, the session's counters — is held in memory (and read back from there)
//! until the next group commit, which applies all held writes in one atomic sled batch
//! and flushes them (see [`Miner`]), so a crash leaves the session as it was before or
//! after whole receipts, never half-updated. A session's counters and whether it is
//! claimed are also kept in memory (read once from sled), so a receipt reads nothing
//! from sled. The tree store is ours because sled is the node's database; the tree
//! rules are the protocol crate's.
//!
//! Keys in the `mining` tree (`S` = session key, 32 bytes; `R` = a request's digest):
//! `q ‖ S ‖ R` a signed request, stored once; `a ‖ S ‖ R ‖ first ack index (2 B)` a
//! run of that request's accepted acks, canonical CBOR back to back, one run per
//! request per commit — with the request, receipts (keys sort runs in chain order);
//! `n ‖ S ‖ depth (2 B) ‖ prefix (32 B)` a tree node;
//! `m ‖ S ‖ relay hash` a mined receipt; `c ‖ S` the session's counters; `t ‖ S` its
//! countersigned terms; `s ‖ S` the supplier's mining secret for it (derived from its
//! key and the terms; it decides which receipts are mined and goes into every proof); `k ‖ S` when the session was claimed (unix ms): from then on
//! its tree is frozen, so the claim can be rebuilt identically after a crash; `T` the
//! τ rule's current threshold. Everything of a session goes when its claim's epoch is
//! final (`forget`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use relaymesh_protocol::messages::ack::SignedAck;
use relaymesh_protocol::messages::request::SignedRelayRequest;
use relaymesh_protocol::messages::session::SignedSessionOpen;
use relaymesh_protocol::metering::receipt::{Receipt, ReceiptFacts};
use relaymesh_protocol::metering::tau::{SessionVolume, TauController};
use relaymesh_protocol::params::MeshParams;
use relaymesh_protocol::settlement::proof::MinedSession;
use relaymesh_protocol::sumtree::{
    verify_path, LeafEntry, NodeSummary, Position, StoredNode, SumTree, TreeError, TreeStore,
};
use relaymesh_protocol::wire::to_canonical;
use relaymesh_protocol::Digest;

mod sled_store;
#[cfg(test)]
mod tests;

pub use sled_store::SledStore;
use sled_store::{decode_node, encode_node, node_key};

/// Why mining failed.
#[derive(Debug, thiserror::Error)]
pub enum MiningError {
    /// The database failed.
    #[error("mining store: {0}")]
    Db(#[from] sled::Error),
    /// A stored node does not decode: the database was tampered with.
    #[error("mining store: a stored tree node is corrupt")]
    Corrupt,
    /// The tree refused the leaf.
    #[error("sum tree: {0}")]
    Tree(String),
}

impl<E: std::error::Error + 'static> From<TreeError<E>> for MiningError {
    fn from(e: TreeError<E>) -> Self {
        MiningError::Tree(e.to_string())
    }
}

const TAU_KEY: &[u8] = b"T";
const LOCK_STRIPES: usize = 16;
/// Sessions kept in memory per lock stripe; a stripe that fills starts afresh (its
/// sessions are read from sled again when their next receipt comes).
const CACHED_PER_STRIPE: usize = 256;
/// Request digests remembered per session as stored; beyond that a request may be
/// written again (the same bytes).
const CACHED_REQUESTS: usize = 64;

/// A big-endian u64 stored under `k`, if any.
fn read_u64(tree: &sled::Tree, k: &[u8]) -> Result<Option<u64>, MiningError> {
    match tree.get(k)? {
        None => Ok(None),
        Some(b) => Ok(Some(u64::from_be_bytes(
            b.as_ref().try_into().map_err(|_| MiningError::Corrupt)?,
        ))),
    }
}

fn key(kind: u8, session: &Digest, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + 32 + rest.len());
    k.push(kind);
    k.extend_from_slice(&session.0);
    k.extend_from_slice(rest);
    k
}

fn ack_key(session: &Digest, request: &Digest, index: u16) -> Vec<u8> {
    let mut rest = [0u8; 34];
    rest[..32].copy_from_slice(&request.0);
    rest[32..].copy_from_slice(&index.to_be_bytes());
    key(b'a', session, &rest)
}

/// What a supplier has metered in one session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SessionCounters {
    /// Receipts (acks) accepted.
    pub receipts: u64,
    /// Their CUs.
    pub cu: u64,
    /// Receipts τ selected.
    pub mined: u64,
    /// What the mined receipts pay (the tree's sum).
    pub mined_value: u64,
    /// `Σ min(1, w/τ)` in millionths: the mined count τ's rule expects, for the next τ.
    pub expected_mined_micro: u64,
}

impl SessionCounters {
    fn encode(&self) -> Vec<u8> {
        [
            self.receipts,
            self.cu,
            self.mined,
            self.mined_value,
            self.expected_mined_micro,
        ]
        .iter()
        .flat_map(|n| n.to_be_bytes())
        .collect()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let n = |i: usize| -> Option<u64> {
            Some(u64::from_be_bytes(
                bytes.get(i * 8..i * 8 + 8)?.try_into().ok()?,
            ))
        };
        Some(Self {
            receipts: n(0)?,
            cu: n(1)?,
            mined: n(2)?,
            mined_value: n(3)?,
            expected_mined_micro: n(4).unwrap_or(0),
        })
    }
}

/// One session as `/relaymesh/v1/sessions` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SessionReport {
    /// The session key (hex).
    pub session: String,
    /// The app's peer id.
    pub app: String,
    /// The session's threshold.
    pub tau: u64,
    /// Counters.
    #[serde(flatten)]
    pub counters: SessionCounters,
    /// The tree's root hash (hex); empty before anything is mined.
    pub root: String,
}

/// What the miner keeps in memory of a session, always equal to what its store holds.
struct CachedSession {
    counters: SessionCounters,
    claimed: bool,
    /// Requests whose signed request is stored, and the last ack index stored of each.
    requests: HashMap<Digest, u16>,
}

type Stripe = HashMap<Digest, CachedSession>;

/// Writes not yet applied to sled.
#[derive(Default)]
struct Pending {
    /// Acks by (session, request): the index of the first and their canonical
    /// encodings back to back, stored as one value (`a ‖ S ‖ R ‖ first index`): one
    /// sled write per request per commit, not one per ack.
    acks: HashMap<(Digest, Digest), (u16, Vec<u8>)>,
    /// Counters by session.
    counters: HashMap<Digest, SessionCounters>,
    /// Everything else (requests, terms, tree nodes, mined receipts), key → value.
    writes: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Bytes held.
    bytes: usize,
}

/// The `mining` tree and the receipts' writes held back for the next group commit.
struct Store {
    tree: sled::Tree,
    uncommitted: Mutex<Pending>,
}

impl Store {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.uncommitted.lock().expect("miner writes lock")
    }

    /// Applies `pending` to sled in one atomic batch.
    fn apply(&self, pending: &mut Pending) -> Result<(), MiningError> {
        let Pending {
            acks,
            counters,
            writes,
            bytes,
        } = std::mem::take(pending);
        if bytes == 0 && counters.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for ((session, request), (first, encoded)) in acks {
            batch.insert(ack_key(&session, &request, first), encoded);
        }
        for (session, counters) in counters {
            batch.insert(key(b'c', &session, &[]), counters.encode());
        }
        for (k, v) in writes {
            batch.insert(k, v);
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// The group commit: everything held back goes to sled in one batch (while the
    /// lock is held, so no reader misses a write), then, with `flush`, to disk.
    fn commit(&self, flush: bool) -> Result<(), MiningError> {
        self.apply(&mut self.pending())?;
        if flush {
            self.tree.flush()?;
        }
        Ok(())
    }
}

/// A session's tree nodes while a receipt is mined: the insert's own writes, then the
/// writes held back for the next commit, then sled.
struct InsertStore<'a> {
    nodes: SledStore,
    uncommitted: &'a BTreeMap<Vec<u8>, Vec<u8>>,
}

impl TreeStore for InsertStore<'_> {
    type Error = MiningError;

    fn get(&self, position: &Position) -> Result<Option<StoredNode>, MiningError> {
        if let Some(node) = self.nodes.pending.get(position) {
            return Ok(Some(*node));
        }
        match self
            .uncommitted
            .get(&node_key(&self.nodes.session, position))
        {
            Some(bytes) => decode_node(bytes).map(Some).ok_or(MiningError::Corrupt),
            None => self.nodes.get(position),
        }
    }

    fn put(&mut self, position: Position, node: StoredNode) -> Result<(), MiningError> {
        self.nodes.put(position, node)
    }
}

/// How often the receipts' held-back writes are committed and flushed: well inside
/// the node's stated commit interval.
const COMMIT_EVERY: std::time::Duration =
    std::time::Duration::from_millis(crate::store::COMMIT_INTERVAL_MS / 2);
/// Held-back bytes at most; a receipt that reaches this commits them at once.
const MAX_UNCOMMITTED: usize = 8 << 20;

/// The supplier's mining state, over the node's sled tree `mining`.
///
/// sled makes every batch durable-ordered by writing and syncing its log buffer twice,
/// which costs two disk round trips per batch: a batch per receipt capped a supplier at
/// a few thousand receipts per second. So each receipt's writes are held back in
/// memory (and read back from there), and a background thread applies all of them in
/// one batch and flushes every [`COMMIT_EVERY`] — the group commit. A crash loses at
/// most that interval's receipts and never splits one receipt's writes.
pub struct Miner {
    store: Arc<Store>,
    // One receipt of a session at a time (an insert reads and rewrites its whole
    // path); sessions are independent, so each stripe of sessions has its own lock,
    // which also guards those sessions' cached state.
    locks: Vec<Mutex<Stripe>>,
    tau: Mutex<TauController>,
    /// Most leaves a claim may hold: a ledger refuses a larger claim whole, so the
    /// session stops mining there (later receipts are counted, not claimed).
    max_leaves: u64,
    /// Dropping it stops the committing thread.
    stop: Option<std::sync::mpsc::Sender<()>>,
    committer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Miner {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.committer.take() {
            let _ = thread.join();
        }
        if let Err(e) = self.store.commit(true) {
            tracing::warn!(%e, "cannot commit the last receipts");
        }
    }
}

/// A session whose claim is due or made.
#[derive(Clone, Debug)]
pub struct ClaimableSession {
    /// The countersigned terms.
    pub terms: SignedSessionOpen,
    /// Its counters.
    pub counters: SessionCounters,
    /// When it was claimed (unix ms), if it was.
    pub claimed_ms: Option<u64>,
}

impl Miner {
    /// Mining state in `tree`, with τ chosen within `params`' bounds (resumed from the
    /// last value stored). Starts the thread that commits receipts.
    pub fn new(tree: sled::Tree, params: &MeshParams) -> Self {
        let stored = read_u64(&tree, TAU_KEY).ok().flatten();
        let tau = TauController::new(
            stored.unwrap_or(params.tau_min),
            params.tau_target_mined,
            params.tau_min,
            params.tau_max,
        );
        let store = Arc::new(Store {
            tree,
            uncommitted: Mutex::new(Pending::default()),
        });
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let committing = store.clone();
        let committer = std::thread::Builder::new()
            .name("receipt-commit".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(COMMIT_EVERY)
                {
                    if let Err(e) = committing.commit(true) {
                        tracing::warn!(%e, "cannot commit receipts");
                    }
                }
            })
            .expect("start the receipt commit thread");
        Self {
            store,
            locks: (0..LOCK_STRIPES)
                .map(|_| Mutex::new(Stripe::new()))
                .collect(),
            tau: Mutex::new(tau),
            max_leaves: u64::from(params.max_claim_leaves),
            stop: Some(stop),
            committer: Some(committer),
        }
    }

    /// Commits the receipts held back, and flushes them to disk.
    pub fn commit(&self) -> Result<(), MiningError> {
        self.store.commit(true)
    }

    fn tree(&self) -> &sled::Tree {
        &self.store.tree
    }

    fn lock(&self, session: &Digest) -> std::sync::MutexGuard<'_, Stripe> {
        self.locks[usize::from(session.0[0]) % LOCK_STRIPES]
            .lock()
            .expect("miner lock")
    }

    /// The τ to offer in new sessions: the protocol's rule over this supplier's recent
    /// sessions.
    pub fn tau(&self) -> u64 {
        self.tau.lock().expect("tau lock").tau()
    }

    /// Every session with receipts: its key and its countersigned terms (committed).
    fn stored_terms(
        &self,
    ) -> impl Iterator<Item = Result<(Digest, SignedSessionOpen), MiningError>> + '_ {
        self.tree().scan_prefix([b't']).map(|item| {
            let (k, v) = item?;
            let session_key = Digest(k[1..].try_into().map_err(|_| MiningError::Corrupt)?);
            let terms = ciborium::from_reader(v.as_ref()).map_err(|_| MiningError::Corrupt)?;
            Ok((session_key, terms))
        })
    }

    /// Every session with receipts, its counters and whether it is claimed.
    pub fn claimable(&self) -> Result<Vec<ClaimableSession>, MiningError> {
        self.store.commit(false)?;
        self.stored_terms()
            .map(|item| {
                let (session_key, terms) = item?;
                Ok(ClaimableSession {
                    terms,
                    counters: self.counters(&session_key)?,
                    claimed_ms: read_u64(self.tree(), &key(b'k', &session_key, &[]))?,
                })
            })
            .collect()
    }

    /// Closes `session` for mining at `now_ms` (durably, before its claim is made):
    /// receipts arriving later are not mined, so the claim can always be rebuilt the
    /// same. Its volume teaches the τ rule.
    pub fn close(&self, session: &SignedSessionOpen, now_ms: u64) -> Result<(), MiningError> {
        let session_key = session.session_key();
        let mut stripe = self.lock(&session_key);
        self.store.commit(false)?;
        let counters = self.counters(&session_key)?;
        let tau = {
            let mut rule = self.tau.lock().expect("tau lock");
            rule.observe(&SessionVolume::from_totals(
                session.body.tau,
                counters.receipts,
                counters.expected_mined_micro as f64 / 1e6,
            ));
            rule.tau()
        };
        let mut batch = sled::Batch::default();
        batch.insert(key(b'k', &session_key, &[]), &now_ms.to_be_bytes()[..]);
        batch.insert(TAU_KEY, &tau.to_be_bytes()[..]);
        self.tree().apply_batch(batch)?;
        if let Some(cached) = stripe.get_mut(&session_key) {
            cached.claimed = true;
        }
        self.tree().flush()?;
        Ok(())
    }

    /// Drops everything kept for `session` (once its claim's epoch is final).
    pub fn forget(&self, session: &Digest) -> Result<(), MiningError> {
        let mut stripe = self.lock(session);
        stripe.remove(session);
        self.store.commit(false)?;
        let mut batch = sled::Batch::default();
        for kind in [b'q', b'a', b'n', b'm', b'c', b't', b's', b'k'] {
            for k in self.tree().scan_prefix(key(kind, session, &[])).keys() {
                batch.remove(k?);
            }
        }
        self.tree().apply_batch(batch)?;
        Ok(())
    }

    /// A session's counters, committed or not.
    fn counters(&self, session: &Digest) -> Result<SessionCounters, MiningError> {
        if let Some(counters) = self.store.pending().counters.get(session) {
            return Ok(*counters);
        }
        match self.tree().get(key(b'c', session, &[]))? {
            None => Ok(SessionCounters::default()),
            Some(bytes) => SessionCounters::decode(&bytes).ok_or(MiningError::Corrupt),
        }
    }

    /// Whether `session`'s claim holds nine tenths of the leaves a claim may: past that
    /// the supplier takes no more requests in it (the app opens a new session), so
    /// requests already running in it still find room, and work is not served unclaimed.
    pub fn nearly_full(&self, session: &Digest) -> Result<bool, MiningError> {
        Ok(self.session_counters(session)?.mined * 10 >= self.max_leaves * 9)
    }

    /// A session's counters as they stand (receipts not yet committed included).
    pub fn session_counters(&self, session: &Digest) -> Result<SessionCounters, MiningError> {
        match self.lock(session).get(session) {
            Some(cached) => Ok(cached.counters),
            None => self.counters(session),
        }
    }

    /// Stores an accepted receipt of `session` (checked by the caller), counts it, and
    /// mines it when τ and the supplier's `mining_secret` (the one its countersignature
    /// committed to) select it, as one atomic set of writes held for the next group
    /// commit. Returns what it pays when mined. A relay hash mined before is not mined
    /// again. A receipt of a claimed session is kept, neither counted nor mined.
    pub fn offer(
        &self,
        session: &SignedSessionOpen,
        mining_secret: &Digest,
        receipt: &Receipt,
        facts: &ReceiptFacts,
    ) -> Result<Option<u64>, MiningError> {
        let session_key = session.session_key();
        let mut stripe = self.lock(&session_key);
        let tau = session.body.tau;
        if stripe.len() >= CACHED_PER_STRIPE && !stripe.contains_key(&session_key) {
            stripe.clear();
        }
        let cached = match stripe.entry(session_key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(CachedSession {
                counters: self.counters(&session_key)?,
                claimed: self.tree().contains_key(key(b'k', &session_key, &[]))?,
                requests: HashMap::new(),
            }),
        };
        // Claimed: the tree and counters are final; the receipt is only kept.
        let claimed = cached.claimed;
        let mut counters = cached.counters;
        let mut writes: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if counters.receipts == 0 {
            writes.push((key(b't', &session_key, &[]), to_canonical(session)));
            writes.push((key(b's', &session_key, &[]), mining_secret.0.to_vec()));
        }
        let request = receipt.ack.body.request;
        let index = receipt.ack.body.index;
        let stored = cached.requests.get(&request).copied();
        if stored.is_none() {
            writes.push((
                key(b'q', &session_key, &request.0),
                to_canonical(&receipt.request),
            ));
        }
        let new_ack = stored.is_none_or(|last| index > last);
        let ack = new_ack.then(|| to_canonical(&receipt.ack));
        let mined = facts.is_mined(mining_secret, tau) && !claimed;
        let full = counters.mined >= self.max_leaves;
        if full && mined {
            tracing::debug!(
                session = %session_key,
                leaves = counters.mined,
                "session's claim is full: receipt counted, not mined"
            );
        }
        if !claimed {
            counters.receipts += 1;
            counters.cu += facts.weight;
            counters.expected_mined_micro += if facts.weight >= tau {
                1_000_000
            } else {
                facts.weight * 1_000_000 / tau.max(1)
            };
        }
        let mut pending = self.store.pending();
        let mut paid = None;
        let mined_key = key(b'm', &session_key, &facts.relay_hash.0);
        if mined
            && !full
            && !pending.writes.contains_key(&mined_key)
            && !self.tree().contains_key(&mined_key)?
        {
            let value = facts.mined_value(tau);
            let mut tree = SumTree::with_store(InsertStore {
                nodes: SledStore::new(self.tree().clone(), session_key),
                uncommitted: &pending.writes,
            });
            tree.insert(LeafEntry {
                key: facts.relay_hash,
                value: facts.digest,
                weight: value,
            })?;
            let nodes = tree.into_store().nodes;
            writes.extend(
                nodes
                    .pending
                    .iter()
                    .map(|(position, node)| (node_key(&session_key, position), encode_node(node))),
            );
            writes.push((mined_key, to_canonical(receipt)));
            counters.mined += 1;
            counters.mined_value += value;
            paid = Some(value);
        }
        if let Some(ack) = ack {
            pending.bytes += ack.len();
            pending
                .acks
                .entry((session_key, request))
                .or_insert_with(|| (index, Vec::new()))
                .1
                .extend_from_slice(&ack);
        }
        pending.bytes += writes.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        pending.writes.extend(writes);
        if !claimed {
            pending.counters.insert(session_key, counters);
        }
        if pending.bytes >= MAX_UNCOMMITTED {
            self.store.apply(&mut pending)?;
        }
        drop(pending);
        cached.counters = counters;
        if new_ack {
            if stored.is_none() && cached.requests.len() >= CACHED_REQUESTS {
                cached.requests.clear();
            }
            cached.requests.insert(request, index);
        }
        Ok(paid)
    }

    /// A session's committed entries `kind ‖ S ‖ digest` → canonical CBOR, decoded.
    fn scan_by_digest<T: serde::de::DeserializeOwned>(
        &self,
        kind: u8,
        session: &Digest,
    ) -> impl Iterator<Item = Result<(Digest, T), MiningError>> + '_ {
        self.tree()
            .scan_prefix(key(kind, session, &[]))
            .map(|item| {
                let (k, v) = item?;
                let digest = Digest(k[33..].try_into().map_err(|_| MiningError::Corrupt)?);
                let value = ciborium::from_reader(v.as_ref()).map_err(|_| MiningError::Corrupt)?;
                Ok((digest, value))
            })
    }

    /// Every receipt of `session` this supplier stored, by request and in chain order.
    pub fn receipts(&self, session: &Digest) -> Result<Vec<Receipt>, MiningError> {
        self.store.commit(false)?;
        let requests: HashMap<Digest, SignedRelayRequest> = self
            .scan_by_digest(b'q', session)
            .collect::<Result<_, _>>()?;
        // Acks in runs of one request each; an ack stored twice (after a restart) once.
        let mut acks = BTreeMap::new();
        for item in self.tree().scan_prefix(key(b'a', session, &[])) {
            let (k, v) = item?;
            let digest = Digest(k[33..65].try_into().map_err(|_| MiningError::Corrupt)?);
            let mut run = v.as_ref();
            while !run.is_empty() {
                let ack: SignedAck =
                    ciborium::from_reader(&mut run).map_err(|_| MiningError::Corrupt)?;
                acks.insert((digest, ack.body.index), ack);
            }
        }
        acks.into_iter()
            .map(|((digest, _), ack)| {
                Ok(Receipt {
                    request: requests.get(&digest).ok_or(MiningError::Corrupt)?.clone(),
                    ack,
                })
            })
            .collect()
    }

    /// Every receipt stored, of every session not yet forgotten.
    pub fn all_receipts(&self) -> Result<Vec<Receipt>, MiningError> {
        self.store.commit(false)?;
        let mut out = Vec::new();
        for item in self.stored_terms() {
            out.extend(self.receipts(&item?.0)?);
        }
        Ok(out)
    }

    /// The root of `session`'s tree (empty before anything is mined).
    pub fn root(&self, session: &Digest) -> Result<NodeSummary, MiningError> {
        self.store.commit(false)?;
        SumTree::with_store(SledStore::new(self.tree().clone(), *session))
            .root()
            .map_err(Into::into)
    }

    /// A session's tree and mined receipts, for claims and proofs.
    pub fn load(&self, session: &Digest) -> Result<MinedSession<SledStore>, MiningError> {
        self.store.commit(false)?;
        let receipts: BTreeMap<Digest, Receipt> = self
            .scan_by_digest(b'm', session)
            .collect::<Result<_, _>>()?;
        let secret = match self.tree().get(key(b's', session, &[]))? {
            Some(bytes) => Digest(
                bytes
                    .as_ref()
                    .try_into()
                    .map_err(|_| MiningError::Corrupt)?,
            ),
            None => Digest::ZERO,
        };
        Ok(MinedSession::with_parts(
            SumTree::with_store(SledStore::new(self.tree().clone(), *session)),
            receipts,
            secret,
        ))
    }

    /// Checks that `session`'s tree is whole: every mined receipt's leaf proves against
    /// the root, and the root counts exactly those leaves. Returns the root.
    pub fn check_tree(&self, session: &Digest) -> Result<NodeSummary, MiningError> {
        let mined = self.load(session)?;
        let tree = SumTree::with_store(SledStore::new(self.tree().clone(), *session));
        let root = tree.root()?;
        if root.count != mined.receipts().len() as u64 {
            return Err(MiningError::Corrupt);
        }
        for relay in mined.receipts().keys() {
            let path = tree.prove(relay)?;
            verify_path(
                &path.leaf.key,
                path.leaf.weight,
                &path.leaf.value,
                &path.siblings,
                &root,
            )
            .map_err(|_| MiningError::Corrupt)?;
        }
        Ok(root)
    }

    /// Every session this supplier has counted receipts of.
    pub fn sessions(&self) -> Result<Vec<SessionReport>, MiningError> {
        self.store.commit(false)?;
        let mut out = Vec::new();
        for item in self.stored_terms() {
            let (session_key, terms) = item?;
            let root = self.root(&session_key)?;
            out.push(SessionReport {
                session: session_key.to_hex(),
                app: terms.body.app.peer_id(),
                tau: terms.body.tau,
                counters: self.counters(&session_key)?,
                root: if root.count == 0 {
                    String::new()
                } else {
                    root.hash.to_hex()
                },
            });
        }
        Ok(out)
    }
}
