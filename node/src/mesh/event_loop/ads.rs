//! This node's ads: announced while it serves, withdrawn when it stops.

use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub;
use libp2p::swarm::SwarmEvent;
use relaymesh_protocol::identity::signed::Signed;
use relaymesh_protocol::messages::capability::{CapabilityAd, ModelOffer, SignedCapabilityAd};
use relaymesh_protocol::wire::WireMessage;
use relaymesh_protocol::{BoundedVec, Signer};
use tracing::{debug, info, warn};

use super::{provider_key, EventLoop};
use crate::config::Role;
use crate::mesh::now_ms;

/// Soonest a supplier re-announces because its free slots changed (between the
/// regular ads, every third of the ad's lifetime): gateways choose by them.
pub(super) const SLOTS_REANNOUNCE: Duration = Duration::from_secs(5);

/// How long a stopping node keeps polling its swarm so that its withdrawal is sent and
/// its connections close (peers then notice at once, not at an idle timeout).
const CLOSE_GRACE: Duration = Duration::from_millis(500);

impl EventLoop {
    /// Publishes this node's ad and refreshes its provider records.
    pub(super) fn announce(&mut self) {
        if !self.config.models.is_empty() {
            // Backends feed the ad: live free slots and the speed last measured.
            // τ follows the supplier's recent volume (the protocol's rule, in the miner).
            let tau = self
                .settlement
                .as_ref()
                .and_then(|s| s.tau())
                .unwrap_or(self.config.mesh.tau_min)
                .max(1);
            let cu = crate::infer::supplier_cu(&self.config.mesh);
            self.config.offers = self.config.models.offers(tau, cu);
        }
        if self.withdrawn || self.config.role != Role::Full || self.config.offers.is_empty() {
            return;
        }
        let Some(ad) = self.publish_ad(self.config.offers.clone(), self.config.ad_lifetime) else {
            return;
        };
        self.announced_slots = (
            std::time::Instant::now(),
            ad.body.models.iter().map(|m| m.free_slots).collect(),
        );
        let now = now_ms();
        // Our own table lists us too, so `models` on a supplier shows what it serves.
        self.table.upsert(ad, now);
        for offer in self.config.offers.clone() {
            let key = provider_key(&self.mesh_id, offer.name.as_str());
            if let Err(err) = self.swarm.behaviour_mut().kad.start_providing(key) {
                debug!(%err, "provider record not stored");
            }
        }
    }

    /// Announces again if the free slots have changed since the last ad (at most every
    /// [`SLOTS_REANNOUNCE`]): an ad's free slots were up to a third of its lifetime old.
    pub(super) fn announce_if_slots_changed(&mut self) {
        if self.withdrawn
            || !self.announced
            || self.config.role != Role::Full
            || self.config.models.is_empty()
            || self.announced_slots.0.elapsed() < SLOTS_REANNOUNCE
        {
            return;
        }
        let free: Vec<u16> = self
            .config
            .models
            .offers(1, crate::infer::supplier_cu(&self.config.mesh))
            .iter()
            .map(|m| m.free_slots)
            .collect();
        if free != self.announced_slots.1 {
            debug!(?free, "free slots changed: announcing");
            self.announce();
        }
    }

    /// Signs and gossips an ad of `models` valid for `lifetime`; the ad, or `None`
    /// when it cannot be made.
    fn publish_ad(
        &mut self,
        models: Vec<ModelOffer>,
        lifetime: Duration,
    ) -> Option<SignedCapabilityAd> {
        let now = now_ms();
        // Sequence numbers only grow, across restarts too, because they follow the clock.
        self.ad_seq = now.max(self.ad_seq + 1);
        let models = match BoundedVec::try_from_vec(models) {
            Ok(models) => models,
            Err(err) => {
                warn!(%err, "cannot announce: too many models for one ad");
                return None;
            }
        };
        let ad = Signed::sign(
            CapabilityAd {
                version: relaymesh_protocol::PROTOCOL_VERSION,
                mesh_id: self.mesh_id,
                supplier: self.key.public_key(),
                seq: self.ad_seq,
                issued_ms: now,
                expires_ms: now + lifetime.as_millis() as u64,
                models,
            },
            &self.key,
        );
        let bytes = match ad.encode() {
            Ok(bytes) => bytes,
            Err(err) => {
                warn!(%err, "cannot announce: our own ad is invalid");
                return None;
            }
        };
        let len = bytes.len();
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.ads_topic.clone(), bytes)
        {
            Ok(_) => {
                self.metrics.gossip("out", len);
                self.announced = true;
                debug!(
                    seq = self.ad_seq,
                    models = ad.body.models.len(),
                    "announced our ad"
                );
            }
            // Nobody to send to yet; the next tick tries again.
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
            Err(err) => debug!(%err, "ad not published"),
        }
        Some(ad)
    }

    /// Withdraws our ads: an ad with no models, valid as long as the last one was,
    /// takes their place at every peer, and no ad follows; provider records stop.
    pub(super) fn withdraw_ads(&mut self) {
        if std::mem::replace(&mut self.withdrawn, true) || self.ad_seq == 0 {
            return;
        }
        if let Some(ad) = self.publish_ad(Vec::new(), self.config.ad_lifetime) {
            self.table.upsert(ad, now_ms());
            info!("withdrew our ads: this node is stopping");
        }
        for offer in self.config.offers.clone() {
            let key = provider_key(&self.mesh_id, offer.name.as_str());
            self.swarm.behaviour_mut().kad.stop_providing(&key);
        }
    }

    /// Sends what is queued (a withdrawal), then closes every connection and waits
    /// (at most [`CLOSE_GRACE`]) for them to close, so peers notice at once.
    pub(super) async fn close_connections(&mut self) {
        let deadline = tokio::time::Instant::now() + CLOSE_GRACE;
        let flush = tokio::time::Instant::now() + CLOSE_GRACE / 3;
        let mut closing = false;
        loop {
            let now = tokio::time::Instant::now();
            if !closing && now >= flush {
                closing = true;
                let peers: Vec<_> = self.swarm.connected_peers().copied().collect();
                for peer in peers {
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            }
            if closing && self.swarm.connected_peers().next().is_none() {
                return;
            }
            let until = if closing { deadline } else { flush };
            tokio::select! {
                event = self.swarm.select_next_some() => {
                    if let SwarmEvent::ConnectionClosed { peer_id, .. } = &event {
                        debug!(peer = %peer_id, "connection closed: this node is stopping");
                    }
                }
                () = tokio::time::sleep_until(until) => {
                    if closing {
                        return;
                    }
                }
            }
        }
    }
}
