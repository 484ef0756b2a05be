//! `relaymesh up`: a hobbyist's one command. Serves a model (a GGUF file, or one pulled
//! into the local Ollama store), joins the mesh named in the config file or on the
//! command line, and opens the dashboard. It is `relaymesh node` with defaults filled
//! in: anything after `--` goes to `relaymesh node` as it is.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};
use clap::Parser;

use super::config_file::FileConfig;
use super::node_cmd::{NodeArgs, DEFAULT_API};

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// What to serve: a GGUF file's path, or `ollama:MODEL[:TAG]` for a model pulled
    /// into the local Ollama store (without Ollama running). Without one it serves what
    /// the config file says, or only uses the mesh (a light node) if that is nothing.
    model: Option<String>,
    /// The name apps ask for [default: the file's name without `.gguf`, or the Ollama
    /// model's].
    #[arg(long)]
    name: Option<String>,
    /// Mesh to join [default: the config file's, else public].
    #[arg(long)]
    mesh: Option<String>,
    /// Bootstrap node address ending in /p2p/<peer id> (repeatable).
    #[arg(long, value_delimiter = ',')]
    bootstrap: Vec<String>,
    /// Config file [default: ~/.config/relaymesh/relaymesh.toml when it exists; write
    /// one with `relaymesh init`].
    #[arg(long, env = "RELAYMESH_CONFIG")]
    config: Option<PathBuf>,
    /// Data dir [default: RELAYMESH_DATA_DIR, the config file's, else
    /// ~/.local/share/relaymesh].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Local API and dashboard address [default: 127.0.0.1:7434].
    #[arg(long)]
    api: Option<String>,
    /// Do not open the dashboard in a browser (its address is logged either way).
    #[arg(long)]
    no_browser: bool,
    /// Flags for `relaymesh node`, after `--` (e.g. `-- --slots 2 --price 3`).
    #[arg(last = true)]
    node_flags: Vec<String>,
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// The `--serve` spec for what `up` was given.
fn serve_spec(model: &str, name: Option<&str>) -> anyhow::Result<String> {
    if let Some(tagged) = model.strip_prefix("ollama:") {
        let name = name.unwrap_or_else(|| tagged.split(':').next().unwrap_or(tagged));
        return Ok(format!("{name}=ollama-model:{tagged}"));
    }
    let path = Path::new(model);
    if !path.is_file() {
        bail!("{model}: no such file (give a GGUF file's path, or ollama:MODEL[:TAG] for a model in the local Ollama store)");
    }
    let name = match name {
        Some(name) => name.to_owned(),
        None => path
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_lowercase)
            .ok_or_else(|| {
                anyhow!("{model}: cannot name the model after this file; pass --name")
            })?,
    };
    let path = std::path::absolute(path)?;
    Ok(format!("{name}=gguf:{}", path.display()))
}

/// `relaymesh node`'s flags, parsed as it parses them.
#[derive(Parser)]
#[command(name = "relaymesh node")]
struct AsNode {
    #[command(flatten)]
    node: NodeArgs,
}

fn parse_node(argv: &[String]) -> anyhow::Result<NodeArgs> {
    AsNode::try_parse_from(std::iter::once("relaymesh node").chain(argv.iter().map(String::as_str)))
        .map(|a| a.node)
        .map_err(|e| anyhow!("{e}"))
}

/// Where `relaymesh init` writes, and `up` looks for, the config file.
pub fn default_config() -> Option<PathBuf> {
    home().map(|h| h.join(".config/relaymesh/relaymesh.toml"))
}

