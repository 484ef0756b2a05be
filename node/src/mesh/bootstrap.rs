//! Reaching the configured bootstrap nodes, as a machine the event loop drives: it
//! says which dials are due (all addresses at once, whenever no bootstrap node is
//! connected and the back-off has passed), hears how each ended, and says what to
//! tell the user. A node that reaches none of them would otherwise sit silent with an
//! empty mesh; here every failed round is reported with each address and why it
//! failed, and the rounds go on (1 s, 2 s, 4 s … at most a minute apart) until one
//! connects, which is reported once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;

/// Longest wait between two rounds of dials.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The wait after `failed` failed rounds in a row: 1 s, doubling, at most a minute.
pub fn backoff(failed: u32) -> Duration {
    Duration::from_secs(1 << failed.saturating_sub(1).min(6)).min(MAX_BACKOFF)
}

struct Entry {
    addr: Multiaddr,
    peer: Option<PeerId>,
    last_error: Option<String>,
}

/// What the event loop should tell the user.
#[derive(Debug, PartialEq, Eq)]
pub enum Report {
    /// A round ended with no bootstrap node reached.
    Unreachable {
        /// Each address and why its dial failed.
        errors: Vec<(Multiaddr, String)>,
        /// Rounds failed in a row.
        rounds: u32,
        /// When the next round starts.
        retry_in: Duration,
    },
    /// A bootstrap node is connected after failed rounds.
    Reached {
        /// Its address (as configured).
        addr: Option<Multiaddr>,
        /// Rounds that had failed before.
        after: u32,
    },
}

/// `GET /relaymesh/v1/status`'s view of the bootstrap nodes.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct BootstrapStatus {
    /// Addresses given with `--bootstrap`.
    pub configured: usize,
    /// Bootstrap nodes connected now.
    pub connected: usize,
    /// The configured addresses of those connected.
    #[serde(default)]
    pub reached: Vec<String>,
    /// Rounds of dials that reached none, in a row (0 once one is connected).
    pub failed_rounds: u32,
    /// Why each address failed in the last round that reached none (`addr: why`).
    pub last_errors: Vec<String>,
}

/// The configured bootstrap nodes and our dials to them.
pub struct Bootstraps {
    entries: Vec<Entry>,
    /// Dials of the round under way, by connection, with the entry each is for.
    pending: HashMap<ConnectionId, usize>,
    /// Open connections per bootstrap peer.
    connected: HashMap<PeerId, usize>,
    failed_rounds: u32,
    next_round: Instant,
}

impl Bootstraps {
    /// The bootstrap addresses of a node; the first round is due at `now`.
    pub fn new(addrs: &[Multiaddr], now: Instant) -> Self {
        Self {
            entries: addrs
                .iter()
                .map(|addr| Entry {
                    addr: addr.clone(),
                    peer: match addr.iter().last() {
                        Some(Protocol::P2p(peer)) => Some(peer),
                        _ => None,
                    },
                    last_error: None,
                })
                .collect(),
            pending: HashMap::new(),
            connected: HashMap::new(),
            failed_rounds: 0,
            next_round: now,
        }
    }

    /// Whether `peer` is one of the bootstrap nodes.
    pub fn is_bootstrap(&self, peer: &PeerId) -> bool {
        self.entries.iter().any(|e| e.peer.as_ref() == Some(peer))
    }

    /// The dials due at `now`: one per address, when none is connected, no round is
    /// under way and the back-off has passed.
    pub fn due(&mut self, now: Instant) -> Vec<DialOpts> {
        if self.entries.is_empty()
            || !self.connected.is_empty()
            || !self.pending.is_empty()
            || now < self.next_round
        {
            return Vec::new();
        }
        let mut dials = Vec::new();
        for (i, entry) in self.entries.iter().enumerate() {
            let opts = match entry.peer {
                Some(peer) => DialOpts::peer_id(peer)
                    .addresses(vec![entry.addr.clone()])
                    // A DHT dial to it may be under way; ours reports for the round.
                    .condition(PeerCondition::Always)
                    .build(),
                None => DialOpts::unknown_peer_id()
                    .address(entry.addr.clone())
                    .build(),
            };
            self.pending.insert(opts.connection_id(), i);
            dials.push(opts);
        }
        dials
    }

    /// A dial of ours failed (also when the swarm refused to start it).
    pub fn dial_failed(&mut self, conn: ConnectionId, why: String, now: Instant) -> Option<Report> {
        let i = self.pending.remove(&conn)?;
        self.entries[i].last_error = Some(why);
        if !self.pending.is_empty() || !self.connected.is_empty() {
            return None;
        }
        // The whole round failed.
        self.failed_rounds += 1;
        let retry_in = backoff(self.failed_rounds);
        self.next_round = now + retry_in;
        Some(Report::Unreachable {
            errors: self
                .entries
                .iter()
                .map(|e| {
                    let why = e.last_error.clone().unwrap_or_else(|| "not dialled".into());
                    (e.addr.clone(), why)
                })
                .collect(),
            rounds: self.failed_rounds,
            retry_in,
        })
    }

