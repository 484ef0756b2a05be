//! Claims on the next free slot of a model: the fair-slot rule's line.
//!
//! An app refused because every slot of a model was taken gets a **claim**: until it
//! is served, apps asking for that model that hold as many streams here as it or more,
//! and apps that claimed after it, give way to it (without this, an app that asks
//! again every few milliseconds takes every slot that frees, and an honest app that
//! waits as told is never served). A claim is only made while no slot of the model is
//! free, and it only lives while its app comes back as told: it lapses
//! [`CLAIM_SLACK`] after the retry it was given (each refusal renews it), and
//! [`FAIR_WINDOW`] after it was made at the latest. So claims cannot be piled up while
//! a slot is free, and a slot that frees waits for an absent claimant ahead in line
//! 1.5 s at most, and for all of them [`FAIR_WINDOW`] at most (`docs/PROTOCOL.md` §16).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use relaymesh_protocol::PublicKey;

use crate::mesh::ip_limit::{site_of, Network, PeerNetworks, SITE_FACTOR};

/// How long a claim lives at most.
pub const FAIR_WINDOW: Duration = Duration::from_secs(5);
/// How long after its retry a claimant may take to come back before its claim lapses
/// (a slow link's round trip and a new stream, with room).
pub const CLAIM_SLACK: Duration = Duration::from_secs(1);
/// What a claimant is told to wait before asking again.
pub const SHARE_RETRY: Duration = Duration::from_millis(500);
/// Most claims made through one peer (a gateway asks for its apps).
pub const MAX_WAITING_PER_PEER: usize = 4;
/// Most claims on one model at once by default: as many as the default 256
/// connections can make. A line is sized from the node's own connection limit
/// ([`Claims::new`]), so it is never full while one of its claimants' peers is
/// honest: filling it takes every connection, and one network address holds at most
/// `connections_per_ip` of those (`mesh::ip_limit`).
pub const MAX_WAITING_APPS: usize = 256 * MAX_WAITING_PER_PEER;

struct Claim {
    /// When it was made: the line's order.
    since: Instant,
    /// When it lapses unless its app asks again.
    back_by: Instant,
    /// The peer it was made through.
    peer: PeerId,
    /// The network that peer connected from, where known.
    network: Option<Network>,
}

impl Claim {
    fn live(&self, now: Instant) -> bool {
        now < self.back_by && now.duration_since(self.since) < FAIR_WINDOW
    }
}

#[derive(Default)]
struct Line {
    /// Most claims on one model.
    most: usize,
    claims: HashMap<(PublicKey, String), Claim>,
    /// Streams admitted per model whose generation has not started yet.
    asking: HashMap<String, usize>,
}

/// The claims of one supplier, over all its models.
pub struct Claims {
    line: Mutex<Line>,
    /// Where claimants' peers connect from.
    networks: PeerNetworks,
    /// Most claims on one model made through peers of one network.
    per_network: usize,
}

impl Default for Claims {
    fn default() -> Self {
        Self::new(
            256,
            crate::mesh::ip_limit::DEFAULT_PER_IP as usize,
            PeerNetworks::default(),
        )
    }
}

impl Claims {
    /// The claims of a node that holds at most `connections` connections, and at most
    /// `per_ip` inbound ones from one network (`networks` says which peer is where):
    /// each model's line has room for [`MAX_WAITING_PER_PEER`] claims through every
    /// connection, and takes at most as many through the peers of one network as its
    /// connections could make (claims outlive their peer's connection by up to 1.5 s,
    /// so peer ids that come and go could otherwise pile them up).
    pub fn new(connections: usize, per_ip: usize, networks: PeerNetworks) -> Self {
        Self {
            line: Mutex::new(Line {
                most: connections.max(1).saturating_mul(MAX_WAITING_PER_PEER),
                ..Line::default()
            }),
            networks,
            per_network: per_ip.max(1).saturating_mul(MAX_WAITING_PER_PEER),
        }
    }

