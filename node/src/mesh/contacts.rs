//! Whom this node has contacted, so that an inbound connection can be told apart from
//! an answer: the proof that strangers can dial this node.
//!
//! An AutoNAT dial-back says that the server's host could reach us. Behind an
//! address-restricted NAT (a home router that lets in any port of a host its own
//! host sent to) that is true of the server, which we talk to, and of nobody else, so
//! the dial-back alone would call such a node public and its relay slot would go. A
//! direct connection from a peer at an address we never sent to (and that we neither
//! dialled nor reach through a relay, which a hole punch would be) can only have come
//! through a NAT that lets strangers in, or through none: that is the confirmation
//! [`super::reachability::Reach`] waits for before it gives its last relay slot back.
//!
//! What counts as contacted: every address a dial goes to, noted by the transport as
//! the dial starts (before a packet leaves: [`Noting`]), whatever the dial's outcome
//! and whoever asked for it (DCUtR, the DHT, a lookup); every address of a connection,
//! in or out, while it is open (replies open a NAT's filter too) and for 30 minutes
//! after it closes; peers we dialled; peers we reach through a relay.
//!
//! The record itself is IO-free: the event loop and the transport report, with `now`.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::core::Transport;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// How long a contact is remembered: longer than any NAT keeps a filter open for a
/// host that went quiet (minutes for UDP and for closed TCP connections).
pub const REMEMBERED: Duration = Duration::from_secs(30 * 60);
/// Most contacts of each kind remembered; past it the oldest are forgotten (a node
/// forgetting a contact can only take an answer for a stranger's dial late, and by
/// then the NAT has forgotten it too, or the node is busy enough to meet strangers).
pub const MOST: usize = 4096;

/// Contacts, each with when it was last seen.
#[derive(Default)]
pub struct Contacts {
    /// Until when no stranger counts: a map filled up with contacts too fresh to
    /// forget, so some were forgotten anyway (a flood of dials, made to push a contact
    /// out), and whom we sent to is not known for sure.
    saturated_until: Option<Instant>,
    /// IP addresses we sent to (dials made, whether they succeeded or not).
    sent_to: HashMap<IpAddr, Instant>,
    /// Peers we dialled (a dial by peer id starts before its addresses are known).
    dialled: HashMap<PeerId, Instant>,
    /// Peers we reached through a relay (a hole punch follows).
    relayed: HashMap<PeerId, Instant>,
}

/// Notes `key` at `now`; returns whether contacts too fresh to forget were forgotten
/// to make room.
fn remember<K: Hash + Eq + Copy>(map: &mut HashMap<K, Instant>, key: K, now: Instant) -> bool {
    let mut forgot = false;
    if map.len() >= MOST && !map.contains_key(&key) {
        map.retain(|_, at| now.saturating_duration_since(*at) < REMEMBERED);
        if map.len() >= MOST {
            // The oldest tenth at once, so a flood of new contacts pays for one sort per
            // MOST / 10 of them, not a scan each.
            let mut ages: Vec<Instant> = map.values().copied().collect();
            ages.sort_unstable();
            let cut = ages[MOST / 10];
            map.retain(|_, at| *at > cut);
            forgot = true;
        }
    }
    map.insert(key, now);
    forgot
}

fn recent<K: Hash + Eq>(map: &HashMap<K, Instant>, key: &K, now: Instant) -> bool {
    map.get(key)
        .is_some_and(|at| now.saturating_duration_since(*at) < REMEMBERED)
}

/// The IP address of a direct address (an IPv4 address in IPv6 as the IPv4 one);
/// `None` for a relayed one or a name.
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    if super::reachability::is_relayed(addr) {
        return None;
    }
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip).to_canonical()),
        _ => None,
    })
}

/// Contacts shared by the transport and the event loop.
pub type Shared = Arc<Mutex<Contacts>>;

/// The contacts, locked; a panic elsewhere while they were held leaves them as they
/// were (they are only ever added to).
pub fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Contacts> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A transport that notes the address of every dial in `contacts` as the dial starts.
pub struct Noting<T> {
    inner: T,
    contacts: Shared,
}

impl<T> Noting<T> {
    /// `inner`, noting its dials in `contacts`.
    pub fn new(inner: T, contacts: Shared) -> Self {
        Self { inner, contacts }
    }
}

impl<T: Transport + Unpin> Transport for Noting<T> {
    type Output = T::Output;
    type Error = T::Error;
    type ListenerUpgrade = T::ListenerUpgrade;
    type Dial = T::Dial;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        self.inner.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        {
            let mut contacts = lock(&self.contacts);
            let now = Instant::now();
            contacts.sent_to(&addr, now);
            if let Some(Protocol::P2p(peer)) = addr.iter().last() {
                contacts.dialled(peer, now);
            }
        }
        self.inner.dial(addr, opts)
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

impl Contacts {
    /// We dialled (or tried to dial) `addr`, or hold (or held) a connection there.
    pub fn sent_to(&mut self, addr: &Multiaddr, now: Instant) {
        if let Some(ip) = ip_of(addr) {
            let forgot = remember(&mut self.sent_to, ip, now);
            self.forgot(forgot, now);
        }
    }

