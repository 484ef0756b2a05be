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
                })
            })
            .collect();
        rows.sort_by(|a, b| (&a.name, &a.supplier).cmp(&(&b.name, &b.supplier)));
        rows
    }
}
