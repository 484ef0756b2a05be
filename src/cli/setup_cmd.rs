//! Setting a node up: `relaymesh init` (a commented config file) and `relaymesh
//! completions` (shell completions).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};

/// The commented config file `init` writes (also `examples/relaymesh.toml`).
pub const CONFIG_TEMPLATE: &str = include_str!("../../examples/relaymesh.toml");

/// The data dir the template names, replaced by `init`'s.
const TEMPLATE_DATA_DIR: &str = "data_dir = \"/var/lib/relaymesh\"";

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Where to write the config file [default: ~/.config/relaymesh/relaymesh.toml,
    /// where `relaymesh up` looks for it].
    #[arg(long)]
    out: Option<PathBuf>,
    /// The node's data dir, written into the file [default: ~/.local/share/relaymesh,
    /// or /var/lib/relaymesh without a home].
    #[arg(long, env = "RELAYMESH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Replace the file if it exists.
    #[arg(long)]
    force: bool,
}

/// The config file for `data_dir`: the template with its data dir replaced.
pub fn config_for(data_dir: &Path) -> anyhow::Result<String> {
    let dir = data_dir
        .to_str()
        .ok_or_else(|| anyhow!("the data dir {} is not UTF-8", data_dir.display()))?;
    // A TOML basic string: the path's quotes and backslashes escaped.
    let quoted = toml::Value::String(dir.to_owned()).to_string();
    Ok(CONFIG_TEMPLATE.replacen(TEMPLATE_DATA_DIR, &format!("data_dir = {quoted}"), 1))
}

pub fn init(args: &InitArgs) -> anyhow::Result<()> {
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            Some(home) => PathBuf::from(home).join(".local/share/relaymesh"),
            None => PathBuf::from("/var/lib/relaymesh"),
        },
    };
    let data_dir = std::path::absolute(&data_dir)?;
    let text = config_for(&data_dir)?;
    let out = match &args.out {
        Some(out) => out.clone(),
        None => super::up_cmd::default_config()
            .ok_or_else(|| anyhow!("no home directory: pass --out FILE"))?,
    };
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| anyhow!("cannot create {}: {e}", parent.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if args.force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = match options.open(&out) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "{} exists already; pass --force to replace it",
            out.display()
        ),
        Err(e) => bail!("cannot write {}: {e}", out.display()),
    };
    file.write_all(text.as_bytes())
        .map_err(|e| anyhow!("cannot write {}: {e}", out.display()))?;
    println!(
        "wrote {} (data dir {}); edit it, then start the node with:\n  relaymesh node --config {}",
        out.display(),
        data_dir.display(),
        out.display()
    );
    Ok(())
}

/// Prints completions for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let mut command = super::Cli::command();
    clap_complete::generate(shell, &mut command, "relaymesh", &mut std::io::stdout());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::config_file::FileConfig;
    use super::*;

    /// The file `init` writes is a valid config, every key of it included once
    /// uncommented, so the example cannot drift from what the node accepts.
    #[test]
    fn the_template_parses_with_every_option_uncommented() {
        let text = config_for(Path::new("/tmp/a \"quoted\" dir")).unwrap();
        let config: FileConfig = toml::from_str(&text).unwrap();
        assert_eq!(
            config.data_dir.as_deref(),
            Some(Path::new("/tmp/a \"quoted\" dir"))
        );
        // Uncomment every `# key = value` line (not `mesh`, which conflicts with
        // `mesh_file`) and the [limits] table.
        let uncommented: String = text
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest)
                    if (rest.contains(" = ") || rest == "[limits]")
                        && !rest.starts_with("mesh = ") =>
                {
                    rest.to_owned()
                }
                _ => line.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        let all: FileConfig = toml::from_str(&uncommented).unwrap();
        assert!(all.serve.is_some() && all.limits.is_some_and(|l| l.len() == 4));
        assert!(all.hedge_secs.is_some() && all.gpu_layers.is_some());
    }
}
