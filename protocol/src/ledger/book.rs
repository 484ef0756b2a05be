//! The ledger's state and the fold that computes balances from it.

use std::collections::{BTreeMap, BTreeSet};

use crate::identity::verify::SignatureVerifier;
use crate::messages::claim::SignedClaim;
use crate::messages::equivocation::{EquivocationEvidence, EvidenceError};
use crate::messages::manifest::PPM;
use crate::messages::proof::Proof;
use crate::messages::transfer::SignedTransfer;
use crate::params::MeshParams;
use crate::settlement::claim::{verify_claim, ClaimError, VerifiedClaim};
use crate::settlement::proof::{verify_proof, ProofError};
use crate::{Digest, PublicKey};

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
    /// Invalid equivocation evidence.
    #[error("equivocation evidence: {0}")]
    Evidence(#[from] EvidenceError),
}

/// What applying a message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Already known; nothing changed.
    Duplicate,
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
    /// Proven; moves credit.
    Settled,
    /// Its supplier equivocated.
    Void,
}

/// One account's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccountSummary {
    /// Spendable micro-credits.
    pub balance: u128,
    /// Credited for serving, royalties and incoming transfers.
    pub earned: u128,
    /// Debited for sessions and outgoing transfers.
    pub spent: u128,
}

#[derive(Debug, Clone)]
struct ClaimRecord {
    claim: SignedClaim,
    verified: VerifiedClaim,
    settled: bool,
}

#[derive(Debug, Clone)]
struct TransferRecord {
    from: PublicKey,
    to: PublicKey,
    amount: u64,
    epoch: u64,
}

/// One debit and where it goes.
struct Debit {
    payer: PublicKey,
    amount: u128,
    /// (payee, share in ppm of the paid amount); the last payee takes the rounding rest.
    payees: Vec<(PublicKey, u32)>,
}

/// The ledger of one mesh.
#[derive(Debug, Clone)]
pub struct Ledger {
    params: MeshParams,
    mesh_id: Digest,
    /// Epochs before this are final and folded into `checkpoint`.
    frozen_before: u64,
    checkpoint: BTreeMap<PublicKey, AccountSummary>,
    claims: BTreeMap<Digest, ClaimRecord>,
    by_session: BTreeMap<(PublicKey, Digest), BTreeSet<Digest>>,
    transfers: BTreeMap<Digest, TransferRecord>,
    excluded: BTreeMap<PublicKey, EquivocationEvidence>,
}

impl Ledger {
    /// A ledger holding only the genesis allocations.
    pub fn new(params: MeshParams) -> Self {
        let checkpoint = params
            .genesis
            .iter()
            .map(|a| {
                (
                    a.account,
                    AccountSummary {
                        balance: u128::from(a.amount),
                        ..Default::default()
                    },
                )
            })
            .collect();
        Self {
            mesh_id: params.mesh_id(),
            params,
            frozen_before: 0,
            checkpoint,
            claims: BTreeMap::new(),
            by_session: BTreeMap::new(),
            transfers: BTreeMap::new(),
            excluded: BTreeMap::new(),
        }
    }

    /// The mesh parameters.
    pub fn params(&self) -> &MeshParams {
        &self.params
    }

    /// First epoch that is not frozen.
    pub fn frozen_before(&self) -> u64 {
        self.frozen_before
    }

    fn check_open(&self, epoch: u64) -> Result<(), LedgerError> {
        if epoch < self.frozen_before {
            return Err(LedgerError::Frozen {
                epoch,
                frozen_before: self.frozen_before,
            });
        }
        Ok(())
    }

