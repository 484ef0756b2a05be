//! How many connections peers at one network address may hold here.
//!
//! A peer id costs nothing: one machine can make thousands, and libp2p's connection
//! limits (in all, per peer) do not see that they come from one place. Without a bound
//! per address, one host holding every connection slot (`max_connections`, 256 by
//! default) shuts everyone else out of the node, and at 4 claims each its peer ids fill
//! a model's line for the next free slot (`infer::claims`). So inbound direct
//! connections are counted per network address: an IPv4 address, or an IPv6 /56 (what
//! one household is usually given), handshakes in progress included (or one host could
//! hold every pending place with stalled handshakes). A connection past `per_ip` is
//! refused as it arrives and counted
//! (`relaymesh_limited_total{reason="connections_per_ip"}`). An IPv6 /48 (a site: what
//! a hosting customer or a campus is given) holds 256 /56s, so one holder of a /48
//! could take `256 × per_ip` connections; the /56s of one /48 together hold at most
//! [`SITE_FACTOR`] × `per_ip` (64 by default, a quarter of the node's connections).
//!
//! Not counted: connections we dialled (we chose them), relayed ones (the relay bounds
//! its circuits per peer, and their address is the relay's), and this machine's own
//! loopback addresses `127.0.0.1` and `::1` (nodes on one machine are not strangers to
//! it; a test or a demo runs a dozen there).
//!
//! libp2p has no per-address connection limit, so this is a small behaviour of ours,
//! built like `libp2p-connection-limits`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::ConnectionEstablished;
use libp2p::swarm::{
    dummy, ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// Inbound connections peers at one address may hold by default
/// (`--limit connections_per_ip=N`): eight addresses to take the 256 slots.
pub const DEFAULT_PER_IP: u32 = 32;

/// How many networks' worth of connections the /56s of one IPv6 /48 hold at most.
pub const SITE_FACTOR: u32 = 2;

/// Where a connection comes from, as this limit counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Network {
    /// One IPv4 address.
    V4(Ipv4Addr),
    /// The first 56 bits of an IPv6 address.
    V6([u8; 7]),
    /// Peers that reached us through this relay (for the claims' bound only: the relay
    /// bounds their connections).
    Relay(PeerId),
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Network::V4(ip) => write!(f, "{ip}"),
            Network::V6(prefix) => {
                let mut octets = [0u8; 16];
                octets[..7].copy_from_slice(prefix);
                write!(f, "{}/56", Ipv6Addr::from(octets))
            }
            Network::Relay(relay) => write!(f, "the relay {relay}"),
        }
    }
}

/// The network a direct connection from `remote` counts against; `None` for a relayed
/// one, one without an IP address, or this machine's `127.0.0.1` / `::1`.
pub fn network_of(remote: &Multiaddr) -> Option<Network> {
    // Only this machine's loopback is exempt (`::ffff:127.0.0.1` is how a dual-stack
    // socket sees it): a 6to4, Teredo or NAT64 address that carries 127.0.0.1 comes
    // from elsewhere (found by review).
    let ip = match super::contacts::ip_of(remote)? {
        IpAddr::V4(ip) if ip == Ipv4Addr::LOCALHOST => return None,
        IpAddr::V6(ip)
            if ip == Ipv6Addr::LOCALHOST || ip.to_ipv4_mapped() == Some(Ipv4Addr::LOCALHOST) =>
        {
            return None
        }
        IpAddr::V6(ip) => embedded_v4(&ip).map_or(IpAddr::V6(ip), IpAddr::V4),
        ip => ip,
    };
    match ip {
        IpAddr::V4(ip) => Some(Network::V4(ip)),
        IpAddr::V6(ip) => {
            let mut prefix = [0u8; 7];
            prefix.copy_from_slice(&ip.octets()[..7]);
            Some(Network::V6(prefix))
        }
    }
}

