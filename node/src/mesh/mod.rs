//! The libp2p side of a node: behaviours, the event loop that owns the swarm, the
//! handle the rest of the program uses, the peer table and mesh-scoped names.

pub mod address_book;
pub mod admission;
pub mod advertised;
pub mod behaviour;
pub mod bootstrap;
pub mod contacts;
pub mod doctor;
mod event_loop;
pub mod gossip_budget;
pub mod handle;
pub mod ip_limit;
pub mod join_probe;
pub mod membership;
pub mod names;
pub mod nat_metrics;
pub mod observed;
pub mod peer_table;
pub mod probe;
pub mod reachability;
pub mod relay_policy;
pub mod scope;
pub mod streams;

use std::time::Duration;

use std::sync::Arc;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::timeout::TransportTimeout;
use libp2p::core::transport::Boxed;
use libp2p::core::{upgrade, Transport};
use libp2p::multiaddr::Protocol;
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId};
use relaymesh_protocol::Keypair;
use tokio::sync::mpsc;
use tracing::{info, warn};

pub use event_loop::now_ms;
pub use handle::{LinkKind, MemberRow, NodeGone, NodeHandle, NodeStatus, PeerRow};

use crate::config::{NodeConfig, Role};
use crate::metrics::Metrics;

/// Why the swarm could not start.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    /// Transport or behaviour setup failed.
    #[error("setting up the swarm: {0}")]
    Setup(String),
    /// A listen address was refused.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
}

/// Bound of the command channel: callers wait rather than queue without limit.
const COMMAND_QUEUE: usize = 64;

/// Starts the swarm's task; returns the handle to it and the task.
pub fn spawn(
    config: NodeConfig,
    key: Keypair,
    metrics: Metrics,
    settlement: Option<std::sync::Arc<crate::settle::Settlement>>,
    membership: Option<Arc<membership::Membership>>,
) -> Result<(NodeHandle, tokio::task::JoinHandle<()>), SwarmError> {
    let libp2p_key = libp2p::identity::Keypair::ed25519_from_bytes(key.secret())
        .map_err(|e| SwarmError::Setup(e.to_string()))?;
    let peer_id = libp2p_key.public().to_peer_id();
    let setup = |e: &dyn std::fmt::Display| SwarmError::Setup(e.to_string());
    let (relay_transport, relay_client) = libp2p::relay::client::new(peer_id);
    let contacts = contacts::Shared::default();
    let transport = transport(
        &libp2p_key,
        relay_transport,
        membership.clone(),
        contacts.clone(),
    )
    .map_err(|e| setup(&e))?;
    let behaviour =
        behaviour::MeshBehaviour::new(&libp2p_key, &config, relay_client).map_err(|e| setup(&e))?;
    let mut swarm = libp2p::Swarm::new(
        transport,
        behaviour,
        peer_id,
        libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(Duration::from_secs(60)),
    );

    for addr in &config.listen {
        tcp_port_free(addr)
            .and_then(|()| {
                swarm
                    .listen_on(addr.clone())
                    .map(|_| ())
                    .map_err(|e| causes(&e))
            })
            .map_err(|reason| SwarmError::Listen {
                addr: addr.clone(),
                reason,
            })?;
    }
    // The event loop dials them (and again, backing off, until one answers).
    for addr in &config.bootstrap {
        match addr.iter().last() {
            Some(Protocol::P2p(peer)) => {
                swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            }
            _ => warn!(%addr, "bootstrap address has no /p2p/<peer id>; dialling it anyway"),
        }
    }
    if !config.bootstrap.is_empty() {
        let _ = swarm.behaviour_mut().kad.bootstrap();
    }
    info!(peer = %peer_id, mesh = %config.mesh.name, role = ?config.role, "node starting");
    if let Some(advice) = alone_advice(&config) {
        warn!("{advice}");
    }

    let streams = swarm.behaviour().stream.new_control();
    let peer_networks = swarm.behaviour().per_ip.peer_networks();
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let event_loop = event_loop::EventLoop::new(
        swarm,
        rx,
        config,
        key,
        metrics,
        settlement,
        membership.clone(),
        contacts,
    );
    let task = tokio::spawn(event_loop.run());
    Ok((
        NodeHandle {
            commands: tx,
            peer_id,
            streams,
            membership,
            peer_networks,
        },
        task,
    ))
}

/// What a node that can find no peer by itself should be told: no bootstrap node and
/// no mDNS leave it alone until someone dials it (the public mesh ships no addresses).
fn alone_advice(config: &NodeConfig) -> Option<String> {
    (config.bootstrap.is_empty() && !config.mdns && config.role != Role::Bootstrap).then(|| {
        format!(
            "no --bootstrap node given: this node meets only peers that dial it. To join mesh {}, pass --bootstrap /ip4/…/udp/…/quic-v1/p2p/12D3KooW… (the mesh's operator has it; relaymesh-bootstrap prints its own first), or --mdns to find nodes on this LAN",
            config.mesh.name
        )
    })
}

