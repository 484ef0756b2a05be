//! `relaymesh node`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use libp2p::Multiaddr;
use relaymesh_node::api::ApiKeys;
use relaymesh_node::backend::embedded::{EmbeddedBackend, EmbeddedOptions};
use relaymesh_node::backend::ollama::OllamaBackend;
use relaymesh_node::backend::ollama_store;
use relaymesh_node::backend::openai::OpenAiBackend;
use relaymesh_node::backend::{BackendSpec, Models, ServedModel, SharedBackend};
use relaymesh_node::config::named_mesh;
use relaymesh_node::{Identity, Node, NodeConfig, Role};
use relaymesh_protocol::messages::capability::ModelOffer;
use relaymesh_protocol::metering::compute_units::CuFormula;
use relaymesh_protocol::{BoundedString, Digest};

use super::config_file::FileConfig;

/// Where the local API listens unless told otherwise.
pub const DEFAULT_API: &str = "127.0.0.1:7434";

#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// TOML file with any of these options (flags and RELAYMESH_* variables win over it).
    #[arg(long, env = "RELAYMESH_CONFIG")]
    pub(super) config: Option<PathBuf>,
    /// Data dir: identity key (the node's wallet, mode 0600) and database.
    #[arg(long, env = "RELAYMESH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on (repeatable, or comma-separated). Default: QUIC and TCP on
    /// all interfaces, ports chosen by the OS.
    #[arg(long, env = "RELAYMESH_LISTEN", value_delimiter = ',')]
    listen: Vec<Multiaddr>,
    /// Bootstrap node address ending in /p2p/<peer id> (repeatable).
    #[arg(long, env = "RELAYMESH_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<Multiaddr>,
    /// An address this node is reachable at that no interface of it has (a port
    /// forwarded on your router, a DNS name), advertised as it is (repeatable).
    #[arg(long, env = "RELAYMESH_EXTERNAL", value_delimiter = ',')]
    external: Vec<Multiaddr>,
    /// Help nodes behind NAT, as bootstrap nodes do: answer AutoNAT dial-back requests
    /// and relay circuits (bounded: 64 circuits, 10 minutes and 16 MiB each). Only for
    /// a node others can dial.
    #[arg(long, env = "RELAYMESH_RELAY_SERVER")]
    relay_server: bool,
    /// Local HTTP API address [default: 127.0.0.1:7434].
    #[arg(long, env = "RELAYMESH_API")]
    pub(super) api: Option<SocketAddr>,
    /// Light node: see the mesh's models, serve nothing, stay a DHT client.
    #[arg(long, env = "RELAYMESH_LIGHT")]
    light: bool,
    /// Discover peers on the LAN with mDNS (multicasts on every interface).
    #[arg(long, env = "RELAYMESH_MDNS")]
    mdns: bool,
    /// Mesh to join [default: public]; nodes of other meshes are disconnected.
    #[arg(long, env = "RELAYMESH_MESH", conflicts_with = "mesh_file")]
    mesh: Option<String>,
    /// A community mesh's parameters file (`relaymesh mesh init` writes one); its hash
    /// is the mesh id.
    #[arg(long, env = "RELAYMESH_MESH_FILE")]
    mesh_file: Option<PathBuf>,
    /// Join a private mesh with this invite: the token `relaymesh mesh invite` printed,
    /// or a file holding it. It is kept in the data dir, so later starts need no
    /// --invite.
    #[arg(long, env = "RELAYMESH_INVITE", hide_env_values = true)]
    invite: Option<String>,
    /// Change a bound against hostile peers and overload: NAME=VALUE (repeatable).
    /// connections (256), connections_per_peer (4), connections_per_ip (32 inbound
    /// from one IPv4 address or IPv6 /56, twice that from one /48; this machine's
    /// loopback is not counted),
    /// pending_connections (64), streams (64 served at once), streams_per_peer (16), unstarted_streams_per_peer
    /// (8), streams_per_app (8), sessions_per_app (64 per hour), http_connections
    /// (512), http_header_timeout_secs (10), http_write_stall_secs (60),
    /// http_body_bytes (2 MiB), prompt_bytes (524288: a supplier refuses longer
    /// prompts), queue_places (256 per model), gossip_per_peer (200 messages a second).
    /// What each cuts off is counted in relaymesh_limited_total.
    #[arg(long = "limit", env = "RELAYMESH_LIMITS", value_delimiter = ',')]
    limits: Vec<String>,
    /// Announce a model as NAME or NAME@GGUF_BLAKE3_HEX without serving it (repeatable):
    /// for tests and demos of the ads alone. To serve a model, use --serve, whose ads
    /// carry live slots and speed (a gateway that tries an announced-only model here
    /// finds no inference protocol and goes to the next supplier).
    #[arg(long, env = "RELAYMESH_ADVERTISE", value_delimiter = ',')]
    advertise: Vec<String>,
    /// Seconds an ad (and its DHT provider record) stays valid, 1 to 600 [default: 300].
    #[arg(long, env = "RELAYMESH_AD_LIFETIME_SECS")]
    ad_lifetime_secs: Option<u64>,
    /// Serve a model (repeatable): NAME=gguf:PATH runs the GGUF file in process;
    /// NAME=ollama-model:MODEL[:TAG] runs a model pulled into the local Ollama store
    /// (OLLAMA_MODELS or ~/.ollama/models) in process, without Ollama running;
    /// NAME=ollama:URL[#MODEL] forwards to an Ollama server; NAME=openai:URL[#MODEL]
    /// to an OpenAI-compatible server (URL up to /v1). MODEL defaults to NAME.
    #[arg(long, env = "RELAYMESH_SERVE", value_delimiter = ',')]
    serve: Vec<String>,
    /// Price per compute unit, in micro-credits, for every served model [default: 1].
    #[arg(long, env = "RELAYMESH_PRICE")]
    price: Option<u64>,
    /// Concurrent generations per served model [default: 1 for gguf, 4 otherwise]. A
    /// gguf model is loaded once whatever the slots: each slot adds only its KV cache
    /// (--context tokens), and all slots are decoded together in one batch.
    #[arg(long, env = "RELAYMESH_SLOTS")]
    slots: Option<usize>,
    /// KV cache tokens per slot of a gguf model: the longest prompt plus answer it
    /// takes [default: 4096, or the model's training context if smaller].
    #[arg(long, env = "RELAYMESH_CONTEXT")]
    context: Option<u32>,
    /// Layers of a gguf model to put on the GPU, in a build with a GPU feature (cuda,
    /// rocm, vulkan, metal); 0 keeps it on the CPU [default: all]. The log says which
    /// backend runs it and how many layers went to the GPU.
    #[arg(long, env = "RELAYMESH_GPU_LAYERS")]
    gpu_layers: Option<u32>,
    /// Requests that may wait for a slot; more get 503 with Retry-After [default: 8].
    #[arg(long, env = "RELAYMESH_QUEUE")]
    queue: Option<usize>,
    /// Tokens generated when a request sets no limit [default: 1024].
    #[arg(long, env = "RELAYMESH_MAX_TOKENS")]
    max_tokens: Option<u32>,
    /// TOML file of API keys with a quota each; every API request then needs
    /// `Authorization: Bearer KEY`. Without it the API is open to whoever reaches it,
    /// which is why a non-loopback --api needs keys (or --api-open).
    #[arg(long, env = "RELAYMESH_API_KEYS")]
    api_keys: Option<PathBuf>,
    /// Serve a non-loopback --api without keys (anyone who reaches it may use it).
    #[arg(long, env = "RELAYMESH_API_OPEN")]
    api_open: bool,
    /// Bearer token sent to openai: upstreams that need one.
    #[arg(long, env = "RELAYMESH_UPSTREAM_KEY", hide_env_values = true)]
    upstream_key: Option<String>,
    /// Most this node pays per compute unit, in micro-credits, when it sends a request
    /// to the mesh; dearer suppliers are never used. A request may set a lower one with
    /// the x-relaymesh-max-price header.
    #[arg(long, env = "RELAYMESH_MAX_PRICE")]
    max_price: Option<u64>,
    /// Pin a model's file: NAME=blake3:HEX (repeatable). Requests for NAME go only to
    /// suppliers serving that exact GGUF (a request may pin with x-relaymesh-digest).
    #[arg(long, env = "RELAYMESH_PIN", value_delimiter = ',')]
    pin: Vec<String>,
    /// Send prompts only to this supplier (peer id; repeatable). Without any, every
    /// supplier of the mesh may be used; a request may narrow the set further with
    /// x-relaymesh-suppliers.
    #[arg(long, env = "RELAYMESH_TRUST", value_delimiter = ',')]
    trust: Vec<String>,
    /// Seconds without a token after which a mesh supplier counts as stalled and the
    /// answer continues on the next one [default: 15].
    #[arg(long, env = "RELAYMESH_STALL_SECS")]
    stall_secs: Option<f64>,
    /// Seconds a mesh supplier may take to its first token [default: 120].
    #[arg(long, env = "RELAYMESH_FIRST_TOKEN_SECS")]
    first_token_secs: Option<f64>,
    /// Seconds without a first token after which the next-best supplier is asked too
    /// (the first token wins, the other is cancelled); 0 turns hedging off [default: 5].
    #[arg(long, env = "RELAYMESH_HEDGE_SECS")]
    hedge_secs: Option<f64>,
    /// Seconds a request may wait at this node for a free slot when every supplier of
    /// its model is busy (in arrival order, 256 at most per model); after that, or at
    /// once with 0, it is refused with 503 and Retry-After [default: 30].
    #[arg(long, env = "RELAYMESH_QUEUE_SECS")]
    queue_secs: Option<f64>,
}

