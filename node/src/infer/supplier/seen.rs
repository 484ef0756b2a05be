//! The request ids a supplier has served, so none is served twice.

use relaymesh_protocol::Digest;

/// The request ids a supplier has served in each session, so that no request is served
/// (and billed) twice, even across a restart: kept in sled next to the receipts (tree
/// `requests`, key = session key ‖ request id, value = the session's end; a node without
/// a data dir keeps them in its temporary database), each until its session ends.
pub struct SeenRequests {
    tree: sled::Tree,
}

impl SeenRequests {
    /// Backed by `tree`.
    pub fn new(tree: sled::Tree) -> Self {
        Self { tree }
    }

    /// Records `request_id` of `session`; false if it was served before.
    pub fn first_use(&self, session: &Digest, request_id: u64, session_end_ms: u64) -> bool {
        let mut key = [0u8; 40];
        key[..32].copy_from_slice(&session.0);
        key[32..].copy_from_slice(&request_id.to_be_bytes());
        matches!(
            self.tree.compare_and_swap(
                key,
                None as Option<&[u8]>,
                Some(&session_end_ms.to_be_bytes()[..])
            ),
            Ok(Ok(()))
        )
    }

    /// Forgets sessions that ended before `now_ms`.
    pub fn prune(&self, now_ms: u64) {
        for (key, end) in self.tree.iter().flatten() {
            let end = u64::from_be_bytes(end.as_ref().try_into().unwrap_or([0; 8]));
            if end < now_ms {
                let _ = self.tree.remove(key);
            }
        }
    }
}
