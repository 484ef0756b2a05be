//! Whether peers can reach this node, and the relay slots it holds when they cannot,
//! as a machine the event loop drives (it never reads a clock: `now` is an argument;
//! reserving and releasing are its outputs).
//!
//! A node learns its reachability from AutoNAT dial-backs (`probe`): an address a
//! dial-back reached is advertised (`observed`), and the node is **public**; when
//! dial-backs fail and none succeeds, it is **behind NAT**. A full node behind NAT
//! (or seen by a peer at an IP address none of its interfaces has, before a dial-back
//! answers) reserves a slot on up to [`MAX_RELAYS`] relays (bootstrap nodes offer them) and
//! advertises the relayed address the relay hands out (`/…/p2p/<relay>/p2p-circuit`):
//! it is then **relayed**, and peers reach it through the relay and, where both NATs
//! allow, hole-punch a direct link from there (DCUtR). A refused or lost reservation is
//! retried after 5 s, doubling up to 5 minutes. Once the node is found public it
//! keeps one slot until a stranger (a peer at an address it never sent to) reaches it
//! directly (`contacts`): behind an address-restricted NAT the server's dial-back gets
//! in because the node talks to the server's host, while strangers do not. Then all
//! its slots are given back. Light nodes serve nothing and need no slot.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;

/// Relays a node behind NAT holds a slot on at once.
pub const MAX_RELAYS: usize = 2;
/// The wait before asking a relay again after it refused or lost our slot.
pub const RETRY_MIN: Duration = Duration::from_secs(5);
/// The longest such wait.
pub const RETRY_MAX: Duration = Duration::from_secs(300);

/// How peers can reach this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reachability {
    /// Not known yet: no dial-back has answered.
    Unknown,
    /// Peers can dial it: a dial-back reached one of its addresses.
    Public,
    /// Dial-backs did not get through its NAT, and it holds no relay slot.
    BehindNat,
    /// Behind NAT, reachable through a relay (and by hole punching from there).
    Relayed,
}

/// What the event loop should do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Reserve a slot: listen on `addr` (the relay's address, `/p2p/<relay>/p2p-circuit`).
    Reserve {
        /// The relay.
        relay: PeerId,
        /// The address to listen on.
        addr: Multiaddr,
    },
    /// Give the slot at `relay` back (stop listening there).
    Release {
        /// The relay.
        relay: PeerId,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Slot {
    /// Offered, not asked.
    Idle,
    /// Asked, no answer yet.
    Requested,
    /// Held.
    Reserved,
    /// Refused or lost: ask again at `retry_at`.
    Failed { retry_at: Instant },
}

struct Relay {
    /// The relay's address as we reach it, with `/p2p/<relay>`.
    addr: Multiaddr,
    slot: Slot,
    /// Reservations refused or lost in a row (the retry waits double with each).
    failures: u32,
    last_error: Option<String>,
}

/// The reachability of this node and its relay slots.
pub struct Reach {
    /// Whether this node should be reachable (a full node) and so hold relay slots
    /// when it is behind NAT.
    wants_slot: bool,
    /// Our external addresses that are not relayed (dial-backs reached us there, or
    /// they were declared).
    direct: BTreeSet<Multiaddr>,
    /// Our relayed addresses.
    relayed: BTreeSet<Multiaddr>,
    probes_ok: u64,
    probes_failed: u64,
    last_probe_error: Option<String>,
    /// A peer sees us at a public IP address none of our interfaces has: a NAT is in
    /// between.
    nat_seen: bool,
    /// Address families (true: IPv6) in which a stranger (a peer at an address we never
    /// sent to) reached us directly: no NAT of ours filters by address there
    /// (`contacts`).
    strangers: BTreeSet<bool>,
    relays: BTreeMap<PeerId, Relay>,
}

/// One relay, as `GET /relaymesh/v1/status` shows it.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RelayRow {
    /// The relay's peer id.
    pub peer_id: String,
    /// Where we reach it.
    pub addr: String,
    /// `available` (offers slots, none asked), `requested`, `reserved` or `failed`.
    pub slot: String,
    /// Why the last reservation failed.
    pub error: Option<String>,
}

