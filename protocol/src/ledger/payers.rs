//! Each payer's debits of the unfrozen epochs, indexed so that a new debit's clashes
//! (the double commitments of `fold::exclusion_epoch`) are found without a scan of
//! every debit the payer has.
//!
//! The epoch a payer is excluded from is the least, over every clash among its debits,
//! of that clash's value, and over every debit below its frozen slots' top, of that
//! debit's floor (`fold::exclusion_epoch`). A least over pairs grows by one debit at a
//! time: the new debit's clashes with those stored, and its own floor. Those are found
//! per epoch from three numbers (the highest slot end, the lowest start, and whether
//! the epoch's slots are disjoint) and, in a disjoint epoch, the slot just below the new
//! one's end. So storing a debit, and asking whether a payer is excluded (a supplier
//! does at every ack), cost a step per unfrozen epoch and a logarithm, where they
//! rescanned and sorted all of the payer's debits (quadratic in a busy app's
//! sessions). Written here because the rule is the design's own.

use std::collections::BTreeMap;

use crate::messages::credit::CreditSlot;
use crate::PublicKey;

/// A slot's end, as the exclusion rule counts it (an overflowing slot reaches the top).
fn end(slot: &CreditSlot) -> u64 {
    slot.end().unwrap_or(u64::MAX)
}

/// One payer's slots of one epoch.
#[derive(Clone, Debug, Default)]
struct EpochSlots {
    /// Slot ends by start, while the epoch's slots are disjoint.
    by_start: BTreeMap<u64, u64>,
    /// Whether no two of its slots overlap. Once two do, the payer is excluded from
    /// this epoch at the latest, so no further clash within it can lower that.
    disjoint: bool,
    /// The highest end.
    top: u64,
    /// The lowest start.
    bottom: u64,
}

/// One payer.
#[derive(Clone, Debug, Default)]
struct Payer {
    epochs: BTreeMap<u64, EpochSlots>,
    /// The least clash value among its stored debits.
    excluded_from: Option<u64>,
    /// Where its slots end at the highest, as a payer numbers its next slot: an empty
    /// slot ends where it starts, an overflowing one is left out (it is never funded).
    slot_top: u64,
}

/// Every payer's debits of the unfrozen epochs (non-empty slots only).
#[derive(Clone, Debug, Default)]
pub(super) struct PayerIndex {
    payers: BTreeMap<PublicKey, Payer>,
}

impl PayerIndex {
    /// The least value a debit of `payer` dated `epoch` on `slot` adds to the payer's
    /// clashes, given where its frozen slots end (`frozen_top`) and how far back a
    /// clash reaches (`reach`): `None` if it clashes with nothing (or is empty). A
    /// clash within an epoch whose slots overlap already is left out: the payer is
    /// excluded from that epoch at the latest, so it could lower nothing.
    pub(super) fn clash(
        &self,
        payer: &PublicKey,
        epoch: u64,
        slot: &CreditSlot,
        frozen_top: u64,
        reach: u64,
    ) -> Option<u64> {
        if slot.amount == 0 {
            return None;
        }
        let floor = epoch.saturating_sub(reach);
        let (start, slot_end) = (slot.start, end(slot));
        let mut least: Option<u64> = None;
        let mut note = |v: u64| least = Some(least.map_or(v, |l| l.min(v)));
        if start < frozen_top {
            note(floor);
        }
        let Some(p) = self.payers.get(payer) else {
            return least;
        };
        for (e, slots) in &p.epochs {
            if *e < epoch {
                // An earlier debit ending above this start: the earlier epoch, no
                // further back than the reach.
                if slots.top > start {
                    note((*e).max(floor));
                }
            } else if *e > epoch {
                // A later debit starting below this end.
                if slots.bottom < slot_end {
                    note(epoch.max(e.saturating_sub(reach)));
                }
            } else if slots.disjoint && slots.top > start && slots.bottom < slot_end {
                // Disjoint slots sorted by start are sorted by end too: the last one
                // starting below this end reaches highest among them.
                let overlaps = slots
                    .by_start
                    .range(..slot_end)
                    .next_back()
                    .is_some_and(|(_, e)| *e > start);
                if overlaps {
                    note(epoch);
                }
            }
        }
        least
    }

