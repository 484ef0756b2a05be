//! Our address as peers see it. identify tells each peer the address it sees us at;
//! behind a NAT that is the router's public address and port, which no interface of
//! ours lists. Such an address is advertised (made an external address, which
//! identify hands to public peers) only once a dial-back reached us there (AutoNAT,
//! `probe`): behind a NAT that lets no stranger in, peers told the router's address
//! would only time out dialling it. It stops being advertised when no connected peer
//! sees us at that IP address any more (the router's address changed, or the link
//! went down), and is advertised again when one does (a dial-back is asked for each
//! address once).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use libp2p::swarm::ConnectionId;
use libp2p::Multiaddr;

use super::scope::{ip_of, scope_of, Scope};

/// What became of an observed address.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// Reachable there: advertise it.
    Confirmed(Multiaddr),
    /// No connected peer sees us at its IP address any more: stop advertising it.
    Expired(Multiaddr),
}

/// Where peers see us, by connection, and where dial-backs reached us.
#[derive(Debug, Default)]
pub struct Observed {
    /// The public IP address each connection's peer sees us at.
    reports: HashMap<ConnectionId, IpAddr>,
    /// Public addresses a dial-back reached us at.
    verified: BTreeSet<Multiaddr>,
    /// Addresses advertised now.
    confirmed: BTreeSet<Multiaddr>,
}

impl Observed {
    /// The peer of connection `conn` sees us at `addr`. Only public addresses count:
    /// a private or loopback one is one of our listen addresses already, and
    /// advertised as such.
    pub fn report(&mut self, conn: ConnectionId, addr: &Multiaddr) -> Vec<Change> {
        match ip_of(addr) {
            Some(ip) if scope_of(addr) == Scope::Public => {
                self.reports.insert(conn, ip);
                self.settle()
            }
            _ => Vec::new(),
        }
    }

    /// A dial-back reached us at `addr`. A private address (a dial-back from within the
    /// site) is advertised for good, like the interface address it is.
    pub fn verified(&mut self, addr: Multiaddr) -> Vec<Change> {
        if scope_of(&addr) != Scope::Public {
            return if self.confirmed.insert(addr.clone()) {
                vec![Change::Confirmed(addr)]
            } else {
                Vec::new()
            };
        }
        self.verified.insert(addr);
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
        let seen: BTreeSet<IpAddr> = self.reports.values().copied().collect();
        let now: BTreeSet<Multiaddr> = self
            .verified
            .iter()
            .filter(|a| ip_of(a).is_some_and(|ip| seen.contains(&ip)))
            .cloned()
            .collect();
        let mut changes: Vec<Change> = now
            .difference(&self.confirmed)
            .map(|a| Change::Confirmed(a.clone()))
            .collect();
        changes.extend(
            self.confirmed
                .iter()
                .filter(|a| scope_of(a) == Scope::Public && !now.contains(*a))
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

    /// Before AutoNAT, two peers reporting the same address was enough; a NAT that
    /// lets no stranger in was then advertised at its router, where nobody got in.
    #[test]
    fn a_dial_back_confirms_and_the_last_observer_gone_expires() {
        let mut seen = Observed::default();
        let public = a("/ip4/198.51.100.9/udp/4002/quic-v1");
        let (c1, c2) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        assert!(seen.report(c1, &public).is_empty());
        assert!(
            seen.report(c2, &a("/ip4/198.51.100.9/tcp/4002")).is_empty(),
            "peers alone confirm nothing"
        );
        assert_eq!(
            seen.verified(public.clone()),
            [Change::Confirmed(public.clone())]
        );
        assert!(seen.closed(c1).is_empty(), "c2 still sees us at that IP");
        assert_eq!(seen.closed(c2), [Change::Expired(public.clone())]);
        assert_eq!(seen.confirmed().count(), 0);
        // Seen there again: advertised again, with no new dial-back.
        assert_eq!(
            seen.report(ConnectionId::new_unchecked(3), &public),
            [Change::Confirmed(public.clone())]
        );
        // At another IP only: not advertised.
        let mut other = Observed::default();
        other.report(c1, &a("/ip4/203.0.113.4/udp/4002/quic-v1"));
        assert!(other.verified(public).is_empty());
        // A private address reached by a dial-back stays advertised.
        let lan = a("/ip4/10.0.0.2/udp/4002/quic-v1");
        assert_eq!(
            other.verified(lan.clone()),
            [Change::Confirmed(lan.clone())]
        );
        assert!(other.closed(c1).is_empty());
        assert_eq!(other.confirmed().collect::<Vec<_>>(), [&lan]);
    }
}