    /// Applies a claim. A second, different claim by the same supplier for the same
    /// session produces equivocation evidence.
    pub fn apply_claim(
        &mut self,
        claim: SignedClaim,
        verifier: &impl SignatureVerifier,
    ) -> Result<Applied, LedgerError> {
        let verified = verify_claim(&claim, &self.params, verifier)?;
        self.check_open(verified.epoch)?;
        if self.claims.contains_key(&verified.id) {
            return Ok(Applied::Duplicate);
        }
        let supplier = verified.supplier;
        let slot = self
            .by_session
            .entry((supplier, verified.session_key))
            .or_default();
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
            self.excluded
                .entry(supplier)
                .or_insert_with(|| evidence.clone());
            return Ok(Applied::Equivocation(Box::new(evidence)));
        }
        if self.excluded.contains_key(&supplier) {
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
        let supplier = record.verified.supplier;
        self.claims.get_mut(&proof.claim).expect("present").settled = true;
        if self.excluded.contains_key(&supplier) {
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
        transfer
            .verify(&body.from, verifier)
            .map_err(|e| LedgerError::Transfer(e.to_string()))?;
        self.check_open(body.epoch)?;
        let id = transfer.id();
        if self.transfers.contains_key(&id) {
            return Ok(Applied::Duplicate);
        }
        self.transfers.insert(
            id,
            TransferRecord {
                from: body.from,
                to: body.to,
                amount: body.amount,
                epoch: body.epoch,
            },
        );
        Ok(Applied::Settled)
    }

    /// Applies gossiped equivocation evidence: the supplier is excluded.
    pub fn apply_evidence(
        &mut self,
        evidence: EquivocationEvidence,
        verifier: &impl SignatureVerifier,
    ) -> Result<Applied, LedgerError> {
        let supplier = evidence.verify(verifier)?;
        if self.excluded.contains_key(&supplier) {
            return Ok(Applied::Duplicate);
        }
        self.excluded.insert(supplier, evidence);
        Ok(Applied::Settled)
    }

    /// Whether a supplier is excluded for equivocation.
    pub fn is_excluded(&self, supplier: &PublicKey) -> bool {
        self.excluded.contains_key(supplier)
    }

    /// Where a claim stands.
    pub fn claim_status(&self, id: &Digest) -> Option<ClaimStatus> {
        let record = self.claims.get(id)?;
        Some(if self.excluded.contains_key(&record.verified.supplier) {
            ClaimStatus::Void
        } else if record.settled {
            ClaimStatus::Settled
        } else {
            ClaimStatus::Pending
        })
    }

    /// A claim in an unfrozen epoch, as signed.
    pub fn claim(&self, id: &Digest) -> Option<&SignedClaim> {
        self.claims.get(id).map(|r| &r.claim)
    }

    /// All claims in unfrozen epochs with their status.
    pub fn claims(&self) -> impl Iterator<Item = (&VerifiedClaim, ClaimStatus)> {
        self.claims.values().map(|r| {
            (
                &r.verified,
                self.claim_status(&r.verified.id).expect("present"),
            )
        })
    }

    /// Advances the ledger's clock: epochs `e` with `e + H ≤ epoch_of(now)` freeze, fold into
    /// the checkpoint and their messages are dropped. Returns how many epochs froze.
    pub fn advance(&mut self, now_ms: u64) -> u64 {
        let current = self.params.epoch_of(now_ms);
        // Epoch e is final once the clock reaches epoch e + H.
        let frozen_before =
            (current + 1).saturating_sub(u64::from(self.params.freeze_horizon_epochs));
        if frozen_before <= self.frozen_before {
            return 0;
        }
        self.checkpoint = self.fold(Some(frozen_before));
        let froze = frozen_before - self.frozen_before;
        self.frozen_before = frozen_before;
        let old: Vec<Digest> = self
            .claims
            .values()
            .filter(|r| r.verified.epoch < frozen_before)
            .map(|r| r.verified.id)
            .collect();
        for id in old {
            let record = self.claims.remove(&id).expect("present");
            self.by_session
                .remove(&(record.verified.supplier, record.verified.session_key));
        }
        self.transfers.retain(|_, t| t.epoch >= frozen_before);
        froze
    }

    /// Every account's totals.
    pub fn accounts(&self) -> BTreeMap<PublicKey, AccountSummary> {
        self.fold(None)
    }

    /// One account's totals.
    pub fn account(&self, key: &PublicKey) -> AccountSummary {
        self.accounts().get(key).copied().unwrap_or_default()
    }

    /// Sum of all balances; always the genesis total.
    pub fn total_balance(&self) -> u128 {
        self.accounts().values().map(|a| a.balance).sum()
    }

    fn debits_by_epoch(&self, until: Option<u64>) -> BTreeMap<u64, Vec<Debit>> {
        let in_range = |epoch: u64| until.is_none_or(|u| epoch < u);
        let mut epochs: BTreeMap<u64, Vec<Debit>> = BTreeMap::new();
        for record in self.claims.values() {
            let v = &record.verified;
            if !record.settled || self.excluded.contains_key(&v.supplier) || !in_range(v.epoch) {
                continue;
            }
            let payees = match v.royalty {
                Some((source, ppm)) => vec![(source, ppm), (v.supplier, PPM - ppm.min(PPM))],
                None => vec![(v.supplier, PPM)],
            };
            epochs.entry(v.epoch).or_default().push(Debit {
                payer: v.app,
                amount: v.value(),
                payees,
            });
        }
        for t in self.transfers.values() {
            if in_range(t.epoch) {
                epochs.entry(t.epoch).or_default().push(Debit {
                    payer: t.from,
                    amount: u128::from(t.amount),
                    payees: vec![(t.to, PPM)],
                });
            }
        }
        epochs
    }

    /// Balances after every epoch before `until` (all epochs if `None`).
    fn fold(&self, until: Option<u64>) -> BTreeMap<PublicKey, AccountSummary> {
        let mut accounts = self.checkpoint.clone();
        for debits in self.debits_by_epoch(until).values() {
            let mut totals: BTreeMap<PublicKey, u128> = BTreeMap::new();
            for d in debits {
                *totals.entry(d.payer).or_default() += d.amount;
            }
            // Balances carried in, read before this epoch's own movements.
            let carried: BTreeMap<PublicKey, u128> = totals
                .keys()
                .map(|p| (*p, accounts.get(p).map_or(0, |a| a.balance)))
                .collect();
            for d in debits {
                let total = totals[&d.payer];
                let available = carried[&d.payer];
                let paid = if total <= available {
                    d.amount
                } else {
                    scale(d.amount, available, total)
                };
                if paid == 0 {
                    continue;
                }
                let payer = accounts.entry(d.payer).or_default();
                payer.balance -= paid;
                payer.spent += paid;
                let mut rest = paid;
                for (i, (payee, ppm)) in d.payees.iter().enumerate() {
                    let share = if i + 1 == d.payees.len() {
                        rest
                    } else {
                        scale(paid, u128::from(*ppm), u128::from(PPM))
                    };
                    rest -= share;
                    let account = accounts.entry(*payee).or_default();
                    account.balance += share;
                    account.earned += share;
                }
            }
        }
        accounts
    }
}

/// `⌊a · b / c⌋` exactly, for `b ≤ c` (so the result fits): a 256-bit product and
/// a shift-subtract division. Not a hot path; exactness is what keeps every node's
/// ledger identical.
fn scale(a: u128, b: u128, c: u128) -> u128 {
    debug_assert!(b <= c && c > 0);
    let (hi, lo) = mul_wide(a, b);
    if hi == 0 {
        return lo / c;
    }
    let mut remainder: u128 = 0;
    let mut quotient: u128 = 0;
    for i in (0..256u32).rev() {
        let bit = if i >= 128 {
            (hi >> (i - 128)) & 1
        } else {
            (lo >> i) & 1
        };
        let carry = remainder >> 127;
        remainder = (remainder << 1) | bit;
        if carry == 1 || remainder >= c {
            remainder = remainder.wrapping_sub(c);
            if i < 128 {
                quotient |= 1 << i;
            }
        }
    }
    quotient
}

/// The 256-bit product of two u128s as (high, low) halves.
fn mul_wide(a: u128, b: u128) -> (u128, u128) {
    const MASK: u128 = u64::MAX as u128;
    let (a1, a0) = (a >> 64, a & MASK);
    let (b1, b0) = (b >> 64, b & MASK);
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 64) + (p01 & MASK) + (p10 & MASK);
    let lo = (p00 & MASK) | ((mid & MASK) << 64);
    let hi = p11 + (p01 >> 64) + (p10 >> 64) + (mid >> 64);
    (hi, lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_is_exact_beyond_128_bits() {
        assert_eq!(scale(10, 3, 4), 7);
        let big = u128::MAX / 3;
        // big · (2^100) / (2^101) = big / 2
        assert_eq!(scale(big, 1 << 100, 1 << 101), big / 2);
        assert_eq!(scale(u128::MAX, u128::MAX - 1, u128::MAX), u128::MAX - 1);
    }
}
