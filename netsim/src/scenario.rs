//! Scenario files: everything a run depends on, in one TOML file (`scenarios/*.toml`).
//! Every field has a default, so a scenario names only what it changes; unknown fields
//! are errors, so a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// A log-normal distribution given by its median and the σ of its logarithm.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogNormal {
    /// The median.
    pub median: f64,
    /// Standard deviation of `ln x` (0 = always the median).
    pub sigma: f64,
}

impl LogNormal {
    /// A distribution with this median and spread.
    pub const fn new(median: f64, sigma: f64) -> Self {
        Self { median, sigma }
    }
}

/// How messages are signed in the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Signatures {
    /// A keyed blake3 hash under the node's real ed25519 public key: as cheap as a hash,
    /// not unforgeable. Adversaries in the model never forge with it.
    Sim,
    /// Real ed25519 signatures and ZIP-215 verification, as on the mesh.
    Ed25519,
}

/// The network between nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    /// Share of nodes on home broadband; the rest are in data centres.
    pub home_share: f64,
    /// One-way access latency of a home node, ms (the path latency is the sum of both ends').
    pub home_ms: LogNormal,
    /// One-way access latency of a data-centre node, ms.
    pub dc_ms: LogNormal,
    /// Uplink of a home node, Mbit/s (large messages take size / bandwidth).
    pub home_mbps: f64,
    /// Uplink of a data-centre node, Mbit/s.
    pub dc_mbps: f64,
    /// Probability that a message is lost (retransmitted after a timeout on streams,
    /// recovered by the next gossip heartbeat on gossip).
    pub loss: f64,
    /// Gossipsub mesh degree D.
    pub gossip_degree: u32,
    /// Copies of each gossip message a node receives (first copy plus duplicates that
    /// crossed it in flight; gossipsub's IDONTWANT keeps this well below D).
    pub gossip_copies: f64,
    /// Gossip heartbeat, ms (lost messages are repaired one heartbeat later).
    pub heartbeat_ms: f64,
    /// How long a dial to a vanished node takes to fail, ms.
    pub dial_timeout_ms: f64,
    /// How long an app waits on a silent stream before failing over, ms.
    pub stall_timeout_ms: f64,
}

impl Default for Network {
    fn default() -> Self {
        Self {
            home_share: 0.7,
            home_ms: LogNormal::new(20.0, 0.5),
            dc_ms: LogNormal::new(3.0, 0.4),
            home_mbps: 20.0,
            dc_mbps: 1000.0,
            loss: 0.005,
            gossip_degree: 6,
            gossip_copies: 2.5,
            heartbeat_ms: 1000.0,
            dial_timeout_ms: 3000.0,
            stall_timeout_ms: 5000.0,
        }
    }
}

/// The suppliers' hardware.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gpu {
    /// Decoding speed of one stream, tokens/s.
    pub tokens_per_sec: LogNormal,
    /// Prompt processing is this many times faster than decoding.
    pub prefill_factor: f64,
    /// Concurrent streams per supplier.
    pub slots: u32,
    /// Requests a supplier queues beyond its slots before refusing as busy.
    pub queue: u32,
}

impl Default for Gpu {
    fn default() -> Self {
        Self {
            tokens_per_sec: LogNormal::new(40.0, 0.6),
            prefill_factor: 20.0,
            slots: 4,
            queue: 8,
        }
    }
}

/// What apps ask for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Load {
    /// Prompt length, tokens.
    pub prompt_tokens: LogNormal,
    /// Answer length, tokens.
    pub output_tokens: LogNormal,
    /// Longest answer, tokens.
    pub max_output_tokens: u32,
    /// UTF-8 bytes per token (CUs are counted over bytes).
    pub bytes_per_token: u32,
    /// The session's cap on one token's bytes (`max_token_bytes`: the model's longest
    /// token; a node sets 32 for an upstream back end). Apps refuse longer tokens.
    pub max_token_bytes: u32,
}

impl Default for Load {
    fn default() -> Self {
        Self {
            prompt_tokens: LogNormal::new(200.0, 0.8),
            output_tokens: LogNormal::new(120.0, 0.7),
            max_output_tokens: 2048,
            bytes_per_token: 4,
            max_token_bytes: 32,
        }
    }
}

