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
//!   full-reveal proof instead. It admits new sessions against the app's balance.
//! - **An app** (a gateway, for its clients) reveals its secret `r` for the first root
//!   claimed for each of its sessions, never for a second.
//!
//! The rules are the protocol crate's; what is here is storage, timing and plumbing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relaymesh_protocol::identity::signed::Signed;
use relaymesh_protocol::ledger::{Applied, ClaimStatus, Ledger, LedgerError};
use relaymesh_protocol::messages::claim::{Claim, SignedClaim};
use relaymesh_protocol::messages::ledger::{LedgerBody, LedgerMessage};
use relaymesh_protocol::messages::reveal::{commitment, SignedReveal};
use relaymesh_protocol::messages::session::{SessionOpen, SignedSessionOpen};
use relaymesh_protocol::messages::transfer::{SignedTransfer, Transfer};
use relaymesh_protocol::params::MeshParams;
use relaymesh_protocol::settlement::claim::ClaimError;
use relaymesh_protocol::settlement::proof::{sign_reveal, ProofError};
use relaymesh_protocol::wire::WireMessage;
use relaymesh_protocol::{Digest, Ed25519Verifier, Keypair, PublicKey, Signer};
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::mining::Miner;

/// How long after a session's end its supplier claims it: requests still streaming at
/// the end have this long to finish (receipts after the claim are not mined).
pub const CLAIM_DELAY_MS: u64 = 5_000;

/// How long a supplier waits for the app's reveal before it proves with the full
/// reveal: two epochs, at least 10 s, and always well inside the freeze horizon.
pub fn reveal_wait_ms(params: &MeshParams) -> u64 {
    (2 * params.epoch_ms).max(10_000)
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
        LedgerBody::Claim(_) => "claim",
        LedgerBody::Reveal(_) => "reveal",
        LedgerBody::Proof(_) => "proof",
        LedgerBody::Transfer(_) => "transfer",
        LedgerBody::Evidence(_) => "evidence",
    }
}

fn log_key(kind: u8, epoch: u64, id: &Digest) -> Vec<u8> {
    let mut k = Vec::with_capacity(41);
    k.push(kind);
    k.extend_from_slice(&epoch.to_be_bytes());
    k.extend_from_slice(&id.0);
    k
}

fn claim_reason(e: &ClaimError) -> &'static str {
    match e {
        ClaimError::Session(_) => "claim-session",
        ClaimError::Signature(_) => "claim-signature",
        ClaimError::BadShape { .. } => "claim-shape",
        ClaimError::BelowMinimum { .. } => "claim-below-minimum",
    }
}

fn proof_reason(e: &ProofError) -> &'static str {
    match e {
        ProofError::WrongClaim { .. } => "proof-wrong-claim",
        ProofError::BadReveal(_) => "proof-bad-reveal",
        ProofError::WrongSampleCount { .. } => "proof-sample-count",
        ProofError::BadReceipt { .. } => "proof-bad-receipt",
        ProofError::NotMined(_) => "proof-not-mined",
        ProofError::BadPath { .. } => "proof-bad-path",
        ProofError::WrongLeaf { .. } => "proof-wrong-seed",
        ProofError::RootMismatch { .. } => "proof-root-mismatch",
        ProofError::DuplicateLeaf(_) => "proof-duplicate-leaf",
        ProofError::Signature(_) => "proof-signature",
    }
}

/// One account as the API shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AccountRow {
    /// The account's peer id.
    pub peer_id: String,
    /// Spendable micro-credits.
    pub balance: u128,
    /// Credited for serving, royalties and incoming transfers.
    pub earned: u128,
    /// Debited for sessions and outgoing transfers.
    pub spent: u128,
}

/// One claim as the API shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ClaimRow {
    /// Claim id (hex).
    pub id: String,
    /// Session key (hex).
    pub session: String,
    /// The supplier's peer id.
    pub supplier: String,
    /// The app's peer id.
    pub app: String,
    /// Epoch of the session's start.
    pub epoch: u64,
    /// CUs claimed.
    pub sum: u64,
    /// Mined receipts claimed.
    pub count: u64,
    /// Micro-credits per CU.
    pub price_per_cu: u64,
    /// `sum × price`.
    pub value: u128,
    /// The model Source credited a royalty, if any.
    pub source: Option<String>,
    /// Its royalty, ppm.
    pub royalty_ppm: Option<u32>,
    /// `pending`, `settled` or `void`.
    pub status: &'static str,
    /// Whether the app's reveal is known.
    pub revealed: bool,
}

/// What `GET /relaymesh/v1/ledger` reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LedgerReport {
    /// This node's peer id.
    pub peer_id: String,
    /// Its account.
    pub me: AccountRow,
    /// The current epoch.
    pub epoch: u64,
    /// Epochs before this are final.
    pub frozen_before: u64,
    /// Epoch length, ms.
    pub epoch_ms: u64,
    /// Whether sessions need credit (the mesh has genesis allocations).
    pub credit_enforced: bool,
    /// Sum of all balances (always the genesis total).
    pub total_balance: u128,
    /// Claims by status.
    pub claims_pending: usize,
    /// Settled claims.
    pub claims_settled: usize,
    /// Void claims (their supplier equivocated).
    pub claims_void: usize,
    /// Suppliers excluded for equivocation.
    pub excluded: Vec<String>,
    /// Every account.
    pub accounts: Vec<AccountRow>,
}

/// The sled tree of the acks a gateway sent, keyed by session key and receipt digest
/// (the digest the supplier keys its receipt by), each value the whole receipt: the
/// app's own record of what it will be billed, pruned with its session.
pub const APP_ACKS_TREE: &str = "acks";

/// The ledger and the settlement duties of one node.
pub struct Settlement {
    key: Keypair,
    params: MeshParams,
    ledger: Mutex<Ledger>,
    log: sled::Tree,
    /// App side: the root revealed for each session (`session key → root`), so no
    /// session is ever revealed for two roots.
    revealed: sled::Tree,
    /// App side: the gateway's sessions with their secrets.
    app_sessions: Option<sled::Tree>,
    /// App side: the gateway's copy of every ack it sent (`APP_ACKS_TREE`).
    app_acks: sled::Tree,
    /// Supplier side.
    miner: Option<Arc<Miner>>,
    metrics: Metrics,
    /// The frozen epoch boundary the app's sessions were last pruned at.
    pruned_before: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Settlement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settlement").finish_non_exhaustive()
    }
}

