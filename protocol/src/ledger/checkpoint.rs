//! What the ledger keeps of frozen epochs: per account its totals, its credit line over
//! the last few frozen epochs (debits look `H + 1` epochs back), the highest slot its
//! frozen debits reached and whether it is excluded as a payer. Messages of frozen
//! epochs are dropped; this is all that later epochs need of them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::PublicKey;

/// One account's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountSummary {
    /// Micro-credits it holds: genesis, plus what it earned, less what it paid. Escrow
    /// not yet paid out is still the app's (but spendable only once refunded).
    pub balance: u128,
    /// Credited for serving, royalties and incoming transfers.
    pub earned: u128,
    /// Debited for sessions (what their claims were paid) and outgoing transfers.
    pub spent: u128,
}

/// One account as the frozen epochs left it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FrozenAccount {
    pub summary: AccountSummary,
    /// Credit line at the end of each recent frozen epoch in which it changed.
    pub lines: BTreeMap<u64, u128>,
    /// Credit line before the first epoch in `lines` (genesis at first).
    pub base_line: u128,
    /// Highest slot end among the account's debits in frozen epochs.
    pub slot_top: u64,
    /// The epoch from which its debits are void: it committed one credit twice.
    pub excluded_from: Option<u64>,
}

impl FrozenAccount {
    /// The credit line at the end of epoch `epoch` (`None`: before epoch 0, genesis).
    pub fn line_through(&self, epoch: Option<u64>) -> u128 {
        match epoch {
            None => self.genesis_line(),
            Some(epoch) => self
                .lines
                .range(..=epoch)
                .next_back()
                .map_or(self.base_line, |(_, line)| *line),
        }
    }

    /// The line before any recorded epoch: the base, when no history was pruned into
    /// it, is the genesis allocation.
    fn genesis_line(&self) -> u128 {
        self.base_line
    }

    /// The most recent line.
    pub fn line(&self) -> u128 {
        self.lines
            .last_key_value()
            .map_or(self.base_line, |(_, line)| *line)
    }

    /// Records the line at the end of `epoch`, if it changed.
    pub fn set_line(&mut self, epoch: u64, line: u128) {
        if line != self.line() {
            self.lines.insert(epoch, line);
        }
    }

    /// Forgets lines of epochs before `keep_from` (folding the last of them into the
    /// base): no debit looks that far back any more.
    pub fn prune_lines(&mut self, keep_from: u64) {
        let old: Vec<u64> = self.lines.range(..keep_from).map(|(e, _)| *e).collect();
        if let Some(last) = old.last() {
            self.base_line = self.lines[last];
        }
        for epoch in old {
            self.lines.remove(&epoch);
        }
    }
}

/// The final results of every frozen epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub(crate) accounts: BTreeMap<PublicKey, FrozenAccount>,
}

/// Everything a ledger keeps of its frozen epochs, to be stored so that their messages
/// can be dropped (compaction): the checkpoint, where it ends, and the suppliers
/// excluded for equivocation. Two nodes that froze the same messages hold equal
/// snapshots, hence equal [`LedgerSnapshot::digest`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerSnapshot {
    /// Epochs before this are frozen.
    pub frozen_before: u64,
    /// Their results.
    pub checkpoint: Checkpoint,
    /// Suppliers excluded for equivocation, the epoch from which, and the evidence.
    pub excluded: Vec<(
        PublicKey,
        u64,
        crate::messages::equivocation::EquivocationEvidence,
    )>,
}

impl LedgerSnapshot {
    /// A hash of the frozen state, for comparing it with peers': the checkpoint, where
    /// it ends, and who is excluded from which epoch (which decides the future too);
    /// not the evidence itself.
    pub fn digest(&self) -> crate::Digest {
        let excluded: Vec<(PublicKey, u64)> =
            self.excluded.iter().map(|(k, e, _)| (*k, *e)).collect();
        let mut bytes = Vec::new();
        ciborium::into_writer(
            &(self.frozen_before, &self.checkpoint, excluded),
            &mut bytes,
        )
        .expect("a checkpoint serialises");
        crate::Digest(*blake3::hash(&bytes).as_bytes())
    }

    /// The canonical bytes to store.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        ciborium::into_writer(self, &mut bytes).expect("a snapshot serialises");
        bytes
    }

    /// A stored snapshot (local storage, not network input: size is not bounded here).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        ciborium::from_reader(bytes).map_err(|e| format!("stored ledger checkpoint: {e}"))
    }
}

impl Checkpoint {
    /// The genesis state.
    pub(crate) fn genesis(params: &crate::params::MeshParams) -> Self {
        let accounts = params
            .genesis
            .iter()
            .map(|a| {
                let amount = u128::from(a.amount);
                let account = FrozenAccount {
                    summary: AccountSummary {
                        balance: amount,
                        ..Default::default()
                    },
                    base_line: amount,
                    ..Default::default()
                };
                (a.account, account)
            })
            .collect();
        Self { accounts }
    }

    /// Every account's frozen totals.
    pub fn summaries(&self) -> impl Iterator<Item = (&PublicKey, &AccountSummary)> {
        self.accounts.iter().map(|(k, a)| (k, &a.summary))
    }
}
