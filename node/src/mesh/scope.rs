//! Which of a node's addresses a peer can use. A node listening on `0.0.0.0` or `::`
//! has an address on every interface, loopback included; a peer on another host that
//! dials our `127.0.0.1:4002` reaches *its own* host, and when it listens on the same
//! port it reaches itself. So an address is handed to a peer (identify) and kept from
//! a peer (identify, the DHT) only where it can lead somewhere: loopback between nodes
//! of one host, private ranges between nodes that met over a private or loopback
//! address, public addresses to anyone.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;

/// How far an address reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// This host only: `127.0.0.0/8`, `::1`, `localhost` (and the unspecified address).
    Loopback,
    /// One site: RFC 1918, shared address space (`100.64.0.0/10`, carrier-grade NAT),
    /// link-local, IPv6 unique-local and link-local.
    Private,
    /// Anywhere: every other IP address, DNS names, and addresses without an IP.
    Public,
}

/// The scope of the first IP or DNS component of `addr`.
pub fn scope_of(addr: &Multiaddr) -> Scope {
    for protocol in addr.iter() {
        match protocol {
            Protocol::Ip4(ip) => return ip4_scope(ip),
            Protocol::Ip6(ip) => return ip6_scope(ip),
            Protocol::Dns(name) | Protocol::Dns4(name) | Protocol::Dns6(name) => {
                return if name.eq_ignore_ascii_case("localhost") {
                    Scope::Loopback
                } else {
                    Scope::Public
                };
            }
            _ => {}
        }
    }
    Scope::Public
}

/// The scope of an IP address.
pub fn ip_scope(ip: IpAddr) -> Scope {
    match ip {
        IpAddr::V4(ip) => ip4_scope(ip),
        IpAddr::V6(ip) => ip6_scope(ip),
    }
}

fn ip4_scope(ip: Ipv4Addr) -> Scope {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() || ip.is_unspecified() {
        Scope::Loopback
    } else if ip.is_private() || ip.is_link_local() || (a == 100 && (64..128).contains(&b)) {
        Scope::Private
    } else {
        Scope::Public
    }
}

fn ip6_scope(ip: Ipv6Addr) -> Scope {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return ip4_scope(v4);
    }
    let first = ip.segments()[0];
    if ip.is_loopback() || ip.is_unspecified() {
        Scope::Loopback
    } else if first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfe80 {
        Scope::Private
    } else {
        Scope::Public
    }
}

/// Whether an address of scope `addr` can lead a peer we reach over an address of
/// scope `via` (or that reaches us over one) anywhere: loopback only between nodes of
/// one host, private only between nodes that met over a private or loopback address.
pub fn usable(addr: Scope, via: Scope) -> bool {
    match addr {
        Scope::Loopback => via == Scope::Loopback,
        Scope::Private => via != Scope::Public,
        Scope::Public => true,
    }
}

/// The addresses of `addrs` that a peer met over `via` can use.
pub fn usable_over<'a>(
    addrs: impl IntoIterator<Item = &'a Multiaddr>,
    via: &Multiaddr,
) -> impl Iterator<Item = &'a Multiaddr> {
    let via = scope_of(via);
    addrs.into_iter().filter(move |a| usable(scope_of(a), via))
}

/// The IP address of `addr`, if it has one.
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// Transport and port of `addr` (`tcp`/`udp`, port), to compare an address with a
/// listener's.
pub fn port_of(addr: &Multiaddr) -> Option<(&'static str, u16)> {
    addr.iter().find_map(|p| match p {
        Protocol::Tcp(port) => Some(("tcp", port)),
        Protocol::Udp(port) => Some(("udp", port)),
        _ => None,
    })
}

/// `addr` without a trailing `/p2p/<peer id>`, so addresses compare as addresses.
pub fn without_peer(addr: &Multiaddr) -> Multiaddr {
    let mut addr = addr.clone();
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_have_the_scope_of_their_ip() {
        for (addr, scope) in [
            ("/ip4/127.0.0.1/udp/4002/quic-v1", Scope::Loopback),
            ("/ip4/127.8.0.1/tcp/1", Scope::Loopback),
            ("/ip4/0.0.0.0/tcp/1", Scope::Loopback),
            ("/ip6/::1/tcp/1", Scope::Loopback),
            ("/dns4/localhost/tcp/1", Scope::Loopback),
            ("/ip4/10.77.0.2/tcp/4002", Scope::Private),
            ("/ip4/172.16.5.4/tcp/1", Scope::Private),
            ("/ip4/192.168.1.20/udp/1/quic-v1", Scope::Private),
            ("/ip4/100.64.0.9/tcp/1", Scope::Private),
            ("/ip4/169.254.3.3/tcp/1", Scope::Private),
            ("/ip6/fd00::5/tcp/1", Scope::Private),
            ("/ip6/fe80::1/tcp/1", Scope::Private),
            ("/ip6/::ffff:10.0.0.1/tcp/1", Scope::Private),
            ("/ip4/100.128.0.1/tcp/1", Scope::Public),
            ("/ip4/198.51.100.7/tcp/1", Scope::Public),
            ("/ip4/8.8.8.8/tcp/1", Scope::Public),
            ("/ip6/2001:db8::1/tcp/1", Scope::Public),
            ("/dns4/boot.example.org/tcp/1", Scope::Public),
        ] {
            assert_eq!(scope_of(&a(addr)), scope, "{addr}");
        }
    }

    #[test]
    fn loopback_stays_on_the_host_and_private_on_the_site() {
        let mine = [
            a("/ip4/127.0.0.1/udp/4002/quic-v1"),
            a("/ip4/10.77.0.2/udp/4002/quic-v1"),
            a("/ip4/198.51.100.2/udp/4002/quic-v1"),
        ];
        let over = |via: &str| -> Vec<String> {
            usable_over(&mine, &a(via)).map(|a| a.to_string()).collect()
        };
        assert_eq!(over("/ip4/127.0.0.1/udp/5/quic-v1").len(), 3);
        assert_eq!(
            over("/ip4/10.77.0.3/udp/4002/quic-v1"),
            [
                "/ip4/10.77.0.2/udp/4002/quic-v1",
                "/ip4/198.51.100.2/udp/4002/quic-v1"
            ]
        );
        assert_eq!(
            over("/ip4/203.0.113.9/tcp/31000"),
            ["/ip4/198.51.100.2/udp/4002/quic-v1"]
        );
    }

    #[test]
    fn ports_and_peer_ids() {
        let addr = a("/ip4/10.0.0.1/udp/4002/quic-v1/p2p/12D3KooWLRDC42wxwgaKDiG7XDrcuGipDGiVF3QAjzaEEpz3NTsq");
        assert_eq!(port_of(&addr), Some(("udp", 4002)));
        assert_eq!(without_peer(&addr), a("/ip4/10.0.0.1/udp/4002/quic-v1"));
        assert_eq!(ip_of(&addr), Some("10.0.0.1".parse().unwrap()));
    }
}