impl Settlement {
    /// Opens the settlement state in `db` (trees `ledger` and `revealed`) and replays
    /// the stored log into a fresh ledger.
    pub fn open(
        key: Keypair,
        params: MeshParams,
        db: &sled::Db,
        app_sessions: Option<sled::Tree>,
        miner: Option<Arc<Miner>>,
        metrics: Metrics,
        now_ms: u64,
    ) -> Result<Self, sled::Error> {
        let log = db.open_tree("ledger")?;
        let revealed = db.open_tree("revealed")?;
        let app_acks = db.open_tree(APP_ACKS_TREE)?;
        let mut ledger = Ledger::new(params.clone());
        let mut replayed = 0usize;
        // Key order puts claims before evidence, proofs, reveals and transfers: every
        // proof finds its claim.
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
                LedgerBody::Reveal(_) => Ok(()),
            };
            if let Err(e) = result {
                warn!(%e, "a stored ledger message no longer applies");
            }
            replayed += 1;
        }
        ledger.advance(now_ms);
        if replayed > 0 {
            info!(messages = replayed, "ledger replayed from disk");
        }
        Ok(Self {
            key,
            params,
            ledger: Mutex::new(ledger),
            log,
            revealed,
            app_sessions,
            app_acks,
            miner,
            metrics,
            pruned_before: std::sync::atomic::AtomicU64::new(u64::MAX),
        })
    }

    fn me(&self) -> PublicKey {
        self.key.public_key()
    }

    /// The mesh parameters.
    pub fn params(&self) -> &MeshParams {
        &self.params
    }

    /// Decodes and ingests gossiped or synced bytes.
    pub fn ingest_bytes(&self, bytes: &[u8], now_ms: u64) -> Result<Ingested, Refused> {
        let message = LedgerMessage::decode(bytes).map_err(|e| {
            let reason = match e {
                relaymesh_protocol::DecodeError::TooLarge { .. } => "oversized",
                _ => "malformed",
            };
            self.metrics.ledger_rejected("unknown", reason);
            Refused {
                kind: "unknown",
                reason,
                detail: e.to_string(),
                invalid: true,
            }
        })?;
        self.ingest(message, now_ms)
    }

    /// Validates `message`, applies it to the ledger and stores it. Counted in the
    /// metrics either way.
    pub fn ingest(&self, message: LedgerMessage, now_ms: u64) -> Result<Ingested, Refused> {
        let kind = kind_of(&message.body);
        let result = self.apply(message, now_ms);
        match &result {
            Ok(Ingested::New { .. }) => self.metrics.ledger(kind, "new"),
            Ok(Ingested::Duplicate) => self.metrics.ledger(kind, "duplicate"),
            Err(r) => {
                self.metrics.ledger_rejected(kind, r.reason);
                debug!(kind, reason = r.reason, detail = %r.detail, "ledger message refused");
            }
        }
        result
    }

    fn apply(&self, message: LedgerMessage, now_ms: u64) -> Result<Ingested, Refused> {
        let kind = kind_of(&message.body);
        let refuse = |reason: &'static str, detail: String, invalid: bool| Refused {
            kind,
            reason,
            detail,
            invalid,
        };
        let from_ledger = |e: LedgerError| match &e {
            LedgerError::Frozen { .. } => refuse("frozen", e.to_string(), false),
            LedgerError::UnknownClaim(_) => refuse("unknown-claim", e.to_string(), false),
            LedgerError::Claim(c) => refuse(claim_reason(c), e.to_string(), true),
            LedgerError::Proof(p) => refuse(proof_reason(p), e.to_string(), true),
            LedgerError::Transfer(_) => refuse("bad-transfer", e.to_string(), true),
            LedgerError::Evidence(_) => refuse("bad-evidence", e.to_string(), true),
        };
        let v = &Ed25519Verifier;
        let mut ledger = self.ledger.lock().expect("ledger lock");
        ledger.advance(now_ms);
        let bytes = message
            .encode()
            .map_err(|e| refuse("oversized", e.to_string(), true))?;
        let mut publish = Vec::new();
        let key = match &message.body {
            LedgerBody::Claim(claim) => {
                let id = claim.id();
                let epoch = claim.body.open.epoch(&self.params);
                match ledger.apply_claim(claim.clone(), v).map_err(from_ledger)? {
                    Applied::Duplicate => return Ok(Ingested::Duplicate),
                    Applied::Equivocation(evidence) => {
                        warn!(supplier = %claim.supplier().peer_id(), "a supplier claimed one session twice: it is excluded");
                        let evidence = LedgerMessage::new(LedgerBody::Evidence(*evidence));
                        self.store(&evidence_key(&self.params, &evidence), &evidence);
                        publish.push(evidence);
                    }
                    Applied::Pending | Applied::Settled | Applied::Void => {}
                }
                log_key(b'c', epoch, &id)
            }
            LedgerBody::Proof(proof) => {
                let epoch = ledger
                    .claim(&proof.claim)
                    .map(|c| c.body.open.epoch(&self.params))
                    .ok_or_else(|| from_ledger(LedgerError::UnknownClaim(proof.claim)))?;
                match ledger.apply_proof(proof, v).map_err(from_ledger)? {
                    Applied::Duplicate => return Ok(Ingested::Duplicate),
                    _ => log_key(b'p', epoch, &proof.claim),
                }
            }
            LedgerBody::Reveal(reveal) => {
                let claim = ledger
                    .claims()
                    .map(|(c, _)| c)
                    .find(|c| {
                        c.session_key == reveal.body.session_key && c.root == reveal.body.root
                    })
                    .map(|c| c.id)
                    .and_then(|id| ledger.claim(&id).cloned())
                    .ok_or_else(|| {
                        refuse("unknown-claim", "reveal for a claim not seen".into(), false)
                    })?;
                let open = &claim.body.open.body;
                if commitment(&reveal.body.secret) != open.reveal_commitment {
                    return Err(refuse(
                        "bad-reveal",
                        "the secret does not open the session's commitment".into(),
                        true,
                    ));
                }
                if let Err(e) = reveal.verify(&open.app, v) {
                    return Err(refuse("bad-reveal", e.to_string(), true));
                }
                let key = log_key(b'r', claim.body.open.epoch(&self.params), &claim.id());
                if self.log.contains_key(&key).unwrap_or(false) {
                    return Ok(Ingested::Duplicate);
                }
                key
            }
            LedgerBody::Transfer(transfer) => {
                match ledger.apply_transfer(transfer, v).map_err(from_ledger)? {
                    Applied::Duplicate => return Ok(Ingested::Duplicate),
                    _ => log_key(b't', transfer.body.epoch, &transfer.id()),
                }
            }
            LedgerBody::Evidence(evidence) => {
                match ledger
                    .apply_evidence(evidence.clone(), v)
                    .map_err(from_ledger)?
                {
                    Applied::Duplicate => return Ok(Ingested::Duplicate),
                    _ => evidence_key(&self.params, &message),
                }
            }
        };
        drop(ledger);
        if let Err(e) = self.log.insert(key, bytes) {
            warn!(%e, "cannot store a ledger message");
        }
        Ok(Ingested::New { publish })
    }

    fn store(&self, key: &[u8], message: &LedgerMessage) {
        if let Ok(bytes) = message.encode() {
            if let Err(e) = self.log.insert(key, bytes) {
                warn!(%e, "cannot store a ledger message");
            }
        }
    }

    /// Ingests a message this node made, durably (flushed before it is gossiped), and
    /// returns what to gossip: it and its consequences.
    fn own(&self, message: LedgerMessage, now_ms: u64) -> Vec<LedgerMessage> {
        match self.ingest(message.clone(), now_ms) {
            Ok(Ingested::New { mut publish }) => {
                if let Err(e) = self.log.flush() {
                    warn!(%e, "cannot flush the ledger");
                }
                publish.insert(0, message);
                publish
            }
            Ok(Ingested::Duplicate) => Vec::new(),
            Err(r) => {
                warn!(kind = r.kind, reason = r.reason, detail = %r.detail, "our own ledger message was refused");
                Vec::new()
            }
        }
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

    /// Whether this supplier admits a session on `terms`: in a mesh with credit (genesis
    /// allocations), the app's balance as this node's ledger sees it must cover at least
    /// one mined receipt at the session's price.
    pub fn admits(&self, terms: &SessionOpen) -> Result<(), String> {
        if self.params.genesis.is_empty() {
            return Ok(());
        }
        let balance = self
            .ledger
            .lock()
            .expect("ledger lock")
            .account(&terms.app)
            .balance;
        let need = u128::from(self.params.min_claim_value)
            .max(u128::from(terms.price_per_cu) * u128::from(terms.tau));
        if balance < need {
            return Err(format!(
                "insufficient credit: app {} has {balance} micro-credits on this supplier's ledger; a session here needs at least {need}",
                terms.app.peer_id()
            ));
        }
        Ok(())
    }

    /// One account's totals.
    pub fn account(&self, key: &PublicKey) -> AccountRow {
        account_row(key, self.ledger.lock().expect("ledger lock").account(key))
    }

    /// The ledger's summary.
    pub fn report(&self, now_ms: u64) -> LedgerReport {
        let mut ledger = self.ledger.lock().expect("ledger lock");
        ledger.advance(now_ms);
        // One fold of the ledger gives every figure below.
        let all = ledger.accounts();
        let total_balance = all.values().map(|a| a.balance).sum();
        let me = self.me();
        let mine = account_row(&me, all.get(&me).copied().unwrap_or_default());
        let accounts: Vec<AccountRow> = all.iter().map(|(k, a)| account_row(k, *a)).collect();
        let count = |status| ledger.claims().filter(|(_, s)| *s == status).count();
        let mut excluded: Vec<String> = ledger
            .claims()
            .map(|(c, _)| c.supplier)
            .filter(|s| ledger.is_excluded(s))
            .map(|s| s.peer_id())
            .collect();
        excluded.sort();
        excluded.dedup();
        LedgerReport {
            peer_id: me.peer_id(),
            me: mine,
            epoch: self.params.epoch_of(now_ms),
            frozen_before: ledger.frozen_before(),
            epoch_ms: self.params.epoch_ms,
            credit_enforced: !self.params.genesis.is_empty(),
            total_balance,
            claims_pending: count(ClaimStatus::Pending),
            claims_settled: count(ClaimStatus::Settled),
            claims_void: count(ClaimStatus::Void),
            excluded,
            accounts,
        }
    }

    /// Every claim of unfrozen epochs.
    pub fn claims(&self) -> Vec<ClaimRow> {
        let ledger = self.ledger.lock().expect("ledger lock");
        ledger
            .claims()
            .map(|(c, status)| ClaimRow {
                id: c.id.to_hex(),
                session: c.session_key.to_hex(),
                supplier: c.supplier.peer_id(),
                app: c.app.peer_id(),
                epoch: c.epoch,
                sum: c.sum,
                count: c.count,
                price_per_cu: c.price_per_cu,
                value: c.value(),
                source: c.royalty.map(|(s, _)| s.peer_id()),
                royalty_ppm: c.royalty.map(|(_, ppm)| ppm),
                status: match status {
                    ClaimStatus::Pending => "pending",
                    ClaimStatus::Settled => "settled",
                    ClaimStatus::Void => "void",
                },
                revealed: self
                    .log
                    .contains_key(log_key(b'r', c.epoch, &c.id))
                    .unwrap_or(false),
            })
            .collect()
    }

    /// Signs a transfer of `amount` micro-credits to `to`, debited in the current epoch;
    /// returns it to gossip, or why it was refused.
    pub fn transfer(
        &self,
        to: PublicKey,
        amount: u64,
        now_ms: u64,
    ) -> Result<(Digest, Vec<LedgerMessage>), String> {
        if amount == 0 {
            return Err("the amount must be positive".into());
        }
        if to == self.me() {
            return Err("a transfer to yourself moves nothing".into());
        }
        let transfer: SignedTransfer = Signed::sign(
            Transfer {
                version: 1,
                mesh_id: self.params.mesh_id(),
                from: self.me(),
                to,
                amount,
                epoch: self.params.epoch_of(now_ms),
                nonce: rand_core::RngCore::next_u64(&mut rand_core::OsRng),
            },
            &self.key,
        );
        let id = transfer.id();
        let message = LedgerMessage::new(LedgerBody::Transfer(transfer));
        match self.ingest(message.clone(), now_ms) {
            Ok(_) => {
                let _ = self.log.flush();
                Ok((id, vec![message]))
            }
            Err(r) => Err(r.detail),
        }
    }

    /// The log keys of unfrozen epochs: what this node asks a peer to complete.
    pub fn sync_keys(&self) -> Vec<Vec<u8>> {
        let frozen_before = self.ledger.lock().expect("ledger lock").frozen_before();
        let mut keys = Vec::new();
        for kind in [b'c', b'e', b'p', b'r', b't'] {
            let start = log_key(kind, frozen_before, &Digest::ZERO);
            for k in self.log.range(start..).keys().flatten() {
                if k.first() != Some(&kind) || keys.len() >= MAX_SYNC_KEYS {
                    break;
                }
                keys.push(k.to_vec());
            }
        }
        keys
    }

    /// The messages of unfrozen epochs that a peer holding `have` lacks, in log order
    /// (claims before their proofs), up to [`MAX_SYNC_BYTES`].
    pub fn sync_answer(&self, have: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let have: std::collections::BTreeSet<&[u8]> = have.iter().map(Vec::as_slice).collect();
        let mut out = Vec::new();
        let mut bytes = 0;
        for key in self.sync_keys() {
            if have.contains(key.as_slice()) {
                continue;
            }
            if let Ok(Some(value)) = self.log.get(&key) {
                if bytes + value.len() > MAX_SYNC_BYTES {
                    break;
                }
                bytes += value.len();
                out.push(value.to_vec());
            }
        }
        out
    }

    /// One round of this node's duties at `now_ms`: advance the ledger's clock, claim
    /// ended sessions, prove claims, reveal for our sessions' claims. Returns what to
    /// gossip.
    pub fn tick(&self, now_ms: u64) -> Vec<LedgerMessage> {
        let frozen_before = {
            let mut ledger = self.ledger.lock().expect("ledger lock");
            ledger.advance(now_ms);
            ledger.frozen_before()
        };
        let mut out = Vec::new();
        if let Some(miner) = &self.miner {
            if let Err(e) = self.supplier_duties(miner, now_ms, frozen_before, &mut out) {
                warn!(%e, "supplier settlement duties failed");
            }
        }
        self.app_duties(now_ms, &mut out);
        self.prune_app_sessions(frozen_before);
        out
    }

    /// Forgets the app's sessions (secrets, reveal records and the acks it sent) whose
    /// epoch is final: nothing can be claimed or revealed for them any more.
    fn prune_app_sessions(&self, frozen_before: u64) {
        let Some(sessions) = &self.app_sessions else {
            return;
        };
        let last = self
            .pruned_before
            .swap(frozen_before, std::sync::atomic::Ordering::Relaxed);
        if last == frozen_before {
            return;
        }
        for (key, bytes) in sessions.iter().flatten() {
            let Ok((open, _, _)) =
                ciborium::from_reader::<(SignedSessionOpen, Digest, u64), _>(bytes.as_ref())
            else {
                continue;
            };
            if open.epoch(&self.params) < frozen_before {
                let _ = sessions.remove(&key);
                let _ = self.revealed.remove(&key);
                for ack in self.app_acks.scan_prefix(&key).keys().flatten() {
                    let _ = self.app_acks.remove(ack);
                }
            }
        }
    }

    fn supplier_duties(
        &self,
        miner: &Miner,
        now_ms: u64,
        frozen_before: u64,
        out: &mut Vec<LedgerMessage>,
    ) -> Result<(), crate::mining::MiningError> {
        for session in miner.claimable()? {
            let terms = &session.terms;
            let session_key = terms.session_key();
            let epoch = terms.epoch(&self.params);
            if epoch < frozen_before {
                // Final: nothing more can be claimed or proven for it.
                miner.forget(&session_key)?;
                continue;
            }
            let claimed_ms = match session.claimed_ms {
                Some(at) => at,
                None if now_ms >= terms.body.end_ms() + CLAIM_DELAY_MS => {
                    miner.close(terms, now_ms)?;
                    now_ms
                }
                None => continue,
            };
            let Some(claim) = self.build_claim(miner, terms)? else {
                continue;
            };
            let id = claim.id();
            let status = self.ledger.lock().expect("ledger lock").claim_status(&id);
            match status {
                None => {
                    info!(session = %session_key, sum = claim.body.sum, count = claim.body.count, "claiming a session");
                    out.extend(self.own(LedgerMessage::new(LedgerBody::Claim(claim)), now_ms));
                }
                Some(ClaimStatus::Pending) => {
                    let reveal = self.stored_reveal(epoch, &id);
                    let mined = miner.load(&session_key)?;
                    let proof = match reveal {
                        Some(reveal) => mined
                            .sampled_proof(id, reveal, self.params.proof_samples)
                            .map_err(|e| crate::mining::MiningError::Tree(e.to_string()))?,
                        None if now_ms >= claimed_ms + reveal_wait_ms(&self.params) => {
                            info!(session = %session_key, "no reveal from the app in time; proving with every mined receipt");
                            match mined.full_reveal(id) {
                                Ok(p) => p,
                                Err(e) => {
                                    warn!(%e, "cannot build the full reveal");
                                    continue;
                                }
                            }
                        }
                        None => continue,
                    };
                    out.extend(self.own(LedgerMessage::new(LedgerBody::Proof(proof)), now_ms));
                }
                Some(ClaimStatus::Settled | ClaimStatus::Void) => {}
            }
        }
        Ok(())
    }

    /// The claim for a closed session: rebuilt from the (frozen) tree, so the same
    /// claim every time, across restarts too. `None` when there is nothing worth
    /// claiming.
    fn build_claim(
        &self,
        miner: &Miner,
        terms: &SignedSessionOpen,
    ) -> Result<Option<SignedClaim>, crate::mining::MiningError> {
        let root = miner.root(&terms.session_key())?;
        let value = u128::from(root.sum) * u128::from(terms.body.price_per_cu);
        if root.count == 0 || value < u128::from(self.params.min_claim_value) {
            return Ok(None);
        }
        Ok(Some(Signed::sign(
            Claim {
                version: 1,
                open: terms.clone(),
                root: root.hash,
                sum: root.sum,
                count: root.count,
            },
            &self.key,
        )))
    }

    fn stored_reveal(&self, epoch: u64, claim: &Digest) -> Option<SignedReveal> {
        let bytes = self.log.get(log_key(b'r', epoch, claim)).ok()??;
        match LedgerMessage::decode(&bytes).ok()?.body {
            LedgerBody::Reveal(r) => Some(r),
            _ => None,
        }
    }

    fn app_duties(&self, now_ms: u64, out: &mut Vec<LedgerMessage>) {
        let Some(sessions) = &self.app_sessions else {
            return;
        };
        let me = self.me();
        let pending: Vec<(Digest, Digest, u64, Digest)> = self
            .ledger
            .lock()
            .expect("ledger lock")
            .claims()
            .filter(|(c, s)| c.app == me && *s == ClaimStatus::Pending)
            .map(|(c, _)| (c.session_key, c.root, c.epoch, c.id))
            .collect();
        for (session_key, root, epoch, claim_id) in pending {
            if self
                .log
                .contains_key(log_key(b'r', epoch, &claim_id))
                .unwrap_or(true)
            {
                continue;
            }
            // One root per session, ever: a second claim's root gets no reveal.
            match self.revealed.get(session_key.0) {
                Ok(Some(r)) if r.as_ref() != root.0 => continue,
                Ok(_) => {}
                Err(_) => continue,
            }
            let Some(secret) = app_secret(sessions, &session_key) else {
                continue;
            };
            if self.revealed.insert(session_key.0, &root.0[..]).is_err()
                || self.revealed.flush().is_err()
            {
                continue;
            }
            info!(session = %session_key, "revealing our secret for the supplier's claim");
            let reveal = sign_reveal(session_key, root, secret, &self.key);
            out.extend(self.own(LedgerMessage::new(LedgerBody::Reveal(reveal)), now_ms));
        }
    }
}

