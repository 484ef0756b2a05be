//! What a supplier may still serve of each session's escrow.
//!
//! A claim is paid at most its session's escrow, so work served past it is lost, and
//! so is part of what comes close to it: the claimed sum is the mined receipts'
//! (unbiased, but spread around what was served), and whatever of it lands above the
//! escrow is cut. A supplier therefore serves a session only up to its escrow less a
//! margin of three standard deviations of the mined sum (`3·√(τ·E) + τ` CUs for an
//! escrow of `E` CUs), where the cut costs it next to nothing. And since one session
//! may carry several streams at once, each stream reserves what it may bill when it
//! starts (its prompt and its whole output bound), so that streams running side by side
//! cannot each spend the same remainder.

use std::collections::HashMap;
use std::sync::Mutex;

use relaymesh_protocol::messages::session::SessionOpen;
use relaymesh_protocol::Digest;

/// CUs of a session's escrow a supplier serves at most: the escrow at the session's
/// price, less three standard deviations of the mined sum and one τ.
pub fn usable_cu(terms: &SessionOpen) -> u64 {
    let escrow_cu = terms.escrow.amount / terms.price_per_cu.max(1);
    let spread = ((terms.tau as f64) * (escrow_cu as f64)).sqrt() * 3.0;
    escrow_cu.saturating_sub(spread as u64 + terms.tau)
}

/// The CUs reserved by the running streams of each session.
#[derive(Default)]
pub struct EscrowBudgets {
    reserved: Mutex<HashMap<Digest, u64>>,
}

/// CUs reserved for one stream until dropped.
pub struct Reservation<'a> {
    budgets: &'a EscrowBudgets,
    session: Digest,
    /// CUs reserved.
    pub cu: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut reserved = self.budgets.reserved.lock().expect("budget lock");
        if let Some(r) = reserved.get_mut(&self.session) {
            *r = r.saturating_sub(self.cu);
            if *r == 0 {
                reserved.remove(&self.session);
            }
        }
    }
}

impl EscrowBudgets {
    /// Reserves up to `want` CUs of `session`'s escrow for a stream, of the `usable`
    /// CUs of which `spent` are acknowledged already (and what other streams hold is
    /// taken too); `None` if less than `min` is left.
    pub fn reserve(
        &self,
        session: Digest,
        usable: u64,
        spent: u64,
        min: u64,
        want: u64,
    ) -> Option<Reservation<'_>> {
        let mut reserved = self.reserved.lock().expect("budget lock");
        let held = reserved.get(&session).copied().unwrap_or(0);
        let left = usable.saturating_sub(spent).saturating_sub(held);
        let cu = want.min(left);
        if cu < min.max(1) {
            return None;
        }
        *reserved.entry(session).or_default() += cu;
        Some(Reservation {
            budgets: self,
            session,
            cu,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hole found by review: each stream of a session took the session's whole
    /// remaining escrow as its budget, so eight streams at once were served up to eight
    /// escrows and paid one. Failed before streams reserved their share.
    #[test]
    fn streams_side_by_side_share_one_escrow() {
        let budgets = EscrowBudgets::default();
        let s = Digest([1; 32]);
        let a = budgets.reserve(s, 10_000, 0, 100, 6_000).unwrap();
        let b = budgets.reserve(s, 10_000, 0, 100, 6_000).unwrap();
        assert_eq!((a.cu, b.cu), (6_000, 4_000));
        assert!(budgets.reserve(s, 10_000, 0, 100, 6_000).is_none());
        drop(a);
        // What the first stream spent is counted by then; its unspent rest is free.
        assert_eq!(
            budgets.reserve(s, 10_000, 2_500, 100, 9_000).unwrap().cu,
            3_500
        );
    }

    /// Hole found by review: a claim is paid at most its escrow, and a supplier that
    /// served right up to it lost whatever of the mined sum landed above (with the
    /// smallest escrow, a third of its pay on average). It now stops three standard
    /// deviations short, and the least escrow admitted is a session's worth of mined
    /// receipts: on average it is paid what it served.
    #[test]
    fn a_session_served_to_its_usable_escrow_is_paid_what_it_served() {
        use relaymesh_protocol::metering::threshold::{is_mined, mined_value};
        let mut terms = crate::testkit::terms_for_tests();
        terms.price_per_cu = 1;
        terms.tau = 1_600;
        terms.escrow.amount = 32 * 1_600; // the least a supplier admits (32 mined receipts)
        let usable = usable_cu(&terms);
        let weight = terms.tau / 16;
        let receipts = usable / weight;
        let (mut served, mut paid) = (0u128, 0u128);
        let mut n = 0u64;
        for _ in 0..4_000 {
            let mut mined = 0u64;
            for _ in 0..receipts {
                n += 1;
                let lottery = Digest(*blake3::hash(&n.to_be_bytes()).as_bytes());
                if is_mined(&lottery, weight, terms.tau) {
                    mined += mined_value(weight, terms.tau);
                }
            }
            served += u128::from(receipts * weight);
            paid += u128::from(mined.min(terms.escrow.amount));
        }
        let ratio = paid as f64 / served as f64;
        assert!(
            (ratio - 1.0).abs() < 0.02,
            "paid {ratio:.4} of what was served"
        );
    }

    #[test]
    fn the_usable_escrow_leaves_room_for_the_spread_of_the_mined_sum() {
        let mut terms = crate::testkit::terms_for_tests();
        terms.price_per_cu = 1;
        terms.tau = 100;
        terms.escrow.amount = 100 * 32;
        // 3·√(100·3200) + 100 = 1797.
        assert_eq!(usable_cu(&terms), 3_200 - 1_797);
    }
}
