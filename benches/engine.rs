//! The embedded engine against llama.cpp's llama-server on the same GGUF and cores,
//! and the HTTP API's own overhead.
//!
//! `cargo bench --bench engine` (needs the test model: `scripts/fetch-model`; the
//! llama-server half needs `scripts/build-llama-server` and is skipped without it).
//!
//! For each engine: TTFT and prompt tokens/s on a ~500-token prompt (prompt tokens
//! divided by the time to the first generated token), generation tokens/s over 128
//! greedy tokens (after the first). The API overhead compares the same streamed
//! request through `POST /v1/completions` with calling the backend trait directly.
//! Then aggregate generation tokens/s with 1, 4 and 16 concurrent streams (the node
//! with as many slots, llama-server with as many parallel slots, `-np N`), and the
//! resident memory of `relaymesh node` serving the model with 1 and with 8 slots.
//! And the cost of an output format: generation tokens/s under a JSON schema's grammar
//! against free text (`cargo bench --bench engine -- structured` stops there).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use common::{median, over_http, Instant_, Timing};
use support::Proc;

use relaymesh_node::backend::{GenEvent, GenRequest, Prompt, Sampling, SharedBackend, Tenant};
use serde_json::json;

const RUNS: usize = 3;
const GEN_TOKENS: u32 = 128;

fn short_prompt() -> String {
    "The history of Paris begins".into()
}

fn long_prompt() -> String {
    "Paris is the capital and largest city of France, on the Seine river. ".repeat(36)
}

#[derive(Default, Clone, Copy)]
struct Figures {
    ttft_s: f64,
    prompt_tps: f64,
    gen_tps: f64,
}

fn request(prompt: String, max: u32) -> GenRequest {
    GenRequest {
        prompt: Prompt::Text(prompt),
        sampling: Sampling {
            temperature: Some(0.0),
            max_tokens: Some(max),
            ..Sampling::default()
        },
        tenant: Tenant::Local,
    }
}

/// One direct trait call, timed like [`over_http`].
async fn direct(backend: &SharedBackend, req: GenRequest) -> Timing {
    let started = Instant::now();
    let mut g = backend.generate(req).await.unwrap();
    let mut first = None;
    loop {
        match g.next().await.unwrap() {
            GenEvent::Text(_) => {
                first.get_or_insert_with(|| started.elapsed());
            }
            GenEvent::Done(f) => {
                return Timing {
                    ttft: first.unwrap(),
                    tokens: f.completion_tokens,
                    total: started.elapsed(),
                    supplier: None,
                }
            }
            GenEvent::Failed(e) => panic!("{e}"),
            _ => {}
        }
    }
}

fn figures(prompt_tokens: usize, long: Timing, gen: Timing) -> Figures {
    Figures {
        ttft_s: long.ttft.as_secs_f64(),
        prompt_tps: prompt_tokens as f64 / long.ttft.as_secs_f64(),
        gen_tps: f64::from(gen.tokens.saturating_sub(1)) / (gen.total - gen.ttft).as_secs_f64(),
    }
}

fn print(name: &str, f: Figures) {
    println!(
        "{name:<34} TTFT {:>7.1} ms   prompt {:>7.1} tok/s   generation {:>6.1} tok/s",
        f.ttft_s * 1e3,
        f.prompt_tps,
        f.gen_tps
    );
}

/// Generation under a JSON schema's grammar (a list of strings, so the answer runs to
/// its length), against `free_tps` without one.
async fn structured(backend: &SharedBackend, free_tps: f64) {
    let schema = r#"{"type":"object","properties":{"items":{"type":"array","items":{"type":"string"},"minItems":16}},"required":["items"]}"#;
    let mut tps = Vec::new();
    let mut tokens = 0;
    for _ in 0..RUNS {
        let mut req = request(short_prompt(), GEN_TOKENS);
        req.sampling.format = Some(relaymesh_node::backend::Format::JsonSchema(schema.into()));
        let t = direct(backend, req).await;
        tokens = t.tokens;
        tps.push(f64::from(t.tokens.saturating_sub(1)) / (t.total - t.ttft).as_secs_f64());
    }
    let tps = median(tps);
    println!(
        "embedded under a JSON schema         generation {tps:>6.1} tok/s ({tokens} tokens; {:+.1}% against free text)",
        (tps / free_tps - 1.0) * 100.0
    );
}

