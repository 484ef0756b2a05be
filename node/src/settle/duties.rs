//! What a supplier and an app do as their sessions end: claim, reveal, prove.

use relaymesh_protocol::identity::signed::Signed;
use relaymesh_protocol::ledger::ClaimStatus;
use relaymesh_protocol::messages::claim::{Claim, SignedClaim};
use relaymesh_protocol::messages::ledger::{LedgerBody, LedgerMessage};
use relaymesh_protocol::messages::reveal::SignedReveal;
use relaymesh_protocol::messages::session::SignedSessionOpen;
use relaymesh_protocol::settlement::duty::{app_reveals, ClaimSeen, SupplierDuty, SupplierSession};
use relaymesh_protocol::settlement::proof::sign_reveal;
use relaymesh_protocol::wire::WireMessage;
use relaymesh_protocol::Digest;
use tracing::{info, warn};

use crate::mining::Miner;

use super::*;

impl Settlement {
    /// One round of this node's duties at `now_ms`: advance the ledger's clock, claim
    /// ended sessions, prove claims, reveal for our sessions' claims. Returns what to
    /// gossip.
    pub fn tick(&self, now_ms: u64) -> Vec<LedgerMessage> {
        let frozen_before = {
            let mut ledger = self.ledger.lock().expect("ledger lock");
            self.advance(&mut ledger, now_ms);
            ledger.frozen_before()
        };
        let mut out = Vec::new();
        if let Some(miner) = &self.miner {
            if let Err(e) = self.supplier_duties(miner, now_ms, frozen_before, &mut out) {
                warn!(%e, "supplier settlement duties failed");
            }
        }
        self.app_duties(now_ms, &mut out);
        self.prune_app_sessions(frozen_before);
        out
    }

    /// Forgets the app's sessions (secrets, reveal records and the acks it sent) whose
    /// epoch is final: nothing can be claimed or revealed for them any more.
    fn prune_app_sessions(&self, frozen_before: u64) {
        let last = self
            .pruned_before
            .swap(frozen_before, std::sync::atomic::Ordering::Relaxed);
        if last == frozen_before {
            return;
        }
        for key in self.app.prune(&self.params, frozen_before) {
            let _ = self.revealed.remove(key.0);
        }
    }

    fn supplier_duties(
        &self,
        miner: &Miner,
        now_ms: u64,
        frozen_before: u64,
        out: &mut Vec<LedgerMessage>,
    ) -> Result<(), crate::mining::MiningError> {
        for session in miner.claimable()? {
            let terms = &session.terms;
            let session_key = terms.session_key();
            let mut state = SupplierSession {
                end_ms: terms.body.end_ms(),
                epoch: terms.epoch(&self.params),
                closed_ms: session.claimed_ms,
            };
            if state.closed_ms.is_none() {
                match state.duty(&self.params, ClaimSeen::Absent, frozen_before, now_ms) {
                    SupplierDuty::Forget => {
                        miner.forget(&session_key)?;
                        continue;
                    }
                    SupplierDuty::Close => {
                        miner.close(terms, now_ms)?;
                        state.closed_ms = Some(now_ms);
                    }
                    _ => continue,
                }
            }
            let Some(claim) = self.build_claim(miner, terms)? else {
                // Nothing worth claiming: kept until its epoch is final, then forgotten.
                if state.duty(&self.params, ClaimSeen::Absent, frozen_before, now_ms)
                    == SupplierDuty::Forget
                {
                    miner.forget(&session_key)?;
                }
                continue;
            };
            let id = claim.id();
            let status = self.ledger.lock().expect("ledger lock").claim_status(&id);
            let reveal = match status {
                Some(ClaimStatus::Pending) => self.stored_reveal(state.epoch, &id),
                _ => None,
            };
            let seen = ClaimSeen::of(status, reveal.is_some());
            let proof = match state.duty(&self.params, seen, frozen_before, now_ms) {
                SupplierDuty::Forget => {
                    miner.forget(&session_key)?;
                    continue;
                }
                SupplierDuty::Claim => {
                    info!(session = %session_key, sum = claim.body.sum, count = claim.body.count, "claiming a session");
                    out.extend(self.own(LedgerMessage::new(LedgerBody::Claim(claim)), now_ms));
                    continue;
                }
                SupplierDuty::ProveSampled => {
                    let Some(reveal) = reveal else { continue };
                    miner
                        .load(&session_key)?
                        .sampled_proof(id, reveal, self.params.proof_samples)
                        .map_err(|e| crate::mining::MiningError::Tree(e.to_string()))?
                }
                SupplierDuty::ProveFull => {
                    info!(session = %session_key, "no reveal from the app in time; proving with every mined receipt");
                    match miner.load(&session_key)?.full_reveal(id) {
                        Ok(p) => p,
                        Err(e) => {
                            warn!(%e, "cannot build the full reveal");
                            continue;
                        }
                    }
                }
                SupplierDuty::Close | SupplierDuty::Wait { .. } | SupplierDuty::Done => continue,
            };
            out.extend(self.own(LedgerMessage::new(LedgerBody::Proof(proof)), now_ms));
        }
        Ok(())
    }

