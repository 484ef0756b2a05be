//! `relaymesh peers`, `models`, `ledger`, `transfer` and `doctor`: ask a running node's
//! local API and print readable tables.

use anyhow::{anyhow, Context};
use serde_json::Value;

use super::node_cmd::DEFAULT_API;

#[derive(clap::Args, Debug)]
pub struct QueryArgs {
    /// The node's local API.
    #[arg(long, env = "RELAYMESH_API", default_value = DEFAULT_API)]
    pub(super) api: String,
    /// Print the JSON the API returned instead of a table.
    #[arg(long)]
    pub(super) json: bool,
    /// API key, for a node started with --api-keys.
    #[arg(long, env = "RELAYMESH_API_KEY", hide_env_values = true)]
    pub(super) api_key: Option<String>,
}

impl QueryArgs {
    /// A request to the node, with the key if there is one.
    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let request = reqwest::Client::new().request(method, url);
        match &self.api_key {
            Some(key) => request.bearer_auth(key.trim()),
            None => request,
        }
    }
}

pub(super) fn get(args: &QueryArgs, path: &str) -> anyhow::Result<Value> {
    let url = format!("http://{}{path}", args.api);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let response = args
            .request(reqwest::Method::GET, &url)
            .send()
            .await
            .with_context(|| format!("no relaymesh node answers at {} (is `relaymesh node` running? --api sets the address)", args.api))?;
        let status = response.status();
        let body: Value = response.json().await.context("the API did not answer JSON")?;
        if !status.is_success() {
            return Err(anyhow!("{url}: {status}: {}", body["error"]["message"]));
        }
        Ok(body)
    })
}

pub(super) fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        Value::Number(n) => n.as_f64().map_or_else(
            || n.to_string(),
            |f| {
                if f.fract() == 0.0 {
                    format!("{f:.0}")
                } else {
                    format!("{f:.1}")
                }
            },
        ),
        other => other.to_string(),
    }
}

fn print_table(rows: &[Value], columns: &[(&str, &str)]) {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|(key, _)| text(&r[*key])).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (_, title))| {
            cells
                .iter()
                .map(|c| c[i].len())
                .chain([title.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<&str>| {
        values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(columns.iter().map(|(_, t)| *t).collect()));
    for row in &cells {
        println!("{}", line(row.iter().map(String::as_str).collect()));
    }
}

/// Fetches a list from the API and prints it as a table (or JSON with `--json`).
/// `path`'s rows as a table of `columns` (`empty` when there are none), each row first
/// given to `prepare` (to add columns made from nested fields); the JSON as it is with
/// `--json`.
fn list(
    args: &QueryArgs,
    path: &str,
    empty: &str,
    columns: &[(&str, &str)],
    prepare: impl Fn(&mut Value),
) -> anyhow::Result<()> {
    let body = get(args, path)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    let mut rows = body.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        println!("{empty}");
    } else {
        rows.iter_mut().for_each(prepare);
        print_table(&rows, columns);
    }
    Ok(())
}

pub fn peers(args: &QueryArgs) -> anyhow::Result<()> {
    let body = get(args, "/relaymesh/v1/peers")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    let mut rows = body.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        println!("no peers connected");
        return Ok(());
    }
    let mut columns = vec![
        ("peer_id", "PEER"),
        ("link", "LINK"),
        ("transports", "TRANSPORT"),
        ("rtt_ms", "RTT ms"),
        ("clock_offset_ms", "CLOCK ms"),
        ("agent", "AGENT"),
    ];
    // In a private mesh, what each peer was admitted as.
    if rows.iter().any(|r| r["member"].is_object()) {
        for row in &mut rows {
            row["role"] = row["member"]["role"].clone();
        }
        columns.push(("role", "ROLE"));
    }
    columns.push(("addresses", "ADDRESS"));
    print_table(&rows, &columns);
    Ok(())
}

/// Prints what the node says of its health; fails (exit 1) when a finding does.
pub fn doctor(args: &QueryArgs) -> anyhow::Result<()> {
    let body = get(args, "/relaymesh/v1/doctor")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        let status = &body["status"];
        println!(
            "node {} ({}, mesh {}), relaymesh {}",
            text(&status["peer_id"]),
            text(&status["role"]),
            text(&status["mesh_name"]),
            text(&status["version"])
        );
        for f in body["findings"].as_array().into_iter().flatten() {
            let level = match f["level"].as_str() {
                Some("ok") => " ok ",
                Some("warn") => "warn",
                _ => "FAIL",
            };
            println!("[{level}] {}: {}", text(&f["topic"]), text(&f["what"]));
            if let Some(advice) = f["advice"].as_str() {
                println!("       what to do: {advice}");
            }
        }
        let peers = body["peers"].as_array().cloned().unwrap_or_default();
        if !peers.is_empty() {
            println!();
            print_table(
                &peers,
                &[
                    ("peer_id", "PEER"),
                    ("link", "LINK"),
                    ("rtt_ms", "RTT ms"),
                    ("agent", "AGENT"),
                    ("addresses", "ADDRESS"),
                ],
            );
        }
    }
    let failed = body["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|f| f["level"] == "fail");
    anyhow::ensure!(!failed, "something above needs fixing");
    Ok(())
}

