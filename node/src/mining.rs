//! The supplier's mined receipts, persisted: every accepted ack bumps its session's
//! counters, and those the session's threshold τ selects become leaves of the
//! session's sparse sum tree (the protocol crate's `SumTree`) whose nodes live in sled.
//!
//! Everything one receipt changes — the tree nodes on its path, the mined receipt
//! itself, the session's counters — is written in one atomic sled batch, so a crash
//! leaves the tree as it was before or after that receipt, never half-updated; sled's
//! flush (every `store::COMMIT_INTERVAL_MS`) is the group commit that makes it durable.
//! The tree store is ours because sled is the node's database; the tree rules are the
//! protocol crate's.
//!
//! Keys in the `mining` tree (`S` = session key, 32 bytes):
//! `n ‖ S ‖ depth (2 B) ‖ prefix (32 B)` a tree node; `m ‖ S ‖ relay hash` a mined
//! receipt (canonical CBOR); `c ‖ S` the session's counters; `t ‖ S` its countersigned
//! terms (canonical CBOR); `k ‖ S` when the session was claimed (unix ms): from then
//! on its tree is frozen, so the claim can be rebuilt identically after a crash;
//! `T` the τ rule's current threshold.

use std::collections::BTreeMap;
use std::sync::Mutex;

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

fn node_key(session: &Digest, position: &Position) -> Vec<u8> {
    let mut rest = [0u8; 34];
    rest[..2].copy_from_slice(&position.depth.to_be_bytes());
    rest[2..].copy_from_slice(&position.prefix.0);
    key(b'n', session, &rest)
}

fn encode_node(node: &StoredNode) -> Vec<u8> {
    let mut out = Vec::with_capacity(73);
    match node {
        StoredNode::Leaf(leaf) => {
            out.push(0);
            out.extend_from_slice(&leaf.key.0);
            out.extend_from_slice(&leaf.value.0);
            out.extend_from_slice(&leaf.weight.to_be_bytes());
        }
        StoredNode::Internal(s) => {
            out.push(1);
            out.extend_from_slice(&s.hash.0);
            out.extend_from_slice(&s.sum.to_be_bytes());
            out.extend_from_slice(&s.count.to_be_bytes());
        }
    }
    out
}

fn decode_node(bytes: &[u8]) -> Option<StoredNode> {
    let digest = |b: &[u8]| -> Option<Digest> { Some(Digest(b.try_into().ok()?)) };
    let number = |b: &[u8]| -> Option<u64> { Some(u64::from_be_bytes(b.try_into().ok()?)) };
    match (bytes.first()?, bytes.len()) {
        (0, 73) => Some(StoredNode::Leaf(LeafEntry {
            key: digest(&bytes[1..33])?,
            value: digest(&bytes[33..65])?,
            weight: number(&bytes[65..73])?,
        })),
        (1, 49) => Some(StoredNode::Internal(NodeSummary {
            hash: digest(&bytes[1..33])?,
            sum: number(&bytes[33..41])?,
            count: number(&bytes[41..49])?,
        })),
        _ => None,
    }
}

/// One session's tree nodes in sled, with the writes of the current insert held back
/// (and read back) until they are committed together.
pub struct SledStore {
    tree: sled::Tree,
    session: Digest,
    pending: BTreeMap<Position, StoredNode>,
}

impl SledStore {
    /// The nodes of `session` in `tree`.
    pub fn new(tree: sled::Tree, session: Digest) -> Self {
        Self {
            tree,
            session,
            pending: BTreeMap::new(),
        }
    }

    /// Moves the held-back writes into `batch`.
    fn drain_into(&mut self, batch: &mut sled::Batch) {
        for (position, node) in std::mem::take(&mut self.pending) {
            batch.insert(node_key(&self.session, &position), encode_node(&node));
        }
    }
}

impl TreeStore for SledStore {
    type Error = MiningError;

    fn get(&self, position: &Position) -> Result<Option<StoredNode>, MiningError> {
        if let Some(node) = self.pending.get(position) {
            return Ok(Some(*node));
        }
        match self.tree.get(node_key(&self.session, position))? {
            None => Ok(None),
            Some(bytes) => decode_node(&bytes).map(Some).ok_or(MiningError::Corrupt),
        }
    }