    /// The claim for a closed session: rebuilt from the (frozen) tree, so the same
    /// claim every time, across restarts too. `None` when there is nothing worth
    /// claiming.
    fn build_claim(
        &self,
        miner: &Miner,
        terms: &SignedSessionOpen,
    ) -> Result<Option<SignedClaim>, crate::mining::MiningError> {
        let root = miner.root(&terms.session_key())?;
        let value = u128::from(root.sum) * u128::from(terms.body.price_per_cu);
        if root.count == 0 || value < u128::from(self.params.min_claim_value) {
            return Ok(None);
        }
        Ok(Some(Signed::sign(
            Claim {
                version: relaymesh_protocol::PROTOCOL_VERSION,
                open: terms.clone(),
                root: root.hash,
                sum: root.sum,
                count: root.count,
            },
            &self.key,
        )))
    }

    fn stored_reveal(&self, epoch: u64, claim: &Digest) -> Option<SignedReveal> {
        let bytes = self.log.get(log_key(b'r', epoch, claim)).ok()??;
        match LedgerMessage::decode(&bytes).ok()?.body {
            LedgerBody::Reveal(r) => Some(r),
            _ => None,
        }
    }

    fn app_duties(&self, now_ms: u64, out: &mut Vec<LedgerMessage>) {
        let me = self.me();
        let pending: Vec<(Digest, Digest, u64, Digest)> = self
            .ledger
            .lock()
            .expect("ledger lock")
            .claims()
            .into_iter()
            .filter(|(c, s, _)| c.app == me && *s == ClaimStatus::Pending)
            .map(|(c, _, _)| (c.session_key, c.root, c.epoch, c.id))
            .collect();
        for (session_key, root, epoch, claim_id) in pending {
            if self
                .log
                .contains_key(log_key(b'r', epoch, &claim_id))
                .unwrap_or(true)
            {
                continue;
            }
            // One root per session, ever: a second claim's root gets no reveal.
            let revealed_root = match self.revealed.get(session_key.0) {
                Ok(r) => r.and_then(|r| <[u8; 32]>::try_from(r.as_ref()).ok().map(Digest)),
                Err(_) => continue,
            };
            if !app_reveals(true, root, revealed_root) {
                continue;
            }
            let Some(secret) = self.app.secret(&session_key) else {
                continue;
            };
            if self.revealed.insert(session_key.0, &root.0[..]).is_err()
                || self.revealed.flush().is_err()
            {
                continue;
            }
            info!(session = %session_key, "revealing our secret for the supplier's claim");
            let reveal = sign_reveal(session_key, root, secret, &self.key);
            out.extend(self.own(LedgerMessage::new(LedgerBody::Reveal(reveal)), now_ms));
        }
    }
}