/// The IPv4 address an IPv6 address stands for, where it carries one: IPv4-mapped
/// (`::ffff:a.b.c.d`), 6to4 (`2002:aabb:ccdd::/48`, one IPv4 address owning 256 /56s),
/// Teredo (`2001:0::/32`, the client's address inverted in the last 32 bits) and NAT64
/// (`64:ff9b::/96`). Counted as that IPv4 address, or one host would get a /56 per
/// address it can make up.
fn embedded_v4(ip: &Ipv6Addr) -> Option<Ipv4Addr> {
    let o = ip.octets();
    let seg = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        Some(v4)
    } else if seg[0] == 0x2002 {
        Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]))
    } else if seg[0] == 0x2001 && seg[1] == 0 {
        Some(Ipv4Addr::new(!o[12], !o[13], !o[14], !o[15]))
    } else if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
    } else {
        None
    }
}

/// The IPv6 /48 a network is in (`None` for IPv4 and relays).
pub fn site_of(network: &Network) -> Option<[u8; 6]> {
    match network {
        Network::V6(prefix) => {
            let mut site = [0u8; 6];
            site.copy_from_slice(&prefix[..6]);
            Some(site)
        }
        _ => None,
    }
}

/// One connection fewer counted against `key`.
fn release<K: std::hash::Hash + Eq>(held: &mut HashMap<K, u32>, key: K) {
    if let Some(n) = held.get_mut(&key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            held.remove(&key);
        }
    }
}

/// The relay a relayed address goes through (`/…/p2p/<relay>/p2p-circuit/…`).
fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut last = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(peer) => last = Some(peer),
            Protocol::P2pCircuit => return last,
            _ => {}
        }
    }
    None
}

/// Why a connection was refused: its network holds `per_ip` already, or its IPv6 /48
/// holds `SITE_FACTOR × per_ip`.
#[derive(Debug)]
pub struct TooManyFromNetwork {
    /// The network.
    pub network: Network,
    /// The limit.
    pub per_ip: u32,
    /// Whether the network's /48 is what is full.
    pub site: bool,
}

impl std::fmt::Display for TooManyFromNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.site {
            write!(
                f,
                "peers in the /48 of {} hold {} connections here already (limit connections_per_ip × {SITE_FACTOR} per IPv6 /48)",
                self.network,
                self.per_ip.saturating_mul(SITE_FACTOR)
            )
        } else {
            write!(
                f,
                "peers at {} hold {} connections here already (limit connections_per_ip)",
                self.network, self.per_ip
            )
        }
    }
}

impl std::error::Error for TooManyFromNetwork {}

/// The network each peer holding a counted connection comes from (and how many such
/// connections it holds), shared with the supplier: its claims on a model's next free
/// slot are bounded per network too (`infer::claims`).
#[derive(Clone, Debug, Default)]
pub struct PeerNetworks(Arc<Mutex<HashMap<PeerId, Placements>>>);

/// The networks one peer holds counted connections from, in the order it came from
/// them, with how many from each.
type Placements = Vec<(Network, u32)>;

impl PeerNetworks {
    /// The network `peer` connected to us from (the first of those it holds
    /// connections from, while it holds one); `None` if it holds no counted connection
    /// (it came through a relay, from this machine, or we dialled it).
    pub fn of(&self, peer: &PeerId) -> Option<Network> {
        let map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(peer)
            .and_then(|networks| networks.first())
            .map(|(network, _)| *network)
    }

    pub(crate) fn add(&self, peer: PeerId, network: Network) {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let networks = map.entry(peer).or_default();
        match networks.iter_mut().find(|(n, _)| *n == network) {
            Some((_, count)) => *count += 1,
            None => networks.push((network, 1)),
        }
    }

    /// One of `peer`'s connections from `network` closed: once it holds none from
    /// there, it is placed by its next network, if any (found by review: a peer was
    /// charged to the network of its first connection for as long as it held any).
    pub(crate) fn remove(&self, peer: &PeerId, network: Network) {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(networks) = map.get_mut(peer) else {
            return;
        };
        if let Some(i) = networks.iter().position(|(n, _)| *n == network) {
            networks[i].1 = networks[i].1.saturating_sub(1);
            if networks[i].1 == 0 {
                networks.remove(i);
            }
        }
        if networks.is_empty() {
            map.remove(peer);
        }
    }
}