/// Longest a connection may take from the first packet to admission.
pub(crate) const CONNECTION_TIMEOUT: Duration = Duration::from_secs(20);

/// QUIC and TCP (Noise, yamux), with DNS names resolved, and circuits through relays;
/// in a private mesh every connection must pass the membership handshake
/// ([`admission`]) before the swarm sees it. Every direct dial is noted in `contacts`
/// as it starts, at the IP address a name resolved to.
pub(crate) fn transport(
    key: &libp2p::identity::Keypair,
    relay: libp2p::relay::client::Transport,
    membership: Option<Arc<membership::Membership>>,
    contacts: contacts::Shared,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Box<dyn std::error::Error + Send + Sync>> {
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .upgrade(upgrade::Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    let quic = libp2p::quic::tokio::Transport::new(libp2p::quic::Config::new(key))
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    let direct = libp2p::dns::tokio::Transport::system(contacts::Noting::new(
        quic.or_transport(tcp)
            .map(|either, _| either.into_inner())
            .boxed(),
        contacts,
    ))?;
    let relayed = relay
        .upgrade(upgrade::Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    let all = relayed
        .or_transport(direct)
        .map(|either, _| either.into_inner());
    Ok(match membership {
        Some(membership) => TransportTimeout::new(
            all.and_then(move |(peer, muxer), endpoint| {
                admission::admit(membership.clone(), peer, muxer, endpoint)
            }),
            CONNECTION_TIMEOUT,
        )
        .boxed(),
        None => TransportTimeout::new(all, CONNECTION_TIMEOUT).boxed(),
    })
}

/// The ed25519 key inside a peer id; `None` for any other kind of key.
pub fn public_key_of(peer: &PeerId) -> Option<relaymesh_protocol::PublicKey> {
    relaymesh_protocol::PublicKey::from_peer_id_bytes(&peer.to_bytes())
}

/// The peer id an ed25519 key has on the mesh.
pub fn peer_id_of(key: &Keypair) -> PeerId {
    use relaymesh_protocol::Signer;
    peer_id_of_key(&key.public_key())
}

/// The peer id of an ed25519 public key.
pub fn peer_id_of_key(key: &relaymesh_protocol::PublicKey) -> PeerId {
    PeerId::from_bytes(&key.peer_id_bytes()).expect("valid identity multihash")
}

/// An error and its causes, each said once (libp2p's transport errors keep theirs in
/// `source()` and print nothing themselves).
fn causes(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        source = cause.source();
    }
    if out.is_empty() {
        out = format!("{err:?}");
    }
    out
}

/// Whether a fixed TCP port in `addr` is free. libp2p listens with `SO_REUSEPORT` (so
/// that dials can leave from the listening port, for hole punching), so a second
/// process would share the port silently; a plain bind finds out first.
fn tcp_port_free(addr: &Multiaddr) -> Result<(), String> {
    let mut parts = addr.iter();
    let ip: std::net::IpAddr = match parts.next() {
        Some(Protocol::Ip4(ip)) => ip.into(),
        Some(Protocol::Ip6(ip)) => ip.into(),
        _ => return Ok(()),
    };
    match parts.next() {
        Some(Protocol::Tcp(port)) if port != 0 => std::net::TcpListener::bind((ip, port))
            .map(drop)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AddrInUse => format!(
                    "TCP port {port} is in use by another process (another relaymesh node?); choose another --listen port"
                ),
                _ => e.to_string(),
            }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_that_can_find_no_peer_is_told_what_to_pass() {
        let mut config = NodeConfig::new(
            crate::config::public_mesh(),
            crate::config::Identity::Ephemeral(relaymesh_protocol::Keypair::from_secret([1; 32])),
        );
        let advice = alone_advice(&config).expect("alone");
        assert!(
            advice.contains("--bootstrap") && advice.contains("--mdns"),
            "{advice}"
        );
        config.mdns = true;
        assert_eq!(alone_advice(&config), None);
        config.mdns = false;
        config.role = Role::Bootstrap;
        assert_eq!(alone_advice(&config), None, "the first node of a mesh");
    }

    #[test]
    fn a_taken_tcp_port_is_found_before_libp2p_shares_it() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        assert!(tcp_port_free(&addr).unwrap_err().contains("in use"));
        assert!(tcp_port_free(&"/ip4/127.0.0.1/tcp/0".parse().unwrap()).is_ok());
        assert!(tcp_port_free(&"/ip4/127.0.0.1/udp/1/quic-v1".parse().unwrap()).is_ok());
    }
}