/// The routing rules from flags and the config file.
fn routing(
    args: &NodeArgs,
    file: &FileConfig,
) -> anyhow::Result<relaymesh_node::infer::router::RoutingConfig> {
    let mut routing = relaymesh_node::infer::router::RoutingConfig {
        max_price: args.max_price.or(file.max_price),
        ..Default::default()
    };
    let pins = if args.pin.is_empty() {
        file.pin.clone().unwrap_or_default()
    } else {
        args.pin.clone()
    };
    for pin in pins {
        let (name, digest) = pin
            .split_once('=')
            .ok_or_else(|| anyhow!("--pin {pin:?}: expected NAME=blake3:HEX"))?;
        let digest = relaymesh_node::api::parse_digest(digest.trim())
            .ok_or_else(|| anyhow!("--pin {pin:?}: the digest must be blake3:<64 hex digits>"))?;
        routing.pins.insert(name.trim().to_owned(), digest);
    }
    let trust = if args.trust.is_empty() {
        file.trust.clone().unwrap_or_default()
    } else {
        args.trust.clone()
    };
    if !trust.is_empty() {
        routing.trust = Some(
            trust
                .iter()
                .map(|p| {
                    relaymesh_protocol::PublicKey::from_peer_id(p.trim())
                        .ok_or_else(|| anyhow!("--trust {p:?} is not an ed25519 peer id"))
                })
                .collect::<anyhow::Result<_>>()?,
        );
    }
    let secs = |v: Option<f64>, what: &str, default: Duration| -> anyhow::Result<Duration> {
        match v {
            None => Ok(default),
            Some(s) if s.is_finite() && s > 0.0 && s < 86_400.0 => Ok(Duration::from_secs_f64(s)),
            Some(s) => Err(anyhow!("--{what} {s}: give seconds between 0 and 86400")),
        }
    };
    let defaults = relaymesh_node::infer::gateway::Timeouts::default();
    routing.timeouts.stall = secs(
        args.stall_secs.or(file.stall_secs),
        "stall-secs",
        defaults.stall,
    )?;
    routing.timeouts.first_token = secs(
        args.first_token_secs.or(file.first_token_secs),
        "first-token-secs",
        defaults.first_token,
    )?;
    routing.timeouts.hedge = match args.hedge_secs.or(file.hedge_secs) {
        Some(0.0) => None,
        other => Some(secs(
            other,
            "hedge-secs",
            defaults.hedge.expect("on by default"),
        )?),
    };
    routing.timeouts.queue = match args.queue_secs.or(file.queue_secs) {
        Some(0.0) => Duration::ZERO,
        other => secs(other, "queue-secs", defaults.queue)?,
    };
    Ok(routing)
}

