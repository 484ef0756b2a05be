//! The ledger as a pure state machine: its balances are a function of the *set* of valid
//! signed messages it has applied (claims with their proofs, transfers, equivocation
//! evidence), never of the order or time they arrived in.
//!
//! Rules (written here: they are the design's own, no crate has them):
//! - credit comes from genesis, from serving (a settled claim moves the app's debit to
//!   the supplier and the model's Source) and from transfers; nothing else mints, so the
//!   total is always the genesis total;
//! - epochs are processed in order; within epoch `e`, each payer's debits (settled
//!   claims of sessions that started in `e`, transfers dated `e`) are scaled pro rata to
//!   the balance it carried in from epochs before `e`: `paid_i = ⌊d_i · min(1, B/D)⌋`,
//!   and each payee is credited exactly what was paid. A valid claim is never rejected
//!   for lack of balance, and opening sessions at many suppliers at once cannot overdraw;
//! - a supplier proven to equivocate is excluded: none of its claims in unfrozen epochs
//!   moves credit;
//! - epoch `e` freezes once the ledger's clock reaches epoch `e + H`; its results fold
//!   into a checkpoint and its messages are refused from then on.

mod book;

pub use book::{AccountSummary, Applied, ClaimStatus, Ledger, LedgerError};