fn account_row(key: &PublicKey, a: relaymesh_protocol::ledger::AccountSummary) -> AccountRow {
    AccountRow {
        peer_id: key.peer_id(),
        balance: a.balance,
        earned: a.earned,
        spent: a.spent,
    }
}

fn evidence_key(params: &MeshParams, message: &LedgerMessage) -> Vec<u8> {
    match &message.body {
        LedgerBody::Evidence(e) => {
            let supplier = e.first.supplier();
            let id = Digest(*blake3::hash(&supplier.0).as_bytes());
            log_key(b'e', e.first.body.open.epoch(params), &id)
        }
        _ => unreachable!("evidence only"),
    }
}

/// The app's secret `r` of a session, from the gateway's stored sessions.
fn app_secret(sessions: &sled::Tree, session_key: &Digest) -> Option<Digest> {
    let bytes = sessions.get(session_key.0).ok()??;
    let (_, secret, _): (SignedSessionOpen, Digest, u64) =
        ciborium::from_reader(bytes.as_ref()).ok()?;
    Some(secret)
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
    tokio::spawn(async move {
        let mut every = tokio::time::interval(tick_interval(settlement.params()));
        loop {
            every.tick().await;
            let s = settlement.clone();
            let now = crate::mesh::now_ms();
            let Ok(messages) = tokio::task::spawn_blocking(move || s.tick(now)).await else {
                return;
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

/// Balances by peer id, for tests and tools.
pub fn balances(report: &LedgerReport) -> BTreeMap<String, u128> {
    report
        .accounts
        .iter()
        .map(|a| (a.peer_id.clone(), a.balance))
        .collect()
}

#[cfg(test)]
mod tests {
    //! Settlement over real sled and the protocol's real messages: the honest paths and
    //! every attack the ledger must refuse (and count).
    use super::*;
    use relaymesh_protocol::messages::proof::{Proof, ProofEvidence};
    use relaymesh_protocol::metering::app::{RequestAcker, RequestTerms};
    use relaymesh_protocol::metering::receipt::Receipt;
    use relaymesh_protocol::params::Allocation;
    use relaymesh_protocol::settlement::proof::MinedSession;
    use relaymesh_protocol::wire::to_canonical;
    use relaymesh_protocol::BoundedVec;

    const START: u64 = 1_000_000_000;

    fn key(n: u8) -> Keypair {
        Keypair::from_secret([n; 32])
    }

    fn params(app_credit: u64, samples: u16) -> MeshParams {
        let mut p = MeshParams::new(
            "settle-tests",
            vec![Allocation {
                account: key(1).public_key(),
                amount: app_credit,
            }],
        )
        .unwrap();
        p.epoch_ms = 5_000;
        p.max_session_ms = 10_000;
        p.proof_samples = samples;
        p
    }

    fn session(
        p: &MeshParams,
        app: &Keypair,
        supplier: &Keypair,
        nonce: u64,
    ) -> (SignedSessionOpen, Digest) {
        crate::testkit::session(p, app, supplier, p.tau_min, START, nonce)
    }

    /// `requests` requests of acks carrying `bytes` each, signed by `signer` (the app, or
    /// a forger); returns the receipts.
    fn receipts(
        s: &SignedSessionOpen,
        signer: &Keypair,
        requests: u64,
        acks: usize,
        bytes: usize,
    ) -> Vec<Receipt> {
        let mut out = Vec::new();
        for id in 0..requests {
            let mut acker = RequestAcker::new(
                RequestTerms {
                    session_key: s.session_key(),
                    request_id: id + 1000 * u64::from(signer.public_key().0[0]),
                    prompt_digest: Digest([2; 32]),
                    prompt_bytes: 20,
                    max_output_bytes: 1 << 20,
                    max_acks: 1000,
                },
                Digest([id as u8; 32]),
                signer,
            );
            for i in 0..acks {
                let ack = acker
                    .ack(&vec![b'x'; bytes], i + 1 == acks, signer)
                    .unwrap();
                out.push(acker.receipt(ack));
            }
        }
        out
    }

    struct Node {
        s: Settlement,
        metrics: Metrics,
        _dir: tempfile::TempDir,
    }

    fn node(
        k: Keypair,
        p: &MeshParams,
        supplier: bool,
        app_sessions: &[(SignedSessionOpen, Digest)],
    ) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::testkit::open_db(dir.path());
        let miner = supplier.then(|| Arc::new(Miner::new(db.open_tree("mining").unwrap(), p)));
        let sessions = db.open_tree("app_sessions").unwrap();
        for (s, secret) in app_sessions {
            sessions
                .insert(s.session_key().0, to_canonical(&(s.clone(), *secret, 1u64)))
                .unwrap();
        }
        let metrics = Metrics::default();
        let s = Settlement::open(
            k,
            p.clone(),
            &db,
            Some(sessions),
            miner,
            metrics.clone(),
            START,
        )
        .unwrap();
        Node {
            s,
            metrics,
            _dir: dir,
        }
    }

    impl Node {
        fn mine(&self, session: &SignedSessionOpen, receipts: &[Receipt]) -> u64 {
            let miner = self.s.miner.as_ref().unwrap();
            let mut served = 0;
            for r in receipts {
                let facts = r.check(&session.session_key(), &session.body).unwrap();
                served += facts.weight;
                miner.offer(session, r, &facts).unwrap();
            }
            served
        }

        fn rejected(&self, reason: &str) -> u64 {
            self.metrics
                .ledger_rejections
                .get_or_create(&crate::metrics::ReasonLabel {
                    reason: reason.into(),
                })
                .get()
        }
    }

    /// Delivers every message to every node (as gossip would); returns the messages.
    fn deliver(messages: Vec<LedgerMessage>, to: &[&Node], now: u64) -> Vec<LedgerMessage> {
        for m in &messages {
            let bytes = m.encode().unwrap();
            for n in to {
                let _ = n.s.ingest_bytes(&bytes, now);
            }
        }
        messages
    }

    fn end(p: &MeshParams) -> u64 {
        START + p.max_session_ms + CLAIM_DELAY_MS
    }

    #[test]
    fn an_honest_session_is_claimed_revealed_proven_and_settled_everywhere() {
        let p = params(1_000_000_000, 16);
        let (app, sup) = (key(1), key(2));
        let (s, secret) = session(&p, &app, &sup, 1);
        let supplier = node(sup.clone(), &p, true, &[]);
        let gateway = node(app.clone(), &p, false, &[(s.clone(), secret)]);
        let observer = node(key(3), &p, false, &[]);
        // Small increments (12 CU against τ = 64): τ samples them.
        let served = supplier.mine(&s, &receipts(&s, &app, 40, 20, 3));
        let all = [&supplier, &gateway, &observer];
        // Nothing is claimed before the session ended.
        assert!(supplier.s.tick(START + 1000).is_empty());
        let now = end(&p);
        let claim = deliver(supplier.s.tick(now), &all, now);
        assert!(matches!(
            claim[..],
            [LedgerMessage {
                body: LedgerBody::Claim(_),
                ..
            }]
        ));
        let reveal = deliver(gateway.s.tick(now), &all, now);
        assert!(matches!(
            reveal[..],
            [LedgerMessage {
                body: LedgerBody::Reveal(_),
                ..
            }]
        ));
        // The app reveals once.
        assert!(gateway.s.tick(now).is_empty());
        let proof = deliver(supplier.s.tick(now), &all, now);
        assert!(matches!(
            &proof[..],
            [LedgerMessage {
                body: LedgerBody::Proof(Proof {
                    evidence: ProofEvidence::Sampled(_),
                    ..
                }),
                ..
            }]
        ));
        let reports: Vec<LedgerReport> = all.iter().map(|n| n.s.report(now)).collect();
        for r in &reports {
            assert_eq!(r.claims_settled, 1, "{r:?}");
            assert_eq!(balances(r), balances(&reports[0]));
            assert_eq!(r.total_balance, 1_000_000_000);
        }
        let claimed = supplier.s.account(&sup.public_key()).earned;
        assert_eq!(gateway.s.account(&app.public_key()).spent, claimed);
        // Threshold mining is unbiased; here its error is small against what was served.
        let error = (claimed as f64 - served as f64) / served as f64;
        println!(
            "served {served} CU, credited {claimed} CU: error {:.2}%",
            error * 100.0
        );
        let sigma = ((p.tau_min * served) as f64).sqrt();
        assert!((claimed as f64 - served as f64).abs() <= 5.0 * sigma);
        // Nothing more to do; the claim was made once.
        assert!(supplier.s.tick(now + 60_000).is_empty());
    }

    #[test]
    fn the_app_forgets_a_final_session_with_the_acks_it_sent() {
        let p = params(1_000_000_000, 16);
        let (app, sup) = (key(1), key(2));
        let (old, old_secret) = session(&p, &app, &sup, 3);
        // A session opened once the first one's epoch is final.
        let later_start = START + p.epoch_ms * (u64::from(p.freeze_horizon_epochs) + 2);
        let (new, new_secret) = crate::testkit::session(&p, &app, &sup, p.tau_min, later_start, 4);
        let gateway = node(
            app.clone(),
            &p,
            false,
            &[(old.clone(), old_secret), (new.clone(), new_secret)],
        );
        let acks = &gateway.s.app_acks;
        for s in [&old, &new] {
            for r in receipts(s, &app, 2, 3, 10) {
                let key = [s.session_key().0, r.digest().0].concat();
                acks.insert(key, to_canonical(&r)).unwrap();
            }
        }
        let held = |s: &SignedSessionOpen| acks.scan_prefix(s.session_key().0).count();
        gateway.s.tick(end(&p));
        assert_eq!((held(&old), held(&new)), (6, 6), "nothing is final yet");
        gateway.s.tick(later_start + 1);
        assert_eq!((held(&old), held(&new)), (0, 6));
        let sessions = gateway.s.app_sessions.as_ref().unwrap();
        assert!(sessions.get(old.session_key().0).unwrap().is_none());
        assert!(sessions.get(new.session_key().0).unwrap().is_some());
    }

    #[test]
    fn an_app_that_never_reveals_is_settled_by_the_full_reveal() {
        let p = params(1_000_000_000, 16);
        let (app, sup) = (key(1), key(2));
        let (s, _) = session(&p, &app, &sup, 2);
        let supplier = node(sup, &p, true, &[]);
        let observer = node(key(3), &p, false, &[]);
        supplier.mine(&s, &receipts(&s, &app, 5, 6, 30));
        let now = end(&p);
        deliver(supplier.s.tick(now), &[&observer], now);
        assert!(
            supplier.s.tick(now + 1000).is_empty(),
            "waits for the reveal"
        );
        let later = now + reveal_wait_ms(&p);
        let proof = deliver(supplier.s.tick(later), &[&observer], later);
        assert!(matches!(
            &proof[..],
            [LedgerMessage {
                body: LedgerBody::Proof(Proof {
                    evidence: ProofEvidence::Full(_),
                    ..
                }),
                ..
            }]
        ));
        assert_eq!(observer.s.report(later).claims_settled, 1);
    }

    /// A supplier's claim over `mined` (its own tree, honest or not), signed.
    fn claim_over<S: relaymesh_protocol::sumtree::TreeStore>(
        s: &SignedSessionOpen,
        mined: &MinedSession<S>,
        sup: &Keypair,
    ) -> SignedClaim {
        let root = mined.root().ok().unwrap();
        Signed::sign(
            Claim {
                version: 1,
                open: s.clone(),
                root: root.hash,
                sum: root.sum,
                count: root.count,
            },
            sup,
        )
    }

    fn mined(s: &SignedSessionOpen, receipts: &[Receipt]) -> MinedSession {
        let mut m = MinedSession::new();
        for r in receipts {
            let facts = r.check(&s.session_key(), &s.body).unwrap();
            m.offer(r.clone(), &facts, s.body.tau).unwrap();
        }
        m
    }

    fn refused(n: &Node, m: LedgerBody, now: u64) -> &'static str {
        let r = n.s.ingest(LedgerMessage::new(m), now).unwrap_err();
        assert!(r.invalid, "{r:?}");
        assert_eq!(n.rejected(r.reason), 1, "{r:?} is counted");
        r.reason
    }

    #[test]
    fn forged_replayed_and_inflated_receipts_are_refused_and_counted() {
        let p = params(1_000_000_000, 16);
        let (app, sup) = (key(1), key(2));
        let observer = node(key(3), &p, false, &[]);
        let now = end(&p);
        let (s, _) = session(&p, &app, &sup, 3);
        let honest = receipts(&s, &app, 4, 5, 100);
        let m = mined(&s, &honest);
        let claim = claim_over(&s, &m, &sup);
        observer
            .s
            .ingest(LedgerMessage::new(LedgerBody::Claim(claim.clone())), now)
            .unwrap();
        let full = |receipts: Vec<Receipt>| {
            LedgerBody::Proof(Proof {
                version: 1,
                claim: claim.id(),
                evidence: ProofEvidence::Full(relaymesh_protocol::messages::proof::FullReveal {
                    receipts: BoundedVec::try_from_vec(receipts).unwrap(),
                }),
            })
        };
        let leaves: Vec<Receipt> = m.receipts().values().cloned().collect();
        // A forged receipt: the ack re-signed by someone else.
        let mut forged = leaves.clone();
        forged[0].ack = Signed::sign(forged[0].ack.body.clone(), &key(9));
        assert_eq!(refused(&observer, full(forged), now), "proof-signature");
        // The same receipt twice.
        let mut replayed = leaves.clone();
        replayed.push(leaves[0].clone());
        assert_eq!(
            refused(&observer, full(replayed), now),
            "proof-duplicate-leaf"
        );
        // Inflated token counts: the ack's count raised after the app signed it.
        let mut inflated = leaves.clone();
        inflated[0].ack.body.new_bytes += 10_000;
        assert!(observer
            .s
            .ingest(LedgerMessage::new(full(inflated)), now)
            .is_err());
        // The honest proof still settles.
        observer
            .s
            .ingest(LedgerMessage::new(full(leaves)), now)
            .unwrap();
        assert_eq!(observer.s.report(now).claims_settled, 1);
    }

    #[test]
    fn an_inflated_claim_and_a_proof_for_another_seed_are_refused() {
        let p = params(1_000_000_000, 16);
        let (app, sup) = (key(1), key(2));
        let observer = node(key(3), &p, false, &[]);
        let now = end(&p);
        // A claim whose sum is larger than its tree's.
        let (s, secret) = session(&p, &app, &sup, 4);
        let m = mined(&s, &receipts(&s, &app, 4, 5, 100));
        let mut body = claim_over(&s, &m, &sup).body;
        body.sum += 5_000;
        let inflated = Signed::sign(body, &sup);
        observer
            .s
            .ingest(LedgerMessage::new(LedgerBody::Claim(inflated.clone())), now)
            .unwrap();
        let reveal = sign_reveal(s.session_key(), inflated.body.root, secret, &app);
        let proof = m
            .sampled_proof(inflated.id(), reveal, p.proof_samples)
            .unwrap();
        let reason = refused(&observer, LedgerBody::Proof(proof), now);
        assert!(
            reason == "proof-bad-path" || reason == "proof-wrong-seed",
            "{reason}"
        );
        let full = m.full_reveal(inflated.id()).unwrap();
        assert_eq!(
            refused(&observer, LedgerBody::Proof(full), now),
            "proof-root-mismatch"
        );

        // A proof sampled with another seed than the app's reveal gives.
        let (s, secret) = session(&p, &app, &sup, 5);
        let m = mined(&s, &receipts(&s, &app, 8, 5, 100));
        let claim = claim_over(&s, &m, &sup);
        observer
            .s
            .ingest(LedgerMessage::new(LedgerBody::Claim(claim.clone())), now)
            .unwrap();
        let root = m.root().unwrap().hash;
        let chosen = sign_reveal(s.session_key(), root, Digest([0xee; 32]), &app);
        let mut proof = m
            .sampled_proof(claim.id(), chosen, p.proof_samples)
            .unwrap();
        let ProofEvidence::Sampled(sampled) = &mut proof.evidence else {
            unreachable!()
        };
        sampled.reveal = sign_reveal(s.session_key(), root, secret, &app);
        assert_eq!(
            refused(&observer, LedgerBody::Proof(proof), now),
            "proof-wrong-seed"
        );
    }

    #[test]
    fn fake_leaves_are_caught_at_the_rate_the_samples_imply() {
        // Half the leaves are fake and a proof samples 2: caught with probability 3/4.
        let p = params(1_000_000_000, 2);
        let (app, sup) = (key(1), key(2));
        let observer = node(key(3), &p, false, &[]);
        let now = end(&p);
        let trials = 60;
        let mut caught = 0;
        for nonce in 0..trials {
            let (s, secret) = session(&p, &app, &sup, 100 + nonce);
            let mut all = receipts(&s, &app, 4, 4, 200);
            all.extend(receipts(&s, &key(9), 4, 4, 200));
            let m = mined(&s, &all);
            let claim = claim_over(&s, &m, &sup);
            observer
                .s
                .ingest(LedgerMessage::new(LedgerBody::Claim(claim.clone())), now)
                .unwrap();
            let reveal = sign_reveal(s.session_key(), claim.body.root, secret, &app);
            let proof = m
                .sampled_proof(claim.id(), reveal, p.proof_samples)
                .unwrap();
            if observer
                .s
                .ingest(LedgerMessage::new(LedgerBody::Proof(proof)), now)
                .is_err()
            {
                caught += 1;
            }
        }
        println!("caught {caught} of {trials} claims half made of fake leaves (expected 45)");
        assert_eq!(observer.rejected("proof-signature"), caught);
        // 45 expected, σ ≈ 3.4: ±4σ.
        assert!((31..=59).contains(&caught), "{caught}");
    }

    #[test]
    fn two_claims_for_one_session_exclude_the_supplier_everywhere() {
        let p = params(1_000_000_000, 16);
        let (app, sup) = (key(1), key(2));
        let (a, b) = (node(key(3), &p, false, &[]), node(key(4), &p, false, &[]));
        let now = end(&p);
        let (s, _) = session(&p, &app, &sup, 6);
        let all = receipts(&s, &app, 6, 5, 100);
        let first = claim_over(&s, &mined(&s, &all), &sup);
        let second = claim_over(&s, &mined(&s, &all[..all.len() - 5]), &sup);
        assert_ne!(first.id(), second.id());
        a.s.ingest(LedgerMessage::new(LedgerBody::Claim(first)), now)
            .unwrap();
        let Ingested::New { publish } =
            a.s.ingest(LedgerMessage::new(LedgerBody::Claim(second)), now)
                .unwrap()
        else {
            panic!("new")
        };
        assert!(a.s.is_excluded(&sup.public_key()));
        assert_eq!(a.s.report(now).claims_void, 2);
        // The evidence alone convinces another node.
        let [evidence] = &publish[..] else {
            panic!("one piece of evidence")
        };
        b.s.ingest(evidence.clone(), now).unwrap();
        assert!(b.s.is_excluded(&sup.public_key()));
        // Forged evidence is refused: two claims of different sessions.
        let (s2, _) = session(&p, &app, &sup, 7);
        let other = claim_over(&s2, &mined(&s2, &receipts(&s2, &app, 1, 5, 100)), &sup);
        let LedgerBody::Evidence(mut e) = evidence.body.clone() else {
            unreachable!()
        };
        e.second = other;
        if e.first.id() > e.second.id() {
            std::mem::swap(&mut e.first, &mut e.second);
        }
        assert_eq!(refused(&b, LedgerBody::Evidence(e), now), "bad-evidence");
    }

    #[test]
    fn a_claim_for_a_session_that_never_existed_is_refused() {
        let p = params(1_000_000_000, 16);
        let (app, sup) = (key(1), key(2));
        let observer = node(key(3), &p, false, &[]);
        let now = end(&p);
        // The supplier makes up terms "signed" by the app with its own key.
        let (real, _) = session(&p, &app, &sup, 8);
        let fake = Signed::sign(real.body.clone(), &sup).countersign(&sup);
        let receipts = receipts(&fake, &app, 2, 3, 100);
        let claim = claim_over(&fake, &mined(&fake, &receipts), &sup);
        assert_eq!(
            refused(&observer, LedgerBody::Claim(claim), now),
            "claim-session"
        );
        // Garbage bytes too.
        let r = observer
            .s
            .ingest_bytes(b"\xa1\x00garbage", now)
            .unwrap_err();
        assert_eq!(r.reason, "malformed");
    }

    #[test]
    fn sessions_beyond_the_balance_are_paid_pro_rata_and_nothing_is_minted() {
        // The app holds 1,000 micro-credits and runs sessions at two suppliers at once.
        let p = params(1_000, 16);
        let app = key(1);
        let observer = node(key(3), &p, false, &[]);
        let now = end(&p);
        let mut claimed = 0u128;
        for (n, sup) in [(10, key(5)), (11, key(6))] {
            let (s, secret) = session(&p, &app, &sup, n);
            let m = mined(&s, &receipts(&s, &app, 4, 5, 200));
            let claim = claim_over(&s, &m, &sup);
            claimed += u128::from(claim.body.sum);
            observer
                .s
                .ingest(LedgerMessage::new(LedgerBody::Claim(claim.clone())), now)
                .unwrap();
            let reveal = sign_reveal(s.session_key(), claim.body.root, secret, &app);
            let proof = m
                .sampled_proof(claim.id(), reveal, p.proof_samples)
                .unwrap();
            observer
                .s
                .ingest(LedgerMessage::new(LedgerBody::Proof(proof)), now)
                .unwrap();
        }
        assert!(claimed > 1_000);
        let r = observer.s.report(now);
        assert_eq!(r.claims_settled, 2);
        assert_eq!(r.total_balance, 1_000, "nothing minted");
        let app_account = observer.s.account(&app.public_key());
        assert_eq!((app_account.balance, app_account.spent), (0, 1_000));
        let earned: u128 = [key(5), key(6)]
            .iter()
            .map(|k| observer.s.account(&k.public_key()).earned)
            .sum();
        assert_eq!(earned, 1_000);
        // A supplier that sees the empty balance refuses new sessions, saying why.
        let (s, _) = session(&p, &app, &key(5), 12);
        let why = observer.s.admits(&s.body).unwrap_err();
        assert!(why.contains("insufficient credit"), "{why}");
    }

    #[test]
    fn the_ledger_survives_a_restart_and_anti_entropy_fills_a_gap() {
        let p = params(1_000_000_000, 16);
        let (app, sup) = (key(1), key(2));
        let now = end(&p);
        let dir = tempfile::tempdir().unwrap();
        let (s, secret) = session(&p, &app, &sup, 20);
        let m = mined(&s, &receipts(&s, &app, 3, 4, 100));
        let claim = claim_over(&s, &m, &sup);
        let reveal = sign_reveal(s.session_key(), claim.body.root, secret, &app);
        let proof = m
            .sampled_proof(claim.id(), reveal.clone(), p.proof_samples)
            .unwrap();
        let messages = [
            LedgerBody::Claim(claim),
            LedgerBody::Reveal(reveal),
            LedgerBody::Proof(proof),
        ];
        let before = {
            let db = crate::testkit::open_db(dir.path());
            let n = Settlement::open(
                key(3),
                p.clone(),
                &db,
                None,
                None,
                Metrics::default(),
                START,
            )
            .unwrap();
            for m in &messages {
                n.ingest(LedgerMessage::new(m.clone()), now).unwrap();
            }
            db.flush().unwrap();
            n.report(now)
        };
        let db = crate::testkit::open_db(dir.path());
        let restarted =
            Settlement::open(key(3), p.clone(), &db, None, None, Metrics::default(), now).unwrap();
        let after = restarted.report(now);
        assert_eq!(balances(&after), balances(&before));
        assert_eq!(after.claims_settled, 1);
        // A node that missed everything asks for what it lacks and converges.
        let empty = node(key(4), &p, false, &[]);
        for bytes in restarted.sync_answer(&empty.s.sync_keys()) {
            empty.s.ingest_bytes(&bytes, now).unwrap();
        }
        assert_eq!(balances(&empty.s.report(now)), balances(&after));
        assert!(restarted.sync_answer(&empty.s.sync_keys()).is_empty());
    }
}
