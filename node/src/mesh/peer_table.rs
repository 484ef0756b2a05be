//! The bounded table of who serves which model, fed by capability ads.
//!
//! Entries expire with their ad. A supplier that cannot be reached keeps its ad but is
//! marked and backed off (1 s, doubling, at most a minute): one failed dial says
//! little (a loaded machine, a stale address, a restart on another port), and an
//! evicted ad would only come back with the next announcement, minutes later. A new
//! ad from the supplier (it restarted, or re-announced) or a connection to it clears
//! the mark; a killed node stops being offered when its ad runs out.

use std::collections::BTreeMap;

use relaymesh_protocol::messages::capability::{ModelOffer, SignedCapabilityAd};
use relaymesh_protocol::PublicKey;
use serde::Serialize;

/// Most suppliers the table keeps. Beyond it, a new ad takes the place of the ad
/// expiring soonest among suppliers this node has never been connected to; a supplier
/// it has met keeps its place, so a flood of ads from new keys (which cost nothing to
/// make) cannot push out the suppliers a node uses. A new key's ad is kept out when
/// every place is held by a supplier met, unless that key was met too.
pub const MAX_SUPPLIERS: usize = 4096;

/// Longest back-off of an unreachable supplier.
pub const MAX_BACKOFF_MS: u64 = 60_000;

/// One supplier's latest ad.
#[derive(Clone, Debug)]
pub struct SupplierEntry {
    /// The ad.
    pub ad: SignedCapabilityAd,
    /// When we received it (unix ms).
    pub received_ms: u64,
    /// When an ad of this supplier last came by gossip and was taken (unix ms).
    pub gossiped_ms: Option<u64>,
    /// Set while the supplier cannot be reached.
    pub unreachable: Option<Unreachable>,
}

/// A supplier we could not reach since its ad or our last connection to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unreachable {
    /// Failed attempts in a row.
    pub failures: u32,
    /// Until when (unix ms) it is offered only when no other supplier is.
    pub until_ms: u64,
}

/// A model as the mesh offers it: one row per (model, supplier).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ModelRow {
    /// Model name.
    pub name: String,
    /// GGUF digest, hex, if known.
    pub digest: Option<String>,
    /// Supplier peer id.
    pub supplier: String,
    /// Free slots in the ad.
    pub free_slots: u16,
    /// Slots in all.
    pub total_slots: u16,
    /// Advertised tokens per second; `None` until the supplier has measured a request
    /// (tables print `-`, not a speed of 0).
    pub tokens_per_sec: Option<f64>,
    /// Price per CU (micro-credits).
    pub price_per_cu: u64,
    /// What the offer costs per CU of the default formula, its CU factors counted
    /// (`infer::router::list_price`): what routing and `max_price` compare.
    pub list_price: u64,
    /// The length of the vectors its supplier makes with it; `None`: no embeddings.
    pub embedding_dims: Option<u32>,
    /// Context length.
    pub context_length: u32,
    /// Seconds until the ad expires.
    pub expires_in_s: u64,
    /// Peer id of the model's Source, when the ad carries its signed manifest.
    pub source: Option<String>,
    /// The Source's royalty, ppm of what apps pay (0 without a manifest).
    pub royalty_ppm: u32,
    /// Measured time to first token, ms.
    pub ttft_ms: u32,
    /// The threshold τ the supplier offers new sessions (from its recent volume).
    pub tau: u64,
    /// Architecture, size label and quantisation, as the supplier's ad says (empty
    /// where its backend cannot tell).
    pub family: String,
    /// Size label (`135M`).
    pub parameter_size: String,
    /// Quantisation (`Q4_1`).
    pub quantization: String,
}

/// Suppliers by key.
#[derive(Debug, Default)]
pub struct PeerTable {
    suppliers: BTreeMap<PublicKey, SupplierEntry>,
    /// Keys this node has had a connection with, and when last (unix ms); at most
    /// [`MAX_SUPPLIERS`], the longest unseen forgotten first.
    met: BTreeMap<PublicKey, u64>,
}

/// What an ad did to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdUpdate {
    /// A supplier we did not know.
    New,
    /// A newer ad of a known supplier.
    Updated,
    /// The ad we hold, again (it may have come by ad sync first: still worth
    /// forwarding by gossip).
    Same,
    /// Older than what we hold.
    Stale,
    /// Newer, but by gossip within [`MIN_AD_INTERVAL_MS`] of the last gossiped one we
    /// took: kept out, so one key cannot make the mesh carry a stream of ads.
    TooSoon,
    /// A new key, and every place is held by a supplier this node has met: kept out.
    Full,
}