/// Serving options, resolved.
struct Serving {
    specs: Vec<BackendSpec>,
    price: u64,
    slots: Option<usize>,
    context: Option<u32>,
    gpu_layers: Option<u32>,
    queue: usize,
    max_tokens: u32,
    upstream_key: Option<String>,
}

fn parse_all<T: std::str::FromStr>(values: Vec<String>, what: &str) -> anyhow::Result<Vec<T>>
where
    T::Err: std::fmt::Display,
{
    values
        .into_iter()
        .map(|v| v.parse().map_err(|e| anyhow!("{what} {v:?}: {e}")))
        .collect()
}

fn offer(spec: &str, tau: u64) -> anyhow::Result<ModelOffer> {
    let (name, digest) = match spec.split_once('@') {
        Some((name, hex)) => {
            let digest = Digest::from_hex(hex)
                .ok_or_else(|| anyhow!("--advertise {spec}: the digest must be 64 hex digits"))?;
            (name, Some(digest))
        }
        None => (spec, None),
    };
    anyhow::ensure!(!name.is_empty(), "--advertise needs a model name");
    Ok(ModelOffer {
        name: BoundedString::new(name).map_err(|e| anyhow!("--advertise {spec}: {e}"))?,
        gguf_digest: digest,
        manifest: None,
        context_length: 8192,
        free_slots: 1,
        total_slots: 1,
        tokens_per_sec_milli: 0,
        ttft_ms: 0,
        price_per_cu: 1,
        cu: CuFormula::default(),
        tau,
        max_token_bytes: relaymesh_node::backend::OPAQUE_TOKEN_BYTES,
        details: Default::default(),
        embedding_dims: None,
    })
}

