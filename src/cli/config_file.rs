//! The TOML config file: the same options as `relaymesh node`'s flags, by the same names
//! with underscores.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Options a config file may set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<Vec<String>>,
    pub bootstrap: Option<Vec<String>>,
    pub external: Option<Vec<String>>,
    pub relay_server: Option<bool>,
    pub api: Option<String>,
    pub light: Option<bool>,
    pub mdns: Option<bool>,
    pub mesh: Option<String>,
    pub mesh_file: Option<PathBuf>,
    pub invite: Option<String>,
    /// `[limits]`: NAME = VALUE, as `--limit`.
    pub limits: Option<std::collections::BTreeMap<String, u64>>,
    pub advertise: Option<Vec<String>>,
    pub ad_lifetime_secs: Option<u64>,
    pub serve: Option<Vec<String>>,
    pub price: Option<u64>,
    pub slots: Option<usize>,
    pub context: Option<u32>,
    pub gpu_layers: Option<u32>,
    pub queue: Option<usize>,
    pub max_tokens: Option<u32>,
    pub api_keys: Option<PathBuf>,
    pub api_open: Option<bool>,
    pub max_price: Option<u64>,
    pub pin: Option<Vec<String>>,
    pub trust: Option<Vec<String>>,
    pub stall_secs: Option<f64>,
    pub first_token_secs: Option<f64>,
    pub hedge_secs: Option<f64>,
    pub queue_secs: Option<f64>,
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }
}
