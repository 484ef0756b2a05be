//! Churn (crashes, departures, rejoins) and the suppliers' ads in the simulation.

use super::*;

impl Sim {
    // ---- churn ----

    pub(super) fn schedule_churn(&mut self, s: u32, from: u64) {
        let c = self.sc.churn.clone();
        let hour = 3600.0 * SEC as f64;
        if c.crashes_per_hour > 0.0 {
            let at = from + self.rng.exponential(hour / c.crashes_per_hour) as u64;
            if at < self.end_us {
                self.schedule(at, Ev::Crash(s));
            }
        }
        if c.leaves_per_hour > 0.0 {
            let at = from + self.rng.exponential(hour / c.leaves_per_hour) as u64;
            if at < self.end_us {
                self.schedule(at, Ev::Leave(s));
            }
        }
    }

    pub(super) fn crash(&mut self, s: u32) {
        let sup = &mut self.suppliers[s as usize];
        if !sup.online {
            return;
        }
        sup.online = false;
        sup.leaving = false;
        sup.incarnation += 1;
        sup.busy = 0;
        let active = std::mem::take(&mut sup.active);
        let queued: Vec<Id> = sup.queue.drain(..).collect();
        let stall = (self.sc.network.stall_timeout_ms * MS as f64) as u64;
        for a in active {
            self.cut(a);
            self.schedule(self.now + stall, Ev::GiveUp(a, Why::Stall));
        }
        for a in queued {
            self.schedule(self.now + stall, Ev::GiveUp(a, Why::Stall));
        }
        self.schedule_rejoin(s);
    }

    pub(super) fn schedule_rejoin(&mut self, s: u32) {
        let down = self.rng.lognormal(self.sc.churn.downtime_s) * SEC as f64;
        self.schedule(self.now + down as u64, Ev::Rejoin(s));
    }

    pub(super) fn leave(&mut self, s: u32) {
        let sup = &mut self.suppliers[s as usize];
        if !sup.online || sup.leaving {
            return;
        }
        sup.leaving = true;
        // Its last ad says it is gone: apps drop it once that ad has spread.
        let visible = self.now + self.spread.delay(&mut self.rng, self.ad_size);
        if let Some(ad) = &mut self.suppliers[s as usize].ad {
            ad.expires_us = visible;
        }
        self.record_gossip(GossipKind::Ad, self.ad_size);
        self.maybe_go_offline(s);
    }

    /// A leaving supplier with no stream left claims its sessions now and goes offline
    /// once the reveals (or the full-reveal fallback) have let it prove them.
    pub(super) fn maybe_go_offline(&mut self, s: u32) {
        let sup = &mut self.suppliers[s as usize];
        if !(sup.leaving && sup.busy == 0 && sup.queue.is_empty()) {
            return;
        }
        let open: Vec<Id> = std::mem::take(&mut sup.open).into_values().collect();
        let inc = sup.incarnation;
        let claim_at = self.now + CLAIM_DELAY_MS * MS;
        for x in open {
            if let Some(sess) = self.sessions.get_mut(x) {
                sess.end_us = sess.end_us.min(self.now);
            }
            self.schedule(claim_at, Ev::Close(x));
        }
        let proven_by = claim_at + self.params.reveal_wait_ms() * MS + SEC;
        self.schedule(proven_by, Ev::Offline(s, inc));
    }

    pub(super) fn rejoin(&mut self, s: u32) {
        let first = self.suppliers[s as usize].ad.is_none();
        let sup = &mut self.suppliers[s as usize];
        if sup.online && !first {
            return;
        }
        sup.online = true;
        sup.leaving = false;
        sup.incarnation += 1;
        // A restarted node has forgotten its apps' windows, debts and payments.
        sup.risk.clear();
        let inc = sup.incarnation;
        let duties = std::mem::take(&mut sup.duties);
        self.publish_ad(s);
        self.schedule(
            self.now + self.sc.mesh.ad_refresh_s * SEC,
            Ev::AdRefresh(s, inc),
        );
        for ev in duties {
            self.schedule(self.now, ev);
        }
        if !first {
            self.schedule_churn(s, self.now);
        }
    }

    // ---- ads ----

    pub(super) fn publish_ad(&mut self, s: u32) {
        let delay = self.spread.delay(&mut self.rng, self.ad_size);
        let lifetime = self.sc.mesh.ad_lifetime_s * SEC;
        let now = self.now;
        let sup = &mut self.suppliers[s as usize];
        let seq = sup.ad.as_ref().map_or(1, |a| a.seq + 1);
        sup.ad = Some(Ad {
            seq,
            visible_us: now + delay,
            expires_us: now + lifetime,
            free_slots: sup.slots.saturating_sub(sup.busy) as u16,
        });
        sup.last_ad_us = now;
        self.record_gossip(GossipKind::Ad, self.ad_size);
    }

    /// Re-announces after a load change, at most once per `ad_min_interval_s`.
    pub(super) fn load_changed(&mut self, s: u32) {
        let sup = &self.suppliers[s as usize];
        if sup.online
            && !sup.leaving
            && self.now >= sup.last_ad_us + self.sc.mesh.ad_min_interval_s * SEC
        {
            self.publish_ad(s);
        }
    }

    pub(crate) fn record_gossip(&mut self, kind: GossipKind, bytes: usize) {
        self.m.gossip_msgs[kind as usize] += 1;
        self.m.gossip_bytes[kind as usize] += bytes as u128;
    }
}