/// The `relaymesh node` flags `up` stands for.
fn node_argv(args: &UpArgs) -> anyhow::Result<Vec<String>> {
    let mut argv = Vec::new();
    let config = args
        .config
        .clone()
        .or_else(|| default_config().filter(|p| p.is_file()));
    let file = match &config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let mut push = |flag: &str, value: String| {
        argv.push(flag.to_owned());
        argv.push(value);
    };
    if let Some(config) = &config {
        push("--config", config.display().to_string());
    }
    let data_dir_elsewhere =
        file.data_dir.is_some() || std::env::var_os("RELAYMESH_DATA_DIR").is_some();
    match (&args.data_dir, home()) {
        (Some(dir), _) => push("--data-dir", dir.display().to_string()),
        (None, Some(home)) if !data_dir_elsewhere => push(
            "--data-dir",
            home.join(".local/share/relaymesh").display().to_string(),
        ),
        _ => {}
    }
    if let Some(mesh) = &args.mesh {
        push("--mesh", mesh.clone());
    }
    for addr in &args.bootstrap {
        push("--bootstrap", addr.clone());
    }
    if let Some(api) = &args.api {
        push("--api", api.clone());
    }
    let serves_elsewhere = file.serve.as_ref().is_some_and(|s| !s.is_empty())
        || std::env::var_os("RELAYMESH_SERVE").is_some();
    match &args.model {
        Some(model) => push("--serve", serve_spec(model, args.name.as_deref())?),
        None if !serves_elsewhere && !file.light.unwrap_or(false) => {
            argv.push("--light".to_owned())
        }
        None => {}
    }
    argv.extend(args.node_flags.iter().cloned());
    Ok(argv)
}

/// Opens `url` in the desktop's browser once the API answers there (in the
/// background; nothing happens without a desktop).
fn open_when_up(url: String) {
    let desktop = std::env::var_os("DISPLAY").is_some()
        || std::env::var_os("WAYLAND_DISPLAY").is_some()
        || cfg!(target_os = "macos");
    if !desktop {
        return;
    }
    std::thread::spawn(move || {
        let addr = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        for _ in 0..600 {
            if std::net::TcpStream::connect(&addr).is_ok() {
                let opener = if cfg!(target_os = "macos") {
                    "open"
                } else {
                    "xdg-open"
                };
                let _ = std::process::Command::new(opener)
                    .arg(&url)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    });
}

pub fn run(args: UpArgs) -> anyhow::Result<()> {
    let argv = node_argv(&args)?;
    let node = parse_node(&argv)?;
    // Where the API will be: as `relaymesh node` decides (flag, environment, file).
    let from_file = match &node.config {
        Some(path) => FileConfig::load(path)?.api,
        None => None,
    };
    let api = node
        .api
        .map(|a| a.to_string())
        .or(from_file)
        .unwrap_or_else(|| DEFAULT_API.to_owned());
    let url = format!("http://{api}/");
    tracing::info!("relaymesh up: relaymesh node {}", argv.join(" "));
    tracing::info!("dashboard: {url}");
    if !args.no_browser {
        open_when_up(url);
    }
    super::node_cmd::run(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(argv: &[&str]) -> UpArgs {
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            up: UpArgs,
        }
        Wrap::try_parse_from(std::iter::once("up").chain(argv.iter().copied()))
            .unwrap()
            .up
    }

    #[test]
    fn a_gguf_file_is_served_by_its_name_and_flags_pass_through() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("SmolLM2-135M.gguf");
        std::fs::write(&file, b"GGUF").unwrap();
        let args = up(&[
            file.to_str().unwrap(),
            "--data-dir",
            "/tmp/d",
            "--mesh",
            "home",
            "--",
            "--slots",
            "2",
        ]);
        let argv = node_argv(&args).unwrap();
        let serve = format!("smollm2-135m=gguf:{}", file.display());
        for pair in [
            ["--data-dir", "/tmp/d"],
            ["--mesh", "home"],
            ["--serve", serve.as_str()],
            ["--slots", "2"],
        ] {
            assert!(
                argv.windows(2).any(|w| w == pair),
                "{pair:?} not in {argv:?}"
            );
        }
        parse_node(&argv).unwrap();
    }

    #[test]
    fn an_ollama_model_or_nothing() {
        assert_eq!(
            serve_spec("ollama:llama3.2:1b", None).unwrap(),
            "llama3.2=ollama-model:llama3.2:1b"
        );
        let err = serve_spec("/no/such.gguf", None).unwrap_err().to_string();
        assert!(err.contains("no such file"), "{err}");
        let argv = node_argv(&up(&["--data-dir", "/tmp/d"])).unwrap();
        assert!(argv.contains(&"--light".to_owned()), "{argv:?}");
    }
}