/// Nodes coming and going.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Churn {
    /// Share of suppliers that join during the run (at uniform random times) rather
    /// than at its start.
    pub late_joins: f64,
    /// Crashes per supplier per hour (in-flight streams stall; its ad lingers until expiry).
    pub crashes_per_hour: f64,
    /// Graceful departures per supplier per hour (stops advertising, finishes its streams,
    /// claims its sessions and stays until they are proven).
    pub leaves_per_hour: f64,
    /// How long a supplier stays away, seconds.
    pub downtime_s: LogNormal,
    /// Probability that an app is offline when its session's claim arrives (it reveals
    /// when it is back; suppliers fall back to the full reveal if that is too late).
    pub app_offline: f64,
    /// How long such an app stays away, seconds.
    pub app_downtime_s: LogNormal,
}

impl Default for Churn {
    fn default() -> Self {
        Self {
            late_joins: 0.0,
            crashes_per_hour: 0.0,
            leaves_per_hour: 0.0,
            downtime_s: LogNormal::new(600.0, 0.5),
            app_offline: 0.0,
            app_downtime_s: LogNormal::new(300.0, 0.5),
        }
    }
}

/// The mesh parameters (see `MeshParams`) and the node timings the simulation uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mesh {
    /// Ledger epoch, seconds.
    pub epoch_s: u64,
    /// Epochs after which an epoch is final.
    pub freeze_horizon_epochs: u32,
    /// The app acks every K output tokens.
    pub ack_every_tokens: u32,
    /// The supplier pauses with more than W tokens unacknowledged.
    pub max_unacked_tokens: u32,
    /// Mined receipts per session the τ rule aims for.
    pub tau_target_mined: u32,
    /// Lower bound on τ.
    pub tau_min: u64,
    /// Leaves a proof samples.
    pub proof_samples: u16,
    /// Most leaves per claim.
    pub max_claim_leaves: u32,
    /// Session length, seconds.
    pub session_s: u64,
    /// Price per CU, micro-credits.
    pub price_per_cu: u64,
    /// Suppliers re-announce their ad this often, seconds.
    pub ad_refresh_s: u64,
    /// An ad's lifetime, seconds (a crashed node's ad lingers this long).
    pub ad_lifetime_s: u64,
    /// Fewest seconds between two ads of one supplier when only its load changed.
    pub ad_min_interval_s: u64,
    /// Whether suppliers keep per-app debts: the tokens an app's streams ended with
    /// unacknowledged, refusing the app past `2W` of them in 10 minutes (`false`: no
    /// memory per app, as before version 2).
    pub app_debt_limit: bool,
    /// Whether a supplier serves a fresh session no further than its first window until
    /// rival announcements can have arrived, and stops an app caught committing one
    /// credit twice (`false`: it served the whole answer, as before).
    pub clash_wait: bool,
    /// Whether a supplier bounds an app's tokens at risk by its allowance (2K, or a
    /// sixteenth of what it acknowledged there), so that a stranger's streams get one
    /// ack step (K) of window (`false`: the whole window W for any app, refused once it
    /// owes 2W, as before).
    pub stranger_window: bool,
}

impl Default for Mesh {
    fn default() -> Self {
        Self {
            epoch_s: 300,
            freeze_horizon_epochs: 12,
            ack_every_tokens: 16,
            max_unacked_tokens: 64,
            tau_target_mined: 32,
            tau_min: 1,
            proof_samples: 16,
            max_claim_leaves: 256,
            session_s: 300,
            price_per_cu: 1,
            ad_refresh_s: 60,
            ad_lifetime_s: 180,
            ad_min_interval_s: 10,
            app_debt_limit: true,
            clash_wait: true,
            stranger_window: true,
        }
    }
}

/// Misbehaving participants.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Adversaries {
    /// Share of suppliers that inflate token counts in some receipts (a forged ack).
    pub inflate: f64,
    /// Share of suppliers that add fake leaves (no receipt behind them) to their claims.
    pub fake_leaves: f64,
    /// Share of a cheating supplier's claimed CUs that is fake.
    pub fake_fraction: f64,
    /// Share of suppliers that stream garbage (apps notice after the first increment).
    pub garbage: f64,
    /// Share of suppliers that go silent mid-stream.
    pub silent: f64,
    /// Probability that such a supplier goes silent in a given request.
    pub silent_per_request: f64,
    /// Share of suppliers that sign two different claims for one session.
    pub equivocate: f64,
    /// Share of apps that stop acking after the first increment.
    pub stop_acking: f64,
    /// Share of apps that never reveal (suppliers settle with the full reveal).
    pub never_reveal: f64,
    /// Share of apps that self-deal: for every session an honest supplier claims from
    /// them, a supplier key of their own claims a session of theirs in the same epoch
    /// (the dilution attack on a pro-rata ledger).
    pub self_deal: f64,
    /// Share of apps that withhold the acks they guess would be mined (the ack-picking
    /// attack): they cannot know (the lottery needs the supplier's secret), so they
    /// guess, and withholding an ack ends the stream.
    pub ack_pick: f64,
    /// Share of suppliers that pad every token to the session's `max_token_bytes` with
    /// junk (the byte-inflation attack).
    pub pad_bytes: f64,
    /// Share of apps that give one escrow slot to sessions at `double_commit_burst`
    /// suppliers at the same moment, with one request each (the double-commit race).
    pub double_commit: f64,
    /// Suppliers a double-committing app reaches at once.
    pub double_commit_burst: u32,
    /// Identities of one sybil operator serving model 0 (0 = none).
    pub sybil_identities: u32,
    /// The operator's capacity, in median suppliers (its streams at the median speed,
    /// split among its identities: fewer slots each, slower streams below one slot).
    pub sybil_capacity: f64,
}