/// The mesh's offers: the suppliers' own figures (TOK/S from the ad), and what this
/// node measured of each (SEEN: its requests' speed) and the score it ranks them by.
pub fn models(args: &QueryArgs) -> anyhow::Result<()> {
    let figure = |v: &Value, digits: usize| {
        Value::String(
            v.as_f64()
                .map_or_else(|| "-".to_string(), |x| format!("{x:.digits$}")),
        )
    };
    list(
        args,
        "/relaymesh/v1/models",
        "no models seen on the mesh yet",
        &[
            ("name", "MODEL"),
            ("supplier", "SUPPLIER"),
            ("free_slots", "FREE"),
            ("total_slots", "SLOTS"),
            ("tokens_per_sec", "TOK/S"),
            ("seen_tokens_per_sec", "SEEN"),
            ("score", "SCORE"),
            ("price_per_cu", "PRICE/CU"),
            ("tau", "TAU"),
            ("expires_in_s", "EXPIRES s"),
        ],
        |row| {
            let measured = row["measured"].clone();
            row["seen_tokens_per_sec"] = figure(&measured["tokens_per_sec"], 1);
            row["score"] = figure(&measured["score"], 3);
        },
    )
}

pub fn ledger(args: &QueryArgs) -> anyhow::Result<()> {
    let ledger = get(args, "/relaymesh/v1/ledger")?;
    let claims = get(args, "/relaymesh/v1/claims")?;
    if args.json {
        let both = serde_json::json!({ "ledger": ledger, "claims": claims["claims"] });
        println!("{}", serde_json::to_string_pretty(&both)?);
        return Ok(());
    }
    let me = &ledger["me"];
    println!(
        "this node {}: balance {}, earned {}, spent {} (micro-credits)",
        text(&me["peer_id"]),
        text(&me["balance"]),
        text(&me["earned"]),
        text(&me["spent"])
    );
    if ledger["credit_enforced"] == true {
        let credit = &ledger["credit"];
        if credit.is_null() {
            println!("this node gave one credit to two debits: it can spend nothing any more");
        } else {
            println!(
                "free to commit: {} of a credit line of {} (escrows and transfers take slots from {}; credit received is spendable {} epochs later)",
                text(&credit["available"]),
                text(&credit["line"]),
                text(&credit["next_slot"]),
                text(&ledger["spendable_after_epochs"]),
            );
        }
    }
    println!(
        "epoch {} ({} ms each), final before epoch {}; credit {}; claims: {} pending, {} settled, {} void, {} unfunded",
        text(&ledger["epoch"]),
        text(&ledger["epoch_ms"]),
        text(&ledger["frozen_before"]),
        if ledger["credit_enforced"] == true { "enforced" } else { "not enforced (no genesis)" },
        text(&ledger["claims_pending"]),
        text(&ledger["claims_settled"]),
        text(&ledger["claims_void"]),
        text(&ledger["claims_unfunded"]),
    );
    if let Some(excluded) = ledger["excluded"].as_array().filter(|e| !e.is_empty()) {
        println!(
            "excluded for equivocation: {}",
            text(&Value::Array(excluded.clone()))
        );
    }
    println!();
    let accounts = ledger["accounts"].as_array().cloned().unwrap_or_default();
    if accounts.is_empty() {
        println!("no accounts yet");
    } else {
        print_table(
            &accounts,
            &[
                ("peer_id", "ACCOUNT"),
                ("balance", "BALANCE"),
                ("earned", "EARNED"),
                ("spent", "SPENT"),
            ],
        );
    }
    let claims = claims["claims"].as_array().cloned().unwrap_or_default();
    println!();
    if claims.is_empty() {
        println!("no claims in the open epochs");
    } else {
        print_table(
            &claims,
            &[
                ("status", "STATUS"),
                ("epoch", "EPOCH"),
                ("supplier", "SUPPLIER"),
                ("app", "APP"),
                ("sum", "CU"),
                ("count", "LEAVES"),
                ("value", "VALUE"),
                ("paid", "PAID"),
                ("escrow", "ESCROW"),
                ("revealed", "REVEALED"),
            ],
        );
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct TransferArgs {
    /// The payee's peer id.
    #[arg(long)]
    to: String,
    /// Micro-credits to move from this node's account.
    #[arg(long)]
    amount: u64,
    #[command(flatten)]
    query: QueryArgs,
}

pub fn transfer(args: &TransferArgs) -> anyhow::Result<()> {
    let url = format!("http://{}/relaymesh/v1/transfers", args.query.api);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let body: Value = runtime.block_on(async {
        let response = args
            .query
            .request(reqwest::Method::POST, &url)
            .json(&serde_json::json!({ "to": args.to, "amount": args.amount }))
            .send()
            .await
            .with_context(|| format!("no relaymesh node answers at {} (is `relaymesh node` running? --api sets the address)", args.query.api))?;
        let status = response.status();
        let body: Value = response.json().await.context("the API did not answer JSON")?;
        if !status.is_success() {
            return Err(anyhow!("transfer refused: {}", text(&body["error"]["message"])));
        }
        Ok(body)
    })?;
    if args.query.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        println!(
            "transfer {} signed and gossiped: {} micro-credits from {} to {} (debited in the current epoch from the next slot of this node's credit line)",
            text(&body["id"]),
            text(&body["amount"]),
            text(&body["from"]),
            text(&body["to"])
        );
    }
    Ok(())
}
