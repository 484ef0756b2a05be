//! Gossip in the event loop: ads validated with the protocol crate before they are
//! forwarded; ledger messages go to the settlement thread (`ledger.rs`).

use libp2p::{gossipsub, PeerId};
use relaymesh_protocol::messages::capability::SignedCapabilityAd;
use relaymesh_protocol::wire::WireMessage;
use relaymesh_protocol::Ed25519Verifier;
use tracing::{debug, info};

use super::{now_ms, EventLoop};
use crate::mesh::peer_table::AdUpdate;

impl EventLoop {
    pub(super) fn publish_ledger(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        let len = bytes.len();
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.ledger_topic.clone(), bytes)
        {
            Ok(_) => {
                self.metrics.gossip("out", len);
                Ok(())
            }
            // Nobody to tell now, or told already: anti-entropy covers both.
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic)
            | Err(gossipsub::PublishError::Duplicate) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Tells gossipsub what became of a message it holds for validation (`Reject` is
    /// what makes peer scoring punish the sender).
    pub(super) fn verdict(
        &mut self,
        id: &gossipsub::MessageId,
        source: &PeerId,
        acceptance: gossipsub::MessageAcceptance,
    ) {
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(id, source, acceptance);
    }

    pub(super) fn on_gossip(
        &mut self,
        source: PeerId,
        id: gossipsub::MessageId,
        message: gossipsub::Message,
    ) {
        self.metrics.gossip("in", message.data.len());
        if !self.gossip_budget.take(source, std::time::Instant::now()) {
            self.metrics.limited("gossip_per_peer");
            self.verdict(&id, &source, gossipsub::MessageAcceptance::Ignore);
            return;
        }
        if message.topic == self.ledger_topic.hash() {
            self.on_ledger_gossip(id, source, message.data);
            return;
        }
        if message.topic == self.members_topic.hash() && self.membership.is_some() {
            let acceptance = self.on_revocation_gossip(&message.data);
            self.verdict(&id, &source, acceptance);
            return;
        }
        let verdict = if message.topic == self.ads_topic.hash() {
            self.on_ad(&message.data, true)
        } else {
            Err("unknown-topic")
        };
        let acceptance = match verdict {
            // The ad we hold may have come by ad sync and not been forwarded yet
            // (gossipsub drops repeats of one message itself).
            Ok(AdUpdate::New | AdUpdate::Updated | AdUpdate::Same) => {
                gossipsub::MessageAcceptance::Accept
            }
            // Valid but of no use (an older ad replayed, or one key's ads too close
            // together): not forwarded, and not held against the peer that relayed it.
            Ok(AdUpdate::Stale | AdUpdate::TooSoon | AdUpdate::Full) => {
                gossipsub::MessageAcceptance::Ignore
            }
            Err(reason) => {
                self.metrics.invalid(reason);
                debug!(peer = %source, reason, "invalid gossip dropped");
                gossipsub::MessageAcceptance::Reject
            }
        };
        self.verdict(&id, &source, acceptance);
    }

    /// Takes a gossiped (`gossiped`) or synced ad: what it did to the table, or why it
    /// is invalid.
    pub(super) fn on_ad(&mut self, bytes: &[u8], gossiped: bool) -> Result<AdUpdate, &'static str> {
        let ad = SignedCapabilityAd::decode(bytes).map_err(|e| match e {
            relaymesh_protocol::DecodeError::TooLarge { .. } => "oversized",
            _ => "malformed",
        })?;
        let now = now_ms();
        ad.validate(
            &self.mesh_id,
            now,
            self.config.mesh.max_clock_skew_ms,
            &Ed25519Verifier,
        )
        .map_err(|e| match e {
            relaymesh_protocol::messages::capability::AdError::Signature(_) => "bad-signature",
            relaymesh_protocol::messages::capability::AdError::WrongMesh { .. } => "wrong-mesh",
            relaymesh_protocol::messages::capability::AdError::Expired { .. } => "expired",
            relaymesh_protocol::messages::capability::AdError::BadOffer { .. } => "bad-offer",
        })?;
        if let Some(membership) = &self.membership {
            // A revoked member's ad, still on its way through peers that have not yet
            // heard: not taken, not forwarded, and not held against the relayer.
            if membership.is_revoked_peer(&ad.body.supplier) {
                return Ok(AdUpdate::Stale);
            }
            // A member admitted to use the mesh, not to serve it: its ad is not taken.
            let peer = crate::mesh::peer_id_of_key(&ad.body.supplier);
            if membership
                .role_of(&peer)
                .is_some_and(|role| !role.supplies())
            {
                return Ok(AdUpdate::Stale);
            }
        }
        let supplier = ad.body.supplier.peer_id();
        let models = ad.body.models.len();
        let update = if gossiped {
            self.table.upsert_gossiped(ad, now)
        } else {
            self.table.upsert(ad, now)
        };
        match update {
            AdUpdate::New => info!(peer = %supplier, models, "ad received: new supplier"),
            AdUpdate::Updated => debug!(peer = %supplier, models, "ad received"),
            AdUpdate::Same | AdUpdate::Stale => {}
            AdUpdate::TooSoon => self.metrics.limited("ads_too_soon"),
            AdUpdate::Full => self.metrics.limited("peer_table_full"),
        }
        self.metrics.suppliers.set(self.table.len() as i64);
        Ok(update)
    }
}
