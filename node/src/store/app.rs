//! The app's own records, with one owner: every session this node opened as an app
//! (the countersigned terms, its secret `r` and the next request id) and every ack it
//! sent (the receipt the supplier will bill). The gateway writes them as it works;
//! settlement reads a session's secret to reveal it for a claim, and forgets both once
//! the session's epoch is final. Every node has them: a node without a data dir keeps
//! them in its temporary database, so it reveals its sessions like any other.

use relaymesh_protocol::messages::session::SignedSessionOpen;
use relaymesh_protocol::metering::receipt::Receipt;
use relaymesh_protocol::params::MeshParams;
use relaymesh_protocol::Digest;
use tracing::warn;

/// The sled tree of the app's sessions, keyed by session key.
pub const SESSIONS_TREE: &str = "app_sessions";
/// The sled tree of the acks the app sent, keyed by session key and receipt digest (the
/// digest the supplier keys its receipt by), each value the whole receipt.
pub const ACKS_TREE: &str = "acks";

/// A stored session: the countersigned terms, the secret `r`, the next request id.
pub type StoredSession = (SignedSessionOpen, Digest, u64);

/// The app's sessions and sent acks.
#[derive(Clone, Debug)]
pub struct AppStore {
    sessions: sled::Tree,
    acks: sled::Tree,
}

impl AppStore {
    /// The records in `db`.
    pub fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        Ok(Self {
            sessions: db.open_tree(SESSIONS_TREE)?,
            acks: db.open_tree(ACKS_TREE)?,
        })
    }

    /// Writes a session's record (before its next request goes out, so a restart never
    /// reuses a request id).
    pub fn put_session(&self, open: &SignedSessionOpen, secret: Digest, next_request_id: u64) {
        let record: StoredSession = (open.clone(), secret, next_request_id);
        let bytes = relaymesh_protocol::wire::to_canonical(&record);
        if let Err(e) = self.sessions.insert(open.session_key().0, bytes) {
            warn!(%e, "cannot store a session");
        }
    }

    /// Every stored session (an unreadable one is skipped, with a warning).
    pub fn sessions(&self) -> impl Iterator<Item = StoredSession> + '_ {
        self.sessions.iter().flatten().filter_map(|(_, bytes)| {
            let session = ciborium::from_reader::<StoredSession, _>(bytes.as_ref()).ok();
            if session.is_none() {
                warn!("an unreadable stored session was skipped");
            }
            session
        })
    }

    /// The secret `r` of the session `session_key`, if it is ours and kept.
    pub fn secret(&self, session_key: &Digest) -> Option<Digest> {
        let bytes = self.sessions.get(session_key.0).ok()??;
        let (_, secret, _): StoredSession = ciborium::from_reader(bytes.as_ref()).ok()?;
        Some(secret)
    }

    /// Keeps an ack this app is about to send, before it is sent: its copy of what the
    /// supplier will bill (flushed with the database's commit interval, like the
    /// supplier's receipts).
    pub fn keep_ack(&self, receipt: &Receipt) {
        let bytes = relaymesh_protocol::wire::to_canonical(receipt);
        let mut key = [0u8; 64];
        key[..32].copy_from_slice(&receipt.ack.body.session_key.0);
        key[32..].copy_from_slice(&receipt.digest().0);
        if let Err(e) = self.acks.insert(key, bytes) {
            warn!(%e, "cannot store a sent ack");
        }
    }

    /// The acks kept for the session `session_key`.
    pub fn acks_of(&self, session_key: &Digest) -> usize {
        self.acks.scan_prefix(session_key.0).count()
    }

    /// Forgets the sessions whose epoch is before `frozen_before` (final: nothing can be
    /// claimed or revealed for them any more), with their acks; returns their keys.
    pub fn prune(&self, params: &MeshParams, frozen_before: u64) -> Vec<Digest> {
        let mut pruned = Vec::new();
        for (open, _, _) in self.sessions() {
            if open.epoch(params) >= frozen_before {
                continue;
            }
            let key = open.session_key();
            let _ = self.sessions.remove(key.0);
            for ack in self.acks.scan_prefix(key.0).keys().flatten() {
                let _ = self.acks.remove(ack);
            }
            pruned.push(key);
        }
        pruned
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaymesh_protocol::Keypair;

    /// Sessions are kept across a reopening and forgotten once final (their acks with
    /// them: `settle::tests::the_app_forgets_a_final_session_with_the_acks_it_sent`).
    #[test]
    fn sessions_are_kept_and_forgotten_once_final() {
        let p = crate::config::named_mesh("app-store");
        let (app, sup) = (Keypair::from_secret([1; 32]), Keypair::from_secret([2; 32]));
        let dir = tempfile::tempdir().unwrap();
        let db = crate::testkit::open_db(dir.path());
        let store = AppStore::open(&db).unwrap();
        let (old, old_secret) = crate::testkit::session(&p, &app, &sup, p.tau_min, 0, 1);
        let later = p.epoch_ms * 10;
        let (new, new_secret) = crate::testkit::session(&p, &app, &sup, p.tau_min, later, 2);
        store.put_session(&old, old_secret, 3);
        store.put_session(&new, new_secret, 1);
        assert_eq!(store.secret(&old.session_key()), Some(old_secret));
        assert_eq!(store.sessions().count(), 2);
        // Reopened from the same database: the same records.
        let again = AppStore::open(&db).unwrap();
        assert_eq!(again.sessions().find(|s| s.0 == old).map(|s| s.2), Some(3));
        let pruned = again.prune(&p, old.epoch(&p) + 1);
        assert_eq!(pruned, [old.session_key()]);
        assert_eq!(store.secret(&old.session_key()), None);
        assert_eq!(store.secret(&new.session_key()), Some(new_secret));
    }
}
