//! Credit on a node (`relaymesh_protocol::ledger` has the rules).
//!
//! - **The app** numbers every debit it signs (a session's escrow, a transfer) on its
//!   credit line: the next debit starts where the last one ended (or above every debit
//!   of its own the ledger knows), and that cursor is written and flushed (tree
//!   `credit`) *before* the debit is signed, so a restart never gives one credit to two
//!   debits, which the ledger would take as proof of a double commitment.
//! - **A supplier** countersigns a session only if its escrow is worth at least one
//!   mined receipt, is funded by the app's final credit line, and clashes with no debit
//!   of the app it knows; it then announces the session, so that a supplier offered
//!   the same credit next refuses it.

use relaymesh_protocol::identity::signed::Signed;
use relaymesh_protocol::messages::credit::CreditSlot;
use relaymesh_protocol::messages::ledger::{LedgerBody, LedgerMessage};
use relaymesh_protocol::messages::session::{SessionOpen, SessionProposal, SignedSessionOpen};
use relaymesh_protocol::messages::transfer::{SignedTransfer, Transfer};
use relaymesh_protocol::{Digest, PublicKey, PROTOCOL_VERSION};
use tracing::{debug, info};

use super::Settlement;

/// A new session's escrow takes this share of what the app may still commit: an app
/// talks to a few suppliers at once, and an escrow's unspent part comes back only once
/// its session's epoch is final (`H + 1 + s` epochs after)...
pub const SESSION_SHARE: u128 = 8;
/// ...and at most this many times the least escrow a supplier admits: a proposal the
/// supplier never countersigns leaves its slot unused for good, so what one refusal
/// (or a supplier that refuses on purpose) can cost the app stays small.
pub const SESSION_ESCROW_CAP: u64 = 64;

const CURSOR_KEY: &[u8] = b"next";
/// The time (unix ms) the last debit was dated: no debit is dated before it.
const DATED_KEY: &[u8] = b"dated";

/// What this node may commit in a new debit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Available {
    /// Its credit line for a debit dated now: everything it was given in final epochs.
    pub line: u128,
    /// Where its next debit starts on that line.
    pub next_slot: u64,
    /// What is left: `line - next_slot`.
    pub available: u128,
}

