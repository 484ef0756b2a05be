//! The bounded table of who serves which model, fed by capability ads.
//!
//! Entries expire with their ad, and a peer that cannot be dialled is evicted, so a
//! killed node stops being offered.

use std::collections::BTreeMap;

use relaymesh_protocol::messages::capability::{ModelOffer, SignedCapabilityAd};
use relaymesh_protocol::PublicKey;
use serde::Serialize;

/// Most suppliers the table keeps; beyond it, the ad expiring soonest is dropped.
pub const MAX_SUPPLIERS: usize = 4096;

/// One supplier's latest ad.
#[derive(Clone, Debug)]
pub struct SupplierEntry {
    /// The ad.
    pub ad: SignedCapabilityAd,
    /// When we received it (unix ms).
    pub received_ms: u64,
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
    /// Advertised tokens per second.
    pub tokens_per_sec: f64,
    /// Price per CU (micro-credits).
    pub price_per_cu: u64,
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
}

/// Suppliers by key.
#[derive(Debug, Default)]
pub struct PeerTable {
    suppliers: BTreeMap<PublicKey, SupplierEntry>,
}

/// What an ad did to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdUpdate {
    /// A supplier we did not know.
    New,
    /// A newer ad of a known supplier.
    Updated,
    /// Not newer than what we hold.
    Stale,
}

impl PeerTable {
    /// Takes a validated ad.
    pub fn upsert(&mut self, ad: SignedCapabilityAd, now_ms: u64) -> AdUpdate {
        let key = ad.body.supplier;
        let update = match self.suppliers.get(&key) {
            Some(existing) if existing.ad.body.seq >= ad.body.seq => return AdUpdate::Stale,
            Some(_) => AdUpdate::Updated,
            None => AdUpdate::New,
        };
        if update == AdUpdate::New && self.suppliers.len() >= MAX_SUPPLIERS {
            let soonest = self
                .suppliers
                .iter()
                .min_by_key(|(_, e)| e.ad.body.expires_ms)
                .map(|(k, _)| *k)
                .expect("table is full");
            self.suppliers.remove(&soonest);
        }
        self.suppliers.insert(
            key,
            SupplierEntry {
                ad,
                received_ms: now_ms,
            },
        );
        update
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

    /// Drops a supplier (its node cannot be dialled).
    pub fn evict(&mut self, supplier: &PublicKey) -> bool {
        self.suppliers.remove(supplier).is_some()
    }

    /// Number of suppliers.
    pub fn len(&self) -> usize {
        self.suppliers.len()
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
                    tokens_per_sec: f64::from(m.tokens_per_sec_milli) / 1000.0,
                    price_per_cu: m.price_per_cu,
                    context_length: m.context_length,
                    expires_in_s: ad.expires_ms.saturating_sub(now_ms) / 1000,
                    source: m.manifest.as_ref().map(|x| x.body.source.peer_id()),
                    royalty_ppm: m.manifest.as_ref().map_or(0, |x| x.body.royalty_ppm),
                    ttft_ms: m.ttft_ms,
                    tau: m.tau,
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

    #[test]
    fn newer_ads_replace_older_and_entries_expire() {
        let mut table = PeerTable::default();
        assert_eq!(table.upsert(ad(1, 5, 100), 0), AdUpdate::New);
        assert_eq!(table.upsert(ad(1, 5, 200), 0), AdUpdate::Stale);
        assert_eq!(table.upsert(ad(1, 4, 200), 0), AdUpdate::Stale);
        assert_eq!(table.upsert(ad(1, 6, 200), 0), AdUpdate::Updated);
        table.upsert(ad(2, 1, 150), 0);
        assert_eq!(table.suppliers_of("m").count(), 2);
        assert_eq!(table.expire(160).len(), 1);
        assert_eq!(table.len(), 1);
        let key = Keypair::from_secret([1; 32]).public_key();
        assert!(table.evict(&key));
        assert!(table.is_empty());
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
}