/// Shortest interval between two ads of one supplier that the table takes (and the
/// node forwards). A supplier re-announces every third of its ad's lifetime (at least
/// half a second apart when it cannot publish), and a restart takes longer than this.
pub const MIN_AD_INTERVAL_MS: u64 = 1_000;

impl PeerTable {
    /// Notes a connection with `key`: its ad keeps its place when the table is full.
    pub fn met(&mut self, key: PublicKey, now_ms: u64) {
        if self.met.len() >= MAX_SUPPLIERS && !self.met.contains_key(&key) {
            if let Some(oldest) = self.met.iter().min_by_key(|(_, at)| **at).map(|(k, _)| *k) {
                self.met.remove(&oldest);
            }
        }
        self.met.insert(key, now_ms);
    }

    /// Takes a validated ad that came by gossip: as [`PeerTable::upsert`], except that
    /// a newer ad within [`MIN_AD_INTERVAL_MS`] of the last one gossiped is kept out.
    pub fn upsert_gossiped(&mut self, ad: SignedCapabilityAd, now_ms: u64) -> AdUpdate {
        let key = ad.body.supplier;
        if let Some(existing) = self.suppliers.get(&key) {
            let too_soon = existing
                .gossiped_ms
                .is_some_and(|at| now_ms < at.saturating_add(MIN_AD_INTERVAL_MS));
            // A withdrawal (an ad with no models: the supplier is stopping) of a live ad
            // is never too soon; what follows it within the interval is, so a key gets
            // at most one ad and one withdrawal a second through.
            let withdraws_live = ad.body.models.is_empty() && !existing.ad.body.models.is_empty();
            if existing.ad.body.seq < ad.body.seq && too_soon && !withdraws_live {
                return AdUpdate::TooSoon;
            }
        }
        let update = self.upsert(ad, now_ms);
        if matches!(update, AdUpdate::New | AdUpdate::Updated) {
            if let Some(entry) = self.suppliers.get_mut(&key) {
                entry.gossiped_ms = Some(now_ms);
            }
        }
        update
    }

    /// Takes a validated ad (our own, or one from ad sync).
    pub fn upsert(&mut self, ad: SignedCapabilityAd, now_ms: u64) -> AdUpdate {
        let key = ad.body.supplier;
        let update = match self.suppliers.get(&key) {
            Some(existing) if existing.ad.body.seq == ad.body.seq => return AdUpdate::Same,
            Some(existing) if existing.ad.body.seq > ad.body.seq => return AdUpdate::Stale,
            Some(_) => AdUpdate::Updated,
            None => AdUpdate::New,
        };
        if update == AdUpdate::New && self.suppliers.len() >= MAX_SUPPLIERS {
            let soonest = |met: Option<bool>| {
                self.suppliers
                    .iter()
                    .filter(|(k, _)| met.is_none_or(|m| self.met.contains_key(*k) == m))
                    .min_by_key(|(_, e)| e.ad.body.expires_ms)
                    .map(|(k, _)| *k)
            };
            let place = match soonest(Some(false)) {
                Some(stranger) => stranger,
                None if self.met.contains_key(&key) => soonest(None).expect("table is full"),
                None => return AdUpdate::Full,
            };
            self.suppliers.remove(&place);
        }
        self.suppliers.insert(
            key,
            SupplierEntry {
                ad,
                received_ms: now_ms,
                gossiped_ms: None,
                // A new ad: whatever failed before may work now (it restarted).
                unreachable: None,
            },
        );
        update
    }

    /// Drops a supplier (a member cut off from a private mesh); whether it was there.
    pub fn remove(&mut self, supplier: &PublicKey) -> bool {
        self.suppliers.remove(supplier).is_some()
    }

    /// Drops expired ads; returns the suppliers dropped.
    pub fn expire(&mut self, now_ms: u64) -> Vec<PublicKey> {
        let expired: Vec<PublicKey> = self
            .suppliers
            .iter()
            .filter(|(_, e)| e.ad.body.expires_ms <= now_ms)
            .map(|(k, _)| *k)
            .collect();
        for key in &expired {
            self.suppliers.remove(key);
        }
        expired
    }

