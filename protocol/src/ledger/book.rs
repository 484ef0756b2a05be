//! The ledger's state: the messages of unfrozen epochs, the checkpoint of frozen ones,
//! and the rules that admit a message. Balances are computed from them in `fold`.

use std::collections::{BTreeMap, BTreeSet};

use crate::identity::verify::SignatureVerifier;
use crate::messages::claim::SignedClaim;
use crate::messages::credit::CreditSlot;
use crate::messages::equivocation::{EquivocationEvidence, EvidenceError};
use crate::messages::proof::Proof;
use crate::messages::session::{SessionError, SessionProposal, SignedSessionOpen};
use crate::messages::transfer::SignedTransfer;
use crate::params::MeshParams;
use crate::settlement::claim::{verify_claim_in, ClaimError, VerifiedClaim};
use crate::settlement::proof::{verify_proof, ProofError};
use crate::{Digest, PublicKey};

use super::checkpoint::{AccountSummary, Checkpoint, LedgerSnapshot};

/// Why a message was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The message's epoch is frozen.
    #[error("epoch {epoch} is frozen (epochs before {frozen_before} are final); the message came too late")]
    Frozen {
        /// The message's epoch.
        epoch: u64,
        /// First epoch still open.
        frozen_before: u64,
    },
    /// The message is dated past this ledger's clock (and the mesh's skew): it is kept
    /// out until its epoch comes, so it cannot sit unfrozen for ever.
    #[error(
        "epoch {epoch} has not begun here (this ledger is at epoch {current}); send it when it has"
    )]
    Early {
        /// The message's epoch.
        epoch: u64,
        /// The ledger's epoch.
        current: u64,
    },
    /// A debit whose slot the payer's final credit line does not cover, in a mesh with
    /// credit: it could move nothing, so it is not kept.
    #[error("unfunded: {0}")]
    Unfunded(String),
    /// A debit of a payer excluded for committing a credit twice, which could change
    /// nothing: not kept.
    #[error("payer {} committed a credit twice and is excluded from epoch {from}", payer.peer_id())]
    Excluded {
        /// The payer.
        payer: PublicKey,
        /// Excluded from this epoch on.
        from: u64,
    },
    /// A claim of a supplier excluded for equivocation from its epoch: not kept.
    #[error("supplier {} equivocated and is excluded from epoch {from}", supplier.peer_id())]
    SupplierExcluded {
        /// The supplier.
        supplier: PublicKey,
        /// Excluded from this epoch on.
        from: u64,
    },
    /// Invalid session announcement.
    #[error("session: {0}")]
    Session(#[from] SessionError),
    /// Invalid claim.
    #[error(transparent)]
    Claim(#[from] ClaimError),
    /// Invalid proof.
    #[error(transparent)]
    Proof(#[from] ProofError),
    /// A proof for a claim this ledger has not seen.
    #[error("proof for unknown claim {0}; apply the claim first")]
    UnknownClaim(Digest),
    /// Invalid transfer.
    #[error("transfer: {0}")]
    Transfer(String),
    /// A withdrawal with nothing to give back: in a mesh without credit, or of a
    /// proposal that escrows nothing.
    #[error("withdrawal: {0}")]
    Withdraw(String),
    /// Invalid equivocation evidence.
    #[error("equivocation evidence: {0}")]
    Evidence(#[from] EvidenceError),
}

/// What applying a message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Already known; nothing changed.
    Duplicate,
    /// A session announcement, now known with its escrow.
    Recorded,
    /// A claim waiting for its proof.
    Pending,
    /// A claim settled, or a transfer booked.
    Settled,
    /// The claim conflicts with another by the same supplier for the same session:
    /// here is the evidence to gossip; the supplier is now excluded.
    Equivocation(Box<EquivocationEvidence>),
    /// The supplier is excluded; the claim is kept but moves no credit.
    Void,
}

/// Where a claim stands (a display state: "pending" never expires by itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimStatus {
    /// Waiting for a proof.
    Pending,
    /// Proven; paid from its session's escrow.
    Settled,
    /// Its supplier equivocated, or its app committed its escrow twice.
    Void,
    /// Its session's escrow is not covered by the app's credit line.
    Unfunded,
}

/// What a payer may still commit, as this ledger sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credit {
    /// The credit line a debit dated in the asked epoch is funded from.
    pub line: u128,
    /// The highest slot end among the payer's known debits: a new slot starting there
    /// conflicts with none of them.
    pub slot_top: u64,
    /// The payer committed a credit twice and can spend nothing any more.
    pub excluded: bool,
}

