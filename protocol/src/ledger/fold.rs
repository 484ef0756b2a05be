//! The fold: balances from the checkpoint and the unfrozen messages, epoch by epoch.
//!
//! Per epoch, every debit is judged on its own: void if its payer is excluded by then,
//! funded if its slot ends within the payer's credit line `H + 1` epochs back (a final
//! line, the same on every node), unfunded otherwise. A funded transfer moves its
//! amount; a funded session pays its settled claims from its escrow, in claim-id order
//! and never beyond the escrow, and hands the rest back to the app's line. Debits never
//! compete with each other, so the result is independent of order and of whatever else
//! a payer signs. Amounts are u128 and every sum is bounded by the genesis total (at
//! most 4096 × u64::MAX < 2^76), so no step can overflow; the arithmetic is checked
//! anyway and an impossible overflow saturates instead of panicking.

use std::collections::BTreeMap;

use crate::messages::credit::CreditSlot;
use crate::messages::manifest::PPM;
use crate::{Digest, PublicKey};

use super::book::{ClaimStatus, Credit, DebitKind, DebitRecord, Ledger};
use super::checkpoint::{Checkpoint, FrozenAccount};
use crate::settlement::claim::VerifiedClaim;

/// The state after folding some epochs.
pub(super) struct Folded {
    pub accounts: BTreeMap<PublicKey, FrozenAccount>,
    /// Each folded claim's status and what it was paid.
    pub claims: BTreeMap<Digest, (ClaimStatus, u128)>,
}

/// How one debit was judged.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Funding {
    /// Its payer is excluded from its epoch on.
    Void,
    /// A zero escrow: its claims are recorded and paid nothing.
    Free,
    /// Its slot is within the payer's line.
    Funded,
    /// Its slot runs past the payer's line.
    Unfunded,
}

fn add(account: &mut FrozenAccount, amount: u128) {
    account.summary.balance = account.summary.balance.saturating_add(amount);
    account.summary.earned = account.summary.earned.saturating_add(amount);
}

fn pay(account: &mut FrozenAccount, amount: u128) {
    account.summary.balance = account.summary.balance.saturating_sub(amount);
    account.summary.spent = account.summary.spent.saturating_add(amount);
}

impl Ledger {
    /// Balances after every epoch before `until` (all epochs if `None`).
    pub(super) fn fold(&self, until: Option<u64>) -> Folded {
        let mut accounts = self.checkpoint.accounts.clone();
        let mut claims_out = BTreeMap::new();
        let in_range = |epoch: u64| until.is_none_or(|u| epoch < u);
        let payer_excluded = self.payer_exclusions();

        // Claims by the debit they are paid from, in claim-id order.
        let mut claims_of: BTreeMap<Digest, Vec<&VerifiedClaim>> = BTreeMap::new();
        for record in self.claims.values() {
            if in_range(record.verified.epoch) {
                claims_of
                    .entry(record.verified.debit)
                    .or_default()
                    .push(&record.verified);
            }
        }
        let mut by_epoch: BTreeMap<u64, Vec<(&Digest, &DebitRecord)>> = BTreeMap::new();
        for (id, debit) in &self.debits {
            if in_range(debit.epoch) {
                by_epoch.entry(debit.epoch).or_default().push((id, debit));
            }
        }
        for (epoch, debits) in by_epoch {
            let funding_epoch = self.funding_epoch(epoch);
            for (id, debit) in debits {
                let excluded_from = payer_excluded
                    .get(&debit.payer)
                    .copied()
                    .into_iter()
                    .chain(accounts.get(&debit.payer).and_then(|a| a.excluded_from))
                    .min();
                let line = accounts
                    .get(&debit.payer)
                    .map_or(0, |a| a.line_through(funding_epoch));
                let funding = if excluded_from.is_some_and(|from| from <= epoch) {
                    Funding::Void
                } else if debit.slot.amount == 0 {
                    Funding::Free
                } else if debit.slot.end().is_some_and(|end| u128::from(end) <= line) {
                    Funding::Funded
                } else {
                    Funding::Unfunded
                };
                match &debit.kind {
                    DebitKind::Transfer(to) => {
                        if funding == Funding::Funded {
                            let amount = u128::from(debit.slot.amount);
                            pay(accounts.entry(debit.payer).or_default(), amount);
                            let payee = accounts.entry(*to).or_default();
                            add(payee, amount);
                            let line = payee.line().saturating_add(amount);
                            payee.set_line(epoch, line);
                        }
                    }
                    DebitKind::Session => {
                        let claims = claims_of.remove(id).unwrap_or_default();
                        self.settle_session(
                            epoch,
                            debit,
                            funding,
                            &claims,
                            &mut accounts,
                            &mut claims_out,
                        );
                    }
                }
            }
        }
        Folded {
            accounts,
            claims: claims_out,
        }
    }