    /// Stores a debit of `payer` (see [`Self::clash`] for `frozen_top` and `reach`).
    pub(super) fn insert(
        &mut self,
        payer: PublicKey,
        epoch: u64,
        slot: &CreditSlot,
        frozen_top: u64,
        reach: u64,
    ) {
        let p = self.payers.entry(payer).or_default();
        if let Some(end) = slot.end() {
            p.slot_top = p.slot_top.max(end);
        }
        if slot.amount == 0 {
            return;
        }
        let value = self.clash(&payer, epoch, slot, frozen_top, reach);
        let p = self.payers.entry(payer).or_default();
        if let Some(v) = value {
            p.excluded_from = Some(p.excluded_from.map_or(v, |f| f.min(v)));
        }
        let slots = p.epochs.entry(epoch).or_insert_with(|| EpochSlots {
            disjoint: true,
            bottom: u64::MAX,
            ..EpochSlots::default()
        });
        let slot_end = end(slot);
        if slots.disjoint {
            let overlaps = slots
                .by_start
                .range(..slot_end)
                .next_back()
                .is_some_and(|(_, e)| *e > slot.start);
            if overlaps {
                slots.disjoint = false;
                slots.by_start.clear();
            } else {
                slots.by_start.insert(slot.start, slot_end);
            }
        }
        slots.top = slots.top.max(slot_end);
        slots.bottom = slots.bottom.min(slot.start);
    }

    /// The epoch `payer` is excluded from by its stored debits, if it is.
    pub(super) fn excluded_from(&self, payer: &PublicKey) -> Option<u64> {
        self.payers.get(payer)?.excluded_from
    }

    /// Where `payer`'s stored slots end, at the highest (an empty slot ends where it
    /// starts; an overflowing one is left out).
    pub(super) fn top(&self, payer: &PublicKey) -> u64 {
        self.payers.get(payer).map_or(0, |p| p.slot_top)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Stored one by one in any order, the index finds the same exclusion as the
        /// rule's own statement over all the debits at once, and says of each new debit
        /// what it would add.
        #[test]
        fn the_index_agrees_with_the_rule(
            debits in proptest::collection::vec((0u64..6, 0u64..40, 0u64..12), 0..24),
            frozen_top in 0u64..8,
            reach in 1u64..4,
            // Near the top of the line, where slot ends overflow and saturate.
            high in proptest::bool::ANY,
        ) {
            let shift = if high { u64::MAX - 45 } else { 0 };
            let debits: Vec<(u64, u64, u64)> =
                debits.into_iter().map(|(e, s, a)| (e, s + shift, a)).collect();
            let frozen_top = frozen_top + shift;
            let payer = PublicKey([7; 32]);
            let mut index = PayerIndex::default();
            let mut stored: Vec<(u64, CreditSlot)> = Vec::new();
            let debits_empty_top = debits
                .iter()
                .filter(|(_, _, amount)| *amount == 0)
                .map(|(_, start, _)| *start)
                .max()
                .unwrap_or(0);
            for (epoch, start, amount) in debits {
                let slot = CreditSlot::new(start, amount);
                let before = index.excluded_from(&payer);
                let added = index.clash(&payer, epoch, &slot, frozen_top, reach);
                // Whether it shares credit with any stored debit, by brute force (what
                // `Ledger::slot_conflict` answers from `clash` and the exclusion).
                let e = |s: &CreditSlot| end(s);
                let shares = amount > 0
                    && (start < frozen_top
                        || stored.iter().any(|(d_epoch, d)| {
                            (*d_epoch == epoch && d.start < e(&slot) && start < e(d))
                                || (*d_epoch < epoch && start < e(d))
                                || (*d_epoch > epoch && d.start < e(&slot))
                        }));
                prop_assert!(added.is_none() || shares);
                prop_assert!(!shares || added.is_some() || before.is_some());
                index.insert(payer, epoch, &slot, frozen_top, reach);
                if amount > 0 {
                    stored.push((epoch, slot));
                }
                let mut sorted = stored.clone();
                sorted.sort_by_key(|(e, s)| (*e, s.start));
                let rule = super::super::fold::exclusion_epoch(frozen_top, &sorted, reach);
                prop_assert_eq!(index.excluded_from(&payer), rule);
                let expected = match (before, added) {
                    (Some(b), Some(a)) => Some(a.min(b)),
                    (b, a) => a.or(b),
                };
                prop_assert_eq!(index.excluded_from(&payer), expected);
            }
            let top = stored.iter().filter_map(|(_, s)| s.end()).max().unwrap_or(0);
            let empty_top = debits_empty_top;
            prop_assert_eq!(index.top(&payer), top.max(empty_top));
        }
    }
}