/// The API layer alone: an instant backend called directly and through HTTP.
async fn api_overhead() {
    let backend: SharedBackend = std::sync::Arc::new(Instant_);
    let node = support::serving_node(vec![backend.clone()], None).await;
    let url = format!("{}/v1/completions", support::base_url(&node));
    let body =
        |max: u32| json!({ "model": "instant", "prompt": "x", "max_tokens": max, "stream": true });
    let (mut d_ttft, mut h_ttft, mut d_tps, mut h_tps) = (vec![], vec![], vec![], vec![]);
    for i in 0..2200 {
        let d = direct(&backend, request("x".into(), 1)).await;
        let h = over_http(&url, body(1)).await;
        if i >= 200 {
            d_ttft.push(d.ttft.as_secs_f64());
            h_ttft.push(h.ttft.as_secs_f64());
        }
    }
    for _ in 0..20 {
        let d = direct(&backend, request("x".into(), 5000)).await;
        let h = over_http(&url, body(5000)).await;
        d_tps.push(f64::from(d.tokens) / d.total.as_secs_f64());
        h_tps.push(f64::from(h.tokens) / h.total.as_secs_f64());
    }
    println!(
        "API layer (instant backend): TTFT direct {:.3} ms, through HTTP/SSE {:.3} ms (+{:.3} ms); \
         pieces/s direct {:.0}, through HTTP/SSE {:.0}",
        median(d_ttft.clone()) * 1e3,
        median(h_ttft.clone()) * 1e3,
        (median(h_ttft) - median(d_ttft)) * 1e3,
        median(d_tps),
        median(h_tps)
    );
    node.shutdown().await;
}

#[tokio::main]
async fn main() {
    api_overhead().await;
    if std::env::args().any(|a| a == "api") {
        return;
    }
    let embedded = support::smollm(1, 1);
    let prompt_tokens = embedded
        .prompt_ids(&Prompt::Text(long_prompt()))
        .unwrap()
        .len();
    let backend: SharedBackend = embedded.clone();
    println!("SmolLM2-135M-Instruct Q4_1, greedy; long prompt {prompt_tokens} tokens, {GEN_TOKENS} generated; median of {RUNS}");

    // Warm up, then the trait directly.
    direct(&backend, request(short_prompt(), 4)).await;
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        let long = direct(&backend, request(long_prompt(), 1)).await;
        let gen = direct(&backend, request(short_prompt(), GEN_TOKENS)).await;
        runs.push(figures(prompt_tokens, long, gen));
    }
    let med = |f: fn(&Figures) -> f64, runs: &[Figures]| median(runs.iter().map(f).collect());
    let direct_fig = Figures {
        ttft_s: med(|f| f.ttft_s, &runs),
        prompt_tps: med(|f| f.prompt_tps, &runs),
        gen_tps: med(|f| f.gen_tps, &runs),
    };
    print("embedded (backend trait)", direct_fig);
    structured(&backend, direct_fig.gen_tps).await;
    if std::env::args().any(|a| a == "structured") {
        return;
    }

    // Through the HTTP API.
    let node = support::serving_node(vec![support::smollm(1, 1) as SharedBackend], None).await;
    let url = format!("{}/v1/completions", support::base_url(&node));
    let body = |prompt: String, max: u32| {
        json!({ "model": "smollm2", "prompt": prompt, "temperature": 0, "max_tokens": max, "stream": true,
                "stream_options": { "include_usage": true } })
    };
    over_http(&url, body(short_prompt(), 4)).await;
    let mut runs = Vec::new();
    let mut short_ttft_direct = Vec::new();
    let mut short_ttft_http = Vec::new();
    for _ in 0..RUNS {
        let long = over_http(&url, body(long_prompt(), 1)).await;
        let gen = over_http(&url, body(short_prompt(), GEN_TOKENS)).await;
        runs.push(figures(prompt_tokens, long, gen));
        short_ttft_direct.push(
            direct(&backend, request(short_prompt(), 1))
                .await
                .ttft
                .as_secs_f64(),
        );
        short_ttft_http.push(
            over_http(&url, body(short_prompt(), 1))
                .await
                .ttft
                .as_secs_f64(),
        );
    }
    let http_fig = Figures {
        ttft_s: med(|f| f.ttft_s, &runs),
        prompt_tps: med(|f| f.prompt_tps, &runs),
        gen_tps: med(|f| f.gen_tps, &runs),
    };
    print("embedded (HTTP API, SSE)", http_fig);
    println!(
        "API overhead on TTFT (short prompt): {:+.2} ms; on generation: {:+.1}%",
        (median(short_ttft_http) - median(short_ttft_direct)) * 1e3,
        (http_fig.gen_tps / direct_fig.gen_tps - 1.0) * 100.0
    );
    node.shutdown().await;
    drop(backend);
    drop(embedded);

    // llama.cpp's llama-server on the same file and both cores.
    let server = std::env::var_os("RELAYMESH_LLAMA_SERVER")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            let dir = std::path::PathBuf::from(std::env::var_os("HOME")?)
                .join(".cache/relaymesh/llama-server");
            std::fs::read_dir(dir)
                .ok()?
                .filter_map(|e| Some(e.ok()?.path().join("llama-server")))
                .find(|p| p.is_file())
        });
    let Some(server) = server else {
        println!("llama-server: not built (scripts/build-llama-server), skipped");
        return;
    };
    let (child, base) = llama_server(&server, 1).await;
    let url = format!("{base}/v1/completions");
    let body = |prompt: String, max: u32| json!({ "prompt": prompt, "temperature": 0, "max_tokens": max, "stream": true, "cache_prompt": false });
    over_http(&url, body(short_prompt(), 4)).await;
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        let long = over_http(&url, body(long_prompt(), 1)).await;
        let gen = over_http(&url, body(short_prompt(), GEN_TOKENS)).await;
        runs.push(figures(prompt_tokens, long, gen));
    }
    print(
        "llama-server (HTTP, SSE)",
        Figures {
            ttft_s: med(|f| f.ttft_s, &runs),
            prompt_tps: med(|f| f.prompt_tps, &runs),
            gen_tps: med(|f| f.gen_tps, &runs),
        },
    );
    drop(child);

    println!("Aggregate generation over concurrent streams ({GEN_TOKENS} greedy tokens each):");
    let mut ours_1 = 0.0;
    for streams in STREAMS {
        let backend: SharedBackend = support::smollm(streams, streams);
        let ours = aggregate_direct(&backend, streams).await;
        drop(backend);
        let (child, base) = llama_server(&server, streams).await;
        let theirs = aggregate_http(&format!("{base}/v1/completions"), streams).await;
        drop(child);
        if streams == 1 {
            ours_1 = ours;
        }
        println!(
            "  {streams:>2} streams: embedded {ours:>7.1} tok/s   llama-server -np {streams} {theirs:>7.1} tok/s   ({:.2}×){}",
            ours / theirs,
            if streams > 1 { format!("   embedded {streams}/1: {:.2}×", ours / ours_1) } else { String::new() }
        );
    }
    for slots in [1, 8] {
        match node_rss(slots).await {
            Some(kib) => println!(
                "relaymesh node --slots {slots}: resident memory {:.1} MiB",
                kib as f64 / 1024.0
            ),
            None => {
                println!("relaymesh node --slots {slots}: resident memory not measured (no /proc)")
            }
        }
    }
}

