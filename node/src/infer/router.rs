//! Choosing suppliers: the protocol crate's [`SupplierScore`] over what the node knows
//! of each supplier of a model (its ad, and what this node measured: time to first
//! token, speed, requests in flight, recent errors), after the user's rules have left
//! out those they will not use (a maximum price per CU, a pinned model digest, an
//! allowlist of trusted suppliers).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use relaymesh_protocol::messages::capability::ModelOffer;
use relaymesh_protocol::routing::score::{rank, ScoreWeights, SupplierScore, SupplierStats};
use relaymesh_protocol::{Digest, PublicKey};

/// Who may serve a request, from the node's configuration and the request's headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutePolicy {
    /// Suppliers above this price per CU are not used.
    pub max_price: Option<u64>,
    /// The model's GGUF digest must be this one.
    pub digest: Option<Digest>,
    /// Only these suppliers are used (`None`: any).
    pub allow: Option<Vec<PublicKey>>,
}

impl RoutePolicy {
    /// Both policies at once: the lower price, the intersection of the allowlists. Two
    /// different pinned digests leave nothing to choose (`Err` names them).
    pub fn and(&self, other: &RoutePolicy) -> Result<RoutePolicy, String> {
        let digest = match (self.digest, other.digest) {
            (Some(a), Some(b)) if a != b => {
                return Err(format!(
                    "the request pins blake3:{} but the node's configuration pins blake3:{}",
                    b.to_hex(),
                    a.to_hex()
                ))
            }
            (a, b) => a.or(b),
        };
        let allow = match (&self.allow, &other.allow) {
            (Some(a), Some(b)) => Some(a.iter().filter(|k| b.contains(k)).copied().collect()),
            (a, b) => a.clone().or_else(|| b.clone()),
        };
        Ok(RoutePolicy {
            max_price: match (self.max_price, other.max_price) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            digest,
            allow,
        })
    }
}

/// How a node sends requests to the mesh: the rules from its configuration, which every
/// request's own rules narrow, and how long to wait for suppliers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutingConfig {
    /// Suppliers above this price per CU are never used.
    pub max_price: Option<u64>,
    /// Model name → the GGUF digest its suppliers must serve.
    pub pins: std::collections::BTreeMap<String, Digest>,
    /// Only these suppliers are sent prompts (`None`: any).
    pub trust: Option<Vec<PublicKey>>,
    /// First-token and stall limits.
    pub timeouts: super::gateway::Timeouts,
}

impl RoutingConfig {
    /// The configured rules for `model`.
    pub fn policy(&self, model: &str) -> RoutePolicy {
        RoutePolicy {
            max_price: self.max_price,
            digest: self.pins.get(model).copied(),
            allow: self.trust.clone(),
        }
    }
}

/// Why no supplier can take a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoRoute {
    /// Nobody on the mesh serves the model.
    #[error("no supplier of {0} on the mesh")]
    NoSupplier(String),
    /// Suppliers serve it, but none with the pinned digest.
    #[error("no supplier serves {model} with the pinned digest blake3:{digest}")]
    Digest {
        /// The model.
        model: String,
        /// The pinned digest, hex.
        digest: String,
    },
    /// Suppliers serve it, but none of the trusted ones.
    #[error("{count} suppliers serve {model}, but none on the allowlist")]
    NotAllowed {
        /// The model.
        model: String,
        /// Suppliers left out.
        count: usize,
    },
    /// Suppliers serve it, but every one took this node's payment without delivering.
    #[error("{count} suppliers serve {model}, but each took this node's payment without delivering and is shunned for an hour")]
    Shunned {
        /// The model.
        model: String,
        /// Suppliers left out.
        count: usize,
    },
    /// Suppliers serve it, but all above the maximum price.
    #[error("{count} suppliers serve {model}, but all above the maximum price of {max} per CU")]
    TooExpensive {
        /// The model.
        model: String,
        /// Suppliers left out.
        count: usize,
        /// The maximum.
        max: u64,
    },
}

/// A supplier of a model as this node's requests found it.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Observed {
    /// Time to first token measured here (EWMA, ms); `None` before a request.
    pub ttft_ms: Option<f64>,
    /// Generation speed measured here (EWMA, tokens/s); `None` before a request.
    pub tokens_per_sec: Option<f64>,
    /// Recent failures here, decayed (halving every few minutes).
    pub errors: f64,
    /// The routing score of its offer here (typical requests a second, §11 of
    /// PROTOCOL.md); `None` when it cannot be ranked, or is shunned.
    pub score: Option<f64>,
    /// It took this node's payment without delivering, and routing skips it
    /// (`infer::shun`).
    pub shunned: bool,
}