/// `GET /relaymesh/v1/status`'s view of reachability.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ReachabilityStatus {
    /// `public`, `behind_nat`, `relayed` or `unknown`.
    pub state: String,
    /// Where peers dial this node directly (beyond its listen addresses), with
    /// `/p2p/<peer id>`.
    pub public_addrs: Vec<String>,
    /// Where peers reach it through a relay.
    pub relayed_addrs: Vec<String>,
    /// Relays known (connected peers that offer slots) and our slot on each.
    pub relays: Vec<RelayRow>,
    /// AutoNAT dial-backs that reached us.
    pub probes_ok: u64,
    /// AutoNAT dial-backs that did not.
    pub probes_failed: u64,
    /// Why the last one failed.
    pub last_probe_error: Option<String>,
    /// When public: whether a peer at an address this node never sent to has reached
    /// it directly. Until one has, a dial-back may have got in only because this node
    /// talks to the server's host (an address-restricted NAT), so a full node keeps
    /// one relay slot.
    #[serde(default)]
    pub stranger_reached: bool,
}

/// Whether `addr` goes through a relay.
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

impl Reach {
    /// A node that holds relay slots when behind NAT (`wants_slot`: full nodes).
    pub fn new(wants_slot: bool) -> Self {
        Self {
            wants_slot,
            direct: BTreeSet::new(),
            relayed: BTreeSet::new(),
            probes_ok: 0,
            probes_failed: 0,
            last_probe_error: None,
            nat_seen: false,
            strangers: BTreeSet::new(),
            relays: BTreeMap::new(),
        }
    }

    /// How peers can reach this node now.
    pub fn state(&self) -> Reachability {
        if !self.direct.is_empty() {
            Reachability::Public
        } else if !self.relayed.is_empty() {
            Reachability::Relayed
        } else if self.probes_failed > 0 {
            Reachability::BehindNat
        } else {
            Reachability::Unknown
        }
    }

    /// A dial-back reached us (`Ok`) or did not (`Err(why)`).
    pub fn probed(&mut self, result: Result<(), String>) {
        match result {
            Ok(()) => self.probes_ok += 1,
            Err(why) => {
                self.probes_failed += 1;
                self.last_probe_error = Some(why);
            }
        }
    }

    /// A peer sees us at a public IP address that none of our interfaces has: we are
    /// behind a NAT. Whether it lets strangers in is for a dial-back to tell; meanwhile
    /// a full node reserves a relay slot (given back if the dial-back gets in), so a
    /// node behind a restricted NAT is reachable within a second of joining rather
    /// than after the dial-back times out.
    pub fn nat_seen(&mut self) {
        self.nat_seen = true;
    }

    /// An address of ours is advertised now (confirmed external).
    pub fn external_added(&mut self, addr: Multiaddr) {
        if is_relayed(&addr) {
            self.relayed.insert(addr);
        } else {
            // A new public IP (another network, another router) proves nothing yet.
            if let Some(ip) = crate::mesh::contacts::ip_of(&addr) {
                if !self.direct_ips().any(|d| d == ip) {
                    self.strangers.remove(&ip.is_ipv6());
                }
            }
            self.direct.insert(addr);
        }
    }

