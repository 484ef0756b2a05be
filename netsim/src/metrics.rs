//! What a run measures, and the summary row it reports.

/// A sorted sample, for percentiles and distribution plots.
#[derive(Clone, Debug, Default)]
pub struct Sample(Vec<f64>);

impl Sample {
    /// Adds one value.
    pub fn push(&mut self, v: f64) {
        self.0.push(v);
    }

    /// Sorts; call before reading percentiles.
    pub fn finish(&mut self) {
        self.0.sort_by(f64::total_cmp);
    }

    /// The `q` quantile (0 when empty).
    pub fn quantile(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        let i = ((self.0.len() - 1) as f64 * q).round() as usize;
        self.0[i]
    }

    /// The values, sorted after [`Sample::finish`].
    pub fn values(&self) -> &[f64] {
        &self.0
    }

    /// How many values.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Gossip kinds whose traffic is accounted separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GossipKind {
    /// Capability ads.
    Ad = 0,
    /// Claims.
    Claim = 1,
    /// Reveals.
    Reveal = 2,
    /// Proofs.
    Proof = 3,
    /// Equivocation evidence.
    Evidence = 4,
}

/// Counters of one run.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    // Requests.
    pub requests: u64,
    pub honest_requests: u64,
    pub honest_served: u64,
    pub honest_failed: u64,
    pub served_after_failover: u64,
    pub abandoned_by_app: u64,
    pub attempts: u64,
    pub failed_dials: u64,
    pub stalls: u64,
    pub garbage_detected: u64,
    pub refused_busy: u64,
    /// Attempts refused because the app owed too many unacknowledged tokens.
    pub refused_debt: u64,
    /// Tokens streamed to apps that never acknowledged them (the free ride).
    pub free_tokens: u64,
    /// Apps that stop acking, and the run's length: for the free ride per app-hour.
    pub free_riders: u64,
    pub duration_h: f64,
    pub ttft_ms: Sample,
    pub ttft_overhead_ms: Sample,
    // Metering.
    pub receipts: u64,
    pub mined: u64,
    pub sessions: u64,
    pub tau_sum: f64,
    pub served_cu: u128,
    // Settlement.
    pub claims: u64,
    pub claims_settled: u64,
    pub full_reveals: u64,
    pub proofs_refused: u64,
    pub claims_refused: u64,
    pub claims_late: u64,
    pub honest_claims_refused: u64,
    pub honest_claims_unsettled: u64,
    pub cheating_claims: u64,
    pub cheating_detected: u64,
    pub expected_detection_sum: f64,
    pub equivocations: u64,
    pub honest_excluded: u64,
    pub credits_minus_debits: i128,
    pub settle_ms: Sample,
    pub convergence_ms: Sample,
    // Metering accuracy over honest suppliers' settled sessions.
    pub metering_error: f64,
    pub metering_bias: f64,
    pub metering_max_z: f64,
    pub expected_error: f64,
    // Gossip.
    pub gossip_msgs: [u64; 5],
    pub gossip_bytes: [u128; 5],
    pub gossip_bytes_per_node_s: f64,
    pub ad_bytes_per_node_s: f64,
    pub ledger_bytes_per_node_s: f64,
    // Sybil operator.
    pub sybil_share: f64,
    pub sybil_capacity_share: f64,
    /// Gain per unit spent of the economic attacks (self-deal, ack-pick, pad-bytes;
    /// `attacks.rs`), and the standard deviation of each from metering alone.
    pub attack_gain: [f64; 3],
    pub attack_noise: [f64; 3],
    /// Share of what the attacking apps took that came past their last ack (the free
    /// ride, bounded per stream and per app, not by the attack).
    pub attack_free_share: [f64; 3],
    /// Honest suppliers' claims on self-dealers' sessions paid less than their value.
    pub self_deal_underpaid_claims: u64,
    pub self_dealt_settled: u64,
    pub self_dealt_paid_cu: f64,
    /// The double-commit race: (value taken − credit forfeited) / credit forfeited, and
    /// the sessions each burst got countersigned.
    pub double_commit_gain: f64,
    pub double_commit_sessions: f64,
    /// CUs honest suppliers delivered to attacking apps and were not paid for, per CU
    /// they delivered.
    pub honest_loss_share: f64,
    // Engine.
    pub events: u64,
    pub nodes: u64,
    pub suppliers: u64,
}