/// What this node measured of one supplier's model.
#[derive(Clone, Copy, Debug)]
struct Measured {
    ttft_ms: Option<f64>,
    tokens_per_sec: Option<f64>,
    in_flight: u32,
    errors: f64,
    decayed_at: Instant,
}

impl Measured {
    /// Its errors, decayed to now.
    fn decayed_errors(&self, weights: &ScoreWeights) -> f64 {
        let mut stats = SupplierStats::from_ad(0, 0, 0, 0, 0);
        stats.errors = self.errors;
        stats.decay_errors(self.decayed_at.elapsed().as_millis() as u64, weights);
        stats.errors
    }

    /// Lays what was measured over an ad's `stats`; returns whether a speed was
    /// measured.
    fn apply(&self, stats: &mut SupplierStats) -> bool {
        if let Some(t) = self.ttft_ms {
            stats.ttft_ms = t;
        }
        if let Some(s) = self.tokens_per_sec {
            stats.tokens_per_sec = s;
        }
        stats.in_flight = self.in_flight;
        stats.errors = self.errors;
        // The ad's free slots are a snapshot (perhaps taken while our own requests
        // were there); with requests of ours in flight, our count is fresher.
        if self.in_flight > 0 {
            stats.free_slots = stats.total_slots.saturating_sub(self.in_flight);
        }
        self.tokens_per_sec.is_some()
    }
}

impl Default for Measured {
    fn default() -> Self {
        Self {
            ttft_ms: None,
            tokens_per_sec: None,
            in_flight: 0,
            errors: 0.0,
            decayed_at: Instant::now(),
        }
    }
}

type Key = (PublicKey, String);

/// The node's routing state, shared by every request it sends to the mesh.
#[derive(Default)]
pub struct Router {
    measured: Mutex<HashMap<Key, Measured>>,
    weights: ScoreWeights,
    /// Suppliers caught taking payment without delivering.
    shunned: super::shun::ShunList,
    /// Woken whenever one of this node's requests to a supplier ends (a slot freed).
    freed: tokio::sync::Notify,
}

/// Most (supplier, model) pairs remembered; the oldest-measured are forgotten first.
pub const MAX_TRACKED: usize = 4096;

