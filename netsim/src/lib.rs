//! # relaymesh-netsim
//!
//! A deterministic discrete-event simulation of a relaymesh mesh at up to tens of
//! thousands of nodes. Every simulated node runs the protocol crate's own rules
//! (routing scores, sessions, acks, receipts, threshold mining, claims, reveals,
//! sampled and full proofs, the ledger); only the network (latency, bandwidth, loss,
//! gossip spread), the GPUs and churn are modelled. See `docs/SIMULATION.md` for the
//! model, its assumptions and its figures.
//!
//! ```
//! use relaymesh_netsim::{scenario::Scenario, Sim};
//!
//! let scenario = Scenario::parse("nodes = 40\nrequests = 200\nduration_s = 300").unwrap();
//! let metrics = Sim::new(&scenario).unwrap().run(|_| {});
//! assert_eq!(metrics.credits_minus_debits, 0);
//! assert!(metrics.honest_served > 0);
//! ```

mod attacks;
pub mod gossip;
pub mod keys;
pub mod metrics;
pub mod output;
mod queue;
pub mod rng;
pub mod scenario;
mod settle;
mod sim;

use std::path::Path;

use anyhow::{Context, Result};

pub use sim::Sim;

use crate::output::RunResult;
use crate::scenario::Scenario;

/// Runs every run of a scenario, writes `runs.csv` and the figures into `out`, and
/// returns the results and the files written. `progress(run, runs, share)` reports.
pub fn run_scenario(
    scenario: &Scenario,
    out: &Path,
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<(Vec<RunResult>, Vec<String>)> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let runs = scenario.runs()?;
    let total = runs.len();
    let mut results = Vec::with_capacity(total);
    for (i, (labels, sc)) in runs.into_iter().enumerate() {
        let metrics = Sim::new(&sc)?.run(|share| progress(i, total, share));
        results.push(RunResult { labels, metrics });
    }
    let mut files = vec!["runs.csv".to_string()];
    std::fs::write(out.join("runs.csv"), output::csv(&results))?;
    if let Some(sweep) = &scenario.sweep {
        files.extend(output::sweep_figures(out, &scenario.name, sweep, &results)?);
    }
    if let Some(first) = results.first() {
        files.extend(output::ttft_figure(out, &first.metrics)?);
    }
    Ok((results, files))
}
