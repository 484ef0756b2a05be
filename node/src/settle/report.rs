//! What the API and the CLI show of the ledger.

use std::collections::BTreeMap;

use relaymesh_protocol::ledger::ClaimStatus;
use relaymesh_protocol::PublicKey;

use super::*;

/// One account as the API shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AccountRow {
    /// The account's peer id.
    pub peer_id: String,
    /// Micro-credits held (escrow of running sessions included).
    pub balance: u128,
    /// Credited for serving, royalties and incoming transfers.
    pub earned: u128,
    /// Debited for sessions and outgoing transfers.
    pub spent: u128,
}

/// Claims and proofs refused that [`Settlement::refused`] keeps (the newest).
pub const REFUSED_KEPT: usize = 32;

/// A claim or proof this node's ledger refused, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RefusedRow {
    /// When, unix ms.
    pub at_ms: u64,
    /// `claim` or `proof`.
    pub kind: &'static str,
    /// The reason's name, as counted in `relaymesh_ledger_messages_total`.
    pub reason: &'static str,
    /// The ledger's words.
    pub detail: String,
    /// The supplier a refused claim names: not verified (its own signature may be
    /// what failed), so never proof of who sent it.
    pub supplier: Option<String>,
}

/// One claim as the API shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ClaimRow {
    /// Claim id (hex).
    pub id: String,
    /// Session key (hex).
    pub session: String,
    /// The supplier's peer id.
    pub supplier: String,
    /// The app's peer id.
    pub app: String,
    /// Epoch of the session's start.
    pub epoch: u64,
    /// CUs claimed.
    pub sum: u64,
    /// Mined receipts claimed.
    pub count: u64,
    /// Micro-credits per CU.
    pub price_per_cu: u64,
    /// `sum × price`.
    pub value: u128,
    /// What it was paid from its session's escrow (at most the escrow; 0 until settled).
    pub paid: u128,
    /// The session's escrow.
    pub escrow: u64,
    /// The model Source credited a royalty, if any.
    pub source: Option<String>,
    /// Its royalty, ppm.
    pub royalty_ppm: Option<u32>,
    /// `pending`, `settled`, `void` (its supplier equivocated, or its app committed a
    /// credit twice) or `unfunded` (its escrow is beyond the app's credit line).
    pub status: &'static str,
    /// Whether the app's reveal is known.
    pub revealed: bool,
}

/// What `GET /relaymesh/v1/ledger` reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LedgerReport {
    /// This node's peer id.
    pub peer_id: String,
    /// Its account.
    pub me: AccountRow,
    /// The current epoch.
    pub epoch: u64,
    /// Epochs before this are final.
    pub frozen_before: u64,
    /// Epoch length, ms.
    pub epoch_ms: u64,
    /// Whether sessions need credit (the mesh has genesis allocations).
    pub credit_enforced: bool,
    /// Sum of all balances (always the genesis total).
    pub total_balance: u128,
    /// Claims by status.
    pub claims_pending: usize,
    /// Settled claims.
    pub claims_settled: usize,
    /// Void claims (their supplier equivocated, or their app committed a credit twice).
    pub claims_void: usize,
    /// Claims whose session's escrow the app's credit line does not cover.
    pub claims_unfunded: usize,
    /// Suppliers excluded for equivocation.
    pub excluded: Vec<String>,
    /// Every account.
    pub accounts: Vec<AccountRow>,
    /// What this node may still commit (escrows, transfers); `None` once it committed
    /// a credit twice.
    pub credit: Option<super::credit::Available>,
    /// Epochs after which credit received becomes spendable (`H + 1` and the skew).
    pub spendable_after_epochs: u64,
    /// This node's clock against its peers', and its frozen checkpoint's agreement.
    pub clock: super::ClockReport,
    /// Digest of the frozen epochs' checkpoint (hex): equal on nodes that froze the
    /// same messages.
    pub frozen_digest: String,
}

impl Settlement {
    /// One account's totals.
    pub fn account(&self, key: &PublicKey) -> AccountRow {
        account_row(key, self.ledger.lock().expect("ledger lock").account(key))
    }