    fn direct_ips(&self) -> impl Iterator<Item = std::net::IpAddr> + '_ {
        self.direct.iter().filter_map(crate::mesh::contacts::ip_of)
    }

    /// An address of ours is not advertised any more.
    pub fn external_removed(&mut self, addr: &Multiaddr) {
        self.direct.remove(addr);
        self.relayed.remove(addr);
        if self.direct.is_empty() {
            self.strangers.clear();
        }
    }

    /// A stranger reached us directly from `ip` (see `contacts`): while we are public,
    /// no NAT of ours lets in only the hosts we sent to, in `ip`'s address family. Only
    /// a stranger from as far as our public addresses of that family reach counts (a
    /// peer on our LAN proves nothing of the router between us and the internet), and
    /// not one at an address of ours (a router looping our LAN back to us).
    pub fn stranger_reached(&mut self, ip: std::net::IpAddr) {
        let widest = self
            .direct
            .iter()
            .filter(|a| {
                crate::mesh::contacts::ip_of(a).is_some_and(|d| d.is_ipv6() == ip.is_ipv6())
            })
            .map(super::scope::scope_of)
            .max();
        let Some(widest) = widest else {
            return;
        };
        if super::scope::ip_scope(ip) >= widest && !self.direct_ips().any(|d| d == ip) {
            self.strangers.insert(ip.is_ipv6());
        }
    }

    /// Whether we are public and, in every address family we are public in, a stranger
    /// has shown it.
    pub fn confirmed(&self) -> bool {
        // A node whose only direct address is a name has shown nothing either.
        self.direct_ips().next().is_some()
            && self
                .direct_ips()
                .all(|ip| self.strangers.contains(&ip.is_ipv6()))
    }

    /// A connected peer offers relay slots; we reach it at `addr` (with `/p2p/<it>`).
    pub fn relay_offered(&mut self, relay: PeerId, addr: Multiaddr) {
        self.relays
            .entry(relay)
            .and_modify(|r| r.addr = addr.clone())
            .or_insert(Relay {
                addr,
                slot: Slot::Idle,
                failures: 0,
                last_error: None,
            });
    }

    /// The relay is not connected any more: its slot, if any, went with the
    /// connection. Returns whether a slot was held or asked for there.
    pub fn relay_gone(&mut self, relay: &PeerId) -> bool {
        self.relays
            .remove(relay)
            .is_some_and(|r| matches!(r.slot, Slot::Requested | Slot::Reserved))
    }

    /// The relay accepted our reservation.
    pub fn reserved(&mut self, relay: &PeerId) {
        if let Some(r) = self.relays.get_mut(relay) {
            r.slot = Slot::Reserved;
            r.failures = 0;
            r.last_error = None;
        }
    }

    /// The reservation at `relay` was refused or lost (`why`); ask again later.
    pub fn reservation_failed(&mut self, relay: &PeerId, why: String, now: Instant) {
        if let Some(r) = self.relays.get_mut(relay) {
            r.failures += 1;
            let wait = (RETRY_MIN * (1 << (r.failures - 1).min(10))).min(RETRY_MAX);
            r.slot = Slot::Failed {
                retry_at: now + wait,
            };
            r.last_error = Some(why);
        }
    }

    /// We gave the slot at `relay` back.
    pub fn released(&mut self, relay: &PeerId) {
        if let Some(r) = self.relays.get_mut(relay) {
            if matches!(r.slot, Slot::Requested | Slot::Reserved) {
                r.slot = Slot::Idle;
            }
        }
    }

    /// What to do at `now`: reserve slots while behind NAT (up to [`MAX_RELAYS`]);
    /// once public, keep one until a stranger has reached us directly, then give them
    /// all back.
    pub fn next(&mut self, now: Instant) -> Vec<Action> {
        let holding = |s: &Slot| matches!(s, Slot::Requested | Slot::Reserved);
        let public = !self.direct.is_empty();
        let most = if !self.wants_slot || self.confirmed() {
            0
        } else if public {
            1
        } else {
            MAX_RELAYS
        };
        let mut held = self.relays.values().filter(|r| holding(&r.slot)).count();
        let mut actions = Vec::new();
        for (peer, r) in self.relays.iter_mut().rev() {
            if held <= most {
                break;
            }
            if holding(&r.slot) {
                r.slot = Slot::Idle;
                held -= 1;
                actions.push(Action::Release { relay: *peer });
            }
        }
        if !public && self.probes_failed == 0 && !self.nat_seen {
            return actions; // not known to be behind NAT
        }
        for (peer, r) in &mut self.relays {
            if held >= most {
                break;
            }
            let due = match r.slot {
                Slot::Idle => true,
                Slot::Failed { retry_at } => now >= retry_at,
                Slot::Requested | Slot::Reserved => false,
            };
            if due {
                r.slot = Slot::Requested;
                held += 1;
                actions.push(Action::Reserve {
                    relay: *peer,
                    addr: r.addr.clone().with(Protocol::P2pCircuit),
                });
            }
        }
        actions
    }

    /// What the status shows (addresses as they are; the caller adds `/p2p/<us>`).
    pub fn status(&self, with_peer: impl Fn(&Multiaddr) -> String) -> ReachabilityStatus {
        ReachabilityStatus {
            state: serde_json::to_value(self.state())
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            public_addrs: self.direct.iter().map(&with_peer).collect(),
            relayed_addrs: self.relayed.iter().map(|a| a.to_string()).collect(),
            relays: self
                .relays
                .iter()
                .map(|(peer, r)| RelayRow {
                    peer_id: peer.to_string(),
                    addr: r.addr.to_string(),
                    slot: match r.slot {
                        Slot::Idle => "available",
                        Slot::Requested => "requested",
                        Slot::Reserved => "reserved",
                        Slot::Failed { .. } => "failed",
                    }
                    .into(),
                    error: r.last_error.clone(),
                })
                .collect(),
            probes_ok: self.probes_ok,
            probes_failed: self.probes_failed,
            last_probe_error: self.last_probe_error.clone(),
            stranger_reached: self.confirmed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay_addr(peer: &PeerId) -> Multiaddr {
        format!("/ip4/198.51.100.1/udp/4002/quic-v1/p2p/{peer}")
            .parse()
            .unwrap()
    }

    #[test]
    fn behind_nat_a_full_node_reserves_and_once_public_gives_back() {
        let now = Instant::now();
        let mut reach = Reach::new(true);
        let (r1, r2, r3) = (PeerId::random(), PeerId::random(), PeerId::random());
        for r in [r1, r2, r3] {
            reach.relay_offered(r, relay_addr(&r));
        }
        assert_eq!(reach.state(), Reachability::Unknown);
        assert!(
            reach.next(now).is_empty(),
            "nothing before a dial-back fails"
        );

        reach.probed(Err("dial back timed out".into()));
        assert_eq!(reach.state(), Reachability::BehindNat);
        let actions = reach.next(now);
        assert_eq!(actions.len(), MAX_RELAYS, "{actions:?}");
        assert!(matches!(&actions[0], Action::Reserve { addr, .. } if is_relayed(addr)));
        assert!(reach.next(now).is_empty(), "asked already");

        // One relay refuses: the third is asked instead, the first again later.
        let Action::Reserve { relay: first, .. } = actions[0] else {
            unreachable!()
        };
        let Action::Reserve { relay: second, .. } = actions[1] else {
            unreachable!()
        };
        reach.reserved(&second);
        reach.reservation_failed(&first, "resource limit exceeded".into(), now);
        let third = reach.next(now);
        assert_eq!(third.len(), 1);
        assert!(!matches!(third[0], Action::Reserve { relay, .. } if relay == first));
        reach.relay_gone(&second);
        assert!(reach.next(now + Duration::from_secs(1)).is_empty());
        assert_eq!(
            reach.next(now + RETRY_MIN),
            [Action::Reserve {
                relay: first,
                addr: relay_addr(&first).with(Protocol::P2pCircuit)
            }]
        );

        let circuit = relay_addr(&first).with(Protocol::P2pCircuit);
        reach.external_added(circuit.clone());
        assert_eq!(reach.state(), Reachability::Relayed);
        let status = reach.status(|a| a.to_string());
        assert_eq!(status.state, "relayed");
        assert_eq!(status.relayed_addrs, [circuit.to_string()]);

        // A dial-back reaches us after all (a port forward was added): one slot goes
        // back, the other once a stranger has reached us directly.
        reach.external_added("/ip4/203.0.113.5/udp/4002/quic-v1".parse().unwrap());
        assert_eq!(reach.state(), Reachability::Public);
        assert_eq!(reach.next(now + RETRY_MIN).len(), 1, "one slot released");
        assert!(reach.next(now + RETRY_MIN).is_empty(), "one kept");
        assert!(!reach.status(|a| a.to_string()).stranger_reached);
        reach.stranger_reached("198.51.100.9".parse().unwrap());
        assert!(reach.status(|a| a.to_string()).stranger_reached);
        assert_eq!(reach.next(now + RETRY_MIN).len(), 1, "the last released");
        assert!(
            reach.next(now + RETRY_MAX).is_empty(),
            "and none asked again"
        );
    }

    /// Found in namespaces: behind an address-restricted NAT the server's dial-back
    /// gets in (the node talks to its host) but strangers do not. Public by the
    /// dial-back alone, the node gave its relay slot back and no peer could reach it.
    /// A public node now keeps one slot until a stranger has reached it directly.
    #[test]
    fn a_public_node_keeps_one_slot_until_a_stranger_reaches_it() {
        let now = Instant::now();
        let mut reach = Reach::new(true);
        let (r1, r2) = (PeerId::random(), PeerId::random());
        for r in [r1, r2] {
            reach.relay_offered(r, relay_addr(&r));
        }
        // A stranger before we are public proves nothing.
        reach.stranger_reached("198.51.100.9".parse().unwrap());
        reach.probed(Ok(()));
        let public: Multiaddr = "/ip4/198.51.100.2/udp/4002/quic-v1".parse().unwrap();
        reach.external_added(public.clone());
        assert_eq!(reach.state(), Reachability::Public);
        let asked = reach.next(now);
        assert_eq!(asked.len(), 1, "{asked:?}");
        assert!(matches!(asked[0], Action::Reserve { .. }));
        // A peer on our LAN proves nothing of the router in front of it.
        reach.stranger_reached("192.168.1.20".parse().unwrap());
        assert!(!reach.confirmed());
        reach.stranger_reached("198.51.100.9".parse().unwrap());
        assert_eq!(reach.next(now).len(), 1, "released");
        // Another address (the node moved): proven again from scratch, even before
        // the old one is withdrawn.
        reach.external_added("/ip4/203.0.113.7/udp/4002/quic-v1".parse().unwrap());
        assert!(!reach.confirmed());
        assert_eq!(reach.next(now).len(), 1, "a slot again");
        // Our own address looped back by the router proves nothing; an IPv6 stranger
        // proves nothing of IPv4.
        reach.stranger_reached("203.0.113.7".parse().unwrap());
        reach.external_added("/ip6/2001:db8::5/udp/4002/quic-v1".parse().unwrap());
        reach.stranger_reached("2001:db8:1::9".parse().unwrap());
        assert!(!reach.confirmed());
        reach.stranger_reached("198.51.100.10".parse().unwrap());
        assert!(reach.confirmed());
        reach.external_removed(&public);
        let light = &mut Reach::new(false);
        light.relay_offered(r1, relay_addr(&r1));
        light.external_added(public);
        assert!(light.next(now).is_empty(), "light nodes hold none");
    }

    #[test]
    fn a_node_seen_behind_a_nat_reserves_before_any_dial_back() {
        let now = Instant::now();
        let mut reach = Reach::new(true);
        let r = PeerId::random();
        reach.relay_offered(r, relay_addr(&r));
        assert!(reach.next(now).is_empty());
        reach.nat_seen();
        assert_eq!(reach.state(), Reachability::Unknown);
        assert_eq!(reach.next(now).len(), 1);
        reach.reserved(&r);
        reach.external_added(relay_addr(&r).with(Protocol::P2pCircuit));
        assert_eq!(reach.state(), Reachability::Relayed);
        // The dial-back gets in after all (a full-cone NAT): the slot goes back once
        // a stranger reaches the node directly.
        reach.probed(Ok(()));
        reach.external_added("/ip4/198.51.100.2/udp/4002/quic-v1".parse().unwrap());
        assert!(reach.next(now).is_empty());
        reach.stranger_reached("198.51.100.3".parse().unwrap());
        assert_eq!(reach.next(now), [Action::Release { relay: r }]);
        assert_eq!(reach.state(), Reachability::Public);
    }

    #[test]
    fn light_nodes_hold_no_slot_and_retries_back_off() {
        let now = Instant::now();
        let mut light = Reach::new(false);
        let r = PeerId::random();
        light.relay_offered(r, relay_addr(&r));
        light.probed(Err("no".into()));
        assert_eq!(light.state(), Reachability::BehindNat);
        assert!(light.next(now).is_empty());

        let mut full = Reach::new(true);
        full.relay_offered(r, relay_addr(&r));
        full.probed(Err("no".into()));
        assert_eq!(full.next(now).len(), 1);
        let mut at = now;
        let mut waits = Vec::new();
        for _ in 0..8 {
            full.reservation_failed(&r, "refused".into(), at);
            let wait = (0u64..)
                .find(|s| !full.next(at + Duration::from_secs(*s)).is_empty())
                .unwrap();
            waits.push(wait);
            at += Duration::from_secs(wait);
        }
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300]);
    }
}
