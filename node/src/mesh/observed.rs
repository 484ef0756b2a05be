//! Our address as peers see it. identify tells each peer the address it sees us at;
//! behind a NAT that is the router's public address and port, which no interface of
//! ours lists. Such an address is advertised (made an external address, which
//! identify hands to public peers) only once two peers at different IP addresses
//! report the same one, and it stops being advertised when no connected peer reports
//! it any more. One peer alone could be wrong or lying; a NAT that maps each
//! connection to a new port never yields two equal reports, and rightly so, since a
//! peer could not dial such an address. (A dial-back check, AutoNAT, comes with NAT
//! traversal.)

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use libp2p::swarm::ConnectionId;
use libp2p::Multiaddr;

use super::scope::{scope_of, Scope};

/// Peers at distinct IP addresses that must report an address before we advertise it.
pub const CONFIRMATIONS: usize = 2;

/// What became of an observed address.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// Reported by enough peers: advertise it.
    Confirmed(Multiaddr),
    /// No connected peer reports it any more: stop advertising it.
    Expired(Multiaddr),
}

/// Observed addresses by connection.
#[derive(Debug, Default)]
pub struct Observed {
    reports: HashMap<ConnectionId, (IpAddr, Multiaddr)>,
    confirmed: BTreeSet<Multiaddr>,
}

impl Observed {
    /// The peer at `observer` sees us at `addr` over connection `conn`. Only public
    /// addresses count: a private or loopback one is one of our listen addresses
    /// already, and advertised as such.
    pub fn report(&mut self, conn: ConnectionId, observer: IpAddr, addr: Multiaddr) -> Vec<Change> {
        if scope_of(&addr) != Scope::Public {
            return Vec::new();
        }
        self.reports.insert(conn, (observer, addr));
        self.settle()
    }

    /// Connection `conn` closed.
    pub fn closed(&mut self, conn: ConnectionId) -> Vec<Change> {
        if self.reports.remove(&conn).is_none() {
            return Vec::new();
        }
        self.settle()
    }

    /// The addresses advertised now.
    pub fn confirmed(&self) -> impl Iterator<Item = &Multiaddr> {
        self.confirmed.iter()
    }

    fn settle(&mut self) -> Vec<Change> {
        let mut observers: BTreeMap<&Multiaddr, BTreeSet<IpAddr>> = BTreeMap::new();
        for (ip, addr) in self.reports.values() {
            observers.entry(addr).or_default().insert(*ip);
        }
        let now: BTreeSet<Multiaddr> = observers
            .into_iter()
            .filter(|(_, ips)| ips.len() >= CONFIRMATIONS)
            .map(|(addr, _)| addr.clone())
            .collect();
        let mut changes: Vec<Change> = now
            .difference(&self.confirmed)
            .map(|a| Change::Confirmed(a.clone()))
            .collect();
        changes.extend(
            self.confirmed
                .iter()
                .filter(|a| !self.reports.values().any(|(_, r)| r == *a))
                .map(|a| Change::Expired(a.clone())),
        );
        for change in &changes {
            match change {
                Change::Confirmed(a) => self.confirmed.insert(a.clone()),
                Change::Expired(a) => self.confirmed.remove(a),
            };
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn two_observers_confirm_and_the_last_one_gone_expires() {
        let mut seen = Observed::default();
        let public = a("/ip4/198.51.100.9/udp/4002/quic-v1");
        let (c1, c2, c3) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
            ConnectionId::new_unchecked(3),
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(seen
            .report(c1, ip("203.0.113.1"), public.clone())
            .is_empty());
        // The same observer twice is still one.
        assert!(seen
            .report(c2, ip("203.0.113.1"), public.clone())
            .is_empty());
        assert_eq!(
            seen.report(c3, ip("203.0.113.2"), public.clone()),
            [Change::Confirmed(public.clone())]
        );
        assert_eq!(seen.confirmed().count(), 1);
        assert!(seen.closed(c1).is_empty());
        assert!(seen.closed(c3).is_empty(), "still reported by c2");
        assert_eq!(seen.closed(c2), [Change::Expired(public)]);
        // Private and loopback reports are listen addresses already.
        assert!(seen
            .report(c1, ip("10.0.0.1"), a("/ip4/10.0.0.2/tcp/4002"))
            .is_empty());
        assert!(seen
            .report(c2, ip("10.0.0.3"), a("/ip4/10.0.0.2/tcp/4002"))
            .is_empty());
    }
}
