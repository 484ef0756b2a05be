//! Suppliers this node caught taking its payment without delivering: an embedding
//! request's vectors, which follow the ack that pays for them (`gateway::embed`). Such a
//! supplier is not asked again for [`SHUN_FOR`]; one whose stream merely broke after
//! the ack (which a network can do to an honest one) is shunned at its third such
//! failure within that time. Kept apart from the router's measurements, whose table
//! forgets its oldest entries, so ordinary churn cannot forget a shun (found by review),
//! and per supplier key, not per model: not delivering what was paid for is the node's
//! doing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use relaymesh_protocol::PublicKey;

/// How long a caught supplier is not asked again.
pub const SHUN_FOR: Duration = Duration::from_secs(3600);
/// Paid requests left undelivered by a broken stream, within [`SHUN_FOR`], that shun
/// their supplier.
pub const STRIKES: u32 = 3;
/// Most suppliers remembered; past it, those neither shunned nor struck recently go
/// first, then those whose shun ends soonest.
pub const MAX_REMEMBERED: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Record {
    /// Undelivered paid requests since `since`.
    strikes: u32,
    since: Instant,
    /// Shunned until then.
    until: Option<Instant>,
}

/// The suppliers caught, and those struck.
#[derive(Debug, Default)]
pub struct ShunList {
    records: Mutex<HashMap<PublicKey, Record>>,
}

impl ShunList {
    /// `supplier` took payment and answered with something other than what was paid
    /// for (a refusal, a malformed vector, a clean close): shunned now.
    pub fn caught(&self, supplier: PublicKey, now: Instant) {
        self.update(supplier, now, |r| r.until = Some(now + SHUN_FOR));
    }

    /// `supplier` took payment and its stream broke or stalled before delivering:
    /// shunned at the [`STRIKES`]th time within [`SHUN_FOR`].
    pub fn strike(&self, supplier: PublicKey, now: Instant) {
        self.update(supplier, now, |r| {
            if now.saturating_duration_since(r.since) >= SHUN_FOR {
                (r.strikes, r.since) = (0, now);
            }
            r.strikes += 1;
            if r.strikes >= STRIKES {
                r.until = Some(now + SHUN_FOR);
            }
        });
    }

    /// Whether `supplier` is shunned at `now`.
    pub fn is_shunned(&self, supplier: PublicKey, now: Instant) -> bool {
        self.records
            .lock()
            .expect("shun lock")
            .get(&supplier)
            .and_then(|r| r.until)
            .is_some_and(|until| now < until)
    }

    fn update(&self, supplier: PublicKey, now: Instant, f: impl FnOnce(&mut Record)) {
        let mut records = self.records.lock().expect("shun lock");
        if records.len() >= MAX_REMEMBERED && !records.contains_key(&supplier) {
            let live = |r: &Record| {
                r.until.is_some_and(|u| now < u)
                    || now.saturating_duration_since(r.since) < SHUN_FOR
            };
            records.retain(|_, r| live(r));
            if records.len() >= MAX_REMEMBERED {
                let soonest = records
                    .iter()
                    .min_by_key(|(_, r)| r.until.unwrap_or(r.since))
                    .map(|(k, _)| *k);
                if let Some(k) = soonest {
                    records.remove(&k);
                }
            }
        }
        let record = records.entry(supplier).or_insert(Record {
            strikes: 0,
            since: now,
            until: None,
        });
        f(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> PublicKey {
        PublicKey([n; 32])
    }

    /// Caught: shunned at once, for an hour; struck: at the third time in an hour,
    /// not at two an hour apart.
    #[test]
    fn a_caught_supplier_is_shunned_and_a_broken_one_at_its_third_strike() {
        let list = ShunList::default();
        let t0 = Instant::now();
        list.caught(key(1), t0);
        assert!(list.is_shunned(key(1), t0));
        assert!(!list.is_shunned(key(1), t0 + SHUN_FOR));
        list.strike(key(2), t0);
        list.strike(key(2), t0 + Duration::from_secs(60));
        assert!(!list.is_shunned(key(2), t0 + Duration::from_secs(60)));
        list.strike(key(2), t0 + Duration::from_secs(120));
        assert!(list.is_shunned(key(2), t0 + Duration::from_secs(120)));
        // Strikes an hour apart start over.
        list.strike(key(3), t0);
        list.strike(key(3), t0 + SHUN_FOR);
        list.strike(key(3), t0 + SHUN_FOR + Duration::from_secs(1));
        assert!(!list.is_shunned(key(3), t0 + SHUN_FOR + Duration::from_secs(1)));
    }

    /// A full list forgets the stale first, then the shun that ends soonest; a fresh
    /// shun is kept however many suppliers were struck (found by review: shuns lived
    /// in the router's table, whose churn forgot them first).
    #[test]
    fn a_full_list_keeps_its_shuns_over_stale_strikes() {
        let list = ShunList::default();
        let t0 = Instant::now();
        list.caught(key(0), t0);
        let later = t0 + SHUN_FOR / 2;
        for i in 0..MAX_REMEMBERED as u32 + 10 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&(i + 1).to_be_bytes());
            list.strike(PublicKey(k), if i < 100 { t0 } else { later });
        }
        assert!(list.is_shunned(key(0), later));
        assert!(list.records.lock().unwrap().len() <= MAX_REMEMBERED);
    }
}