impl Router {
    /// A router with the default score weights.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn with<T>(&self, supplier: PublicKey, model: &str, f: impl FnOnce(&mut Measured) -> T) -> T {
        let mut map = self.measured.lock().expect("router lock");
        if map.len() >= MAX_TRACKED && !map.contains_key(&(supplier, model.to_owned())) {
            // Forget an idle entry: measurements are a cache, ads remain the source.
            if let Some(k) = map
                .iter()
                .filter(|(_, m)| m.in_flight == 0)
                .min_by_key(|(_, m)| m.decayed_at)
                .map(|(k, _)| k.clone())
            {
                map.remove(&k);
            }
        }
        let entry = map.entry((supplier, model.to_owned())).or_default();
        entry.errors = entry.decayed_errors(&self.weights);
        entry.decayed_at = Instant::now();
        f(entry)
    }

    /// What is known of a supplier, and whether its speed is known at all (a supplier
    /// that has served nothing yet advertises none).
    fn stats(&self, supplier: PublicKey, model: &str, offer: &ModelOffer) -> SupplierStats {
        self.stats_known(supplier, model, offer).0
    }

    fn stats_known(
        &self,
        supplier: PublicKey,
        model: &str,
        offer: &ModelOffer,
    ) -> (SupplierStats, bool) {
        let mut known = offer.tokens_per_sec_milli > 0;
        let mut stats = SupplierStats::from_ad(
            offer.ttft_ms,
            offer.tokens_per_sec_milli,
            offer.free_slots,
            offer.total_slots,
            list_price(offer),
        );
        self.with(supplier, model, |m| known |= m.apply(&mut stats));
        (stats, known)
    }

    /// What this node measured of `supplier` serving `model` (nothing is recorded by
    /// asking), and the score its ad (`advertised`, whose speed is `speed_known` or a
    /// placeholder) gets here, as [`Router::rank`] computes it: for the dashboard's and
    /// `/relaymesh/v1/models`' view of the mesh. No score while no speed is known.
    pub fn observed(
        &self,
        supplier: PublicKey,
        model: &str,
        mut advertised: SupplierStats,
        speed_known: bool,
    ) -> Observed {
        // A copy, decayed as `with` would decay it, so that asking records nothing.
        let seen = self
            .measured
            .lock()
            .expect("router lock")
            .get(&(supplier, model.to_owned()))
            .map(|m| Measured {
                errors: m.decayed_errors(&self.weights),
                ..*m
            });
        let known = speed_known | seen.is_some_and(|m| m.apply(&mut advertised));
        let shunned = self.is_shunned(supplier);
        Observed {
            ttft_ms: seen.and_then(|m| m.ttft_ms),
            tokens_per_sec: seen.and_then(|m| m.tokens_per_sec),
            errors: advertised.errors,
            score: (known && !shunned)
                .then(|| SupplierScore::of(&advertised, None, &self.weights).map(|s| s.0))
                .flatten(),
            shunned,
        }
    }

    /// The score of one supplier's offer, as [`Router::rank`] computes it.
    pub fn score(
        &self,
        supplier: PublicKey,
        model: &str,
        offer: &ModelOffer,
        max_price: Option<u64>,
    ) -> Option<SupplierScore> {
        SupplierScore::of(
            &self.stats(supplier, model, offer),
            max_price,
            &self.weights,
        )
    }

    /// The offers `policy` allows, best first.
    pub fn rank(
        &self,
        model: &str,
        offers: Vec<(PublicKey, ModelOffer)>,
        policy: &RoutePolicy,
    ) -> Result<Vec<(PublicKey, ModelOffer)>, NoRoute> {
        if offers.is_empty() {
            return Err(NoRoute::NoSupplier(model.to_owned()));
        }
        let offers: Vec<_> = match policy.digest {
            Some(d) => offers
                .into_iter()
                .filter(|(_, o)| o.gguf_digest == Some(d))
                .collect(),
            None => offers,
        };
        if offers.is_empty() {
            return Err(NoRoute::Digest {
                model: model.to_owned(),
                digest: policy.digest.map(|d| d.to_hex()).unwrap_or_default(),
            });
        }
        let count = offers.len();
        let offers: Vec<_> = match &policy.allow {
            Some(allow) => offers
                .into_iter()
                .filter(|(k, _)| allow.contains(k))
                .collect(),
            None => offers,
        };
        if offers.is_empty() {
            return Err(NoRoute::NotAllowed {
                model: model.to_owned(),
                count,
            });
        }
        let count = offers.len();
        let offers: Vec<_> = offers
            .into_iter()
            .filter(|(k, _)| !self.is_shunned(*k))
            .collect();
        if offers.is_empty() {
            return Err(NoRoute::Shunned {
                model: model.to_owned(),
                count,
            });
        }
        let count = offers.len();
        let mut stats: Vec<(SupplierStats, bool)> = offers
            .iter()
            .map(|(k, o)| self.stats_known(*k, model, o))
            .collect();
        // A supplier that has served nothing yet is assumed nearly as fast as the best
        // known one (9/10: a known supplier wins a tie, a busy one does not): otherwise
        // it would never be chosen, and never measured.
        let best = stats
            .iter()
            .filter(|(_, known)| *known)
            .map(|(s, _)| (s.tokens_per_sec, s.ttft_ms))
            .reduce(|a, b| (a.0.max(b.0), a.1.min(b.1)));
        if let Some((speed, ttft)) = best {
            for (s, known) in &mut stats {
                if !*known {
                    s.tokens_per_sec = speed * 0.9;
                    s.ttft_ms = ttft;
                }
            }
        }
        let ranked = rank(
            offers
                .iter()
                .zip(stats)
                .enumerate()
                .map(|(i, ((k, _), (s, _)))| ((k.0, i), s)),
            policy.max_price,
            &self.weights,
        );
        if ranked.is_empty() {
            return Err(NoRoute::TooExpensive {
                model: model.to_owned(),
                count,
                max: policy.max_price.unwrap_or(0),
            });
        }
        Ok(ranked
            .into_iter()
            .map(|((_, i), _)| offers[i].clone())
            .collect())
    }

    /// Counts a request in flight at `supplier` until the guard is dropped.
    pub fn begin(self: &Arc<Self>, supplier: PublicKey, model: &str) -> InFlight {
        self.with(supplier, model, |m| m.in_flight += 1);
        InFlight {
            router: self.clone(),
            supplier,
            model: model.to_owned(),
        }
    }

    /// A future that completes when one of this node's requests to a supplier ends;
    /// `enable` it before checking for room.
    pub fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }

    /// This node's requests in flight at `supplier` for `model`.
    pub fn in_flight(&self, supplier: PublicKey, model: &str) -> u32 {
        self.with(supplier, model, |m| m.in_flight)
    }

    /// Records a measured time to first token.
    pub fn observe_ttft(&self, supplier: PublicKey, model: &str, ms: f64) {
        let w = self.weights;
        self.with(supplier, model, |m| {
            m.ttft_ms = Some(m.ttft_ms.map_or(ms, |t| {
                relaymesh_protocol::routing::score::ewma(t, ms, w.ewma_alpha)
            }));
        });
    }

    /// Records a measured generation speed.
    pub fn observe_speed(&self, supplier: PublicKey, model: &str, tokens_per_sec: f64) {
        let w = self.weights;
        self.with(supplier, model, |m| {
            m.tokens_per_sec = Some(m.tokens_per_sec.map_or(tokens_per_sec, |s| {
                relaymesh_protocol::routing::score::ewma(s, tokens_per_sec, w.ewma_alpha)
            }));
        });
    }

    /// Records a failure (refused, unreachable, broken or stalled stream).
    pub fn observe_error(&self, supplier: PublicKey, model: &str) {
        self.with(supplier, model, |m| m.errors += 1.0);
    }

    /// Records that `supplier` took this node's payment for `model` and answered with
    /// something other than what was paid for: it is not asked again for an hour
    /// (`shun`). What such a supplier takes is then one request's pay per hour from
    /// each node it cheats, not one per failure its error count forgives.
    pub fn caught(&self, supplier: PublicKey, model: &str) {
        self.observe_error(supplier, model);
        self.shunned.caught(supplier, Instant::now());
    }

    /// Records that `supplier` took this node's payment for `model` and its stream
    /// broke before delivering (which a network can do to an honest supplier): it is
    /// shunned at its third such failure within the hour.
    pub fn struck(&self, supplier: PublicKey, model: &str) {
        self.observe_error(supplier, model);
        self.shunned.strike(supplier, Instant::now());
    }

    /// Whether `supplier` is shunned now.
    pub fn is_shunned(&self, supplier: PublicKey) -> bool {
        self.shunned.is_shunned(supplier, Instant::now())
    }

    /// Recent errors of a supplier's model (decayed), for tests and status.
    pub fn errors(&self, supplier: PublicKey, model: &str) -> f64 {
        self.with(supplier, model, |m| m.errors)
    }
}