#[derive(Debug, Clone)]
pub(super) struct ClaimRecord {
    pub claim: SignedClaim,
    pub verified: VerifiedClaim,
    pub settled: bool,
}

/// What a debit does when funded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum DebitKind {
    /// A session's escrow: its claims are paid from it.
    Session,
    /// A transfer to this account.
    Transfer(PublicKey),
}

/// A debit of an unfrozen epoch.
#[derive(Debug, Clone)]
pub(super) struct DebitRecord {
    pub payer: PublicKey,
    pub epoch: u64,
    pub slot: CreditSlot,
    pub kind: DebitKind,
}

/// The ledger of one mesh.
#[derive(Debug, Clone)]
pub struct Ledger {
    pub(super) params: MeshParams,
    pub(super) mesh_id: Digest,
    /// Epochs before this are final and folded into `checkpoint`.
    pub(super) frozen_before: u64,
    /// The epoch of the last `advance` (`None` until the first): messages dated past it
    /// (with the mesh's skew) wait.
    pub(super) clock: Option<u64>,
    pub(super) checkpoint: Checkpoint,
    /// Debits of unfrozen epochs by debit id (sessions: hash of the app-signed terms;
    /// transfers: transfer id).
    pub(super) debits: BTreeMap<Digest, DebitRecord>,
    pub(super) claims: BTreeMap<Digest, ClaimRecord>,
    /// Claims by supplier and the debit (the app-signed terms) they claim: two by one
    /// supplier on one debit are equivocation, whatever commitments it countersigned.
    pub(super) by_debit: BTreeMap<(PublicKey, Digest), BTreeSet<Digest>>,
    /// Claims by session key and root, for reveals.
    pub(super) by_root: BTreeMap<(Digest, Digest), Digest>,
    /// Debit ids by payer.
    pub(super) by_payer: BTreeMap<PublicKey, BTreeSet<Digest>>,
    /// The payers' unfrozen debits, indexed for their exclusion (`payers`).
    pub(super) payers: super::payers::PayerIndex,
    /// Suppliers proven to equivocate: excluded from the epoch given on.
    pub(super) excluded: BTreeMap<PublicKey, (u64, EquivocationEvidence)>,
}

impl Ledger {
    /// A ledger holding only the genesis allocations.
    pub fn new(params: MeshParams) -> Self {
        Self {
            mesh_id: params.mesh_id(),
            checkpoint: Checkpoint::genesis(&params),
            params,
            frozen_before: 0,
            clock: None,
            debits: BTreeMap::new(),
            claims: BTreeMap::new(),
            by_debit: BTreeMap::new(),
            by_root: BTreeMap::new(),
            by_payer: BTreeMap::new(),
            payers: Default::default(),
            excluded: BTreeMap::new(),
        }
    }

    /// What this ledger keeps of its frozen epochs (see [`LedgerSnapshot`]).
    pub fn snapshot(&self) -> LedgerSnapshot {
        LedgerSnapshot {
            frozen_before: self.frozen_before,
            checkpoint: self.checkpoint.clone(),
            excluded: self
                .excluded
                .iter()
                .map(|(k, (e, evidence))| (*k, *e, evidence.clone()))
                .collect(),
        }
    }

    /// A ledger resumed from a stored snapshot: the messages of its unfrozen epochs are
    /// applied to it next, and those of frozen epochs are refused as frozen.
    pub fn from_snapshot(params: MeshParams, snapshot: LedgerSnapshot) -> Self {
        let mut ledger = Self::new(params);
        ledger.frozen_before = snapshot.frozen_before;
        ledger.checkpoint = snapshot.checkpoint;
        ledger.excluded = snapshot
            .excluded
            .into_iter()
            .map(|(k, e, evidence)| (k, (e, evidence)))
            .collect();
        ledger
    }

    /// The mesh parameters.
    pub fn params(&self) -> &MeshParams {
        &self.params
    }

    /// First epoch that is not frozen.
    pub fn frozen_before(&self) -> u64 {
        self.frozen_before
    }

    /// The final results of the frozen epochs.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// A message of `epoch` may enter: not frozen, not early.
    fn check_open(&self, epoch: u64) -> Result<(), LedgerError> {
        if epoch < self.frozen_before {
            return Err(LedgerError::Frozen {
                epoch,
                frozen_before: self.frozen_before,
            });
        }
        if let Some(current) = self.clock {
            // The skew rounds up to whole epochs: a node whose clock runs ahead by the
            // tolerated skew is still heard.
            if epoch > current.saturating_add(self.params.skew_epochs()) {
                return Err(LedgerError::Early { epoch, current });
            }
        }
        Ok(())
    }