/// The behaviour: counts inbound direct connections per network, refuses past the limit.
pub struct IpLimit {
    per_ip: u32,
    held: HashMap<Network, u32>,
    /// Inbound connections held from each IPv6 /48, all its /56s together.
    held_sites: HashMap<[u8; 6], u32>,
    counted: HashMap<ConnectionId, Network>,
    /// Inbound connections still in their handshakes, by network: they count too, or
    /// one host could hold every pending place (64) with stalled handshakes.
    pending: HashMap<ConnectionId, Network>,
    /// Most handshakes in progress from one network.
    pending_per_network: usize,
    peers: PeerNetworks,
    /// The connections `peers` places their peer by, with the peer and its network.
    placed: HashMap<ConnectionId, (PeerId, Network)>,
}

impl IpLimit {
    /// At most `per_ip` inbound connections per network (at least 1), of which at most
    /// `pending_per_network` still in their handshakes.
    pub fn new(per_ip: u32, pending_per_network: usize) -> Self {
        Self {
            per_ip: per_ip.max(1),
            held: HashMap::new(),
            held_sites: HashMap::new(),
            counted: HashMap::new(),
            pending: HashMap::new(),
            pending_per_network: pending_per_network.max(1),
            peers: PeerNetworks::default(),
            placed: HashMap::new(),
        }
    }

    /// Where each peer holding a counted connection comes from.
    pub fn peer_networks(&self) -> PeerNetworks {
        self.peers.clone()
    }

    /// Inbound connections held from `network` now.
    pub fn held(&self, network: &Network) -> u32 {
        self.held.get(network).copied().unwrap_or(0)
    }

    /// Inbound connections held from the /48 of `network`, if it is IPv6.
    fn held_site(&self, network: &Network) -> u32 {
        site_of(network).map_or(0, |site| self.held_sites.get(&site).copied().unwrap_or(0))
    }

    fn refuse(&self, network: Network, site: bool) -> ConnectionDenied {
        ConnectionDenied::new(TooManyFromNetwork {
            network,
            per_ip: self.per_ip,
            site,
        })
    }

    /// Why `network` may not have one more connection, counting `pending` handshakes
    /// from it and `pending_site` from its /48; `None` if it may.
    fn full(
        &self,
        network: Network,
        pending: usize,
        pending_site: usize,
    ) -> Option<ConnectionDenied> {
        if self.held(&network) as usize + pending >= self.per_ip as usize {
            return Some(self.refuse(network, false));
        }
        let per_site = self.per_ip.saturating_mul(SITE_FACTOR) as usize;
        let site_full = site_of(&network).is_some()
            && self.held_site(&network) as usize + pending_site >= per_site;
        site_full.then(|| self.refuse(network, true))
    }
}