    /// The ledger's summary.
    pub fn report(&self, now_ms: u64) -> LedgerReport {
        let mut ledger = self.ledger.lock().expect("ledger lock");
        self.advance(&mut ledger, now_ms);
        // One fold of the ledger gives every figure below.
        let all = ledger.accounts();
        let total_balance = all.values().map(|a| a.balance).sum();
        let me = self.me();
        let mine = account_row(&me, all.get(&me).copied().unwrap_or_default());
        let accounts: Vec<AccountRow> = all.iter().map(|(k, a)| account_row(k, *a)).collect();
        let claims = ledger.claims();
        let count = |status| claims.iter().filter(|(_, s, _)| *s == status).count();
        let excluded: Vec<String> = ledger.excluded_suppliers().map(|s| s.peer_id()).collect();
        let report = LedgerReport {
            peer_id: me.peer_id(),
            me: mine,
            epoch: self.params.epoch_of(now_ms),
            frozen_before: ledger.frozen_before(),
            epoch_ms: self.params.epoch_ms,
            credit_enforced: !self.params.genesis.is_empty(),
            total_balance,
            claims_pending: count(ClaimStatus::Pending),
            claims_settled: count(ClaimStatus::Settled),
            claims_void: count(ClaimStatus::Void),
            claims_unfunded: count(ClaimStatus::Unfunded),
            excluded,
            accounts,
            credit: None,
            spendable_after_epochs: self.params.funding_lag_epochs(),
            clock: self.clock.report(),
            frozen_digest: self.frozen_digest().1.to_hex(),
        };
        drop(claims);
        drop(ledger);
        LedgerReport {
            credit: self.available(self.params.epoch_of(now_ms)).ok(),
            ..report
        }
    }

    /// The last [`REFUSED_KEPT`] claims and proofs refused here, oldest first.
    pub fn refused(&self) -> Vec<RefusedRow> {
        self.refused
            .lock()
            .expect("refused lock")
            .iter()
            .cloned()
            .collect()
    }

    /// Keeps `row`, forgetting the oldest past [`REFUSED_KEPT`].
    pub(super) fn note_refused(&self, row: RefusedRow) {
        let mut rows = self.refused.lock().expect("refused lock");
        if rows.len() >= REFUSED_KEPT {
            rows.pop_front();
        }
        rows.push_back(row);
    }

    /// Every claim of unfrozen epochs.
    pub fn claims(&self) -> Vec<ClaimRow> {
        let ledger = self.ledger.lock().expect("ledger lock");
        ledger
            .claims()
            .into_iter()
            .map(|(c, status, paid)| ClaimRow {
                id: c.id.to_hex(),
                session: c.session_key.to_hex(),
                supplier: c.supplier.peer_id(),
                app: c.app.peer_id(),
                epoch: c.epoch,
                sum: c.sum,
                count: c.count,
                price_per_cu: c.price_per_cu,
                value: c.value(),
                paid,
                escrow: c.escrow.amount,
                source: c.royalty.map(|(s, _)| s.peer_id()),
                royalty_ppm: c.royalty.map(|(_, ppm)| ppm),
                status: match status {
                    ClaimStatus::Pending => "pending",
                    ClaimStatus::Settled => "settled",
                    ClaimStatus::Void => "void",
                    ClaimStatus::Unfunded => "unfunded",
                },
                revealed: self
                    .log
                    .contains_key(log_key(b'r', c.epoch, &c.id))
                    .unwrap_or(false),
            })
            .collect()
    }
}

fn account_row(key: &PublicKey, a: relaymesh_protocol::ledger::AccountSummary) -> AccountRow {
    AccountRow {
        peer_id: key.peer_id(),
        balance: a.balance,
        earned: a.earned,
        spent: a.spent,
    }
}

/// Balances by peer id, for tests and tools.
pub fn balances(report: &LedgerReport) -> BTreeMap<String, u128> {
    report
        .accounts
        .iter()
        .map(|a| (a.peer_id.clone(), a.balance))
        .collect()
}
