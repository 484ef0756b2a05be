//! `SupplierScore`: expected speed of a supplier for the next request, discounted for
//! load, errors, low reputation and price.
//!
//! The score estimates how many "typical requests" (first token plus 128 generated
//! tokens) per second this supplier would deliver to us: `1000 / latency_ms`, where
//! `latency = ttft + 128 / tokens_per_sec`, inflated by its load, and multiplied by
//! factors in (0, 1] for errors, reputation and price. Suppliers above the app's
//! maximum price are not ranked at all. Floats are fine here: routing is a local
//! decision, not consensus.

/// Tokens in the "typical request" the score is expressed in.
const TYPICAL_TOKENS: f64 = 128.0;

/// What a node knows about one supplier of one model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SupplierStats {
    /// Time to first token, EWMA, milliseconds (from the ad until measured).
    pub ttft_ms: f64,
    /// Generation speed, EWMA, tokens per second.
    pub tokens_per_sec: f64,
    /// Our requests in flight at this supplier.
    pub in_flight: u32,
    /// Free slots in its latest ad.
    pub free_slots: u32,
    /// Slots in all.
    pub total_slots: u32,
    /// Recent failures, decayed (each failure adds 1, halves every `decay` window).
    pub errors: f64,
    /// Reputation in [0, 1]; 1 until the relay-mining ledger says otherwise.
    pub reputation: f64,
    /// Its price per CU, micro-credits.
    pub price_per_cu: u64,
}

impl SupplierStats {
    /// Priors from an ad: advertised speed, no history.
    pub fn from_ad(
        ttft_ms: u32,
        tokens_per_sec_milli: u32,
        free_slots: u16,
        total_slots: u16,
        price_per_cu: u64,
    ) -> Self {
        Self {
            ttft_ms: f64::from(ttft_ms.max(1)),
            tokens_per_sec: (f64::from(tokens_per_sec_milli) / 1000.0).max(0.1),
            in_flight: 0,
            free_slots: u32::from(free_slots),
            total_slots: u32::from(total_slots.max(1)),
            errors: 0.0,
            reputation: 1.0,
            price_per_cu,
        }
    }

    /// Folds a measured time to first token into the average.
    pub fn observe_ttft(&mut self, ttft_ms: f64, weights: &ScoreWeights) {
        self.ttft_ms = ewma(self.ttft_ms, ttft_ms, weights.ewma_alpha);
    }

    /// Folds a measured generation speed into the average.
    pub fn observe_speed(&mut self, tokens_per_sec: f64, weights: &ScoreWeights) {
        self.tokens_per_sec = ewma(self.tokens_per_sec, tokens_per_sec, weights.ewma_alpha);
    }

    /// Records a failure (broken stream, stall, refused session).
    pub fn observe_error(&mut self) {
        self.errors += 1.0;
    }

    /// Lets old errors fade: `elapsed_ms` since the last decay, half-life from weights.
    pub fn decay_errors(&mut self, elapsed_ms: u64, weights: &ScoreWeights) {
        let halvings = elapsed_ms as f64 / weights.error_half_life_ms as f64;
        self.errors *= 0.5f64.powf(halvings);
    }
}

/// Exponentially weighted moving average.
pub fn ewma(previous: f64, sample: f64, alpha: f64) -> f64 {
    previous + alpha * (sample - previous)
}

/// Tunable weights of the score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScoreWeights {
    /// EWMA factor for new measurements.
    pub ewma_alpha: f64,
    /// Half-life of the error penalty.
    pub error_half_life_ms: u64,
    /// Score multiplier per decayed error: `1 / (1 + penalty · errors)`.
    pub error_penalty: f64,
    /// Slowdown when no slot is free (the request will queue).
    pub full_penalty: f64,
    /// How much price matters: factor `1 − price_weight · price / max_price`.
    pub price_weight: f64,
}

