//! `relaymesh-netsim`: runs a scenario file and writes its figures.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use relaymesh_netsim::scenario::Scenario;

/// A deterministic simulation of a relaymesh mesh: the protocol's own rules for every
/// node, a modelled network, GPUs and churn.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a scenario (every point of its sweep) and writes runs.csv and SVG figures.
    Run {
        /// The scenario file (TOML; see netsim/scenarios/).
        scenario: PathBuf,
        /// Folder for runs.csv, the figures and their CSVs (created if missing).
        #[arg(long, default_value = "netsim-out")]
        out: PathBuf,
        /// Overrides the scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
        /// Exit with an error if a run breaks an invariant (credits = debits, no honest
        /// supplier penalised, every honest request served or failed, metering error
        /// within 5σ of what τ implies).
        #[arg(long)]
        check: bool,
    },
    /// Checks a scenario file and prints the runs it expands to.
    Check {
        /// The scenario file.
        scenario: PathBuf,
    },
}

fn main() -> ExitCode {
    keep_freed_memory();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run {
            scenario,
            out,
            seed,
            quiet,
            check,
        } => {
            let mut sc = Scenario::load(&scenario)?;
            if let Some(seed) = seed {
                sc.seed = seed;
            }
            let bar = if quiet {
                ProgressBar::hidden()
            } else {
                ProgressBar::new(1000)
            };
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:40}] {percent}% {elapsed}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            let started = Instant::now();
            let (results, files) =
                relaymesh_netsim::run_scenario(&sc, &out, |run, runs, share| {
                    bar.set_prefix(format!("run {}/{runs}", run + 1));
                    bar.set_position((share * 1000.0) as u64);
                })?;
            bar.finish_and_clear();
            let wall = started.elapsed().as_secs_f64();
            print!("{}", relaymesh_netsim::output::table(&sc, &results));
            let events: u64 = results.iter().map(|r| r.metrics.events).sum();
            let requests: u64 = results.iter().map(|r| r.metrics.requests).sum();
            println!(
                "wall {wall:.1} s, {events} events ({:.0}/s), {requests} requests ({:.0}/s), peak memory {}",
                events as f64 / wall,
                requests as f64 / wall,
                peak_memory().unwrap_or_else(|| "unknown".into())
            );
            println!("wrote {} into {}", files.join(", "), out.display());
            let mut broken = 0;
            for r in &results {
                for v in r.metrics.violations() {
                    let at: Vec<String> =
                        r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    eprintln!(
                        "invariant broken{}: {v}",
                        if at.is_empty() {
                            String::new()
                        } else {
                            format!(" at {}", at.join(" "))
                        }
                    );
                    broken += 1;
                }
            }
            if check && broken > 0 {
                anyhow::bail!("{broken} invariant(s) broken");
            }
            Ok(())
        }
        Command::Check { scenario } => {
            let sc = Scenario::load(&scenario)?;
            let runs = sc.runs()?;
            println!("{}: {} run(s)", sc.name, runs.len());
            for (labels, r) in runs {
                let text: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "  {} nodes, {} requests, {} s{}{}",
                    r.nodes,
                    r.requests,
                    r.duration_s,
                    if text.is_empty() { "" } else { ": " },
                    text.join(" ")
                );
            }
            Ok(())
        }
    }
}

/// The process's peak resident memory (Linux `VmHWM`).
fn peak_memory() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(format!("{:.0} MiB", kb / 1024.0))
}

// glibc's allocator degrades badly on the run's millions of small, short-lived
// allocations in a multi-gigabyte heap (most of the time went to `malloc` itself).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (the position in v3's `mi_option_t`; the Rust
/// bindings name no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to hand freed memory back to the OS. A run frees and
/// reallocates gigabytes as sessions close and open; handed back, every page came back
/// through a page fault and the kernel zeroing it (5–8% of the benchmark run).
fn keep_freed_memory() {
    // SAFETY: sets an allocator option, which mimalloc allows at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