impl Metrics {
    /// The summary row: name and value of every figure a run reports, in a fixed order.
    /// Wall-clock figures are not here (they differ between runs of one seed).
    pub fn row(&self) -> Vec<(&'static str, f64)> {
        // A total per count (0 without any): rates and means alike.
        let per = |total: f64, n: u64| if n == 0 { 0.0 } else { total / n as f64 };
        let ratio = |a: u64, b: u64| per(a as f64, b);
        vec![
            ("nodes", self.nodes as f64),
            ("suppliers", self.suppliers as f64),
            ("requests", self.requests as f64),
            ("honest_requests", self.honest_requests as f64),
            (
                "success_rate",
                ratio(self.honest_served, self.honest_requests),
            ),
            ("failed", self.honest_failed as f64),
            ("served_after_failover", self.served_after_failover as f64),
            ("abandoned_by_app", self.abandoned_by_app as f64),
            ("attempts", self.attempts as f64),
            ("failed_dials", self.failed_dials as f64),
            ("stalls", self.stalls as f64),
            ("garbage_detected", self.garbage_detected as f64),
            ("refused_busy", self.refused_busy as f64),
            ("refused_debt", self.refused_debt as f64),
            ("free_tokens", self.free_tokens as f64),
            (
                "free_tokens_per_rider_hour",
                per(self.free_tokens as f64, self.free_riders) / self.duration_h.max(1e-9),
            ),
            ("ttft_p50_ms", self.ttft_ms.quantile(0.5)),
            ("ttft_p99_ms", self.ttft_ms.quantile(0.99)),
            ("ttft_overhead_p50_ms", self.ttft_overhead_ms.quantile(0.5)),
            ("ttft_overhead_p90_ms", self.ttft_overhead_ms.quantile(0.9)),
            ("ttft_overhead_p99_ms", self.ttft_overhead_ms.quantile(0.99)),
            ("receipts", self.receipts as f64),
            ("mined", self.mined as f64),
            ("sessions", self.sessions as f64),
            ("mean_tau", per(self.tau_sum, self.sessions)),
            ("mined_per_session", ratio(self.mined, self.sessions)),
            ("served_cu", self.served_cu as f64),
            ("claims", self.claims as f64),
            ("claims_settled", self.claims_settled as f64),
            ("full_reveals", self.full_reveals as f64),
            ("claims_refused", self.claims_refused as f64),
            ("claims_late", self.claims_late as f64),
            ("proofs_refused", self.proofs_refused as f64),
            ("honest_claims_refused", self.honest_claims_refused as f64),
            (
                "honest_claims_unsettled",
                self.honest_claims_unsettled as f64,
            ),
            ("cheating_claims", self.cheating_claims as f64),
            (
                "fraud_detection_rate",
                ratio(self.cheating_detected, self.cheating_claims),
            ),
            (
                "expected_detection_rate",
                per(self.expected_detection_sum, self.cheating_claims),
            ),
            ("equivocations", self.equivocations as f64),
            ("honest_excluded", self.honest_excluded as f64),
            ("credits_minus_debits", self.credits_minus_debits as f64),
            ("metering_error", self.metering_error),
            ("expected_metering_error", self.expected_error),
            ("metering_bias", self.metering_bias),
            ("metering_max_z", self.metering_max_z),
            ("settle_p50_ms", self.settle_ms.quantile(0.5)),
            ("settle_p99_ms", self.settle_ms.quantile(0.99)),
            (
                "ledger_convergence_p50_ms",
                self.convergence_ms.quantile(0.5),
            ),
            (
                "ledger_convergence_p99_ms",
                self.convergence_ms.quantile(0.99),
            ),
            ("gossip_bytes_per_node_s", self.gossip_bytes_per_node_s),
            ("ad_bytes_per_node_s", self.ad_bytes_per_node_s),
            ("ledger_bytes_per_node_s", self.ledger_bytes_per_node_s),
            ("sybil_share", self.sybil_share),
            ("sybil_capacity_share", self.sybil_capacity_share),
            ("gain_self_deal", self.attack_gain[0]),
            ("gain_self_deal_noise", self.attack_noise[0]),
            ("gain_ack_pick", self.attack_gain[1]),
            ("gain_ack_pick_noise", self.attack_noise[1]),
            ("free_share_ack_pick", self.attack_free_share[1]),
            ("gain_pad_bytes", self.attack_gain[2]),
            ("gain_pad_bytes_noise", self.attack_noise[2]),
            (
                "self_deal_underpaid_claims",
                self.self_deal_underpaid_claims as f64,
            ),
            ("self_dealt_settled", self.self_dealt_settled as f64),
            ("self_dealt_paid_cu", self.self_dealt_paid_cu),
            ("gain_double_commit", self.double_commit_gain),
            ("double_commit_sessions", self.double_commit_sessions),
            ("honest_loss_share", self.honest_loss_share),
            ("events", self.events as f64),
        ]
    }

    /// The invariants every run must keep, whatever its churn and adversaries; one line
    /// per broken one.
    pub fn violations(&self) -> Vec<String> {
        let mut broken = Vec::new();
        if self.credits_minus_debits != 0 {
            broken.push(format!(
                "credits - debits = {} (must be 0)",
                self.credits_minus_debits
            ));
        }
        if self.honest_excluded != 0 {
            broken.push(format!(
                "{} honest suppliers excluded",
                self.honest_excluded
            ));
        }
        if self.honest_claims_refused != 0 {
            broken.push(format!(
                "{} claims or proofs of honest suppliers refused",
                self.honest_claims_refused
            ));
        }
        if self.honest_served + self.honest_failed != self.honest_requests {
            broken.push(format!(
                "{} honest requests neither served nor failed",
                self.honest_requests - self.honest_served - self.honest_failed
            ));
        }
        if self.self_deal_underpaid_claims != 0 {
            broken.push(format!(
                "{} honest claims on self-dealing apps' sessions paid less than their value",
                self.self_deal_underpaid_claims
            ));
        }
        if self.metering_max_z > 5.0 {
            broken.push(format!(
                "an honest supplier's credit is {:.1} standard deviations from what it served (bound: 5)",
                self.metering_max_z
            ));
        }
        broken
    }

    /// One figure of the row by name.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.row()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_sorted_sample() {
        let mut s = Sample::default();
        for v in (1..=100).rev() {
            s.push(f64::from(v));
        }
        s.finish();
        assert_eq!(s.quantile(0.0), 1.0);
        assert_eq!(s.quantile(0.5), 51.0);
        assert_eq!(s.quantile(1.0), 100.0);
        assert!(Metrics::default().get("success_rate").is_some());
    }
}