/// Flags and environment over the file, the file over defaults.
fn resolve(args: NodeArgs) -> anyhow::Result<(NodeConfig, Serving)> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let routing = routing(&args, &file)?;
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .ok_or_else(|| anyhow!("--data-dir is required (or data_dir in the --config file)"))?;
    let mesh = match (args.mesh_file.or(file.mesh_file), args.mesh.or(file.mesh)) {
        (Some(_), Some(_)) => anyhow::bail!("give a mesh name or a mesh file, not both"),
        (Some(path), None) => {
            relaymesh_node::config::MeshFile::load(&path).map_err(|e| anyhow!(e))?
        }
        (None, name) => named_mesh(name.as_deref().unwrap_or("public")),
    };
    let mut config = NodeConfig::new(mesh, Identity::DataDir(data_dir));
    config.routing = routing;
    let mut limits: Vec<(String, u64)> = file
        .limits
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    for spec in &args.limits {
        let (name, value) = spec
            .split_once('=')
            .ok_or_else(|| anyhow!("--limit {spec:?}: expected NAME=VALUE"))?;
        let value = value
            .trim()
            .parse()
            .map_err(|_| anyhow!("--limit {spec:?}: the value is not a whole number"))?;
        limits.push((name.trim().to_owned(), value));
    }
    for (name, value) in limits {
        if name == "connections" {
            anyhow::ensure!(value > 0, "limit connections must be at least 1");
            config.max_connections = u32::try_from(value)
                .map_err(|_| anyhow!("limit connections: {value} is too large"))?;
        } else {
            config.limits.set(&name, value).map_err(|e| anyhow!(e))?;
        }
    }
    config.invite = args
        .invite
        .or(file.invite)
        .map(|given| relaymesh_node::mesh::membership::read_invite(&given))
        .transpose()
        .map_err(|e| anyhow!(e))?;
    config.listen = match (args.listen.is_empty(), file.listen) {
        (false, _) => args.listen,
        (true, Some(listen)) => parse_all(listen, "listen address")?,
        (true, None) => vec![
            "/ip4/0.0.0.0/udp/0/quic-v1".parse()?,
            "/ip4/0.0.0.0/tcp/0".parse()?,
        ],
    };
    config.bootstrap = match (args.bootstrap.is_empty(), file.bootstrap) {
        (false, _) | (true, None) => args.bootstrap,
        (true, Some(b)) => parse_all(b, "bootstrap address")?,
    };
    config.api = Some(match (args.api, file.api) {
        (Some(api), _) => api,
        (None, Some(api)) => api.parse().map_err(|e| anyhow!("api {api:?}: {e}"))?,
        (None, None) => DEFAULT_API.parse()?,
    });
    config.role = if args.light || file.light.unwrap_or(false) {
        Role::Light
    } else {
        Role::Full
    };
    config.mdns = args.mdns || file.mdns.unwrap_or(false);
    config.external = match (args.external.is_empty(), file.external) {
        (false, _) | (true, None) => args.external,
        (true, Some(e)) => parse_all(e, "external address")?,
    };
    if args.relay_server || file.relay_server.unwrap_or(false) {
        config.nat_services = Some(Default::default());
    }
    if let Some(secs) = args.ad_lifetime_secs.or(file.ad_lifetime_secs) {
        let most = relaymesh_protocol::messages::capability::MAX_AD_LIFETIME_MS / 1000;
        anyhow::ensure!(
            (1..=most).contains(&secs),
            "--ad-lifetime-secs {secs}: an ad lives 1 to {most} s (peers refuse ads that claim longer)"
        );
        config.ad_lifetime = Duration::from_secs(secs);
    }
    let advertise = if args.advertise.is_empty() {
        file.advertise.unwrap_or_default()
    } else {
        args.advertise
    };
    anyhow::ensure!(
        advertise.is_empty() || config.role == Role::Full,
        "a light node serves nothing: drop --advertise or --light"
    );
    let tau = config.mesh.tau_min.max(1);
    config.offers = advertise
        .iter()
        .map(|spec| offer(spec, tau))
        .collect::<anyhow::Result<_>>()?;

    let serve = if args.serve.is_empty() {
        file.serve.unwrap_or_default()
    } else {
        args.serve
    };
    let specs: Vec<BackendSpec> = serve
        .iter()
        .map(|s| s.parse::<BackendSpec>())
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(
        specs.is_empty() || config.role == Role::Full,
        "a light node serves nothing: drop --serve or --light"
    );
    let serving = Serving {
        specs,
        price: args.price.or(file.price).unwrap_or(1),
        slots: args.slots.or(file.slots),
        context: args.context.or(file.context),
        gpu_layers: args.gpu_layers.or(file.gpu_layers),
        queue: args.queue.or(file.queue).unwrap_or(8),
        max_tokens: args.max_tokens.or(file.max_tokens).unwrap_or(1024),
        upstream_key: args.upstream_key,
    };
    if let Some(0) = serving.slots {
        anyhow::bail!("--slots must be at least 1");
    }
    if serving.context.is_some_and(|c| c < 16) {
        anyhow::bail!("--context must be at least 16 tokens");
    }

    let api = config.api.expect("set above");
    match args.api_keys.or(file.api_keys) {
        Some(path) => {
            let keys = ApiKeys::load(&path).map_err(|e| anyhow!("--api-keys {e}"))?;
            config.api_keys = Some(Arc::new(keys));
        }
        None if !(api.ip().is_loopback() || args.api_open || file.api_open.unwrap_or(false)) => {
            anyhow::bail!(
                "--api {api} is reachable from other machines but no --api-keys file is given; \
                 give one (see `relaymesh node --help`), or pass --api-open to serve anyone"
            )
        }
        None => {}
    }
    Ok((config, serving))
}