impl Default for ScoreWeights {
    fn default() -> Self {
        Self {
            ewma_alpha: 0.3,
            error_half_life_ms: 60_000,
            error_penalty: 2.0,
            full_penalty: 4.0,
            price_weight: 0.5,
        }
    }
}

/// A supplier's score: higher is better.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct SupplierScore(pub f64);

impl SupplierScore {
    /// Scores `stats`; `None` when the supplier charges more than `max_price`.
    pub fn of(
        stats: &SupplierStats,
        max_price: Option<u64>,
        weights: &ScoreWeights,
    ) -> Option<Self> {
        if max_price.is_some_and(|max| stats.price_per_cu > max) {
            return None;
        }
        let speed = stats.tokens_per_sec.max(0.01);
        let latency = stats.ttft_ms.max(0.1) + TYPICAL_TOKENS * 1000.0 / speed;
        let load = 1.0 + f64::from(stats.in_flight) / f64::from(stats.total_slots.max(1));
        let queue = if stats.free_slots == 0 {
            weights.full_penalty
        } else {
            1.0
        };
        let errors = 1.0 / (1.0 + weights.error_penalty * stats.errors.max(0.0));
        let reputation = 0.5 + 0.5 * stats.reputation.clamp(0.0, 1.0);
        let price = match max_price {
            Some(max) if max > 0 => {
                1.0 - weights.price_weight * (stats.price_per_cu as f64 / max as f64)
            }
            _ => 1.0,
        };
        Some(SupplierScore(
            1000.0 / (latency * load * queue) * errors * reputation * price,
        ))
    }
}

/// Ranks candidates best first; ties go to the smaller peer id so every run of the same
/// inputs gives the same order. Suppliers above `max_price` are left out.
pub fn rank<P: Ord + Clone>(
    candidates: impl IntoIterator<Item = (P, SupplierStats)>,
    max_price: Option<u64>,
    weights: &ScoreWeights,
) -> Vec<(P, SupplierScore)> {
    let mut ranked: Vec<(P, SupplierScore)> = candidates
        .into_iter()
        .filter_map(|(peer, stats)| {
            SupplierScore::of(&stats, max_price, weights).map(|s| (peer, s))
        })
        .collect();
    ranked.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0).then_with(|| a.0.cmp(&b.0)));
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> SupplierStats {
        SupplierStats::from_ad(100, 30_000, 4, 4, 10)
    }

    #[test]
    fn faster_busier_erring_pricier_order_as_expected() {
        let w = ScoreWeights::default();
        let base = SupplierScore::of(&stats(), Some(100), &w).unwrap();
        let mut fast = stats();
        fast.tokens_per_sec = 90.0;
        assert!(SupplierScore::of(&fast, Some(100), &w).unwrap() > base);
        let mut busy = stats();
        busy.in_flight = 4;
        busy.free_slots = 0;
        assert!(SupplierScore::of(&busy, Some(100), &w).unwrap() < base);
        let mut erring = stats();
        erring.observe_error();
        assert!(SupplierScore::of(&erring, Some(100), &w).unwrap() < base);
        erring.decay_errors(10 * w.error_half_life_ms, &w);
        assert!(erring.errors < 0.001);
        let mut pricey = stats();
        pricey.price_per_cu = 90;
        assert!(SupplierScore::of(&pricey, Some(100), &w).unwrap() < base);
        pricey.price_per_cu = 101;
        assert!(SupplierScore::of(&pricey, Some(100), &w).is_none());
    }

    #[test]
    fn rank_is_deterministic_and_skips_expensive() {
        let w = ScoreWeights::default();
        let mut expensive = stats();
        expensive.price_per_cu = 1000;
        let ranked = rank(
            [(3u32, stats()), (1, stats()), (2, expensive)],
            Some(100),
            &w,
        );
        let order: Vec<u32> = ranked.iter().map(|(p, _)| *p).collect();
        assert_eq!(order, vec![1, 3]);
    }
}