    /// We started a dial to `peer`.
    pub fn dialled(&mut self, peer: PeerId, now: Instant) {
        let forgot = remember(&mut self.dialled, peer, now);
        self.forgot(forgot, now);
    }

    /// We hold a relayed connection with `peer`.
    pub fn relayed(&mut self, peer: PeerId, now: Instant) {
        let forgot = remember(&mut self.relayed, peer, now);
        self.forgot(forgot, now);
    }

    fn forgot(&mut self, forgot: bool, now: Instant) {
        if forgot {
            self.saturated_until = Some(now + REMEMBERED);
        }
    }

    /// An inbound connection from `peer` at `remote` came up: the IP address it
    /// proves strangers can reach us from, if it is a stranger's (a direct connection,
    /// not from loopback, from an address we did not send to, by a peer we did not
    /// dial and do not reach through a relay).
    pub fn stranger(&self, peer: &PeerId, remote: &Multiaddr, now: Instant) -> Option<IpAddr> {
        let ip = ip_of(remote)?;
        if self.saturated_until.is_some_and(|until| now < until) {
            return None;
        }
        let answer = ip.is_loopback()
            || recent(&self.sent_to, &ip, now)
            || recent(&self.dialled, peer, now)
            || recent(&self.relayed, peer, now);
        (!answer).then_some(ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_a_peer_we_never_contacted_proves_strangers_get_in() {
        let now = Instant::now();
        let mut c = Contacts::default();
        let (server, punched, stranger, dialled) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        // The AutoNAT server's host: we dialled it; its dial-back comes from another port.
        c.sent_to(&addr("/ip4/198.51.100.1/udp/4002/quic-v1"), now);
        c.dialled(server, now);
        assert_eq!(
            c.stranger(&server, &addr("/ip4/198.51.100.1/udp/50123/quic-v1"), now),
            None
        );
        // Another peer of the server's host is no stranger to its NAT either.
        assert_eq!(
            c.stranger(&stranger, &addr("/ip4/198.51.100.1/udp/9/quic-v1"), now),
            None
        );
        // A hole punch: the peer came through a relay first.
        c.relayed(punched, now);
        assert_eq!(
            c.stranger(&punched, &addr("/ip4/198.51.100.3/udp/4002/quic-v1"), now),
            None
        );
        // A peer we are dialling, whose own dial came in first.
        c.dialled(dialled, now);
        assert_eq!(
            c.stranger(&dialled, &addr("/ip4/198.51.100.4/udp/4002/quic-v1"), now),
            None
        );
        // Loopback and relayed connections prove nothing.
        assert_eq!(
            c.stranger(&stranger, &addr("/ip4/127.0.0.1/udp/9/quic-v1"), now),
            None
        );
        let circuit = format!("/ip4/198.51.100.1/udp/4002/quic-v1/p2p/{server}/p2p-circuit");
        assert_eq!(c.stranger(&stranger, &addr(&circuit), now), None);
        // A stranger.
        let from = addr("/ip4/198.51.100.5/udp/4002/quic-v1");
        assert_eq!(
            c.stranger(&stranger, &from, now),
            Some("198.51.100.5".parse().unwrap())
        );
        // Contacts are forgotten after a while.
        let later = now + REMEMBERED;
        assert!(c
            .stranger(&server, &addr("/ip4/198.51.100.1/udp/1/quic-v1"), later)
            .is_some());
    }

    #[test]
    fn contacts_are_bounded() {
        let now = Instant::now();
        let mut c = Contacts::default();
        let stranger = addr("/ip4/198.51.100.5/udp/4002/quic-v1");
        assert!(c.stranger(&PeerId::random(), &stranger, now).is_some());
        for i in 0..(MOST + 10) {
            c.dialled(PeerId::random(), now + Duration::from_millis(i as u64));
        }
        assert!(c.dialled.len() <= MOST);
        assert!(c.dialled.len() > MOST * 8 / 10);
        // Review: fresh contacts were forgotten to make room, so one pushed out by a
        // flood of dials could come back as a stranger. While the map is that full,
        // nobody counts as one.
        let later = now + Duration::from_secs(5);
        assert_eq!(c.stranger(&PeerId::random(), &stranger, later), None);
        assert!(c
            .stranger(&PeerId::random(), &stranger, later + REMEMBERED)
            .is_some());
    }
}
