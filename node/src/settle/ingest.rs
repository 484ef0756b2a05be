//! Validating, applying and storing ledger messages; anti-entropy.

use relaymesh_protocol::ledger::{Applied, LedgerError};
use relaymesh_protocol::messages::ledger::{LedgerBody, LedgerMessage};
use relaymesh_protocol::messages::reveal::commitment;
use relaymesh_protocol::messages::session::SessionError;
use relaymesh_protocol::params::MeshParams;
use relaymesh_protocol::settlement::claim::ClaimError;
use relaymesh_protocol::settlement::proof::ProofError;
use relaymesh_protocol::wire::WireMessage;
use relaymesh_protocol::{Digest, Ed25519Verifier};
use tracing::{debug, warn};

use super::*;

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
        ProofError::BadMiningSecret => "proof-mining-secret",
        ProofError::WrongLeafCount { .. } => "proof-leaf-count",
    }
}

impl Settlement {
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
        let supplier = match &message.body {
            LedgerBody::Claim(claim) => Some(claim.body.open.body.supplier),
            _ => None,
        };
        let result = self.apply(message, now_ms);
        match &result {
            Ok(Ingested::New { .. }) => self.metrics.ledger(kind, "new"),
            Ok(Ingested::Duplicate) => self.metrics.ledger(kind, "duplicate"),
            Err(r) => {
                self.metrics.ledger_rejected(kind, r.reason);
                debug!(kind, reason = r.reason, detail = %r.detail, "ledger message refused");
                // Claims and proofs that fail their checks, for the dashboard; not the
                // ones refused only for their time (frozen, early): those are routine.
                if matches!(kind, "claim" | "proof") && r.invalid {
                    self.note_refused(super::report::RefusedRow {
                        at_ms: now_ms,
                        kind,
                        reason: r.reason,
                        detail: r.detail.clone(),
                        supplier: supplier.map(|key| key.peer_id()),
                    });
                }
            }
        }
        result
    }

    pub(super) fn apply(&self, message: LedgerMessage, now_ms: u64) -> Result<Ingested, Refused> {
        let kind = kind_of(&message.body);
        let refuse = |reason: &'static str, detail: String, invalid: bool| Refused {
            kind,
            reason,
            detail,
            invalid,
        };
        let from_ledger = |e: LedgerError| match &e {
            LedgerError::Frozen { .. } => refuse("frozen", e.to_string(), false),
            LedgerError::Early { .. } => refuse("early", e.to_string(), false),
            LedgerError::Excluded { .. } => refuse("excluded-payer", e.to_string(), false),
            LedgerError::SupplierExcluded { .. } => {
                refuse("excluded-supplier", e.to_string(), false)
            }
            LedgerError::Unfunded(_) => refuse("unfunded", e.to_string(), true),
            LedgerError::Session(_) => refuse("bad-open", e.to_string(), true),
            LedgerError::UnknownClaim(_) => refuse("unknown-claim", e.to_string(), false),
            LedgerError::Claim(c) => refuse(claim_reason(c), e.to_string(), true),
            LedgerError::Proof(p) => refuse(proof_reason(p), e.to_string(), true),
            LedgerError::Transfer(_) => refuse("bad-transfer", e.to_string(), true),
            LedgerError::Withdraw(_) => refuse("bad-withdraw", e.to_string(), true),
            LedgerError::Evidence(_) => refuse("bad-evidence", e.to_string(), true),
        };
        let v = &Ed25519Verifier;
        let mut ledger = self.ledger.lock().expect("ledger lock");
        self.advance(&mut ledger, now_ms);
        let bytes = message
            .encode()
            .map_err(|e| refuse("oversized", e.to_string(), true))?;
        let mut publish = Vec::new();
        // A debit may be known by an announcement, a withdrawal and a claim: one that
        // came second is still stored under its own key once it verifies, or a peer
        // holding it would send it again in every anti-entropy round until its epoch
        // froze (its key never among this node's).
        let key = match &message.body {
            LedgerBody::Open(open) => {
                let key = log_key(b'o', open.epoch(&self.params), &open.body.debit_id());
                if ledger.apply_open(open, v).map_err(from_ledger)? == Applied::Duplicate {
                    if self.log.contains_key(&key).unwrap_or(true) {
                        return Ok(Ingested::Duplicate);
                    }
                    open.validate(&self.params, v)
                        .map_err(|e| from_ledger(LedgerError::Session(e)))?;
                }
                key
            }
            LedgerBody::Withdraw(proposal) => {
                let key = log_key(
                    b'w',
                    self.params.epoch_of(proposal.body.start_ms),
                    &proposal.body.debit_id(),
                );
                if ledger.apply_withdraw(proposal, v).map_err(from_ledger)? == Applied::Duplicate {
                    if self.log.contains_key(&key).unwrap_or(true) {
                        return Ok(Ingested::Duplicate);
                    }
                    proposal
                        .body
                        .check_keys(v)
                        .and_then(|()| {
                            proposal
                                .verify(&proposal.body.app, v)
                                .map_err(SessionError::Signature)
                        })
                        .map_err(|e| from_ledger(LedgerError::Session(e)))?;
                }
                key
            }
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
                    Applied::Pending | Applied::Settled | Applied::Void | Applied::Recorded => {}
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
                    .claim_by_root(&reveal.body.session_key, &reveal.body.root)
                    .cloned()
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

    pub(super) fn store(&self, key: &[u8], message: &LedgerMessage) {
        if let Ok(bytes) = message.encode() {
            if let Err(e) = self.log.insert(key, bytes) {
                warn!(%e, "cannot store a ledger message");
            }
        }
    }

    /// Ingests a message this node made, durably (flushed before it is gossiped), and
    /// returns what to gossip: it and its consequences.
    pub(super) fn own(&self, message: LedgerMessage, now_ms: u64) -> Vec<LedgerMessage> {
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

    /// The log keys of unfrozen epochs, by kind: what this node asks a peer to
    /// complete. At most [`MAX_SYNC_KEYS`] in all, shared fairly between the kinds
    /// (a kind with few keys leaves its share to the others), so a flood of one kind
    /// (claim spam) cannot crowd the proofs out of reconciliation.
    fn sync_keys_by_kind(&self) -> Vec<Vec<Vec<u8>>> {
        let frozen_before = self.ledger.lock().expect("ledger lock").frozen_before();
        let mut left = MAX_SYNC_KEYS;
        let mut counts: Vec<(usize, usize)> = SYNC_KINDS
            .iter()
            .enumerate()
            .map(|(i, kind)| {
                let start = log_key(*kind, frozen_before, &Digest::ZERO);
                let count = self
                    .log
                    .range(start..)
                    .keys()
                    .flatten()
                    .take_while(|k| k.first() == Some(kind))
                    .take(MAX_SYNC_KEYS)
                    .count();
                (count, i)
            })
            .collect();
        // Water-filling: the smallest kinds first, each up to an equal share of what
        // is left.
        counts.sort_unstable();
        let mut quota = vec![0; SYNC_KINDS.len()];
        for (n, (count, i)) in counts.iter().enumerate() {
            let share = left / (SYNC_KINDS.len() - n);
            quota[*i] = (*count).min(share);
            left -= quota[*i];
        }
        SYNC_KINDS
            .iter()
            .zip(quota)
            .map(|(kind, quota)| {
                let start = log_key(*kind, frozen_before, &Digest::ZERO);
                self.log
                    .range(start..)
                    .keys()
                    .flatten()
                    .take_while(|k| k.first() == Some(kind))
                    .take(quota)
                    .map(|k| k.to_vec())
                    .collect()
            })
            .collect()
    }

    /// The log keys of unfrozen epochs this node asks a peer to complete.
    pub fn sync_keys(&self) -> Vec<Vec<u8>> {
        self.sync_keys_by_kind().into_iter().flatten().collect()
    }

    /// The messages of unfrozen epochs that a peer holding `have` lacks, up to
    /// [`MAX_SYNC_BYTES`]: first up to an equal share of the bytes per kind, then
    /// whatever fits, each pass in log order (claims before their proofs).
    pub fn sync_answer(&self, have: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let have: std::collections::BTreeSet<&[u8]> = have.iter().map(Vec::as_slice).collect();
        let missing: Vec<Vec<(Vec<u8>, Vec<u8>)>> = self
            .sync_keys_by_kind()
            .into_iter()
            .map(|keys| {
                keys.into_iter()
                    .filter(|k| !have.contains(k.as_slice()))
                    .filter_map(|k| {
                        let value = self.log.get(&k).ok()??;
                        Some((k, value.to_vec()))
                    })
                    .collect()
            })
            .collect();
        let share = MAX_SYNC_BYTES / SYNC_KINDS.len();
        let mut taken = vec![0usize; missing.len()];
        let mut out = Vec::new();
        let mut bytes = 0;
        for pass in 0..2 {
            for (kind, messages) in missing.iter().enumerate() {
                let mut kind_bytes = 0;
                while let Some((_, value)) = messages.get(taken[kind]) {
                    let over_share = pass == 0 && kind_bytes + value.len() > share;
                    if over_share || bytes + value.len() > MAX_SYNC_BYTES {
                        break;
                    }
                    kind_bytes += value.len();
                    bytes += value.len();
                    out.push(value.clone());
                    taken[kind] += 1;
                }
            }
        }
        out
    }
}

/// The message kinds of the log, in the order a replay and a sync answer apply them.
pub(super) const SYNC_KINDS: [u8; 7] = [b'c', b'e', b'o', b'p', b'r', b't', b'w'];

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