/// A request in flight at a supplier; dropping it ends the count.
pub struct InFlight {
    router: Arc<Router>,
    supplier: PublicKey,
    model: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.router.with(self.supplier, &self.model, |m| {
            m.in_flight = m.in_flight.saturating_sub(1)
        });
        self.router.freed.notify_waiters();
    }
}

/// What an offer costs per CU of the default formula: its price, scaled by the largest
/// of its CU factors' ratios to the default ones (rounded up). An ad's price alone
/// says nothing when its supplier picks the factors too: price 1 at 1,000 CUs per
/// output byte costs 250 times price 1 at the default 4. Ranking and `max_price`
/// compare this (found by review: such an offer ranked cheapest).
pub fn list_price(offer: &ModelOffer) -> u64 {
    let base = relaymesh_protocol::metering::compute_units::CuFormula::default();
    let (bp, bo, be) = (
        u128::from(base.prompt_per_byte.max(1)),
        u128::from(base.output_per_byte.max(1)),
        u128::from(base.embed_per_byte.max(1)),
    );
    // The largest factor ratio, p / bp, o / bo or e / be (embedding inputs), over the
    // common denominator bp·bo·be; never below the default formula's.
    let cu = &offer.cu;
    let ratio = (u128::from(cu.prompt_per_byte) * bo * be)
        .max(u128::from(cu.output_per_byte) * bp * be)
        .max(u128::from(cu.embed_per_byte) * bp * bo)
        .max(bp * bo * be);
    let price = (u128::from(offer.price_per_cu) * ratio).div_ceil(bp * bo * be);
    u64::try_from(price).unwrap_or(u64::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use relaymesh_protocol::metering::compute_units::CuFormula;
    use relaymesh_protocol::{BoundedString, Keypair, Signer};

    pub(crate) fn offer(price: u64, tps: u32, digest: u8) -> ModelOffer {
        ModelOffer {
            name: BoundedString::new("m").unwrap(),
            gguf_digest: Some(Digest([digest; 32])),
            manifest: None,
            context_length: 2048,
            free_slots: 1,
            total_slots: 1,
            tokens_per_sec_milli: tps,
            ttft_ms: 100,
            price_per_cu: price,
            cu: CuFormula::default(),
            tau: 1,
            max_token_bytes: 32,
            details: Default::default(),
            embedding_dims: None,
        }
    }

    fn key(seed: u8) -> PublicKey {
        Keypair::from_secret([seed; 32]).public_key()
    }

    /// The view of the mesh the dashboard shows: nothing measured before a request,
    /// then what the requests found, a score that falls with failures, and no score
    /// while no speed is known at all; asking records nothing.
    #[test]
    fn what_a_node_measured_of_a_supplier_is_shown_with_its_score() {
        let router = Router::new();
        let a = key(1);
        let ad = |tps_milli| SupplierStats::from_ad(100, tps_milli, 1, 1, 1);
        let fresh = router.observed(a, "m", ad(10_000), true);
        assert_eq!(
            (fresh.ttft_ms, fresh.tokens_per_sec, fresh.errors),
            (None, None, 0.0)
        );
        assert!(fresh.score.is_some());
        assert_eq!(router.observed(a, "m", ad(0), false).score, None);
        assert!(
            router.measured.lock().unwrap().is_empty(),
            "asking recorded nothing"
        );
        router.observe_ttft(a, "m", 50.0);
        router.observe_speed(a, "m", 20.0);
        let served = router.observed(a, "m", ad(0), false);
        assert_eq!(
            (served.ttft_ms, served.tokens_per_sec),
            (Some(50.0), Some(20.0))
        );
        let before = served.score.expect("a measured speed gives a score");
        router.observe_error(a, "m");
        let failed = router.observed(a, "m", ad(0), false);
        assert!(failed.errors > 0.9 && failed.score.unwrap() < before);
    }

    #[test]
    fn faster_first_then_errors_and_load_push_down() {
        let router = Router::new();
        let (a, b) = (key(1), key(2));
        let offers = vec![(a, offer(1, 10_000, 1)), (b, offer(1, 20_000, 1))];
        let order = |r: &Router| -> Vec<PublicKey> {
            r.rank("m", offers.clone(), &RoutePolicy::default())
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(order(&router), vec![b, a]);
        router.observe_error(b, "m");
        assert_eq!(order(&router), vec![a, b], "one error halves b's score");
        let router = Router::new();
        let _x = router.begin(b, "m");
        let _y = router.begin(b, "m");
        assert_eq!(order(&router), vec![a, b], "b has two of ours in flight");
        drop((_x, _y));
        assert_eq!(order(&router), vec![b, a]);
        router.observe_speed(b, "m", 1.0);
        assert_eq!(
            order(&router),
            vec![a, b],
            "measured speed replaces the ad's"
        );
    }

    #[test]
    fn a_supplier_that_served_nothing_yet_gets_a_fair_chance() {
        let router = Router::new();
        let (a, b) = (key(1), key(2));
        let fresh = offer(1, 0, 1);
        let offers = vec![(a, offer(1, 20_000, 1)), (b, fresh.clone())];
        let busy = router.begin(a, "m");
        let ranked = router.rank("m", offers, &RoutePolicy::default()).unwrap();
        assert_eq!(
            ranked[0].0, b,
            "nearly as fast as the best on paper, and idle"
        );
        drop(busy);
        let ranked = router
            .rank(
                "m",
                vec![(a, offer(1, 20_000, 1)), (b, fresh)],
                &RoutePolicy::default(),
            )
            .unwrap();
        assert_eq!(ranked[0].0, a, "with a idle too, the known one wins");
    }

    /// A supplier that took payment without delivering is not ranked again; when every
    /// one did, the request is refused saying so.
    #[test]
    fn a_supplier_that_took_payment_without_delivering_is_shunned() {
        let router = Router::new();
        let (a, b) = (key(1), key(2));
        let offers = vec![(a, offer(1, 10_000, 1)), (b, offer(1, 10_000, 2))];
        router.caught(a, "m");
        assert!(router.is_shunned(a) && !router.is_shunned(b));
        let ranked = router
            .rank("m", offers.clone(), &RoutePolicy::default())
            .unwrap();
        assert_eq!(ranked.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![b]);
        for _ in 0..super::super::shun::STRIKES {
            router.struck(b, "m");
        }
        assert!(matches!(
            router.rank("m", offers, &RoutePolicy::default()),
            Err(NoRoute::Shunned { count: 2, .. })
        ));
        // The models view says so, and gives it no score.
        let view = router.observed(a, "m", SupplierStats::from_ad(100, 10_000, 1, 1, 1), true);
        assert!(view.shunned && view.score.is_none());
    }

    /// Found by review: an offer at price 1 with 1,000 CUs per output byte ranked as
    /// the cheapest and passed any `max_price`, while it charged 250 times the
    /// default formula's price 1.
    #[test]
    fn an_offer_is_priced_by_its_cu_factors_too() {
        let router = Router::new();
        let (a, b) = (key(1), key(2));
        let mut dear = offer(1, 10_000, 1);
        dear.cu.output_per_byte = 1_000;
        assert_eq!(list_price(&dear), 250);
        assert_eq!(list_price(&offer(3, 10_000, 1)), 3);
        let mut a_little = offer(4, 10_000, 1);
        a_little.cu.output_per_byte = 5;
        assert_eq!(list_price(&a_little), 5, "4 × 5/4");
        // Embeddings at 1,000 CUs a byte cost 1,000 times the default's (version 6).
        let mut dear_vectors = offer(1, 10_000, 1);
        dear_vectors.cu.embed_per_byte = 1_000;
        assert_eq!(list_price(&dear_vectors), 1_000);
        let offers = vec![(a, dear), (b, offer(3, 10_000, 2))];
        let cheap = RoutePolicy {
            max_price: Some(10),
            ..Default::default()
        };
        let ranked = router.rank("m", offers, &cheap).unwrap();
        assert_eq!(ranked.len(), 1);
        assert_eq!(ranked[0].0, b);
    }

    #[test]
    fn policies_leave_suppliers_out_and_say_why() {
        let router = Router::new();
        let (a, b) = (key(1), key(2));
        let offers = vec![(a, offer(5, 10_000, 1)), (b, offer(50, 10_000, 2))];
        let cheap = RoutePolicy {
            max_price: Some(10),
            ..Default::default()
        };
        let ranked = router.rank("m", offers.clone(), &cheap).unwrap();
        assert_eq!(ranked.len(), 1);
        assert_eq!(ranked[0].0, a);
        let broke = RoutePolicy {
            max_price: Some(1),
            ..Default::default()
        };
        assert!(matches!(
            router.rank("m", offers.clone(), &broke),
            Err(NoRoute::TooExpensive {
                count: 2,
                max: 1,
                ..
            })
        ));
        let pinned = RoutePolicy {
            digest: Some(Digest([2; 32])),
            ..Default::default()
        };
        assert_eq!(router.rank("m", offers.clone(), &pinned).unwrap()[0].0, b);
        let unknown = RoutePolicy {
            digest: Some(Digest([9; 32])),
            ..Default::default()
        };
        assert!(matches!(
            router.rank("m", offers.clone(), &unknown),
            Err(NoRoute::Digest { .. })
        ));
        let trusted = RoutePolicy {
            allow: Some(vec![key(3)]),
            ..Default::default()
        };
        assert!(matches!(
            router.rank("m", offers.clone(), &trusted),
            Err(NoRoute::NotAllowed { count: 2, .. })
        ));
        assert!(matches!(
            router.rank("m", vec![], &RoutePolicy::default()),
            Err(NoRoute::NoSupplier(_))
        ));
    }

    #[test]
    fn combined_policies_narrow() {
        let config = RoutePolicy {
            max_price: Some(10),
            digest: Some(Digest([1; 32])),
            allow: Some(vec![key(1), key(2)]),
        };
        let request = RoutePolicy {
            max_price: Some(20),
            digest: None,
            allow: Some(vec![key(2), key(3)]),
        };
        let both = config.and(&request).unwrap();
        assert_eq!(both.max_price, Some(10));
        assert_eq!(both.digest, Some(Digest([1; 32])));
        assert_eq!(both.allow, Some(vec![key(2)]));
        let other_pin = RoutePolicy {
            digest: Some(Digest([2; 32])),
            ..Default::default()
        };
        assert!(config.and(&other_pin).is_err());
    }
}
