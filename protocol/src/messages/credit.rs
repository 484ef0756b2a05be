//! `CreditSlot`: the part of its credit line a payer commits to one debit.
//!
//! Every debit (a session's escrow, a transfer) names a slot `[start, start + amount)`
//! of its payer's *credit line*: everything the payer has ever been credited (genesis,
//! earnings, transfers in, escrow handed back) in epochs that are final. A payer
//! numbers its slots itself, in the order it signs them, so the ledger needs no global
//! order to know which debit a credit went to: a debit is funded when its slot ends
//! within the line, and two debits can only claim the same credit by naming
//! overlapping slots, which the payer's own signatures then prove (`ledger`).

use serde_tuple::{Deserialize_tuple, Serialize_tuple};

/// `[start, start + amount)` of the payer's credit line, in micro-credits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct CreditSlot {
    /// Where the slot starts on the payer's credit line.
    pub start: u64,
    /// How much it holds (a session's escrow, a transfer's amount); zero for a session
    /// in a mesh without credit.
    pub amount: u64,
}

impl CreditSlot {
    /// A slot.
    pub const fn new(start: u64, amount: u64) -> Self {
        Self { start, amount }
    }

    /// Where the slot ends, `None` if that overflows (such a slot is never funded).
    pub fn end(&self) -> Option<u64> {
        self.start.checked_add(self.amount)
    }

    /// Whether two slots share any credit (empty slots share none).
    pub fn overlaps(&self, other: &CreditSlot) -> bool {
        if self.amount == 0 || other.amount == 0 {
            return false;
        }
        let end = |s: &CreditSlot| u128::from(s.start) + u128::from(s.amount);
        u128::from(self.start) < end(other) && u128::from(other.start) < end(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_overlap_only_where_they_share_credit() {
        let a = CreditSlot::new(0, 10);
        assert!(a.overlaps(&CreditSlot::new(9, 1)));
        assert!(!a.overlaps(&CreditSlot::new(10, 5)));
        assert!(!a.overlaps(&CreditSlot::new(5, 0)));
        assert!(CreditSlot::new(u64::MAX, 1).end().is_none());
        assert!(CreditSlot::new(u64::MAX - 1, 5).overlaps(&CreditSlot::new(u64::MAX, 1)));
    }
}