    /// Pays a session's settled claims from its escrow and hands the rest back.
    fn settle_session(
        &self,
        epoch: u64,
        debit: &DebitRecord,
        funding: Funding,
        claims: &[&VerifiedClaim],
        accounts: &mut BTreeMap<PublicKey, FrozenAccount>,
        out: &mut BTreeMap<Digest, (ClaimStatus, u128)>,
    ) {
        let escrow = match funding {
            Funding::Funded => u128::from(debit.slot.amount),
            _ => 0,
        };
        let mut left = escrow;
        for claim in claims {
            let record = &self.claims[&claim.id];
            let status = match funding {
                Funding::Void => ClaimStatus::Void,
                Funding::Unfunded => ClaimStatus::Unfunded,
                _ if self.supplier_excluded_at(&claim.supplier, claim.epoch) => ClaimStatus::Void,
                _ if !record.settled => ClaimStatus::Pending,
                _ => ClaimStatus::Settled,
            };
            let paid = if status == ClaimStatus::Settled {
                claim.value().min(left)
            } else {
                0
            };
            out.insert(claim.id, (status, paid));
            if paid == 0 {
                continue;
            }
            left -= paid;
            pay(accounts.entry(debit.payer).or_default(), paid);
            let payees = match claim.royalty {
                Some((source, ppm)) => vec![(source, ppm.min(PPM)), (claim.supplier, PPM)],
                None => vec![(claim.supplier, PPM)],
            };
            let mut rest = paid;
            for (i, (payee, ppm)) in payees.iter().enumerate() {
                // The last payee (the supplier) takes the rounding rest.
                let share = if i + 1 == payees.len() {
                    rest
                } else {
                    paid * u128::from(*ppm) / u128::from(PPM)
                };
                rest -= share;
                let account = accounts.entry(*payee).or_default();
                add(account, share);
                let line = account.line().saturating_add(share);
                account.set_line(epoch, line);
            }
        }
        if escrow > 0 {
            // What the claims did not take returns to the app's line in the session's
            // epoch (usable once that epoch's line funds debits, H + 1 epochs later).
            // The slot stays taken: the line grows by the refund instead.
            let app = accounts.entry(debit.payer).or_default();
            let line = app.line().saturating_add(left);
            app.set_line(epoch, line);
        }
    }

    /// Per payer, the epoch from which its debits are void because it committed one
    /// credit twice (see [`exclusion_epoch`]): from there on none of its debits moves
    /// credit, and what it holds stays locked, so it loses at least every escrow it
    /// could have been served against.
    /// How many epochs before the later of two clashing debits an exclusion reaches:
    /// `H − 2`, so that a debit dated now never reaches an epoch about to freeze.
    pub(super) fn exclusion_reach(&self) -> u64 {
        u64::from(self.params.freeze_horizon_epochs)
            .saturating_sub(2)
            .max(1)
    }

    pub(super) fn payer_exclusions(&self) -> BTreeMap<PublicKey, u64> {
        self.by_payer
            .keys()
            .filter_map(|payer| Some((*payer, self.payer_exclusion(payer)?)))
            .collect()
    }