    /// A connection to `peer` is up (`conn` may be one of our dials to an address
    /// without a peer id, which names the peer from now on).
    pub fn connected(&mut self, conn: ConnectionId, peer: PeerId) -> Option<Report> {
        let dialled = self.pending.remove(&conn);
        if let Some(i) = dialled {
            self.entries[i].peer.get_or_insert(peer);
        }
        if !self.is_bootstrap(&peer) {
            return None;
        }
        let first = self.connected.is_empty();
        *self.connected.entry(peer).or_default() += 1;
        let after = std::mem::take(&mut self.failed_rounds);
        for entry in &mut self.entries {
            entry.last_error = None;
        }
        (first && after > 0).then(|| Report::Reached {
            addr: self
                .entries
                .iter()
                .find(|e| e.peer == Some(peer))
                .map(|e| e.addr.clone()),
            after,
        })
    }

    /// A connection to `peer` closed; when it was the last to any bootstrap node, a
    /// new round is due after a second (a bootstrap node that restarts is found again).
    pub fn disconnected(&mut self, peer: &PeerId, now: Instant) {
        if let Some(count) = self.connected.get_mut(peer) {
            *count -= 1;
            if *count == 0 {
                self.connected.remove(peer);
                if self.connected.is_empty() {
                    self.next_round = now + backoff(1);
                }
            }
        }
    }

    /// What the status reports.
    pub fn status(&self) -> BootstrapStatus {
        BootstrapStatus {
            configured: self.entries.len(),
            connected: self.connected.len(),
            reached: self
                .entries
                .iter()
                .filter(|e| e.peer.is_some_and(|p| self.connected.contains_key(&p)))
                .map(|e| e.addr.to_string())
                .collect(),
            failed_rounds: self.failed_rounds,
            last_errors: if self.failed_rounds == 0 {
                Vec::new()
            } else {
                self.entries
                    .iter()
                    .filter_map(|e| Some(format!("{}: {}", e.addr, e.last_error.as_ref()?)))
                    .collect()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(peer: &PeerId, port: u16) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{port}/p2p/{peer}")
            .parse()
            .unwrap()
    }

    #[test]
    fn back_off_doubles_up_to_a_minute() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn failed_rounds_are_reported_and_retried_until_one_connects() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        let mut boot = Bootstraps::new(&[addr(&a, 1), addr(&b, 2)], t0);
        let round = boot.due(t0);
        assert_eq!(round.len(), 2);
        assert!(boot.due(t0).is_empty(), "one round at a time");
        let ids: Vec<ConnectionId> = round.iter().map(|d| d.connection_id()).collect();
        assert_eq!(boot.dial_failed(ids[0], "refused".into(), t0), None);
        let report = boot.dial_failed(ids[1], "timed out".into(), t0).unwrap();
        match report {
            Report::Unreachable {
                errors,
                rounds,
                retry_in,
            } => {
                assert_eq!(errors.len(), 2);
                assert_eq!(errors[0].1, "refused");
                assert_eq!((rounds, retry_in), (1, Duration::from_secs(1)));
            }
            other => panic!("{other:?}"),
        }
        let status = boot.status();
        assert_eq!(
            (status.configured, status.connected, status.failed_rounds),
            (2, 0, 1)
        );
        assert_eq!(status.last_errors.len(), 2);

        assert!(
            boot.due(t0 + Duration::from_millis(500)).is_empty(),
            "backing off"
        );
        let round = boot.due(t0 + Duration::from_secs(1));
        assert_eq!(round.len(), 2);
        let report = boot.connected(round[1].connection_id(), b);
        assert_eq!(
            report,
            Some(Report::Reached {
                addr: Some(addr(&b, 2)),
                after: 1
            })
        );
        assert_eq!(boot.status().connected, 1);
        assert!(boot.status().last_errors.is_empty());
        // The other dial of that round failing says nothing: one is connected.
        assert_eq!(
            boot.dial_failed(round[0].connection_id(), "x".into(), t0),
            None
        );
        assert!(boot.due(t0 + Duration::from_secs(100)).is_empty());

        // The bootstrap node goes away: a new round a second later.
        let t1 = t0 + Duration::from_secs(200);
        boot.disconnected(&b, t1);
        assert!(boot.due(t1).is_empty());
        assert_eq!(boot.due(t1 + Duration::from_secs(1)).len(), 2);
    }

    #[test]
    fn an_address_without_a_peer_id_learns_it_on_connecting() {
        let t0 = Instant::now();
        let mut boot = Bootstraps::new(&["/ip4/127.0.0.1/tcp/9".parse().unwrap()], t0);
        let round = boot.due(t0);
        let peer = PeerId::random();
        assert!(!boot.is_bootstrap(&peer));
        assert_eq!(
            boot.connected(round[0].connection_id(), peer),
            None,
            "no failure before"
        );
        assert!(boot.is_bootstrap(&peer));
        assert_eq!(boot.status().connected, 1);
    }
}
