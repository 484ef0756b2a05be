//! The double-commit race, seen from the supplier: an app may give one escrow slot to
//! sessions at several suppliers at the same moment, before any announcement has
//! spread. A session this supplier countersigned less than [`CLASH_WAIT`] ago is
//! *fresh*: each of its streams (the first, and any resumed beside it) sends at most
//! its first window until the wait is over, then asks the ledger whether the app has
//! been caught committing a credit twice; later it asks again every
//! [`RECHECK_EVERY`] while acks come. An excluded app's stream ends with a refusal.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use relaymesh_protocol::messages::infer::RefuseCode;
use relaymesh_protocol::messages::session::SessionOpen;
use relaymesh_protocol::Digest;
use tokio::time::Instant;
use tracing::warn;

use super::{refusal, SupplierContext};
use crate::infer::codec::write_frame;

/// Time for the announcements of other sessions on the same escrow slot to reach this
/// node (a gossip round trip, with room).
pub const CLASH_WAIT: Duration = Duration::from_secs(2);
/// How often a running stream asks the ledger again (the question scans the app's
/// debits, so not at every ack).
pub const RECHECK_EVERY: Duration = Duration::from_millis(500);
/// Most fresh sessions remembered; past it the oldest are forgotten early (each lives
/// [`CLASH_WAIT`] only, so this takes more than 8,000 sessions a second).
const MAX_FRESH: usize = 16_384;

/// When each fresh session was countersigned.
#[derive(Default)]
pub struct FreshSessions(Mutex<HashMap<Digest, Instant>>);

impl FreshSessions {
    /// `session` was countersigned now.
    pub fn countersigned(&self, session: Digest) {
        let mut fresh = self.0.lock().expect("fresh lock");
        let now = Instant::now();
        fresh.retain(|_, at| now.duration_since(*at) < CLASH_WAIT);
        if fresh.len() >= MAX_FRESH {
            if let Some(oldest) = fresh.iter().min_by_key(|(_, at)| **at).map(|(k, _)| *k) {
                fresh.remove(&oldest);
            }
        }
        fresh.insert(session, now);
    }

    /// When a stream on `session` may pass its first window: `None` if the session is
    /// not fresh.
    pub fn wait_until(&self, session: &Digest) -> Option<Instant> {
        let fresh = self.0.lock().expect("fresh lock");
        let at = *fresh.get(session)?;
        let until = at + CLASH_WAIT;
        (until > Instant::now()).then_some(until)
    }
}

/// Ends the stream with a refusal if the ledger has caught the session's app giving
/// one credit to two debits since the session began (its sessions no longer pay).
pub(super) async fn still_admitted<W: futures::AsyncWrite + Unpin>(
    terms: &SessionOpen,
    ctx: &SupplierContext,
    w: &mut W,
) -> Result<(), String> {
    let Some(Err(why)) = ctx.settlement.as_ref().map(|s| s.admit_resume(terms)) else {
        return Ok(());
    };
    ctx.metrics.limited("double_commit");
    warn!(app = %terms.app.peer_id(), "{why}: the stream ends");
    let _ = write_frame(w, refusal(RefuseCode::Balance, why.clone(), 0)).await;
    Err(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_session_is_fresh_for_the_clash_wait_only() {
        let fresh = FreshSessions::default();
        let s = Digest([1; 32]);
        assert!(fresh.wait_until(&s).is_none());
        fresh.countersigned(s);
        let until = fresh.wait_until(&s).unwrap();
        assert_eq!(until - Instant::now(), CLASH_WAIT);
        tokio::time::advance(CLASH_WAIT).await;
        assert!(fresh.wait_until(&s).is_none());
    }
}