    fn put(&mut self, position: Position, node: StoredNode) -> Result<(), MiningError> {
        self.pending.insert(position, node);
        Ok(())
    }
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

/// The supplier's mining state, over the node's sled tree `mining`.
pub struct Miner {
    tree: sled::Tree,
    // One receipt of a session at a time (an insert reads and rewrites its whole
    // path); sessions are independent, so each stripe of sessions has its own lock.
    locks: Vec<Mutex<()>>,
    tau: Mutex<TauController>,
    /// Most leaves a claim may hold: a ledger refuses a larger claim whole, so the
    /// session stops mining there (later receipts are counted, not claimed).
    max_leaves: u64,
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
    /// last value stored).
    pub fn new(tree: sled::Tree, params: &MeshParams) -> Self {
        let stored = read_u64(&tree, TAU_KEY).ok().flatten();
        let tau = TauController::new(
            stored.unwrap_or(params.tau_min),
            params.tau_target_mined,
            params.tau_min,
            params.tau_max,
        );
        Self {
            tree,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            tau: Mutex::new(tau),
            max_leaves: u64::from(params.max_claim_leaves),
        }
    }

    fn lock(&self, session: &Digest) -> std::sync::MutexGuard<'_, ()> {
        self.locks[usize::from(session.0[0]) % LOCK_STRIPES]
            .lock()
            .expect("miner lock")
    }

    /// The τ to offer in new sessions: the protocol's rule over this supplier's recent
    /// sessions.
    pub fn tau(&self) -> u64 {
        self.tau.lock().expect("tau lock").tau()
    }