const STREAMS: [usize; 3] = [1, 4, 16];

/// Aggregate generated tokens per second of `streams` greedy generations started at
/// once through the backend trait (median of [`RUNS`]).
async fn aggregate_direct(backend: &SharedBackend, streams: usize) -> f64 {
    direct(backend, request(short_prompt(), 4)).await;
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let all = futures::future::join_all(
            (0..streams).map(|i| direct(backend, request(numbered_prompt(i), GEN_TOKENS))),
        )
        .await;
        let tokens: u32 = all.iter().map(|t| t.tokens).sum();
        runs.push(f64::from(tokens) / started.elapsed().as_secs_f64());
    }
    median(runs)
}

/// The same through llama-server's streamed completions.
async fn aggregate_http(url: &str, streams: usize) -> f64 {
    let body = |prompt: String| json!({ "prompt": prompt, "temperature": 0, "max_tokens": GEN_TOKENS, "stream": true, "cache_prompt": false, "ignore_eos": true });
    over_http(url, body(short_prompt())).await;
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let all = futures::future::join_all(
            (0..streams).map(|i| over_http(url, body(numbered_prompt(i)))),
        )
        .await;
        let tokens: u32 = all.iter().map(|t| t.tokens).sum();
        runs.push(f64::from(tokens) / started.elapsed().as_secs_f64());
    }
    median(runs)
}

/// Slightly different prompts, so no engine can share one answer between streams.
fn numbered_prompt(i: usize) -> String {
    format!("{} (part {})", short_prompt(), i + 1)
}

/// llama-server on the test model with `parallel` slots of 1024 tokens each, on all
/// cores, waited for until healthy.
async fn llama_server(server: &std::path::Path, parallel: usize) -> (Proc, String) {
    let port = support::free_port();
    let child = Proc(
        Command::new(server)
            .arg("-m")
            .arg(support::model_path())
            // Its AMX repacking crashes on these machines.
            .args([
                "--no-repack",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ])
            .args([
                "-c",
                &(1024 * parallel.max(2)).to_string(),
                "-np",
                &parallel.to_string(),
            ])
            .args([
                "-t",
                &std::thread::available_parallelism()
                    .map_or(2, |n| n.get())
                    .to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    answers_ok(&format!("{base}/health")).await;
    (child, base)
}

/// Polls `url` until it answers 2xx, for up to a minute.
async fn answers_ok(url: &str) {
    for _ in 0..600 {
        if reqwest::get(url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Resident memory (KiB) of `relaymesh node` serving the test model with `slots`
/// slots, after one answer.
async fn node_rss(slots: usize) -> Option<u64> {
    let dir = tempfile::tempdir().unwrap();
    let api = support::free_port();
    let child = Proc(
        Command::new(env!("CARGO_BIN_EXE_relaymesh"))
            .args(["node", "--data-dir"])
            .arg(dir.path())
            .args([
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--api",
                &format!("127.0.0.1:{api}"),
            ])
            .args(["--slots", &slots.to_string(), "--serve"])
            .arg(format!("smollm2=gguf:{}", support::model_path().display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{api}/v1/completions");
    answers_ok(&format!("http://127.0.0.1:{api}/v1/models")).await;
    over_http(&url, json!({ "model": "smollm2", "prompt": short_prompt(), "temperature": 0, "max_tokens": 16, "stream": true })).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.0.id())).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