    /// Marks a supplier we could not reach and backs it off (1 s after the first
    /// failure, doubling, at most [`MAX_BACKOFF_MS`]); its ad stays. Returns the
    /// back-off, `None` for a peer that is no supplier of ours.
    pub fn mark_unreachable(&mut self, supplier: &PublicKey, now_ms: u64) -> Option<u64> {
        let entry = self.suppliers.get_mut(supplier)?;
        let failures = entry.unreachable.map_or(0, |u| u.failures) + 1;
        let backoff = (1000u64 << (failures - 1).min(6)).min(MAX_BACKOFF_MS);
        entry.unreachable = Some(Unreachable {
            failures,
            until_ms: now_ms + backoff,
        });
        Some(backoff)
    }

    /// Clears the mark (we are connected to the supplier); whether there was one.
    pub fn reachable(&mut self, supplier: &PublicKey) -> bool {
        self.suppliers
            .get_mut(supplier)
            .and_then(|e| e.unreachable.take())
            .is_some()
    }

    /// Whether a supplier is backed off at `now_ms`.
    pub fn backed_off(&self, supplier: &PublicKey, now_ms: u64) -> bool {
        self.suppliers
            .get(supplier)
            .and_then(|e| e.unreachable)
            .is_some_and(|u| now_ms < u.until_ms)
    }

    /// Number of suppliers.
    pub fn len(&self) -> usize {
        self.suppliers
            .values()
            .filter(|e| !e.ad.body.models.is_empty())
            .count()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.suppliers.is_empty()
    }

    /// The latest ad of a supplier.
    pub fn get(&self, supplier: &PublicKey) -> Option<&SupplierEntry> {
        self.suppliers.get(supplier)
    }