/// Loads a GGUF file into the embedded engine.
async fn load_embedded(
    name: String,
    path: std::path::PathBuf,
    serving: &Serving,
) -> anyhow::Result<SharedBackend> {
    let options = EmbeddedOptions {
        slots: serving.slots.unwrap_or(1),
        queue: serving.queue,
        default_max_tokens: serving.max_tokens,
        progress: true,
        context: serving.context,
        gpu_layers: serving.gpu_layers,
        threads: None,
    };
    let backend =
        tokio::task::spawn_blocking(move || EmbeddedBackend::load(&name, &path, &options))
            .await??;
    Ok(Arc::new(backend))
}

/// Loads or connects every backend.
async fn load_models(mut serving: Serving) -> anyhow::Result<Models> {
    let mut models = Models::default();
    for spec in std::mem::take(&mut serving.specs) {
        let queue = serving.queue;
        let backend: SharedBackend = match spec {
            BackendSpec::Gguf { name, path } => load_embedded(name, path, &serving).await?,
            BackendSpec::OllamaModel { name, model } => {
                let store = ollama_store::default_store()?;
                let path = ollama_store::resolve(&store, &model)?;
                tracing::info!(model, file = %path.display(), "serving a model from the Ollama store");
                load_embedded(name, path, &serving).await?
            }
            BackendSpec::Ollama { name, url, model } => Arc::new(
                OllamaBackend::connect(&name, &url, &model, serving.slots.unwrap_or(4), queue)
                    .await?,
            ),
            BackendSpec::OpenAi { name, url, model } => Arc::new(
                OpenAiBackend::connect(
                    &name,
                    &url,
                    &model,
                    serving.upstream_key.clone(),
                    serving.slots.unwrap_or(4),
                    queue,
                )
                .await?,
            ),
        };
        models
            .insert(ServedModel::new(backend, serving.price))
            .map_err(|e| anyhow!(e))?;
    }
    Ok(models)
}

pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    let (mut config, serving) = resolve(args)?;
    // A taken API port is said before a model takes minutes to load, not after.
    if let Some(api) = config.api {
        std::net::TcpListener::bind(api).map_err(|e| {
            anyhow!("cannot serve the local API on {api}: {e}; choose another --api")
        })?;
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        config.models = Arc::new(load_models(serving).await?);
        let node = Node::start(config).await?;
        if let Some(api) = node.api_addr() {
            tracing::info!("local API on http://{api}  (try: relaymesh peers --api {api})");
        }
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
            _ = terminate.recv() => tracing::info!("terminated; stopping"),
        }
        tracing::info!(
            "stopping: streams served here are handed over, answers through this node get {} s to finish (a second Ctrl-C stops at once)",
            relaymesh_node::stopping::STOP_GRACE.as_secs()
        );
        tokio::select! {
            () = node.shutdown() => tracing::info!("stopped"),
            _ = tokio::signal::ctrl_c() => tracing::warn!("interrupted again: stopping at once"),
            _ = terminate.recv() => tracing::warn!("terminated again: stopping at once"),
        }
        Ok(())
    })
}