    /// `app` (through `peer`) was refused a slot of `model`: its claim is kept alive;
    /// or, if it has none and `new` (no slot was free), it gets one made `since` (now
    /// if `None`). Returns the retry to tell it, or `None` when it holds no claim (one
    /// peer makes at most [`MAX_WAITING_PER_PEER`], one model has room for that many
    /// through every connection the node may hold).
    pub fn wait(
        &self,
        app: &PublicKey,
        model: &str,
        peer: PeerId,
        new: bool,
        since: Option<Instant>,
    ) -> Option<Duration> {
        let mut line = self.line.lock().expect("claims lock");
        let now = Instant::now();
        line.claims.retain(|_, c| c.live(now));
        let back_by = now + SHARE_RETRY + CLAIM_SLACK;
        let key = (*app, model.to_owned());
        if let Some(claim) = line.claims.get_mut(&key) {
            claim.back_by = back_by;
            return Some(SHARE_RETRY);
        }
        if !new {
            return None;
        }
        let network = self.networks.of(&peer);
        let of_peer = line.claims.values().filter(|c| c.peer == peer).count();
        let of_model = line.claims.keys().filter(|(_, m)| m == model).count();
        let of_network = network.map_or(0, |n| {
            line.claims
                .iter()
                .filter(|((_, m), c)| m == model && c.network == Some(n))
                .count()
        });
        // The /56s of one IPv6 /48 share a bound, as their connections do.
        let site = network.as_ref().and_then(site_of);
        let of_site = site.map_or(0, |s| {
            line.claims
                .iter()
                .filter(|((_, m), c)| m == model && c.network.as_ref().and_then(site_of) == Some(s))
                .count()
        });
        if of_model >= line.most
            || of_peer >= MAX_WAITING_PER_PEER
            || of_network >= self.per_network
            || of_site >= self.per_network.saturating_mul(SITE_FACTOR as usize)
        {
            return None;
        }
        let since = since.filter(|s| now.duration_since(*s) < FAIR_WINDOW);
        line.claims.insert(
            key,
            Claim {
                since: since.unwrap_or(now),
                back_by,
                peer,
                network,
            },
        );
        Some(SHARE_RETRY)
    }

    /// The apps (other than `app`) whose live claim on `model` comes before `app`'s:
    /// every live claim if `app` has none, the earlier ones if it has one.
    pub fn before(&self, app: &PublicKey, model: &str) -> Vec<PublicKey> {
        let line = self.line.lock().expect("claims lock");
        let now = Instant::now();
        let mine = line
            .claims
            .get(&(*app, model.to_owned()))
            .filter(|c| c.live(now))
            .map(|c| (c.since, *app));
        line.claims
            .iter()
            .filter(|((k, m), c)| {
                k != app && m == model && c.live(now) && mine.is_none_or(|m| (c.since, *k) < m)
            })
            .map(|((k, _), _)| *k)
            .collect()
    }

    /// `app`'s claim on `model` is spent (it was let through); returns when it was made.
    pub fn spend(&self, app: &PublicKey, model: &str) -> Option<Instant> {
        let mut line = self.line.lock().expect("claims lock");
        let now = Instant::now();
        line.claims
            .remove(&(*app, model.to_owned()))
            .filter(|c| c.live(now))
            .map(|c| c.since)
    }

    /// A stream of `model` was admitted and waits for its generation (`started`
    /// false), or that wait is over (`true`).
    pub fn asking(&self, model: &str, started: bool) {
        let mut line = self.line.lock().expect("claims lock");
        let n = line.asking.entry(model.to_owned()).or_default();
        if started {
            *n = n.saturating_sub(1);
            if *n == 0 {
                line.asking.remove(model);
            }
        } else {
            *n += 1;
        }
    }

