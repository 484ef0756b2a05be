//! The simulator's promises, checked on the small CI scenario: determinism, the
//! invariants of honest metering and settlement, and agreement between simulated and
//! real signatures.

use std::path::{Path, PathBuf};

use relaymesh_netsim::metrics::Metrics;
use relaymesh_netsim::scenario::{Scenario, Signatures};
use relaymesh_netsim::{run_scenario, Sim};

fn scenario(name: &str) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(format!("{name}.toml"));
    Scenario::load(&path).unwrap()
}

fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (PathBuf::from(path.file_name().unwrap()), bytes)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn same_seed_and_scenario_give_byte_identical_output() {
    let sc = scenario("ci");
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    run_scenario(&sc, a.path(), |_, _, _| {}).unwrap();
    run_scenario(&sc, b.path(), |_, _, _| {}).unwrap();
    let (fa, fb) = (files(a.path()), files(b.path()));
    assert!(fa.iter().any(|(p, _)| p == Path::new("runs.csv")));
    assert!(fa
        .iter()
        .any(|(p, _)| p == Path::new("ttft-overhead-cdf.svg")));
    assert_eq!(fa, fb, "two runs of one seed differ");

    let mut other = sc.clone();
    other.seed += 1;
    let c = tempfile::tempdir().unwrap();
    run_scenario(&other, c.path(), |_, _, _| {}).unwrap();
    assert_ne!(
        std::fs::read(a.path().join("runs.csv")).unwrap(),
        std::fs::read(c.path().join("runs.csv")).unwrap(),
        "another seed should give another run"
    );
}

#[test]
fn invariants_hold_on_the_ci_scenario() {
    let m: Metrics = Sim::new(&scenario("ci")).unwrap().run(|_| {});
    let row = |name: &str| m.get(name).unwrap();
    println!(
        "{}",
        relaymesh_netsim::output::csv(&[relaymesh_netsim::output::RunResult {
            labels: Vec::new(),
            metrics: m.clone(),
        }])
    );
    assert_eq!(m.violations(), Vec::<String>::new());
    // Credits = debits in the ledger every node keeps.
    assert_eq!(m.credits_minus_debits, 0);
    // No honest supplier is ever penalised: none excluded, none of its claims or proofs
    // refused, every claim it made settled.
    assert_eq!(m.honest_excluded, 0);
    assert_eq!(m.honest_claims_refused, 0);
    assert_eq!(m.honest_claims_unsettled, 0);
    assert!(
        m.claims_settled > 100,
        "{} claims settled",
        m.claims_settled
    );
    // Every honest request is served (possibly after failover) or failed with its
    // attempts used up: none is lost.
    assert_eq!(m.honest_served + m.honest_failed, m.honest_requests);
    assert!(
        row("success_rate") > 0.98,
        "success rate {}",
        row("success_rate")
    );
    assert!(
        m.served_after_failover > 0,
        "churn and silent suppliers force failovers"
    );
    // Metering error within the bound τ implies: every honest supplier's credit within
    // 5 standard deviations of what it served, and no bias beyond that.
    assert!(m.metering_max_z <= 5.0, "max z {}", m.metering_max_z);
    assert!(m.metering_bias.abs() <= 5.0 * m.expected_error.max(1e-6));
    // Cheaters are caught: every equivocator excluded, fake leaves and forged receipts
    // caught at least at the rate the samples imply (less a margin for chance).
    assert!(m.equivocations > 0);
    assert!(m.cheating_claims > 20);
    assert!(row("fraud_detection_rate") >= row("expected_detection_rate") - 0.1);
    assert!(
        m.full_reveals > 0,
        "apps that never reveal are settled by full reveals"
    );
    // Economic attacks gain nothing beyond their stated bounds: a self-dealer's own
    // claims settle beside the honest ones and take nothing from them; an ack-picker
    // pays for what it acks (it cannot tell which acks are mined); a byte-padding
    // supplier is paid at most `max_token_bytes / bytes_per_token` times.
    assert!(
        m.self_dealt_settled > 0,
        "self-dealers settle their own claims"
    );
    assert_eq!(m.self_deal_underpaid_claims, 0);
    for attack in ["self_deal", "ack_pick"] {
        let (gain, noise) = (
            row(&format!("gain_{attack}")),
            row(&format!("gain_{attack}_noise")),
        );
        assert!(
            gain <= 5.0 * noise + 1e-3,
            "{attack}: gain {gain} (noise {noise})"
        );
    }
    let pad = row("gain_pad_bytes");
    assert!(pad > 0.0 && pad <= 32.0 / 4.0 - 1.0, "padding gains {pad}");
}

#[test]
fn real_signatures_give_the_results_of_simulated_ones() {
    let real = scenario("real-signatures");
    assert_eq!(real.signatures, Signatures::Ed25519);
    let mut sim = real.clone();
    sim.signatures = Signatures::Sim;
    let a = Sim::new(&real).unwrap().run(|_| {});
    let b = Sim::new(&sim).unwrap().run(|_| {});
    assert!(a.claims_settled > 100);
    assert_eq!(a.row(), b.row());
}

#[test]
fn every_scenario_file_parses_and_expands() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let sc = Scenario::load(&path).unwrap();
        assert!(!sc.runs().unwrap().is_empty(), "{}", path.display());
        count += 1;
    }
    assert!(count >= 7);
}