impl NetworkBehaviour for IpLimit {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(network) = network_of(remote) else {
            return Ok(());
        };
        let pending = self.pending.values().filter(|n| **n == network).count();
        if pending >= self.pending_per_network {
            return Err(self.refuse(network, false));
        }
        let site = site_of(&network);
        let pending_site = site.map_or(0, |site| {
            self.pending
                .values()
                .filter(|n| site_of(n) == Some(site))
                .count()
        });
        // Found by review: the /56s of one /48 could otherwise hold every pending
        // place (8 /56s × 8 each), stalling their handshakes.
        if pending_site
            >= self
                .pending_per_network
                .saturating_mul(SITE_FACTOR as usize)
        {
            return Err(self.refuse(network, true));
        }
        if let Some(denied) = self.full(network, pending, pending_site) {
            return Err(denied);
        }
        self.pending.insert(connection_id, network);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.pending.remove(&connection_id);
        if let Some(denied) = network_of(remote).and_then(|network| self.full(network, 0, 0)) {
            return Err(denied);
        }
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            // Counted once every behaviour has let it in (another may refuse it after
            // this one did not).
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            }) => {
                let ConnectedPoint::Listener { send_back_addr, .. } = endpoint else {
                    return;
                };
                if let Some(network) = network_of(send_back_addr) {
                    *self.held.entry(network).or_default() += 1;
                    if let Some(site) = site_of(&network) {
                        *self.held_sites.entry(site).or_default() += 1;
                    }
                    self.counted.insert(connection_id, network);
                    self.peers.add(peer_id, network);
                    self.placed.insert(connection_id, (peer_id, network));
                } else if let Some(relay) = relay_of(send_back_addr) {
                    let network = Network::Relay(relay);
                    self.peers.add(peer_id, network);
                    self.placed.insert(connection_id, (peer_id, network));
                }
            }
            // A handshake that failed, or a connection another behaviour refused.
            FromSwarm::ListenFailure(failure) => {
                self.pending.remove(&failure.connection_id);
            }
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => {
                if let Some((peer, network)) = self.placed.remove(&connection_id) {
                    self.peers.remove(&peer, network);
                }
                if let Some(network) = self.counted.remove(&connection_id) {
                    release(&mut self.held, network);
                    if let Some(site) = site_of(&network) {
                        release(&mut self.held_sites, site);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        libp2p::core::util::unreachable(event)
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    /// Found by review: a peer that held connections from two networks stayed charged
    /// to the first after its last connection from there closed.
    #[test]
    fn a_peer_is_placed_by_a_network_it_still_holds_a_connection_from() {
        let peers = PeerNetworks::default();
        let peer = PeerId::random();
        let (home, away) = (
            Network::V4(std::net::Ipv4Addr::new(203, 0, 113, 7)),
            Network::V4(std::net::Ipv4Addr::new(198, 51, 100, 9)),
        );
        peers.add(peer, home);
        peers.add(peer, away);
        peers.add(peer, home);
        assert_eq!(peers.of(&peer), Some(home));
        peers.remove(&peer, home);
        assert_eq!(
            peers.of(&peer),
            Some(home),
            "one connection from home is left"
        );
        peers.remove(&peer, home);
        assert_eq!(peers.of(&peer), Some(away));
        peers.remove(&peer, away);
        assert_eq!(peers.of(&peer), None);
        peers.remove(&peer, away);
        assert_eq!(peers.of(&peer), None);
    }

    #[test]
    fn connections_count_against_their_address_or_ipv6_prefix() {
        let a = network_of(&addr("/ip4/203.0.113.7/udp/4002/quic-v1")).unwrap();
        assert_eq!(a, Network::V4(Ipv4Addr::new(203, 0, 113, 7)));
        assert_ne!(
            Some(a),
            network_of(&addr("/ip4/203.0.113.8/tcp/4002")),
            "each IPv4 address is its own"
        );
        // One household's /56 is one network, whatever the host bits.
        let h1 = network_of(&addr("/ip6/2001:db8:aa:bb00::1/udp/1/quic-v1"));
        let h2 = network_of(&addr("/ip6/2001:db8:aa:bbff:1234::9/tcp/2"));
        let other = network_of(&addr("/ip6/2001:db8:aa:cc00::1/tcp/2"));
        assert!(h1.is_some());
        assert_eq!(h1, h2);
        assert_ne!(h1, other);
        assert_eq!(h1.unwrap().to_string(), "2001:db8:aa:bb00::/56");
        // IPv4 in IPv6 counts as the IPv4 address: mapped, 6to4 (each /56 of it would
        // otherwise be a network of its own), Teredo (inverted) and NAT64.
        for carrier in [
            "/ip6/::ffff:203.0.113.7/tcp/1",
            "/ip6/2002:cb00:7107:1200::1/tcp/1",
            "/ip6/2002:cb00:7107:ff00::1/tcp/1",
            "/ip6/2001:0:4136:e378:8000:63bf:34ff:8ef8/tcp/1",
            "/ip6/64:ff9b::cb00:7107/tcp/1",
        ] {
            assert_eq!(network_of(&addr(carrier)), Some(a), "{carrier}");
        }
        // Not counted: this machine's loopback, relayed connections.
        for free in [
            "/ip4/127.0.0.1/udp/4002/quic-v1",
            "/ip6/::1/tcp/4002",
            "/ip4/198.51.100.1/udp/4002/quic-v1/p2p/12D3KooWA1b3VbZ5ZrN6FqPjnVLcXkrEeY3bW8bqWWZxw7Ye6oNx/p2p-circuit",
            "/dns4/example.com/tcp/1",
        ] {
            assert_eq!(network_of(&addr(free)), None, "{free}");
        }
        // Other loopback addresses count: a test's flood comes from 127.0.0.2. And so
        // does 127.0.0.1 carried in 6to4, Teredo or NAT64: it comes from elsewhere.
        assert!(network_of(&addr("/ip4/127.0.0.2/udp/1/quic-v1")).is_some());
        assert_eq!(network_of(&addr("/ip6/::ffff:127.0.0.1/tcp/1")), None);
        for carried in [
            "/ip6/2002:7f00:1::1/tcp/1",
            "/ip6/2001:0:4136:e378:8000:63bf:80ff:fffe/tcp/1",
            "/ip6/64:ff9b::7f00:1/tcp/1",
        ] {
            assert_eq!(
                network_of(&addr(carried)),
                Some(Network::V4(Ipv4Addr::LOCALHOST)),
                "{carried}"
            );
        }
    }

    /// Review: handshakes in progress were not counted, so one host could hold every
    /// pending place of the node (64) with stalled handshakes.
    #[test]
    fn handshakes_in_progress_count_against_their_address() {
        let mut limit = IpLimit::new(2, 8);
        let local = addr("/ip4/198.51.100.2/tcp/4002");
        let remote = addr("/ip4/203.0.113.7/tcp/5000");
        let id = ConnectionId::new_unchecked;
        assert!(limit
            .handle_pending_inbound_connection(id(1), &local, &remote)
            .is_ok());
        assert!(limit
            .handle_pending_inbound_connection(id(2), &local, &remote)
            .is_ok());
        assert!(limit
            .handle_pending_inbound_connection(id(3), &local, &remote)
            .is_err());
        assert!(limit
            .handle_pending_inbound_connection(id(4), &local, &addr("/ip4/203.0.113.8/tcp/1"))
            .is_ok());
        // And at most `pending_per_network` of them, whatever `per_ip` allows.
        let mut narrow = IpLimit::new(32, 1);
        assert!(narrow
            .handle_pending_inbound_connection(id(1), &local, &remote)
            .is_ok());
        assert!(narrow
            .handle_pending_inbound_connection(id(2), &local, &remote)
            .is_err());
        // One handshake fails: its place is free again.
        let error = libp2p::swarm::ListenError::Aborted;
        limit.on_swarm_event(FromSwarm::ListenFailure(libp2p::swarm::ListenFailure {
            local_addr: &local,
            send_back_addr: &remote,
            error: &error,
            connection_id: id(1),
            peer_id: None,
        }));
        assert!(limit
            .handle_pending_inbound_connection(id(5), &local, &remote)
            .is_ok());
    }

    /// The swarm telling `limit` that inbound connection `id` from `remote` is up.
    fn established(limit: &mut IpLimit, id: ConnectionId, local: &Multiaddr, remote: &Multiaddr) {
        let endpoint = ConnectedPoint::Listener {
            local_addr: local.clone(),
            send_back_addr: remote.clone(),
        };
        limit.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
            peer_id: PeerId::random(),
            connection_id: id,
            endpoint: &endpoint,
            failed_addresses: &[],
            other_established: 0,
        }));
    }

    #[test]
    fn past_the_limit_an_address_is_refused_until_one_of_its_connections_closes() {
        use libp2p::core::transport::PortUse;
        let mut limit = IpLimit::new(2, 8);
        let local = addr("/ip4/198.51.100.2/udp/4002/quic-v1");
        let remote = addr("/ip4/203.0.113.7/udp/5000/quic-v1");
        let elsewhere = addr("/ip4/203.0.113.9/udp/5000/quic-v1");
        let mut ids = Vec::new();
        for _ in 0..2 {
            let id = ConnectionId::new_unchecked(ids.len());
            assert!(limit
                .handle_established_inbound_connection(id, PeerId::random(), &local, &remote)
                .is_ok());
            established(&mut limit, id, &local, &remote);
            ids.push(id);
        }
        let third = ConnectionId::new_unchecked(9);
        let Err(refused) =
            limit.handle_established_inbound_connection(third, PeerId::random(), &local, &remote)
        else {
            panic!("a third connection from one address was let in");
        };
        assert!(refused
            .downcast_ref::<TooManyFromNetwork>()
            .is_some_and(|e| e.to_string().contains("203.0.113.7")));
        // Another address, and our own dials, are not affected.
        assert!(limit
            .handle_established_inbound_connection(third, PeerId::random(), &local, &elsewhere)
            .is_ok());
        assert!(limit
            .handle_established_outbound_connection(
                third,
                PeerId::random(),
                &remote,
                Endpoint::Dialer,
                PortUse::Reuse
            )
            .is_ok());
        // One closes: the next is let in.
        let endpoint = ConnectedPoint::Listener {
            local_addr: local.clone(),
            send_back_addr: remote.clone(),
        };
        limit.on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
            peer_id: PeerId::random(),
            connection_id: ids[0],
            endpoint: &endpoint,
            cause: None,
            remaining_established: 0,
        }));
        assert_eq!(limit.held(&network_of(&remote).unwrap()), 1);
        assert!(limit
            .handle_established_inbound_connection(third, PeerId::random(), &local, &remote)
            .is_ok());
    }

    /// Review: a /48 holds 256 /56s, so its holder could take 256 × `per_ip`
    /// connections (every slot of the node). The /56s of one /48 together hold at most
    /// `SITE_FACTOR × per_ip`; another /48 is not affected, and a /56's own bound still
    /// applies first.
    #[test]
    fn the_56s_of_one_48_share_a_bound() {
        let mut limit = IpLimit::new(2, 64);
        let local = addr("/ip6/2001:db8:1::1/udp/4002/quic-v1");
        let per_site = 2 * SITE_FACTOR as usize;
        let mut n = 0;
        let mut connect = |limit: &mut IpLimit, remote: &Multiaddr| {
            n += 1;
            let id = ConnectionId::new_unchecked(n);
            let admitted = limit
                .handle_pending_inbound_connection(id, &local, remote)
                .and_then(|()| {
                    limit.handle_established_inbound_connection(
                        id,
                        PeerId::random(),
                        &local,
                        remote,
                    )
                });
            if let Err(denied) = admitted {
                // Refused: whether for the /48.
                return denied.downcast_ref::<TooManyFromNetwork>().map(|e| e.site);
            }
            established(limit, id, &local, remote);
            None
        };
        // Connections from ever new /56s of 2001:db8:aa::/48.
        let mut admitted = 0;
        let mut refusal = None;
        for i in 0..=255u8 {
            let remote = addr(&format!("/ip6/2001:db8:aa:{i:02x}00::1/udp/1/quic-v1"));
            match connect(&mut limit, &remote) {
                None => admitted += 1,
                Some(site) => {
                    refusal = Some(site);
                    break;
                }
            }
        }
        assert_eq!(admitted, per_site);
        assert_eq!(refusal, Some(true), "refused for the /48");
        // Another /48 gets in, and within it the /56 bound comes first.
        let other = addr("/ip6/2001:db8:bb:100::1/udp/1/quic-v1");
        assert!(connect(&mut limit, &other).is_none());
        assert!(connect(&mut limit, &other).is_none());
        assert_eq!(connect(&mut limit, &other), Some(false));
    }

    /// Found by review: pending handshakes were bounded per /56 only, so the /56s of
    /// one /48 (8 pending each) could hold every pending place of the node (64). They
    /// hold at most `SITE_FACTOR × pending_per_network` together.
    #[test]
    fn the_56s_of_one_48_share_the_pending_places() {
        let mut limit = IpLimit::new(32, 8);
        let local = addr("/ip6/2001:db8:1::1/udp/4002/quic-v1");
        let mut stalled = 0;
        for i in 0..=255u8 {
            let remote = addr(&format!("/ip6/2001:db8:aa:{i:02x}00::1/udp/1/quic-v1"));
            let id = ConnectionId::new_unchecked(usize::from(i));
            if limit
                .handle_pending_inbound_connection(id, &local, &remote)
                .is_err()
            {
                break;
            }
            stalled += 1;
        }
        assert_eq!(stalled, 8 * SITE_FACTOR as usize);
        let other = addr("/ip6/2001:db8:bb:100::1/udp/1/quic-v1");
        assert!(limit
            .handle_pending_inbound_connection(ConnectionId::new_unchecked(999), &local, &other)
            .is_ok());
    }
}