    /// Whether anyone waits for a slot of `model`: a live claim, or an admitted stream
    /// whose generation has not started.
    pub fn waited_for(&self, model: &str) -> bool {
        let line = self.line.lock().expect("claims lock");
        let now = Instant::now();
        line.asking.contains_key(model)
            || line
                .claims
                .iter()
                .any(|((_, m), c)| m == model && c.live(now))
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.line.lock().unwrap().claims.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hole (third review): a claim lived its whole five seconds whether or not its app
    /// came back, and claims were made while slots were free, so keys that never came
    /// back kept a model's free slots from everyone. A claim now lapses soon after the
    /// retry its app was told.
    #[test]
    fn a_claim_whose_app_does_not_come_back_lapses_after_its_retry() {
        let claims = Claims::default();
        let (absent, honest) = (PublicKey([1; 32]), PublicKey([2; 32]));
        assert_eq!(
            claims.wait(&absent, "m", PeerId::random(), true, None),
            Some(SHARE_RETRY)
        );
        assert_eq!(claims.before(&honest, "m"), vec![absent]);
        assert!(claims.waited_for("m"));
        std::thread::sleep(SHARE_RETRY + CLAIM_SLACK);
        assert!(claims.before(&honest, "m").is_empty());
        assert!(!claims.waited_for("m"));
    }

    /// An app that comes back as told keeps its claim, and its place in line.
    #[test]
    fn a_claimant_that_comes_back_keeps_its_place() {
        let claims = Claims::default();
        let (first, second) = (PublicKey([1; 32]), PublicKey([2; 32]));
        claims.wait(&first, "m", PeerId::random(), true, None);
        std::thread::sleep(Duration::from_millis(5));
        claims.wait(&second, "m", PeerId::random(), true, None);
        for _ in 0..3 {
            std::thread::sleep(SHARE_RETRY);
            claims.wait(&first, "m", PeerId::random(), true, None);
            claims.wait(&second, "m", PeerId::random(), true, None);
        }
        assert_eq!(claims.before(&second, "m"), vec![first]);
        assert!(claims.before(&first, "m").is_empty());
        // Spent and filed again (a slot looked free, then was not), it keeps its place.
        let since = claims.spend(&first, "m");
        assert!(since.is_some());
        claims.wait(&first, "m", PeerId::random(), true, since);
        assert_eq!(claims.before(&second, "m"), vec![first]);
    }

    /// Review: a claimant refused while a slot was free (another claim came first) was
    /// not renewed, lapsed, and lost its place in line.
    #[test]
    fn a_refusal_while_a_slot_is_free_renews_a_claim_but_makes_none() {
        let claims = Claims::default();
        let (app, stranger) = (PublicKey([1; 32]), PublicKey([2; 32]));
        claims.wait(&app, "m", PeerId::random(), true, None);
        assert_eq!(
            claims.wait(&stranger, "m", PeerId::random(), false, None),
            None
        );
        for _ in 0..3 {
            std::thread::sleep(SHARE_RETRY + CLAIM_SLACK / 2);
            assert!(claims
                .wait(&app, "m", PeerId::random(), false, None)
                .is_some());
        }
        assert_eq!(claims.len(), 1);
        assert_eq!(claims.before(&stranger, "m"), vec![app]);
    }

    /// Review (issue 17): the line held 1,024 claims whatever the node's connection
    /// limit, so a node allowed more than 256 connections had a line its peers could
    /// fill. It now has room for four claims through every connection.
    #[test]
    fn a_line_has_room_for_every_connections_claims() {
        let claims = Claims::new(2, 32, PeerNetworks::default());
        let (p1, p2, p3) = (PeerId::random(), PeerId::random(), PeerId::random());
        let key = |i: u8| PublicKey([i; 32]);
        for i in 0..8u8 {
            let peer = if i < 4 { p1 } else { p2 };
            assert!(claims.wait(&key(i), "m", peer, true, None).is_some(), "{i}");
        }
        assert_eq!(claims.wait(&key(8), "m", p3, true, None), None, "full");
        assert!(
            claims.wait(&key(8), "n", p3, true, None).is_some(),
            "each model has its line"
        );
        assert_eq!(
            Claims::default().line.lock().unwrap().most,
            MAX_WAITING_APPS
        );
    }

    /// Review (issue 17): a claim outlives its peer's connection by up to 1.5 s, so
    /// peer ids of one address that came and went filled a model's line although the
    /// address held at most `connections_per_ip` connections at a time. Claims are now
    /// bounded per network too: as many as its connections could make at once.
    #[test]
    fn peers_of_one_network_make_at_most_its_share_of_claims() {
        let networks = PeerNetworks::default();
        let claims = Claims::new(256, 2, networks.clone());
        let mut n = 0u8;
        // Four peer ids of `network` connect in turn, each asks for four claims and
        // leaves (or not): how many claims they got.
        let mut claim_through = |network: Network, leave: bool| {
            let mut made = 0;
            for _ in 0..4 {
                let peer = PeerId::random();
                networks.add(peer, network);
                for _ in 0..4 {
                    n += 1;
                    let key = PublicKey([n; 32]);
                    made += usize::from(claims.wait(&key, "m", peer, true, None).is_some());
                }
                if leave {
                    networks.remove(&peer, network);
                }
            }
            made
        };
        let home = Network::V4(std::net::Ipv4Addr::new(203, 0, 113, 7));
        let made = claim_through(home, true);
        assert_eq!(made, 2 * MAX_WAITING_PER_PEER, "two connections' worth");
        // Peers that came through one relay share a bound as one network does.
        let through = claim_through(Network::Relay(PeerId::random()), false);
        assert_eq!(through, 2 * MAX_WAITING_PER_PEER);
        // Another network's peer, and a peer we cannot place (one we dialled), still get
        // theirs.
        let elsewhere = PeerId::random();
        networks.add(
            elsewhere,
            Network::V4(std::net::Ipv4Addr::new(198, 51, 100, 9)),
        );
        assert!(claims
            .wait(&PublicKey([200; 32]), "m", elsewhere, true, None)
            .is_some());
        assert!(claims
            .wait(&PublicKey([201; 32]), "m", PeerId::random(), true, None)
            .is_some());
    }

    /// Found by review: claims were bounded per /56, so a /48's holder, connecting
    /// from its /56s in turn, could fill a model's line. The /56s of one /48 make at
    /// most `SITE_FACTOR` networks' worth together, as their connections do.
    #[test]
    fn the_56s_of_one_48_share_a_networks_claims() {
        let networks = PeerNetworks::default();
        let claims = Claims::new(256, 2, networks.clone());
        let per_network = 2 * MAX_WAITING_PER_PEER;
        let mut made = 0;
        let mut n = 0u16;
        for i in 0..=255u8 {
            let mut prefix = [0x20, 0x01, 0x0d, 0xb8, 0x00, 0xaa, 0];
            prefix[6] = i;
            let network = Network::V6(prefix);
            let peer = PeerId::random();
            networks.add(peer, network);
            for _ in 0..MAX_WAITING_PER_PEER {
                n += 1;
                let mut key = [0u8; 32];
                key[..2].copy_from_slice(&n.to_be_bytes());
                made += usize::from(
                    claims
                        .wait(&PublicKey(key), "m", peer, true, None)
                        .is_some(),
                );
            }
            networks.remove(&peer, network);
        }
        assert_eq!(made, per_network * SITE_FACTOR as usize);
    }

    #[test]
    fn streams_waiting_for_their_generation_count_as_waiting() {
        let claims = Claims::default();
        claims.asking("m", false);
        claims.asking("m", false);
        assert!(claims.waited_for("m") && !claims.waited_for("n"));
        claims.asking("m", true);
        assert!(claims.waited_for("m"));
        claims.asking("m", true);
        assert!(!claims.waited_for("m"));
    }
}