impl Default for Adversaries {
    fn default() -> Self {
        Self {
            inflate: 0.0,
            fake_leaves: 0.0,
            fake_fraction: 0.2,
            garbage: 0.0,
            silent: 0.0,
            silent_per_request: 0.5,
            equivocate: 0.0,
            stop_acking: 0.0,
            never_reveal: 0.0,
            self_deal: 0.0,
            ack_pick: 0.0,
            pad_bytes: 0.0,
            double_commit: 0.0,
            double_commit_burst: 8,
            sybil_identities: 0,
            sybil_capacity: 1.0,
        }
    }
}

/// A set of runs: the scenario with some fields changed, one run per combination.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    /// Dotted field path (or metric name) on the x axis of the figures.
    pub x: String,
    /// Dotted field path that tells the figures' lines apart.
    #[serde(default)]
    pub series: Option<String>,
    /// Metrics plotted against `x`, one figure each.
    pub metrics: Vec<String>,
    /// Field path → values; every combination is one run.
    pub grid: BTreeMap<String, Vec<toml::Value>>,
    /// Fields that change together with one grid field: path → (grid field, values in
    /// the grid field's order). E.g. `requests` following `nodes`.
    #[serde(default)]
    pub follow: BTreeMap<String, (String, Vec<toml::Value>)>,
    /// Logarithmic x axis.
    #[serde(default)]
    pub log_x: bool,
    /// One figure with every metric (for metrics on one scale, such as a measured rate
    /// and the rate theory predicts) instead of one figure per metric.
    #[serde(default)]
    pub combine: bool,
}

