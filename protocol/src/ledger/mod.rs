//! The ledger as a pure state machine: its balances are a function of the *set* of valid
//! signed messages it has applied (session announcements, claims with their proofs,
//! transfers, equivocation evidence), never of the order or time they arrived in.
//!
//! Rules (written here: they are the design's own, no crate has them):
//! - credit comes from genesis, from serving (a settled claim moves credit from the
//!   app's escrow to the supplier and the model's Source) and from transfers; nothing
//!   else mints, so the total is always the genesis total;
//! - every debit (a session's escrow, a transfer) names a slot of its payer's **credit
//!   line** (`messages::credit`): all the credit the payer was given in epochs that
//!   were final `H + 1` epochs before the debit's own. A debit is *funded* when its slot
//!   ends within that line; an unfunded debit moves nothing. A session's claims are
//!   paid from its escrow alone (in claim-id order, up to the escrow), and what is left
//!   returns to the app's line in the session's epoch. So one app's debits never
//!   compete: a supplier that checked the escrow when it countersigned is paid however
//!   much else the app signs, and backdating a debit only makes it harder to fund;
//! - a payer numbers its slots in the order it signs them, so two of its debits that
//!   overlap (in one epoch), or a later one starting below an earlier one's end, prove
//!   that it committed one credit twice: the payer is excluded from the later debit's
//!   epoch on (none of its debits from then on moves credit, and its balance stays
//!   where it is);
//! - a supplier proven to equivocate is excluded from its session's epoch on: none of
//!   its claims from then on moves credit;
//! - epoch `e` freezes once the ledger's clock reaches epoch `e + H`; its results fold
//!   into a checkpoint and its messages are refused from then on. Messages dated past
//!   the clock (with the mesh's skew) wait: they are refused as early, not as invalid.

mod book;
mod checkpoint;
mod fold;
mod payers;

pub use book::{Applied, ClaimStatus, Credit, Ledger, LedgerError};
pub use checkpoint::{AccountSummary, Checkpoint, LedgerSnapshot};