    /// The epoch whose final credit line funds a debit dated `epoch`: `H + 1` epochs
    /// and the skew back (`None` before epoch 0: the genesis line). By the time any node
    /// admits a debit dated `epoch` (at most the skew ahead of its clock), that epoch
    /// is frozen everywhere, so funding never changes.
    pub(super) fn funding_epoch(&self, epoch: u64) -> Option<u64> {
        epoch.checked_sub(self.params.funding_lag_epochs())
    }

    /// In a mesh with credit, a debit must be funded by the payer's final line; one
    /// that is not could move nothing and is kept out (spam costs credit). Debits whose
    /// funding line is not final yet are left to the fold.
    fn check_funded(
        &self,
        payer: &PublicKey,
        epoch: u64,
        slot: &CreditSlot,
    ) -> Result<(), LedgerError> {
        if !self.params.has_credit() {
            return Ok(());
        }
        let funding = self.funding_epoch(epoch);
        if funding.is_some_and(|f| f >= self.frozen_before) {
            return Ok(());
        }
        let line = self
            .checkpoint
            .accounts
            .get(payer)
            .map_or(0, |a| a.line_through(funding));
        let end = slot.end().map(u128::from);
        if slot.amount == 0 || end.is_none_or(|end| end > line) {
            return Err(LedgerError::Unfunded(format!(
                "slot [{}, +{}) of {} is beyond its credit line of {line} micro-credits",
                slot.start,
                slot.amount,
                payer.peer_id()
            )));
        }
        Ok(())
    }

    fn record_debit(&mut self, id: Digest, record: DebitRecord) {
        if self.debits.contains_key(&id) {
            return;
        }
        self.by_payer.entry(record.payer).or_default().insert(id);
        self.payers.insert(
            record.payer,
            record.epoch,
            &record.slot,
            self.frozen_top(&record.payer),
            self.exclusion_reach(),
        );
        self.debits.insert(id, record);
    }

    /// A payer already excluded from epoch `e_x` for committing a credit twice gets no
    /// more debits stored that are dated `e_x` or later and clash with none of its
    /// debits in a way that would exclude it from earlier: they would move nothing and
    /// change nothing, so one micro-credit does not back an unbounded number of stored
    /// messages (after the first clash, each further debit kept lowers `e_x`).
    fn check_payer(
        &self,
        payer: &PublicKey,
        epoch: u64,
        slot: &CreditSlot,
    ) -> Result<(), LedgerError> {
        let Some(from) = self.payer_exclusion(payer) else {
            return Ok(());
        };
        if epoch < from || self.could_lower_exclusion(payer, epoch, slot, from) {
            return Ok(());
        }
        Err(LedgerError::Excluded {
            payer: *payer,
            from,
        })
    }

    /// Applies a supplier's announcement of a session it countersigned: the escrow is
    /// known from now on (its claims would bring it anyway).
    pub fn apply_open(
        &mut self,
        open: &SignedSessionOpen,
        verifier: &impl SignatureVerifier,
    ) -> Result<Applied, LedgerError> {
        open.check_terms(&self.params, &self.mesh_id)?;
        let epoch = open.epoch(&self.params);
        self.check_open(epoch)?;
        let id = open.body.debit_id();
        if self.debits.contains_key(&id) {
            return Ok(Applied::Duplicate);
        }
        self.check_funded(&open.body.app, epoch, &open.body.escrow)?;
        open.validate_in(&self.params, &self.mesh_id, verifier)?;
        // After the signatures, so a forger learns nothing of the payer's standing.
        self.check_payer(&open.body.app, epoch, &open.body.escrow)?;
        self.record_debit(
            id,
            DebitRecord {
                payer: open.body.app,
                epoch,
                slot: open.body.escrow,
                kind: DebitKind::Session,
            },
        );
        Ok(Applied::Recorded)
    }