/// One simulation's inputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    /// Short name (file names, table titles).
    pub name: String,
    /// What the scenario shows.
    pub description: String,
    /// The RNG seed: the same seed and scenario give byte-identical output.
    pub seed: u64,
    /// Simulated time, seconds.
    pub duration_s: f64,
    /// Nodes in the mesh (apps, suppliers and sybil identities together).
    pub nodes: u32,
    /// Share of nodes that serve a model.
    pub supplier_share: f64,
    /// Distinct models (model m is asked for, and served, with weight 1/(m+1)).
    pub models: u32,
    /// Requests over the whole run (Poisson arrivals, a random app each).
    pub requests: u64,
    /// Real or simulated signatures.
    pub signatures: Signatures,
    /// Whether an app tries another supplier when one fails.
    pub failover: bool,
    /// Most suppliers one request tries.
    pub max_attempts: u32,
    /// Suppliers an app ranks for each request (a random sample of the model's).
    pub candidates: u32,
    /// The network.
    pub network: Network,
    /// Supplier hardware.
    pub gpu: Gpu,
    /// Request sizes.
    pub load: Load,
    /// Churn.
    pub churn: Churn,
    /// Mesh parameters.
    pub mesh: Mesh,
    /// Misbehaviour.
    pub adversaries: Adversaries,
    /// Optional set of runs.
    pub sweep: Option<Sweep>,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            name: "scenario".into(),
            description: String::new(),
            seed: 1,
            duration_s: 1800.0,
            nodes: 200,
            supplier_share: 0.2,
            models: 3,
            requests: 5000,
            signatures: Signatures::Sim,
            failover: true,
            max_attempts: 3,
            candidates: 8,
            network: Network::default(),
            gpu: Gpu::default(),
            load: Load::default(),
            churn: Churn::default(),
            mesh: Mesh::default(),
            adversaries: Adversaries::default(),
            sweep: None,
        }
    }
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read scenario {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("scenario {}", path.display()))
    }

    /// Parses and checks scenario text.
    pub fn parse(text: &str) -> Result<Self> {
        let scenario: Scenario = toml::from_str(text)?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Rejects values the model cannot run.
    pub fn validate(&self) -> Result<()> {
        let share = |name: &str, v: f64| -> Result<()> {
            if !(0.0..=1.0).contains(&v) {
                bail!("{name} must be between 0 and 1, not {v}");
            }
            Ok(())
        };
        if self.nodes < 2 {
            bail!("nodes must be at least 2");
        }
        if self.duration_s.is_nan() || self.duration_s <= 0.0 {
            bail!("duration_s must be positive");
        }
        if self.models == 0 {
            bail!("models must be at least 1");
        }
        if self.max_attempts == 0 || self.candidates == 0 {
            bail!("max_attempts and candidates must be at least 1");
        }
        share("supplier_share", self.supplier_share)?;
        share("network.home_share", self.network.home_share)?;
        share("network.loss", self.network.loss)?;
        share("churn.app_offline", self.churn.app_offline)?;
        share("churn.late_joins", self.churn.late_joins)?;
        let a = &self.adversaries;
        for (name, v) in [
            ("adversaries.inflate", a.inflate),
            ("adversaries.fake_leaves", a.fake_leaves),
            ("adversaries.garbage", a.garbage),
            ("adversaries.silent", a.silent),
            ("adversaries.equivocate", a.equivocate),
            ("adversaries.stop_acking", a.stop_acking),
            ("adversaries.never_reveal", a.never_reveal),
            ("adversaries.self_deal", a.self_deal),
            ("adversaries.ack_pick", a.ack_pick),
            ("adversaries.pad_bytes", a.pad_bytes),
            ("adversaries.double_commit", a.double_commit),
            ("adversaries.silent_per_request", a.silent_per_request),
        ] {
            share(name, v)?;
        }
        if !(0.0..1.0).contains(&a.fake_fraction) {
            bail!("adversaries.fake_fraction must be in [0, 1)");
        }
        let bad_supplier_share =
            a.inflate + a.fake_leaves + a.garbage + a.silent + a.equivocate + a.pad_bytes;
        if bad_supplier_share > 1.0 {
            bail!("the adversarial supplier shares add up to more than 1");
        }
        if a.stop_acking + a.never_reveal + a.self_deal + a.ack_pick + a.double_commit > 1.0 {
            bail!("the adversarial app shares add up to more than 1");
        }
        if self.gpu.slots == 0 || self.network.gossip_degree < 2 {
            bail!("gpu.slots must be at least 1 and network.gossip_degree at least 2");
        }
        if self.load.bytes_per_token == 0 || self.load.max_output_tokens == 0 {
            bail!("load.bytes_per_token and load.max_output_tokens must be positive");
        }
        if !(self.load.bytes_per_token..=256).contains(&self.load.max_token_bytes) {
            bail!("load.max_token_bytes must be between load.bytes_per_token and 256 (the mesh's bound)");
        }
        let m = &self.mesh;
        if m.epoch_s == 0 || m.session_s == 0 || m.ad_lifetime_s == 0 || m.ad_refresh_s == 0 {
            bail!("mesh times must be positive");
        }
        let suppliers = self.suppliers();
        if suppliers == 0 || suppliers >= self.nodes {
            bail!("the mesh needs at least one supplier and one app ({suppliers} suppliers of {} nodes)", self.nodes);
        }
        self.mesh_params()?;
        if let Some(sweep) = &self.sweep {
            let metrics = crate::metrics::Metrics::default();
            for name in &sweep.metrics {
                if metrics.get(name).is_none() {
                    bail!("sweep.metrics: no metric named {name} (see runs.csv's columns)");
                }
            }
            if !sweep.grid.contains_key(&sweep.x) && metrics.get(&sweep.x).is_none() {
                bail!(
                    "sweep.x = {} is neither a field of sweep.grid nor a metric",
                    sweep.x
                );
            }
        }
        Ok(())
    }

    /// Supplier identities, sybils included.
    pub fn suppliers(&self) -> u32 {
        let honest = (f64::from(self.nodes) * self.supplier_share).round() as u32;
        honest.max(1) + self.adversaries.sybil_identities
    }

    /// The protocol's mesh parameters for this scenario (genesis filled in by the run).
    pub fn mesh_params(&self) -> Result<relaymesh_protocol::params::MeshParams> {
        let m = &self.mesh;
        let mut p = relaymesh_protocol::params::MeshParams::new(&self.name, Vec::new())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        p.epoch_ms = m.epoch_s * 1000;
        p.freeze_horizon_epochs = m.freeze_horizon_epochs;
        p.ack_every_tokens = m.ack_every_tokens;
        p.max_unacked_tokens = m.max_unacked_tokens;
        p.tau_target_mined = m.tau_target_mined;
        p.tau_min = m.tau_min;
        p.proof_samples = m.proof_samples;
        p.max_claim_leaves = m.max_claim_leaves;
        p.max_session_ms = m.session_s * 1000;
        p.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(p)
    }

    /// This scenario with the field at dotted `path` set to `value`.
    pub fn with(&self, path: &str, value: &toml::Value) -> Result<Self> {
        let mut base = self.clone();
        base.sweep = None;
        let mut tree = toml::Value::try_from(&base)?;
        let mut slot = &mut tree;
        for part in path.split('.') {
            slot = slot
                .get_mut(part)
                .with_context(|| format!("no scenario field {path}"))?;
        }
        // An integer where the field is a float is what a reader means.
        *slot = match (&*slot, value) {
            (toml::Value::Float(_), toml::Value::Integer(i)) => toml::Value::Float(*i as f64),
            _ => value.clone(),
        };
        let changed: Scenario = tree
            .try_into()
            .with_context(|| format!("{path} = {value}"))?;
        changed.validate()?;
        Ok(changed)
    }

    /// The value at a dotted field path, for labels.
    pub fn field(&self, path: &str) -> Option<toml::Value> {
        let tree = toml::Value::try_from(self).ok()?;
        let mut slot = &tree;
        for part in path.split('.') {
            slot = slot.get(part)?;
        }
        Some(slot.clone())
    }

    /// The runs of this scenario: itself, or one per point of its sweep, with labels.
    pub fn runs(&self) -> Result<Vec<(Labels, Scenario)>> {
        let Some(sweep) = &self.sweep else {
            return Ok(vec![(Vec::new(), self.clone())]);
        };
        if sweep.grid.is_empty() {
            bail!("sweep.grid is empty");
        }
        let mut points: Vec<(Labels, Scenario)> = vec![(Vec::new(), self.clone())];
        for (path, values) in &sweep.grid {
            if values.is_empty() {
                bail!("sweep.grid.{path} has no values");
            }
            let mut next = Vec::new();
            for (labels, scenario) in &points {
                for (i, value) in values.iter().enumerate() {
                    let mut s = scenario.with(path, value)?;
                    for (follower, (leader, follow_values)) in &sweep.follow {
                        if leader == path {
                            let v = follow_values.get(i).with_context(|| {
                                format!("sweep.follow.{follower} has fewer values than {path}")
                            })?;
                            s = s.with(follower, v)?;
                        }
                    }
                    let mut labels = labels.clone();
                    labels.push((path.clone(), value_label(value)));
                    next.push((labels, s));
                }
            }
            points = next;
        }
        for (_, s) in &mut points {
            s.sweep = None;
        }
        Ok(points)
    }
}

