//! The duties of a session's two sides as it ends, as IO-free rules: the supplier
//! closes the session to mining a little after its end, claims what it mined, and
//! proves the claim with the app's reveal, or with every mined receipt when no reveal
//! comes in time; the app reveals its secret once for the one root claimed. The node
//! carries them out on its stores and clock (`node/src/settle`), the simulator on its
//! event queue (`netsim`): both ask these functions what is due and when.

use crate::ledger::ClaimStatus;
use crate::params::MeshParams;
use crate::Digest;

/// How long after a session's end its supplier closes it and claims: requests still
/// streaming at the end have this long to finish (receipts after the close are not
/// mined).
pub const CLAIM_DELAY_MS: u64 = 5_000;

/// A supplier's session, as its duties see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SupplierSession {
    /// When its terms end it (`SessionOpen::end_ms`).
    pub end_ms: u64,
    /// Its epoch.
    pub epoch: u64,
    /// When the supplier closed it to claim, if it has.
    pub closed_ms: Option<u64>,
}

/// What a supplier's ledger says of its claim for the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimSeen {
    /// Not applied yet (not made, or not back from gossip).
    Absent,
    /// Waiting for a proof; `revealed`: the app's reveal for it is at hand.
    Pending { revealed: bool },
    /// Settled, void or unfunded: nothing more can change it.
    Final,
}

impl ClaimSeen {
    /// From the ledger's status of the claim (`None`: it has none) and whether the
    /// app's reveal for it is at hand.
    pub fn of(status: Option<ClaimStatus>, revealed: bool) -> Self {
        match status {
            None => Self::Absent,
            Some(ClaimStatus::Pending) => Self::Pending { revealed },
            Some(ClaimStatus::Settled | ClaimStatus::Void | ClaimStatus::Unfunded) => Self::Final,
        }
    }
}

/// What the supplier does for a session now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SupplierDuty {
    /// Nothing yet: look again at `until_ms`, or, when `None`, when the ledger says
    /// more of the claim.
    Wait { until_ms: Option<u64> },
    /// Its epoch is final: nothing can be claimed or proven for it any more; forget it.
    Forget,
    /// Close it to mining (durably, before the claim) and claim.
    Close,
    /// Publish the claim (again, until the ledger has it).
    Claim,
    /// Prove the claim with the app's reveal (sampled receipts).
    ProveSampled,
    /// No reveal came in time: prove with every mined receipt.
    ProveFull,
    /// Its claim is final: nothing more to do until its epoch is.
    Done,
}

impl SupplierSession {
    /// What is due at `now_ms`, given what the ledger says of the claim and the first
    /// epoch not yet final (`frozen_before`).
    pub fn duty(
        &self,
        params: &MeshParams,
        claim: ClaimSeen,
        frozen_before: u64,
        now_ms: u64,
    ) -> SupplierDuty {
        if self.epoch < frozen_before {
            return SupplierDuty::Forget;
        }
        let Some(closed) = self.closed_ms else {
            let at = self.end_ms.saturating_add(CLAIM_DELAY_MS);
            return if now_ms >= at {
                SupplierDuty::Close
            } else {
                SupplierDuty::Wait { until_ms: Some(at) }
            };
        };
        match claim {
            ClaimSeen::Absent => SupplierDuty::Claim,
            ClaimSeen::Pending { revealed: true } => SupplierDuty::ProveSampled,
            ClaimSeen::Pending { revealed: false } => {
                let at = closed.saturating_add(params.reveal_wait_ms());
                if now_ms >= at {
                    SupplierDuty::ProveFull
                } else {
                    SupplierDuty::Wait { until_ms: Some(at) }
                }
            }
            ClaimSeen::Final => SupplierDuty::Done,
        }
    }
}

/// Whether an app reveals its secret for a pending claim on `root` of one of its
/// sessions, having revealed for `revealed_root` before (if for any): once, and for
/// one root per session ever, so a supplier that claims twice gets a reveal for its
/// first root only and cannot pick the sample seed among several.
pub fn app_reveals(claim_pending: bool, root: Digest, revealed_root: Option<Digest>) -> bool {
    claim_pending && revealed_root.is_none_or(|r| r == root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_supplier_closes_claims_and_proves_in_turn() {
        let params = MeshParams::new("duties", Vec::new()).unwrap();
        let wait = params.reveal_wait_ms();
        let open = SupplierSession {
            end_ms: 100_000,
            epoch: 5,
            closed_ms: None,
        };
        let duty = |s: &SupplierSession, claim, now| s.duty(&params, claim, 5, now);
        assert_eq!(
            duty(&open, ClaimSeen::Absent, 100_000),
            SupplierDuty::Wait {
                until_ms: Some(100_000 + CLAIM_DELAY_MS)
            }
        );
        assert_eq!(duty(&open, ClaimSeen::Absent, 105_000), SupplierDuty::Close);
        let closed = SupplierSession {
            closed_ms: Some(105_000),
            ..open
        };
        assert_eq!(
            duty(&closed, ClaimSeen::Absent, 105_000),
            SupplierDuty::Claim
        );
        let pending = ClaimSeen::Pending { revealed: false };
        assert_eq!(
            duty(&closed, pending, 106_000),
            SupplierDuty::Wait {
                until_ms: Some(105_000 + wait)
            }
        );
        assert_eq!(
            duty(&closed, pending, 105_000 + wait),
            SupplierDuty::ProveFull
        );
        let revealed = ClaimSeen::Pending { revealed: true };
        assert_eq!(duty(&closed, revealed, 106_000), SupplierDuty::ProveSampled);
        assert_eq!(duty(&closed, ClaimSeen::Final, 106_000), SupplierDuty::Done);
        // A final epoch ends everything, whatever else holds.
        assert_eq!(
            closed.duty(&params, revealed, 6, 106_000),
            SupplierDuty::Forget
        );
        assert_eq!(
            ClaimSeen::of(Some(ClaimStatus::Void), true),
            ClaimSeen::Final
        );
    }

    #[test]
    fn an_app_reveals_once_for_one_root_per_session() {
        let (a, b) = (Digest([1; 32]), Digest([2; 32]));
        assert!(app_reveals(true, a, None));
        assert!(app_reveals(true, a, Some(a)));
        assert!(!app_reveals(true, b, Some(a)));
        assert!(!app_reveals(false, a, None));
    }
}