impl Settlement {
    fn stored(&self, key: &[u8]) -> u64 {
        self.credit
            .get(key)
            .ok()
            .flatten()
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0)
    }

    /// What this node may commit in a debit dated `epoch`.
    pub fn available(&self, epoch: u64) -> Result<Available, String> {
        let credit = self
            .ledger
            .lock()
            .expect("ledger lock")
            .credit(&self.me(), epoch);
        if credit.excluded {
            return Err(
                "this node's account gave one credit to two debits (two nodes with one key?) and can spend nothing any more"
                    .into(),
            );
        }
        let next_slot = self.stored(CURSOR_KEY).max(credit.slot_top);
        Ok(Available {
            line: credit.line,
            next_slot,
            available: credit.line.saturating_sub(u128::from(next_slot)),
        })
    }

    /// Dates and numbers the next debit, at `now_ms` or later: takes the next slot of
    /// this node's credit line, `want` micro-credits, or what is left if less but at
    /// least `min`, and returns it with the debit's time. Slots and dates are given
    /// under one lock and never go back (the ledger takes a later-numbered debit dated
    /// in an earlier epoch for a credit committed twice); both are flushed before this
    /// returns.
    pub fn take_slot(&self, now_ms: u64, min: u64, want: u64) -> Result<(CreditSlot, u64), String> {
        let _numbering = self.cursor.lock().expect("cursor lock");
        let dated = now_ms.max(self.stored(DATED_KEY));
        let epoch = self.params.epoch_of(dated);
        let available = self.available(epoch)?;
        let amount = u128::from(want).min(available.available);
        if amount < u128::from(min.max(1)) {
            return Err(format!(
                "insufficient credit: {} micro-credits are free on this node's credit line ({} committed of {}; credit received or handed back becomes spendable {} epochs after it arrives); {} are needed",
                available.available,
                available.next_slot,
                available.line,
                self.params.funding_lag_epochs(),
                min.max(1)
            ));
        }
        let slot = CreditSlot::new(available.next_slot, amount as u64);
        let next = slot.end().ok_or("the credit line is exhausted")?;
        let mut batch = sled::Batch::default();
        batch.insert(CURSOR_KEY, &next.to_be_bytes());
        batch.insert(DATED_KEY, &dated.to_be_bytes());
        self.credit
            .apply_batch(batch)
            .and_then(|_| self.credit.flush().map(drop))
            .map_err(|e| format!("cannot record the credit cursor: {e}"))?;
        Ok((slot, dated))
    }

    /// The escrow and start of a new session, at `now_ms` or later: in a mesh with
    /// credit, a share of what this node may still commit, and at least
    /// [`Self::min_escrow`]; in a mesh without credit, none.
    pub fn session_escrow(
        &self,
        now_ms: u64,
        price: u64,
        tau: u64,
    ) -> Result<(CreditSlot, u64), String> {
        if !self.params.has_credit() {
            return Ok((CreditSlot::default(), now_ms));
        }
        let min = self.min_escrow(price, tau);
        let epoch = self.params.epoch_of(now_ms);
        let cap = u128::from(min.saturating_mul(SESSION_ESCROW_CAP));
        let share = (self.available(epoch)?.available / SESSION_SHARE).min(cap);
        self.take_slot(now_ms, min, (share as u64).max(min))
    }

    /// The least escrow a supplier admits: the session the τ rule plans for
    /// (`tau_target_mined` mined receipts at `price × τ` each), so that the margin a
    /// supplier keeps below the escrow for the spread of the mined sum
    /// (`infer::escrow`) leaves most of it usable.
    pub fn min_escrow(&self, price: u64, tau: u64) -> u64 {
        price
            .saturating_mul(tau)
            .saturating_mul(u64::from(self.params.tau_target_mined.max(1)))
            .max(self.params.min_claim_value)
    }

    /// Whether this supplier countersigns a session on `terms`: in a mesh with credit,
    /// its escrow must hold at least one mined receipt, be funded by the app's final
    /// credit line, and clash with no debit of the app this node knows.
    pub fn admit_escrow(&self, terms: &SessionOpen) -> Result<(), String> {
        if !self.params.has_credit() {
            return Ok(());
        }
        let epoch = self.params.epoch_of(terms.start_ms);
        let escrow = terms.escrow;
        let min = self.min_escrow(terms.price_per_cu, terms.tau);
        if escrow.amount < min {
            return Err(format!(
                "insufficient credit: the session's escrow of {} micro-credits is below the {min} a session here needs",
                escrow.amount
            ));
        }
        let ledger = self.ledger.lock().expect("ledger lock");
        let credit = ledger.credit(&terms.app, epoch);
        if credit.excluded {
            return Err(format!(
                "app {} committed one credit twice and can spend nothing",
                terms.app.peer_id()
            ));
        }
        let end = escrow.end().map(u128::from);
        if end.is_none_or(|end| end > credit.line) {
            return Err(format!(
                "insufficient credit: the escrow [{}, +{}) runs past app {}'s credit line of {} micro-credits on this supplier's ledger",
                escrow.start,
                escrow.amount,
                terms.app.peer_id(),
                credit.line
            ));
        }
        if let Some(clash) = ledger.slot_conflict(&terms.app, epoch, escrow) {
            return Err(format!("the escrow is committed elsewhere: {clash}"));
        }
        Ok(())
    }

    /// Whether a session this supplier countersigned may go on (on a resumed request):
    /// its app has not been caught committing a credit twice since.
    pub fn admit_resume(&self, terms: &SessionOpen) -> Result<(), String> {
        if !self.params.has_credit() {
            return Ok(());
        }
        if self
            .ledger
            .lock()
            .expect("ledger lock")
            .is_payer_excluded(&terms.app)
        {
            return Err(format!(
                "app {} committed one credit twice and can spend nothing",
                terms.app.peer_id()
            ));
        }
        Ok(())
    }

    /// Announces a session this supplier countersigned: applied here and gossiped at
    /// once, so the mesh knows its escrow while it runs.
    pub fn announce(&self, open: &SignedSessionOpen, now_ms: u64) {
        let message = LedgerMessage::new(LedgerBody::Open(open.clone()));
        match self.ingest(message.clone(), now_ms) {
            Ok(_) => {
                if self.outbox.try_send(message).is_err() {
                    debug!("the announcement queue is full; the claim will carry the terms");
                }
            }
            Err(r) => debug!(reason = r.reason, detail = %r.detail, "own announcement refused"),
        }
    }

    /// Withdraws terms this app proposed and no supplier countersigned (refused, or no
    /// answer): recorded as a debit with no claims, the escrow comes back to this
    /// node's line when the epoch freezes, instead of being lost with its slot. Stored
    /// durably before it is gossiped. Free sessions (no escrow) need none.
    pub fn withdraw(&self, proposal: &SessionProposal, now_ms: u64) {
        if proposal.body.escrow.amount == 0 {
            return;
        }
        let message = LedgerMessage::new(LedgerBody::Withdraw(proposal.clone()));
        for message in self.own(message, now_ms) {
            if self.outbox.try_send(message).is_err() {
                debug!("the ledger gossip queue is full; anti-entropy will carry the withdrawal");
            }
        }
    }

    /// Signs a transfer of `amount` micro-credits to `to`, debited in the current epoch
    /// from the next slot of this node's credit line; returns it to gossip, or why it
    /// was refused.
    pub fn transfer(
        &self,
        to: PublicKey,
        amount: u64,
        now_ms: u64,
    ) -> Result<(Digest, Vec<LedgerMessage>), String> {
        if amount == 0 {
            return Err("the amount must be positive".into());
        }
        if self.params.genesis.is_empty() {
            return Err(format!(
                "mesh {} has no credit (its parameters allocate none at genesis), so balances are not enforced and there is nothing to transfer",
                self.params.name.as_str()
            ));
        }
        if to == self.me() {
            return Err("a transfer to yourself moves nothing".into());
        }
        let (slot, dated) = self.take_slot(now_ms, amount, amount)?;
        let epoch = self.params.epoch_of(dated);
        let transfer: SignedTransfer = Signed::sign(
            Transfer {
                version: PROTOCOL_VERSION,
                mesh_id: self.params.mesh_id(),
                from: self.me(),
                to,
                amount,
                epoch,
                slot_start: slot.start,
            },
            &self.key,
        );
        let id = transfer.id();
        let message = LedgerMessage::new(LedgerBody::Transfer(transfer));
        match self.ingest(message.clone(), now_ms) {
            Ok(_) => {
                let _ = self.log.flush();
                info!(to = %to.peer_id(), amount, slot = slot.start, "transfer signed");
                Ok((id, vec![message]))
            }
            Err(r) => Err(r.detail),
        }
    }
}