/// (field path, value) of each swept field of one run.
pub type Labels = Vec<(String, String)>;

/// A value as a short label.
pub fn value_label(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_unknown_fields_are_errors() {
        Scenario::default().validate().unwrap();
        assert!(Scenario::parse("nodez = 3").is_err());
        assert!(Scenario::parse("[network]\nloss = 2.0").is_err());
        let s = Scenario::parse("nodes = 50\n[mesh]\nepoch_s = 60").unwrap();
        assert_eq!((s.nodes, s.mesh.epoch_s), (50, 60));
        // Sessions that cannot be claimed before their epoch freezes are refused.
        assert!(Scenario::parse("[mesh]\nepoch_s = 30").is_err());
    }

    #[test]
    fn sweep_expands_the_grid_with_followers() {
        let s = Scenario::parse(
            r#"
            [sweep]
            x = "nodes"
            series = "failover"
            metrics = ["success_rate"]
            grid = { nodes = [100, 200], failover = [true, false] }
            follow = { requests = ["nodes", [1000, 2000]] }
            "#,
        )
        .unwrap();
        let runs = s.runs().unwrap();
        assert_eq!(runs.len(), 4);
        let requests: Vec<u64> = runs.iter().map(|(_, r)| r.requests).collect();
        assert!(requests.contains(&1000) && requests.contains(&2000));
        for (_, r) in &runs {
            assert_eq!(r.requests, u64::from(r.nodes) * 10);
        }
        assert!(s.with("network.nope", &toml::Value::Integer(1)).is_err());
        let f = s.with("network.loss", &toml::Value::Integer(0)).unwrap();
        assert_eq!(f.network.loss, 0.0);
    }
}