    /// Suppliers of the model named `name`, with their offer.
    pub fn suppliers_of<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = (PublicKey, &'a ModelOffer)> + 'a {
        self.suppliers.iter().flat_map(move |(key, entry)| {
            entry
                .ad
                .body
                .models
                .iter()
                .filter(move |m| m.name.as_str() == name)
                .map(move |m| (*key, m))
        })
    }

    /// The suppliers of `name` to try at `now_ms`: those not backed off, or, when every
    /// supplier of it is backed off, all of them (trying beats refusing: one failure
    /// does not make a lone supplier unreachable).
    pub fn offers(&self, name: &str, now_ms: u64) -> Vec<(PublicKey, ModelOffer)> {
        let all: Vec<(PublicKey, ModelOffer)> = self
            .suppliers_of(name)
            .map(|(k, o)| (k, o.clone()))
            .collect();
        let reachable: Vec<(PublicKey, ModelOffer)> = all
            .iter()
            .filter(|(k, _)| !self.backed_off(k, now_ms))
            .cloned()
            .collect();
        if reachable.is_empty() {
            all
        } else {
            reachable
        }
    }

    /// Up to `max` unexpired ads, freshest first: what a new peer is handed.
    pub fn fresh_ads(&self, now_ms: u64, max: usize) -> Vec<&SignedCapabilityAd> {
        let mut ads: Vec<&SignedCapabilityAd> = self
            .suppliers
            .values()
            .map(|e| &e.ad)
            .filter(|ad| ad.body.expires_ms > now_ms)
            .collect();
        ads.sort_by_key(|ad| std::cmp::Reverse(ad.body.issued_ms));
        ads.truncate(max);
        ads
    }

    /// Every (model, supplier) row, sorted by model then supplier.
    pub fn rows(&self, now_ms: u64) -> Vec<ModelRow> {
        let mut rows: Vec<ModelRow> = self
            .suppliers
            .values()
            .flat_map(|entry| {
                let ad = &entry.ad.body;
                ad.models.iter().map(move |m| ModelRow {
                    name: m.name.to_string(),
                    digest: m.gguf_digest.map(|d| d.to_hex()),
                    supplier: ad.supplier.peer_id(),
                    free_slots: m.free_slots,
                    total_slots: m.total_slots,
                    tokens_per_sec: (m.tokens_per_sec_milli > 0)
                        .then(|| f64::from(m.tokens_per_sec_milli) / 1000.0),
                    price_per_cu: m.price_per_cu,
                    list_price: crate::infer::router::list_price(m),
                    embedding_dims: m.embedding_dims,
                    context_length: m.context_length,
                    expires_in_s: ad.expires_ms.saturating_sub(now_ms) / 1000,
                    source: m.manifest.as_ref().map(|x| x.body.source.peer_id()),
                    royalty_ppm: m.manifest.as_ref().map_or(0, |x| x.body.royalty_ppm),
                    ttft_ms: m.ttft_ms,
                    tau: m.tau,
                    family: m.details.family.to_string(),
                    parameter_size: m.details.parameter_size.to_string(),
                    quantization: m.details.quantization.to_string(),
                })
            })
            .collect();
        rows.sort_by(|a, b| (&a.name, &a.supplier).cmp(&(&b.name, &b.supplier)));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaymesh_protocol::identity::signed::Signed;
    use relaymesh_protocol::messages::capability::CapabilityAd;
    use relaymesh_protocol::metering::compute_units::CuFormula;
    use relaymesh_protocol::{BoundedString, BoundedVec, Digest, Keypair, Signer};

    fn ad(key: u8, seq: u64, expires_ms: u64) -> SignedCapabilityAd {
        let k = Keypair::from_secret([key; 32]);
        let offer = ModelOffer {
            name: BoundedString::new("m").unwrap(),
            gguf_digest: None,
            manifest: None,
            context_length: 1,
            free_slots: 1,
            total_slots: 1,
            tokens_per_sec_milli: 1,
            ttft_ms: 1,
            price_per_cu: 1,
            cu: CuFormula::default(),
            tau: 1,
            max_token_bytes: 32,
            details: Default::default(),
            embedding_dims: None,
        };
        Signed::sign(
            CapabilityAd {
                version: relaymesh_protocol::PROTOCOL_VERSION,
                mesh_id: Digest::ZERO,
                supplier: k.public_key(),
                seq,
                issued_ms: 0,
                expires_ms,
                models: BoundedVec::try_from_vec(vec![offer]).unwrap(),
            },
            &k,
        )
    }

    fn withdrawal(key: u8, seq: u64) -> SignedCapabilityAd {
        let k = Keypair::from_secret([key; 32]);
        let mut body = ad(key, seq, 10_000).body;
        body.models = BoundedVec::try_from_vec(vec![]).unwrap();
        Signed::sign(body, &k)
    }

    /// A stopping supplier's withdrawal takes its offers out at once, even within a
    /// second of its last ad; a stream of withdrawals is held to the one-second rule
    /// (review: each newer withdrawal skipped it, so one key could flood the mesh).
    #[test]
    fn a_withdrawal_is_never_too_soon_but_a_second_one_is() {
        let mut table = PeerTable::default();
        assert_eq!(table.upsert_gossiped(ad(1, 5, 10_000), 0), AdUpdate::New);
        assert_eq!(table.len(), 1);
        assert_eq!(
            table.upsert_gossiped(withdrawal(1, 6), 10),
            AdUpdate::Updated
        );
        assert_eq!(table.len(), 0);
        assert!(table.offers("m", 10).is_empty());
        assert_eq!(
            table.upsert_gossiped(withdrawal(1, 7), 20),
            AdUpdate::TooSoon
        );
        assert_eq!(
            table.upsert_gossiped(ad(1, 8, 10_000), 30),
            AdUpdate::TooSoon
        );
        assert_eq!(
            table.upsert_gossiped(ad(1, 9, 10_000), 1_010),
            AdUpdate::Updated
        );
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn newer_ads_replace_older_and_entries_expire() {
        let mut table = PeerTable::default();
        assert_eq!(table.upsert_gossiped(ad(1, 5, 100), 0), AdUpdate::New);
        assert_eq!(table.upsert(ad(1, 5, 200), 0), AdUpdate::Same);
        assert_eq!(table.upsert_gossiped(ad(1, 4, 200), 0), AdUpdate::Stale);
        assert_eq!(table.upsert_gossiped(ad(1, 6, 200), 999), AdUpdate::TooSoon);
        assert_eq!(
            table.upsert(ad(1, 6, 200), 999),
            AdUpdate::Updated,
            "by sync"
        );
        assert_eq!(
            table.upsert_gossiped(ad(1, 7, 200), 1_000),
            AdUpdate::Updated
        );
        table.upsert(ad(2, 1, 150), 0);
        assert_eq!(table.suppliers_of("m").count(), 2);
        assert_eq!(table.expire(160).len(), 1);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn an_unreachable_supplier_is_backed_off_not_evicted() {
        let mut table = PeerTable::default();
        let (a, b) = (
            Keypair::from_secret([1; 32]).public_key(),
            Keypair::from_secret([2; 32]).public_key(),
        );
        table.upsert(ad(1, 1, 1_000_000), 0);
        assert_eq!(table.mark_unreachable(&b, 0), None, "b is no supplier yet");
        table.upsert(ad(2, 1, 1_000_000), 0);
        let backoffs: Vec<u64> = (0..8)
            .map(|_| table.mark_unreachable(&b, 10).unwrap())
            .collect();
        assert_eq!(
            backoffs,
            [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
        assert_eq!(table.len(), 2, "the ad stays");
        // Backed off: only a is offered, until the back-off ends.
        let keys = |t: &PeerTable, now| -> Vec<PublicKey> {
            t.offers("m", now).into_iter().map(|(k, _)| k).collect()
        };
        assert_eq!(keys(&table, 20), vec![a]);
        assert_eq!(keys(&table, 60_010).len(), 2);
        // When every supplier is backed off, all are offered.
        table.mark_unreachable(&a, 10);
        assert_eq!(keys(&table, 20).len(), 2);
        // A connection clears the mark; so does a new ad.
        assert!(table.reachable(&a));
        assert!(!table.reachable(&a));
        assert!(table.backed_off(&b, 20));
        table.upsert(ad(2, 2, 1_000_000), 30);
        assert!(!table.backed_off(&b, 40));
    }

    #[test]
    fn the_table_is_bounded() {
        let mut table = PeerTable::default();
        for i in 0..MAX_SUPPLIERS + 10 {
            let k = Keypair::from_secret(blake3::hash(&i.to_le_bytes()).as_bytes().to_owned());
            let mut a = ad(0, 1, 1000 + i as u64);
            a.body.supplier = k.public_key();
            table.upsert(a, 0);
        }
        assert_eq!(table.len(), MAX_SUPPLIERS);
    }

    /// Failed before: a full table gave the place of the ad expiring soonest to any new
    /// key, so a flood of ads from fresh keys with long lifetimes pushed out every
    /// supplier the node used.
    #[test]
    fn a_flood_of_new_keys_does_not_push_out_suppliers_this_node_met() {
        let mut table = PeerTable::default();
        let used = ad(1, 1, 1_000);
        let used_key = used.body.supplier;
        table.upsert(used, 0);
        table.met(used_key, 0);
        // Fresh keys with longer-lived ads, far more than fit.
        let mut refused = 0;
        for n in 0..(MAX_SUPPLIERS as u32 + 500) {
            let k = Keypair::from_secret({
                let mut s = [0u8; 32];
                s[..4].copy_from_slice(&n.to_be_bytes());
                s[31] = 0xee;
                s
            });
            let mut flood = ad(2, 1, 600_000).body;
            flood.supplier = k.public_key();
            match table.upsert(Signed::sign(flood, &k), 0) {
                AdUpdate::Full => refused += 1,
                AdUpdate::New => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(refused, 0, "strangers only take strangers' places");
        assert_eq!(table.len(), MAX_SUPPLIERS);
        assert!(
            table.get(&used_key).is_some(),
            "the supplier in use was pushed out"
        );
        // When every place is held by a supplier met, a new stranger is kept out, and a
        // supplier met takes the place of the soonest to expire.
        let mut full = PeerTable::default();
        for n in 0..MAX_SUPPLIERS as u32 {
            let k = Keypair::from_secret({
                let mut s = [1u8; 32];
                s[..4].copy_from_slice(&n.to_be_bytes());
                s
            });
            let mut a = ad(2, 1, 600_000 + u64::from(n)).body;
            a.supplier = k.public_key();
            full.met(k.public_key(), 0);
            full.upsert(Signed::sign(a, &k), 0);
        }
        assert_eq!(full.upsert(ad(3, 1, 900_000), 0), AdUpdate::Full);
        full.met(Keypair::from_secret([3; 32]).public_key(), 0);
        assert_eq!(full.upsert(ad(3, 1, 900_000), 0), AdUpdate::New);
        assert_eq!(full.len(), MAX_SUPPLIERS);
    }
}