    /// The epoch from which `payer` is excluded (by its unfrozen debits, or as the
    /// checkpoint says), if it is.
    pub(super) fn payer_exclusion(&self, payer: &PublicKey) -> Option<u64> {
        let frozen = self.checkpoint.accounts.get(payer);
        // `exclusion_epoch` over the payer's unfrozen debits, kept up to date as each
        // is stored (`payers`).
        let found = self.payers.excluded_from(payer);
        match (found, frozen.and_then(|a| a.excluded_from)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether a new debit of `payer` dated `epoch` on `slot` would move the epoch the
    /// payer is excluded from (`from`) earlier: some clash it joins counts from before
    /// `from` (see [`exclusion_epoch`]).
    pub(super) fn could_lower_exclusion(
        &self,
        payer: &PublicKey,
        epoch: u64,
        slot: &CreditSlot,
        from: u64,
    ) -> bool {
        self.payers
            .clash(
                payer,
                epoch,
                slot,
                self.frozen_top(payer),
                self.exclusion_reach(),
            )
            .is_some_and(|v| v < from)
    }

    /// Where `payer`'s frozen debits end.
    pub(super) fn frozen_top(&self, payer: &PublicKey) -> u64 {
        self.checkpoint
            .accounts
            .get(payer)
            .map_or(0, |a| a.slot_top)
    }

    /// Whether a new debit of `payer` dated `epoch` on `slot` would prove a double
    /// commitment against the debits this ledger knows (and why): what a supplier
    /// checks before it countersigns an escrow.
    pub fn slot_conflict(&self, payer: &PublicKey, epoch: u64, slot: CreditSlot) -> Option<String> {
        if slot.amount == 0 {
            return None;
        }
        let frozen_top = self.frozen_top(payer);
        if slot.start < frozen_top {
            return Some(format!(
                "the app's slot at {} lies below {frozen_top}, where its final debits end",
                slot.start
            ));
        }
        // The payer index finds any clash with a stored debit (`payers::PayerIndex::clash`);
        // one within an epoch whose slots overlap already it leaves out, but that payer
        // is excluded, which is a conflict too.
        let clash = self
            .payers
            .clash(payer, epoch, &slot, frozen_top, self.exclusion_reach());
        (clash.is_some() || self.payer_exclusion(payer).is_some()).then(|| {
            format!(
                "the app's slot [{}, +{}) of epoch {epoch} shares credit with another of its debits",
                slot.start, slot.amount
            )
        })
    }

    /// Whether `payer` is excluded for committing one credit twice (or dating a debit out
    /// of order): [`Ledger::credit`]'s `excluded` without folding the ledger, cheap
    /// enough for a supplier to ask at every ack.
    pub fn is_payer_excluded(&self, payer: &PublicKey) -> bool {
        self.payer_exclusion(payer).is_some()
    }

    /// What `payer` may commit in a debit dated `epoch`.
    pub fn credit(&self, payer: &PublicKey, epoch: u64) -> Credit {
        let funding = self.funding_epoch(epoch);
        let frozen = funding.is_none_or(|f| f < self.frozen_before);
        let line = if frozen {
            self.checkpoint
                .accounts
                .get(payer)
                .map_or(0, |a| a.line_through(funding))
        } else {
            let until = funding.map_or(0, |f| f + 1);
            self.fold(Some(until))
                .accounts
                .get(payer)
                .map_or(0, |a| a.line_through(funding))
        };
        let slot_top = self.frozen_top(payer).max(self.payers.top(payer));
        let excluded = self.payer_exclusion(payer).is_some();
        Credit {
            line,
            slot_top,
            excluded,
        }
    }

    /// Where a claim stands.
    pub fn claim_status(&self, id: &Digest) -> Option<ClaimStatus> {
        self.claims.get(id)?;
        self.fold(None).claims.get(id).map(|(status, _)| *status)
    }

    /// All claims in unfrozen epochs with their status and what they were paid.
    pub fn claims(&self) -> Vec<(&VerifiedClaim, ClaimStatus, u128)> {
        let folded = self.fold(None);
        self.claims
            .values()
            .map(|r| {
                let (status, paid) = folded
                    .claims
                    .get(&r.verified.id)
                    .copied()
                    .unwrap_or((ClaimStatus::Pending, 0));
                (&r.verified, status, paid)
            })
            .collect()
    }

    /// Advances the ledger's clock: epochs `e` with `e + H ≤ epoch_of(now)` freeze, fold
    /// into the checkpoint and their messages are dropped. Returns how many epochs froze.
    pub fn advance(&mut self, now_ms: u64) -> u64 {
        let current = self.params.epoch_of(now_ms);
        self.clock = Some(self.clock.map_or(current, |c| c.max(current)));
        // Epoch e is final once the clock reaches epoch e + H.
        let frozen_before =
            (current + 1).saturating_sub(u64::from(self.params.freeze_horizon_epochs));
        if frozen_before <= self.frozen_before {
            return 0;
        }
        let exclusions = self.payer_exclusions();
        let mut accounts = self.fold(Some(frozen_before)).accounts;
        // What later epochs need of the frozen ones: where each payer's slots end, who
        // is excluded, and the lines debits still look back to.
        for debit in self.debits.values().filter(|d| d.epoch < frozen_before) {
            // An excluded payer's debits dated from its exclusion on are stored or
            // refused by the order they came in (`check_payer`): counted, they would
            // give two honest ledgers different checkpoints. They move nothing anyway.
            if exclusions
                .get(&debit.payer)
                .is_some_and(|from| debit.epoch >= *from)
            {
                continue;
            }
            if let Some(end) = debit.slot.end().filter(|_| debit.slot.amount > 0) {
                let account = accounts.entry(debit.payer).or_default();
                account.slot_top = account.slot_top.max(end);
            }
        }
        for (payer, from) in exclusions {
            if from < frozen_before {
                let account = accounts.entry(payer).or_default();
                account.excluded_from = Some(account.excluded_from.map_or(from, |f| f.min(from)));
            }
        }
        let keep_from =
            frozen_before.saturating_sub(u64::from(self.params.freeze_horizon_epochs) + 2);
        for account in accounts.values_mut() {
            account.prune_lines(keep_from);
        }
        self.checkpoint = Checkpoint { accounts };
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
            let v = &record.verified;
            self.by_debit.remove(&(v.supplier, v.debit));
            self.by_root.remove(&(v.session_key, v.root));
        }
        self.debits.retain(|_, d| d.epoch >= frozen_before);
        let debits = &self.debits;
        self.by_payer.retain(|_, ids| {
            ids.retain(|id| debits.contains_key(id));
            !ids.is_empty()
        });
        // The index, over what is left and against the new frozen tops.
        let reach = self.exclusion_reach();
        let mut payers = super::payers::PayerIndex::default();
        for d in self.debits.values() {
            payers.insert(d.payer, d.epoch, &d.slot, self.frozen_top(&d.payer), reach);
        }
        self.payers = payers;
        froze
    }
}

/// The epoch from which a payer is excluded, given its debits `slots` (sorted by epoch,
/// then start) and where its frozen debits end (`frozen_top`): the least, over every
/// two debits that share credit, of `max(e1, e2 − reach)` for the pair's epochs
/// `e1 ≤ e2`. Two debits share credit when they overlap in one epoch, or when the
/// earlier one's slot ends above the later one's start (a payer numbers its slots in
/// the order it signs them); a debit below `frozen_top` shares credit with a frozen
/// one. The earlier epoch, because the payer chose both dates and could otherwise
/// backdate a second debit to void an honest one; but no further back than `reach`
/// epochs before the later debit, so a debit signed now cannot reach into an epoch
/// that is freezing (nodes that froze it and nodes that had not would disagree).
// The rule's statement over all of a payer's debits at once; the ledger keeps it one
// debit at a time (`payers::PayerIndex`), and the tests check that the two agree.
#[cfg_attr(not(test), allow(dead_code))]
pub(super) fn exclusion_epoch(
    frozen_top: u64,
    slots: &[(u64, CreditSlot)],
    reach: u64,
) -> Option<u64> {
    let end = |slot: &CreditSlot| slot.end().unwrap_or(u64::MAX);
    let mut found: Option<u64> = None;
    let mut note = |epoch: u64| found = Some(found.map_or(epoch, |f| f.min(epoch)));
    // Earlier epochs, each with the highest slot end of it and every epoch before it.
    let mut earlier: Vec<(u64, u64)> = Vec::new();
    let mut at = 0;
    while at < slots.len() {
        let epoch = slots[at].0;
        let floor = epoch.saturating_sub(reach);
        let mut top_here = 0u64;
        while at < slots.len() && slots[at].0 == epoch {
            let slot = slots[at].1;
            if slot.start < frozen_top {
                note(floor);
            }
            // The first earlier epoch whose debits reach above this slot's start.
            let first = earlier.partition_point(|(_, top)| *top <= slot.start);
            if let Some((e1, _)) = earlier.get(first) {
                note((*e1).max(floor));
            }
            // Sorted by start: a slot starting below this epoch's highest end so far
            // overlaps one of them.
            if slot.start < top_here {
                note(epoch);
            }
            top_here = top_here.max(end(&slot));
            at += 1;
        }
        let before = earlier.last().map_or(0, |(_, top)| *top);
        earlier.push((epoch, before.max(top_here)));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credit_committed_twice_is_found_at_the_earlier_epoch() {
        let s = CreditSlot::new;
        let e = |top, slots: &[(u64, CreditSlot)]| exclusion_epoch(top, slots, 100);
        assert_eq!(e(0, &[(1, s(0, 10)), (2, s(10, 5))]), None);
        // Overlap in one epoch.
        assert_eq!(e(0, &[(1, s(0, 10)), (1, s(5, 10))]), Some(1));
        // A later debit below an earlier one's end: from the earlier one's epoch.
        assert_eq!(
            e(0, &[(1, s(10, 10)), (2, s(30, 1)), (3, s(0, 5))]),
            Some(1)
        );
        // Below the frozen debits' end.
        assert_eq!(e(20, &[(4, s(19, 1))]), Some(0));
        // Adjacent slots share nothing.
        assert_eq!(e(10, &[(4, s(10, 1)), (4, s(11, 1))]), None);
        // No further back than the reach before the later debit.
        assert_eq!(
            exclusion_epoch(0, &[(1, s(0, 10)), (9, s(5, 1))], 3),
            Some(6)
        );
    }

    proptest::proptest! {
        /// The scan finds exactly the least, over every clashing pair, of the earlier
        /// epoch or the reach before the later one.
        #[test]
        fn the_scan_matches_every_pair(
            raw in proptest::collection::vec((0u64..6, 0u64..40, 1u64..8), 0..12),
            frozen_top in 0u64..10,
            reach in 1u64..4,
        ) {
            let mut slots: Vec<(u64, CreditSlot)> =
                raw.iter().map(|(e, s, a)| (*e, CreditSlot::new(*s, *a))).collect();
            slots.sort_by_key(|(e, s)| (*e, s.start));
            let mut expected: Option<u64> = None;
            let mut note = |e: u64| expected = Some(expected.map_or(e, |x| x.min(e)));
            for (i, (e1, a)) in slots.iter().enumerate() {
                if a.start < frozen_top {
                    note(e1.saturating_sub(reach));
                }
                for (e2, b) in &slots[i + 1..] {
                    let clash = if e1 == e2 { a.overlaps(b) } else { b.start < a.end().unwrap() };
                    if clash {
                        note((*e1).max(e2.saturating_sub(reach)));
                    }
                }
            }
            proptest::prop_assert_eq!(exclusion_epoch(frozen_top, &slots, reach), expected);
        }
    }
}