    /// Applies an app's withdrawn proposal (`LedgerBody::Withdraw`): its escrow becomes
    /// a debit like a session's. With no claims it returns to the app's line when its
    /// epoch freezes; should the supplier countersign the terms after all, its claims
    /// are paid from the same debit (same id), for what it can prove it served.
    pub fn apply_withdraw(
        &mut self,
        proposal: &SessionProposal,
        verifier: &impl SignatureVerifier,
    ) -> Result<Applied, LedgerError> {
        let terms = &proposal.body;
        terms.check_terms(&self.params, &self.mesh_id)?;
        let epoch = self.params.epoch_of(terms.start_ms);
        self.check_open(epoch)?;
        // A withdrawal gives an escrow back to its payer's line; without credit, or
        // with nothing escrowed, there is nothing to give back, and the message would
        // only be stored and gossiped.
        if !self.params.has_credit() {
            return Err(LedgerError::Withdraw(
                "this mesh has no credit, so no escrow to give back".into(),
            ));
        }
        if terms.escrow.amount == 0 {
            return Err(LedgerError::Withdraw(
                "the proposal escrows nothing, so there is nothing to give back".into(),
            ));
        }
        let id = terms.debit_id();
        if self.debits.contains_key(&id) {
            return Ok(Applied::Duplicate);
        }
        self.check_funded(&terms.app, epoch, &terms.escrow)?;
        terms.check_keys(verifier)?;
        proposal
            .verify(&terms.app, verifier)
            .map_err(|e| LedgerError::Session(SessionError::Signature(e)))?;
        self.check_payer(&terms.app, epoch, &terms.escrow)?;
        self.record_debit(
            id,
            DebitRecord {
                payer: terms.app,
                epoch,
                slot: terms.escrow,
                kind: DebitKind::Session,
            },
        );
        Ok(Applied::Recorded)
    }

    /// Applies a claim. A second, different claim by the same supplier for the same
    /// session produces equivocation evidence.
    pub fn apply_claim(
        &mut self,
        claim: SignedClaim,
        verifier: &impl SignatureVerifier,
    ) -> Result<Applied, LedgerError> {
        // What decides whether the claim is wanted at all comes from its bytes, before
        // any signature is checked: a replayed, frozen or early claim costs nothing.
        let terms = &claim.body.open.body;
        let epoch = self.params.epoch_of(terms.start_ms);
        self.check_open(epoch)?;
        if self.claims.contains_key(&claim.id()) {
            return Ok(Applied::Duplicate);
        }
        self.check_funded(&terms.app, epoch, &terms.escrow)?;
        if !self.debits.contains_key(&terms.debit_id()) {
            self.check_payer(&terms.app, epoch, &terms.escrow)?;
        }
        // A supplier excluded from this epoch on gets no more claims stored: they would
        // move nothing, and a claim of its on a debit it claimed already is evidence
        // that changes nothing.
        let supplier = terms.supplier;
        if self.supplier_excluded_at(&supplier, epoch) {
            return Err(LedgerError::SupplierExcluded {
                supplier,
                from: self.excluded[&supplier].0,
            });
        }
        let verified = verify_claim_in(&claim, &self.params, &self.mesh_id, verifier)?;
        self.record_debit(
            verified.debit,
            DebitRecord {
                payer: verified.app,
                epoch: verified.epoch,
                slot: verified.escrow,
                kind: DebitKind::Session,
            },
        );
        let supplier = verified.supplier;
        let epoch = verified.epoch;
        self.by_root
            .insert((verified.session_key, verified.root), verified.id);
        let slot = self.by_debit.entry((supplier, verified.debit)).or_default();
        let rival = slot.iter().next().copied();
        slot.insert(verified.id);
        self.claims.insert(
            verified.id,
            ClaimRecord {
                claim: claim.clone(),
                verified,
                settled: false,
            },
        );
        if let Some(rival) = rival {
            let other = self.claims[&rival].claim.clone();
            let evidence = EquivocationEvidence::new(claim, other).expect("distinct claim ids");
            self.exclude_supplier(supplier, epoch, evidence.clone());
            return Ok(Applied::Equivocation(Box::new(evidence)));
        }
        if self.supplier_excluded_at(&supplier, epoch) {
            return Ok(Applied::Void);
        }
        Ok(Applied::Pending)
    }

    /// Applies a proof for a known claim; settles it.
    pub fn apply_proof(
        &mut self,
        proof: &Proof,
        verifier: &impl SignatureVerifier,
    ) -> Result<Applied, LedgerError> {
        let record = self
            .claims
            .get(&proof.claim)
            .ok_or(LedgerError::UnknownClaim(proof.claim))?;
        self.check_open(record.verified.epoch)?;
        if record.settled {
            return Ok(Applied::Duplicate);
        }
        verify_proof(&record.claim, proof, &self.params, verifier)?;
        let (supplier, epoch) = (record.verified.supplier, record.verified.epoch);
        self.claims.get_mut(&proof.claim).expect("present").settled = true;
        if self.supplier_excluded_at(&supplier, epoch) {
            return Ok(Applied::Void);
        }
        Ok(Applied::Settled)
    }

