//! A private mesh in the event loop: revocation lists from gossip and the API, and the
//! members cut off when their invite expires or is revoked.

use libp2p::{gossipsub, PeerId};
use relaymesh_protocol::membership::Applied;
use relaymesh_protocol::messages::membership::SignedRevocation;
use relaymesh_protocol::wire::WireMessage;
use tracing::{info, warn};

use super::{now_ms, EventLoop};

impl EventLoop {
    /// A revocation list from gossip: enforced and forwarded if new and valid.
    pub(super) fn on_revocation_gossip(&mut self, bytes: &[u8]) -> gossipsub::MessageAcceptance {
        let Ok(list) = SignedRevocation::decode(bytes) else {
            self.metrics.invalid("malformed-revocation");
            return gossipsub::MessageAcceptance::Reject;
        };
        match self.take_revocation(list) {
            Ok(true) => gossipsub::MessageAcceptance::Accept,
            Ok(false) => gossipsub::MessageAcceptance::Ignore,
            Err(reason) => {
                self.metrics.invalid("bad-revocation");
                warn!(%reason, "invalid revocation list dropped");
                gossipsub::MessageAcceptance::Reject
            }
        }
    }

    /// A revocation list from the API: enforced and published if new and valid.
    pub(super) fn on_revoke_command(&mut self, list: SignedRevocation) -> Result<bool, String> {
        let bytes = list.encode().map_err(|e| e.to_string())?;
        let new = self.take_revocation(list)?;
        if new {
            let topic = self.members_topic.clone();
            match self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
                Ok(_) | Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
                Err(e) => return Err(format!("enforced here, but not gossiped: {e}")),
            }
        }
        Ok(new)
    }

    /// Gossips the lists held again (a node that missed one, or joined the topic late,
    /// gets it within a minute; gossipsub drops what a peer has seen lately).
    pub(super) fn republish_revocations(&mut self) {
        let Some(membership) = self.membership.clone() else {
            return;
        };
        for list in membership.revocations() {
            if let Ok(bytes) = list.encode() {
                let topic = self.members_topic.clone();
                let _ = self.swarm.behaviour_mut().gossipsub.publish(topic, bytes);
            }
        }
    }

    /// Applies a list; a new one cuts off the connected peers it names at once.
    fn take_revocation(&mut self, list: SignedRevocation) -> Result<bool, String> {
        let Some(membership) = self.membership.clone() else {
            return Err("this mesh is public: it has no members to revoke".into());
        };
        let seq = list.body.seq;
        match membership.apply_revocation(list) {
            Ok(Applied::New) => {
                info!(seq, "revocation list taken");
                self.cut_members();
                Ok(true)
            }
            Ok(Applied::Old) => Ok(false),
            Err(refusal) => Err(refusal.to_string()),
        }
    }

    /// Closes every connection of a peer whose invite has expired or been revoked (and
    /// says so when it is this node's own membership that ended).
    pub(super) fn cut_members(&mut self) {
        let Some(membership) = self.membership.clone() else {
            return;
        };
        let now = now_ms();
        let connected: Vec<PeerId> = self.connections.keys().copied().collect();
        for (peer, reason) in membership.to_cut(&connected, now) {
            info!(%peer, %reason, "member cut off");
            membership.count_refusal(reason.label());
            let _ = self.swarm.disconnect_peer_id(peer);
            if let Some(key) = crate::mesh::public_key_of(&peer) {
                self.table.remove(&key);
            }
        }
        if let Some(reason) = membership.own_refusal(now) {
            if !self.own_membership_ended {
                self.own_membership_ended = true;
                warn!(%reason, "this node's own membership of the private mesh has ended: members will refuse it; ask the owner for a new invite");
            }
        }
    }
}
