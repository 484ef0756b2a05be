//! `relaymesh-bootstrap`: an always-on node with a persistent identity that runs a
//! Kademlia server and gossipsub, helps nodes behind NAT (AutoNAT v2 dial-backs and a
//! bounded circuit relay v2), serves no model, and prints its full multiaddr (with
//! `/p2p/<peer id>`) as the first line on stdout once listening.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use libp2p::Multiaddr;
use relaymesh_node::config::named_mesh;
use relaymesh_node::{Identity, Node, NodeConfig, Role};

/// An always-on relaymesh bootstrap node (no inference).
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Data dir: the identity key (so the peer id survives restarts) and the database.
    #[arg(long, env = "RELAYMESH_DATA_DIR")]
    data_dir: PathBuf,
    /// Address to listen on; repeat for several (QUIC and TCP). Port 0 picks a free one.
    #[arg(long, env = "RELAYMESH_LISTEN", value_delimiter = ',', default_values = ["/ip4/0.0.0.0/udp/4001/quic-v1", "/ip4/0.0.0.0/tcp/4001"])]
    listen: Vec<Multiaddr>,
    /// The mesh to bootstrap: nodes of other meshes are disconnected.
    #[arg(long, env = "RELAYMESH_MESH", default_value = "public")]
    mesh: String,
    /// A community mesh's parameters file (`relaymesh mesh init`); replaces --mesh.
    #[arg(long, env = "RELAYMESH_MESH_FILE")]
    mesh_file: Option<PathBuf>,
    /// The invite that admits this node to a private mesh (the token `relaymesh mesh
    /// invite` printed, or a file holding it); kept in the data dir.
    #[arg(long, env = "RELAYMESH_INVITE", hide_env_values = true)]
    invite: Option<String>,
    /// Most connections at once.
    #[arg(long, env = "RELAYMESH_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: u32,
    /// Other bootstrap nodes to join (`/…/p2p/<peer id>`).
    #[arg(long, env = "RELAYMESH_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<Multiaddr>,
    /// An address this node is reachable at that no interface of it has (a forwarded
    /// port, a DNS name): advertised, and handed out in relay slots (repeatable).
    #[arg(long, env = "RELAYMESH_EXTERNAL", value_delimiter = ',')]
    external: Vec<Multiaddr>,
    /// Relay no circuits and answer no AutoNAT requests.
    #[arg(long, env = "RELAYMESH_NO_RELAY")]
    no_relay: bool,
    /// Relay slots held at once, for all peers.
    #[arg(long, env = "RELAYMESH_RELAY_SLOTS", default_value_t = 128)]
    relay_slots: usize,
    /// Circuits relayed at once (each peer may be an end of 8).
    #[arg(long, env = "RELAYMESH_RELAY_CIRCUITS", default_value_t = 64)]
    relay_circuits: usize,
    /// Seconds a circuit lives before the relay closes it (the peers dial again).
    #[arg(long, env = "RELAYMESH_RELAY_CIRCUIT_SECS", default_value_t = 600)]
    relay_circuit_secs: u64,
    /// MiB a circuit carries before the relay closes it.
    #[arg(long, env = "RELAYMESH_RELAY_CIRCUIT_MIB", default_value_t = 16)]
    relay_circuit_mib: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let mesh = match &args.mesh_file {
        Some(path) => {
            relaymesh_node::config::MeshFile::load(path).map_err(|e| anyhow::anyhow!(e))?
        }
        None => named_mesh(&args.mesh),
    };
    let mut config = NodeConfig::new(mesh, Identity::DataDir(args.data_dir.clone()));
    config.role = Role::Bootstrap;
    config.invite = args
        .invite
        .as_deref()
        .map(relaymesh_node::mesh::membership::read_invite)
        .transpose()
        .map_err(|e| anyhow::anyhow!(e))?;
    config.listen = args.listen.clone();
    config.bootstrap = args.bootstrap;
    config.max_connections = args.max_connections;
    config.external = args.external;
    if !args.no_relay {
        config.nat_services = Some(relaymesh_node::config::RelayLimits {
            max_reservations: args.relay_slots,
            max_circuits: args.relay_circuits,
            max_circuit_duration: Duration::from_secs(args.relay_circuit_secs),
            max_circuit_bytes: args.relay_circuit_mib << 20,
            ..Default::default()
        });
    }
    let node = Node::start(config)
        .await
        .context("starting the bootstrap node")?;

    // Wait until every listener has reported an address, then print them, the first
    // being the one to give to other nodes.
    let mut addrs = Vec::new();
    for _ in 0..100 {
        addrs = node.handle().status().await?.listen_addrs;
        if addrs.len() >= args.listen.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::ensure!(
        !addrs.is_empty(),
        "no listen address came up; check --listen"
    );
    // QUIC first: it is the transport nodes should use when they can.
    addrs.sort_by_key(|a| !a.contains("/quic"));
    for addr in &addrs {
        println!("{addr}");
    }

    tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted; stopping");
            node.shutdown().await;
        }
        _ = wait(node.handle().clone()) => {}
    }
    Ok(())
}

async fn wait(handle: relaymesh_node::NodeHandle) {
    while handle.status().await.is_ok() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
