//! `relaymesh` subcommands. Every option can also come from a `RELAYMESH_*` environment
//! variable or from a TOML file given with `--config` (flags win over the environment,
//! the environment over the file).

mod config_file;
mod mesh_cmd;
mod node_cmd;
mod query;
mod setup_cmd;
mod status_cmd;
mod up_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// relaymesh: a peer-to-peer mesh for LLM inference, metered with Relay Mining.
#[derive(Parser, Debug)]
#[command(name = "relaymesh", version, propagate_version = true, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text, or as JSON objects one per line (for journald, Loki and
    /// the like).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "RELAYMESH_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node: join the mesh, advertise what it serves, serve the local API.
    Node(Box<node_cmd::NodeArgs>),
    /// Start serving in one command: a GGUF file or an Ollama model, the mesh of the
    /// config file or the command line, and the dashboard opened in a browser.
    Up(Box<up_cmd::UpArgs>),
    /// Write a commented config file for `relaymesh node --config`.
    Init(setup_cmd::InitArgs),
    /// Print shell completions: `relaymesh completions bash > /etc/bash_completion.d/relaymesh`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print this node's peer id (creating its identity if there is none yet).
    Id {
        /// The node's data dir.
        #[arg(long, env = "RELAYMESH_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// One screen on a running node: identity, reachability, peers, what it serves and
    /// sees, and its account.
    Status(query::QueryArgs),
    /// List the peers a running node is connected to: how each is reached (direct,
    /// hole-punched, relayed) and its round trip.
    Peers(query::QueryArgs),
    /// Check a running node: bootstrap nodes reached, whether peers can reach it
    /// (public, behind NAT, relayed), how it reaches each peer, its clock; and what to
    /// do about what fails. Exits with 1 when something does.
    Doctor(query::QueryArgs),
    /// List the models a running node sees on the mesh, with their suppliers.
    Models(query::QueryArgs),
    /// Show a running node's ledger: balances by peer, this node's earned and spent
    /// credit, and the open and settled claims.
    Ledger(query::QueryArgs),
    /// Move credit from this node's account to another (signed by the node, gossiped).
    Transfer(query::TransferArgs),
    /// Back up or restore the identity key (it is the node's wallet: keep it secret).
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Publish a model as its Source: a signed manifest that earns you royalties.
    Manifest {
        #[command(subcommand)]
        command: ManifestCommand,
    },
    /// Create or inspect a mesh parameters file (a community mesh's shared rules); a
    /// private mesh's invites and revocations.
    Mesh {
        #[command(subcommand)]
        command: mesh_cmd::MeshCommand,
    },
}

#[derive(Subcommand, Debug)]
enum ManifestCommand {
    /// Sign a manifest for a GGUF file and write it next to it (FILE.gguf.manifest).
    /// A node serving that file advertises the manifest, and every settled claim on
    /// the model credits the royalty to the key of --data-dir.
    Sign {
        /// The GGUF file.
        #[arg(long)]
        model: PathBuf,
        /// The model's name, e.g. SmolLM2-135M-Instruct.
        #[arg(long)]
        name: String,
        /// Your share of what apps pay for this model, in percent (0-100, decimals allowed).
        #[arg(long)]
        royalty: f64,
        /// Licence identifier (SPDX where one exists).
        #[arg(long, default_value = "unknown")]
        licence: String,
        /// Data dir holding the Source's identity key (created if absent).
        #[arg(long, env = "RELAYMESH_DATA_DIR")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Print the secret key as hex on stdout.
    Export {
        /// The node's data dir.
        #[arg(long, env = "RELAYMESH_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Restore a key (hex, from FILE or stdin) into a data dir.
    Import {
        /// The data dir to restore into.
        #[arg(long, env = "RELAYMESH_DATA_DIR")]
        data_dir: PathBuf,
        /// File holding the hex key; `-` or nothing reads stdin.
        file: Option<PathBuf>,
    },
}

fn init_logs(format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,libp2p_gossipsub=warn".into()),
        )
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Node(args) => {
            init_logs(cli.log_format);
            node_cmd::run(*args)
        }
        Command::Up(args) => {
            init_logs(cli.log_format);
            up_cmd::run(*args)
        }
        Command::Init(args) => setup_cmd::init(&args),
        Command::Completions { shell } => setup_cmd::completions(shell),
        Command::Id { data_dir } => id(&data_dir),
        Command::Status(args) => status_cmd::status(&args),
        Command::Peers(args) => query::peers(&args),
        Command::Doctor(args) => query::doctor(&args),
        Command::Models(args) => query::models(&args),
        Command::Ledger(args) => query::ledger(&args),
        Command::Transfer(args) => query::transfer(&args),
        Command::Key {
            command: KeyCommand::Export { data_dir },
        } => relaymesh_node::store::export_key(&data_dir)
            .map(|hex| println!("{hex}"))
            .map_err(Into::into),
        Command::Key {
            command: KeyCommand::Import { data_dir, file },
        } => import(&data_dir, file),
        Command::Manifest {
            command:
                ManifestCommand::Sign {
                    model,
                    name,
                    royalty,
                    licence,
                    data_dir,
                },
        } => sign_manifest(&model, &name, royalty, &licence, &data_dir),
        Command::Mesh { command } => mesh_cmd::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", user_message(&err));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes in one line, each cause said once: a message that already
/// quotes its cause (`{path}: {source}`) does not get it appended again.
fn user_message(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn id(data_dir: &std::path::Path) -> anyhow::Result<()> {
    use relaymesh_protocol::Signer;
    let key = relaymesh_node::store::load_or_create_identity(data_dir, || {
        relaymesh_protocol::Keypair::generate(&mut rand_core::OsRng)
    })?;
    println!("{}", key.public_key().peer_id());
    Ok(())
}

fn import(data_dir: &std::path::Path, file: Option<PathBuf>) -> anyhow::Result<()> {
    use relaymesh_protocol::Signer;
    use std::io::Read;
    let (text, from) = match file {
        Some(path) if path.as_os_str() != "-" => (
            std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            path.display().to_string(),
        ),
        _ => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            (text, "the key on stdin".to_string())
        }
    };
    let key = relaymesh_node::store::import_key(data_dir, &text).map_err(|e| match e {
        relaymesh_node::store::StoreError::BadImport => anyhow::anyhow!("{from}: {e}"),
        other => other.into(),
    })?;
    println!("{}", key.public_key().peer_id());
    Ok(())
}

fn sign_manifest(
    model: &std::path::Path,
    name: &str,
    royalty: f64,
    licence: &str,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    use relaymesh_protocol::Signer;
    anyhow::ensure!(
        (0.0..=100.0).contains(&royalty),
        "--royalty is a percentage between 0 and 100"
    );
    let ppm = (royalty * 10_000.0).round() as u32;
    let key = relaymesh_node::store::load_or_create_identity(data_dir, || {
        relaymesh_protocol::Keypair::generate(&mut rand_core::OsRng)
    })?;
    let (path, manifest) =
        relaymesh_node::backend::embedded::write_manifest(model, name, licence, ppm, &key)?;
    println!("{}", path.display());
    eprintln!(
        "signed {name} (blake3 {}, {} bytes) with royalty {royalty}% for source {}",
        manifest.body.gguf_digest.to_hex(),
        manifest.body.size_bytes,
        key.public_key().peer_id()
    );
    Ok(())
}