    /// Applies a signed transfer.
    pub fn apply_transfer(
        &mut self,
        transfer: &SignedTransfer,
        verifier: &impl SignatureVerifier,
    ) -> Result<Applied, LedgerError> {
        let body = &transfer.body;
        if body.mesh_id != self.mesh_id {
            return Err(LedgerError::Transfer("it is for another mesh".into()));
        }
        if body.amount == 0 {
            return Err(LedgerError::Transfer("amount must be positive".into()));
        }
        if body.slot().end().is_none() {
            return Err(LedgerError::Transfer("its slot overflows".into()));
        }
        if body.from == body.to {
            return Err(LedgerError::Transfer("payer and payee are the same".into()));
        }
        for key in [&body.from, &body.to] {
            verifier
                .check_key(key)
                .map_err(|e| LedgerError::Transfer(e.to_string()))?;
        }
        self.check_open(body.epoch)?;
        let id = transfer.id();
        if self.debits.contains_key(&id) {
            return Ok(Applied::Duplicate);
        }
        self.check_funded(&body.from, body.epoch, &body.slot())?;
        transfer
            .verify(&body.from, verifier)
            .map_err(|e| LedgerError::Transfer(e.to_string()))?;
        self.check_payer(&body.from, body.epoch, &body.slot())?;
        self.record_debit(
            id,
            DebitRecord {
                payer: body.from,
                epoch: body.epoch,
                slot: body.slot(),
                kind: DebitKind::Transfer(body.to),
            },
        );
        Ok(Applied::Settled)
    }

    /// Applies gossiped equivocation evidence: the supplier is excluded from the
    /// session's epoch on.
    pub fn apply_evidence(
        &mut self,
        evidence: EquivocationEvidence,
        verifier: &impl SignatureVerifier,
    ) -> Result<Applied, LedgerError> {
        // Frozen, early or known already: refused before any signature is checked.
        let (supplier, epoch) = (evidence.first.supplier(), evidence.epoch(&self.params));
        self.check_open(epoch)?;
        if self.supplier_excluded_at(&supplier, epoch) {
            return Ok(Applied::Duplicate);
        }
        evidence.verify(&self.params, &self.mesh_id, verifier)?;
        self.exclude_supplier(supplier, epoch, evidence);
        Ok(Applied::Settled)
    }

    fn exclude_supplier(
        &mut self,
        supplier: PublicKey,
        epoch: u64,
        evidence: EquivocationEvidence,
    ) {
        let entry = self
            .excluded
            .entry(supplier)
            .or_insert((epoch, evidence.clone()));
        if epoch < entry.0 {
            *entry = (epoch, evidence);
        }
    }

    /// Whether the supplier's claims of `epoch` are void for equivocation.
    pub(super) fn supplier_excluded_at(&self, supplier: &PublicKey, epoch: u64) -> bool {
        self.excluded
            .get(supplier)
            .is_some_and(|(from, _)| *from <= epoch)
    }

    /// Whether a supplier was proven to equivocate (in any epoch).
    pub fn is_excluded(&self, supplier: &PublicKey) -> bool {
        self.excluded.contains_key(supplier)
    }

    /// Suppliers proven to equivocate.
    pub fn excluded_suppliers(&self) -> impl Iterator<Item = &PublicKey> {
        self.excluded.keys()
    }

    /// The claim of `session_key` with this `root` in an unfrozen epoch, if known.
    pub fn claim_by_root(&self, session_key: &Digest, root: &Digest) -> Option<&SignedClaim> {
        let id = self.by_root.get(&(*session_key, *root))?;
        self.claims.get(id).map(|r| &r.claim)
    }

    /// A claim in an unfrozen epoch, as signed.
    pub fn claim(&self, id: &Digest) -> Option<&SignedClaim> {
        self.claims.get(id).map(|r| &r.claim)
    }

    /// Every account's totals.
    pub fn accounts(&self) -> BTreeMap<PublicKey, AccountSummary> {
        self.fold(None)
            .accounts
            .into_iter()
            .map(|(k, a)| (k, a.summary))
            .collect()
    }

    /// One account's totals.
    pub fn account(&self, key: &PublicKey) -> AccountSummary {
        self.fold(None)
            .accounts
            .get(key)
            .map(|a| a.summary)
            .unwrap_or_default()
    }

    /// Sum of all balances; always the genesis total.
    pub fn total_balance(&self) -> u128 {
        self.accounts().values().map(|a| a.balance).sum()
    }
}