    /// Every session with receipts: its key and its countersigned terms.
    fn stored_terms(
        &self,
    ) -> impl Iterator<Item = Result<(Digest, SignedSessionOpen), MiningError>> + '_ {
        self.tree.scan_prefix([b't']).map(|item| {
            let (k, v) = item?;
            let session_key = Digest(k[1..].try_into().map_err(|_| MiningError::Corrupt)?);
            let terms = ciborium::from_reader(v.as_ref()).map_err(|_| MiningError::Corrupt)?;
            Ok((session_key, terms))
        })
    }

    /// Every session with receipts, its counters and whether it is claimed.
    pub fn claimable(&self) -> Result<Vec<ClaimableSession>, MiningError> {
        self.stored_terms()
            .map(|item| {
                let (session_key, terms) = item?;
                Ok(ClaimableSession {
                    terms,
                    counters: self.counters(&session_key)?,
                    claimed_ms: read_u64(&self.tree, &key(b'k', &session_key, &[]))?,
                })
            })
            .collect()
    }

    /// Closes `session` for mining at `now_ms` (durably, before its claim is made):
    /// receipts arriving later are not mined, so the claim can always be rebuilt the
    /// same. Its volume teaches the τ rule.
    pub fn close(&self, session: &SignedSessionOpen, now_ms: u64) -> Result<(), MiningError> {
        let session_key = session.session_key();
        let _one = self.lock(&session_key);
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
        self.tree.apply_batch(batch)?;
        self.tree.flush()?;
        Ok(())
    }

    /// Drops everything kept for `session` (once its claim's epoch is final).
    pub fn forget(&self, session: &Digest) -> Result<(), MiningError> {
        let _one = self.lock(session);
        let mut batch = sled::Batch::default();
        for kind in [b'n', b'm', b'c', b't', b'k'] {
            for k in self.tree.scan_prefix(key(kind, session, &[])).keys() {
                batch.remove(k?);
            }
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    fn counters(&self, session: &Digest) -> Result<SessionCounters, MiningError> {
        match self.tree.get(key(b'c', session, &[]))? {
            None => Ok(SessionCounters::default()),
            Some(bytes) => SessionCounters::decode(&bytes).ok_or(MiningError::Corrupt),
        }
    }

    /// Counts an accepted receipt of `session`, and mines it when τ selects it.
    /// Returns what it pays when mined. A relay hash mined before is not mined again.
    pub fn offer(
        &self,
        session: &SignedSessionOpen,
        receipt: &Receipt,
        facts: &ReceiptFacts,
    ) -> Result<Option<u64>, MiningError> {
        let session_key = session.session_key();
        let _one = self.lock(&session_key);
        let tau = session.body.tau;
        if self.tree.contains_key(key(b'k', &session_key, &[]))? {
            // Claimed: the tree is final.
            return Ok(None);
        }
        let mut counters = self.counters(&session_key)?;
        let mut batch = sled::Batch::default();
        if counters.receipts == 0 {
            batch.insert(key(b't', &session_key, &[]), to_canonical(session));
        }
        let mined_key = key(b'm', &session_key, &facts.relay_hash.0);
        let mut paid = None;
        let full = counters.mined >= self.max_leaves;
        if full && facts.is_mined(tau) {
            tracing::debug!(
                session = %session_key,
                leaves = counters.mined,
                "session's claim is full: receipt counted, not mined"
            );
        }
        if facts.is_mined(tau) && !full && !self.tree.contains_key(&mined_key)? {
            let value = facts.mined_value(tau);
            let mut tree = SumTree::with_store(SledStore::new(self.tree.clone(), session_key));
            tree.insert(LeafEntry {
                key: facts.relay_hash,
                value: facts.digest,
                weight: value,
            })?;
            let mut store = tree.into_store();
            store.drain_into(&mut batch);
            batch.insert(mined_key, to_canonical(receipt));
            counters.mined += 1;
            counters.mined_value += value;
            paid = Some(value);
        }
        counters.receipts += 1;
        counters.cu += facts.weight;
        counters.expected_mined_micro += if facts.weight >= tau {
            1_000_000
        } else {
            facts.weight * 1_000_000 / tau.max(1)
        };
        batch.insert(key(b'c', &session_key, &[]), counters.encode());
        self.tree.apply_batch(batch)?;
        Ok(paid)
    }

    /// The root of `session`'s tree (empty before anything is mined).
    pub fn root(&self, session: &Digest) -> Result<NodeSummary, MiningError> {
        SumTree::with_store(SledStore::new(self.tree.clone(), *session))
            .root()
            .map_err(Into::into)
    }

    /// A session's tree and mined receipts, for claims and proofs.
    pub fn load(&self, session: &Digest) -> Result<MinedSession<SledStore>, MiningError> {
        let mut receipts = BTreeMap::new();
        for item in self.tree.scan_prefix(key(b'm', session, &[])) {
            let (k, v) = item?;
            let relay = Digest(k[33..].try_into().map_err(|_| MiningError::Corrupt)?);
            let receipt: Receipt =
                ciborium::from_reader(v.as_ref()).map_err(|_| MiningError::Corrupt)?;
            receipts.insert(relay, receipt);
        }
        Ok(MinedSession::with_parts(
            SumTree::with_store(SledStore::new(self.tree.clone(), *session)),
            receipts,
        ))
    }

    /// Checks that `session`'s tree is whole: every mined receipt's leaf proves against
    /// the root, and the root counts exactly those leaves. Returns the root.
    pub fn check_tree(&self, session: &Digest) -> Result<NodeSummary, MiningError> {
        let mined = self.load(session)?;
        let tree = SumTree::with_store(SledStore::new(self.tree.clone(), *session));
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

#[cfg(test)]
mod tests {
    use super::*;
    use relaymesh_protocol::metering::app::{RequestAcker, RequestTerms};
    use relaymesh_protocol::Keypair;

    fn session(app: &Keypair, supplier: &Keypair, tau: u64) -> SignedSessionOpen {
        let params = crate::config::named_mesh("mining-tests");
        crate::testkit::session(&params, app, supplier, tau, 1, 1).0
    }

    /// Real receipts of one request and made-up facts (the miner trusts its caller).
    fn receipts(
        app: &Keypair,
        session: &SignedSessionOpen,
        n: usize,
    ) -> Vec<(Receipt, ReceiptFacts)> {
        let mut acker = RequestAcker::new(
            RequestTerms {
                session_key: session.session_key(),
                request_id: 0,
                prompt_digest: Digest([2; 32]),
                prompt_bytes: 10,
                max_output_bytes: 1 << 20,
                max_acks: 1000,
            },
            Digest([3; 32]),
            app,
        );
        (0..n)
            .map(|i| {
                let ack = acker.ack(b"token", false, app).unwrap();
                let receipt = Receipt {
                    request: acker.request().clone(),
                    ack,
                };
                let facts = ReceiptFacts {
                    relay_hash: receipt.ack.body.relay_hash(),
                    weight: 1 + (i as u64 % 7) * 10,
                    digest: receipt.digest(),
                };
                (receipt, facts)
            })
            .collect()
    }

    #[test]
    fn the_sled_tree_is_the_protocol_tree_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (app, supplier) = (Keypair::from_secret([1; 32]), Keypair::from_secret([2; 32]));
        let s = session(&app, &supplier, 30);
        let all = receipts(&app, &s, 200);
        let mut reference = MinedSession::new();
        {
            let db = sled::open(dir.path()).unwrap();
            let miner = Miner::new(
                db.open_tree("mining").unwrap(),
                &crate::config::named_mesh("mining-tests"),
            );
            for (receipt, facts) in &all {
                let paid = miner.offer(&s, receipt, facts).unwrap();
                assert_eq!(paid, reference.offer(receipt.clone(), facts, 30).unwrap());
                // The same receipt again is counted, never mined twice.
                miner.offer(&s, receipt, facts).unwrap();
            }
            db.flush().unwrap();
        }
        let db = sled::open(dir.path()).unwrap();
        let miner = Miner::new(
            db.open_tree("mining").unwrap(),
            &crate::config::named_mesh("mining-tests"),
        );
        let root = miner.root(&s.session_key()).unwrap();
        assert_eq!(root, reference.root().unwrap());
        assert!(
            root.count > 10 && root.count < 200,
            "τ selects some: {root:?}"
        );
        let report = &miner.sessions().unwrap()[0];
        assert_eq!(report.counters.receipts, 400);
        assert_eq!(report.counters.mined, root.count);
        assert_eq!(report.counters.mined_value, root.sum);
        // Proofs from the sled tree verify against the root.
        assert_eq!(
            miner.load(&s.session_key()).unwrap().receipts().len() as u64,
            root.count
        );
        assert_eq!(miner.check_tree(&s.session_key()).unwrap(), root);
    }

    #[test]
    fn a_session_stops_mining_at_the_leaves_a_claim_may_hold() {
        let dir = tempfile::tempdir().unwrap();
        let (app, supplier) = (Keypair::from_secret([1; 32]), Keypair::from_secret([2; 32]));
        let mut params = crate::config::named_mesh("mining-tests");
        params.max_claim_leaves = 5;
        params.tau_min = 1;
        // τ = 1 mines every receipt.
        let s = crate::testkit::session(&params, &app, &supplier, 1, 1, 1).0;
        let db = sled::open(dir.path()).unwrap();
        let miner = Miner::new(db.open_tree("mining").unwrap(), &params);
        let mined = receipts(&app, &s, 12)
            .iter()
            .filter(|(receipt, facts)| miner.offer(&s, receipt, facts).unwrap().is_some())
            .count();
        assert_eq!(mined, 5);
        let report = &miner.sessions().unwrap()[0];
        assert_eq!((report.counters.receipts, report.counters.mined), (12, 5));
        let root = miner.check_tree(&s.session_key()).unwrap();
        assert_eq!(root.count, 5);
        // The claim over that root is one every ledger accepts.
        let claim = relaymesh_protocol::identity::signed::Signed::sign(
            relaymesh_protocol::messages::claim::Claim {
                version: 1,
                open: s.clone(),
                root: root.hash,
                sum: root.sum,
                count: root.count,
            },
            &supplier,
        );
        relaymesh_protocol::settlement::claim::verify_claim(
            &claim,
            &params,
            &relaymesh_protocol::Ed25519Verifier,
        )
        .unwrap();
    }

    #[test]
    fn nodes_round_trip_and_garbage_is_corrupt() {
        let leaf = StoredNode::Leaf(LeafEntry {
            key: Digest([1; 32]),
            value: Digest([2; 32]),
            weight: 3,
        });
        let inner = StoredNode::Internal(NodeSummary {
            hash: Digest([4; 32]),
            sum: 5,
            count: 6,
        });
        for node in [leaf, inner] {
            assert_eq!(decode_node(&encode_node(&node)), Some(node));
        }
        assert_eq!(decode_node(&[0, 1, 2]), None);
        assert_eq!(decode_node(&[]), None);
        assert_eq!(decode_node(&[9; 73]), None);
    }
}
