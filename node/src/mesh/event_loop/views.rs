//! What the event loop reports of itself: `GET /relaymesh/v1/status` and
//! `/relaymesh/v1/peers`.

use libp2p::multiaddr::Protocol;

use super::{transport_of, EventLoop};
use crate::mesh::handle::{LinkCounts, LinkKind, NodeStatus, PeerRow};

impl EventLoop {
    pub(super) fn status(&self) -> NodeStatus {
        let peer_id = *self.swarm.local_peer_id();
        let full = |a: &libp2p::Multiaddr| a.clone().with(Protocol::P2p(peer_id)).to_string();
        let mut links = LinkCounts::default();
        for c in self.connections.values().flat_map(|c| c.values()) {
            match c.kind {
                LinkKind::Direct => links.direct += 1,
                LinkKind::HolePunched => links.hole_punched += 1,
                LinkKind::Relayed => links.relayed += 1,
            }
        }
        NodeStatus {
            peer_id: peer_id.to_string(),
            mesh_id: self.mesh_id.to_hex(),
            mesh_name: self.config.mesh.name.to_string(),
            role: self.config.role,
            listen_addrs: self.listen_addrs.iter().map(full).collect(),
            external_addrs: self.swarm.external_addresses().map(full).collect(),
            connected_peers: self.swarm.connected_peers().count(),
            bootstrap: self.bootstraps.status(),
            reachability: self.reach.status(full),
            links,
            clock: None,
            suppliers: self.table.len(),
            membership: self
                .membership
                .as_ref()
                .map(|m| crate::mesh::handle::OwnMembership {
                    member: crate::mesh::MemberRow::of(&m.own()),
                    ended: m.own_refusal(super::now_ms()).map(|r| r.to_string()),
                }),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_secs: None,
        }
    }

    pub(super) fn peer_rows(&self) -> Vec<PeerRow> {
        let mut rows: Vec<PeerRow> = self
            .connections
            .iter()
            .map(|(peer, conns)| {
                let mut transports: Vec<String> = conns
                    .values()
                    .map(|c| transport_of(&c.addr).to_string())
                    .collect();
                transports.sort();
                transports.dedup();
                // The link new streams take: a direct one over a relayed one.
                let best = conns.values().min_by_key(|c| (c.kind, c.rtt.is_none()));
                PeerRow {
                    peer_id: peer.to_string(),
                    addresses: conns.values().map(|c| c.addr.to_string()).collect(),
                    transports,
                    link: best.map_or(LinkKind::Direct, |c| c.kind),
                    agent: self.agents.get(peer).cloned(),
                    gossip_score: self.swarm.behaviour().gossipsub.peer_score(peer),
                    rtt_ms: best.and_then(|c| c.rtt).map(|d| d.as_secs_f64() * 1000.0),
                    member: self
                        .membership
                        .as_ref()
                        .and_then(|m| m.admitted(peer))
                        .map(|a| crate::mesh::MemberRow::of(&a)),
                    // The settlement task hears clocks: the API fills this in.
                    clock_offset_ms: None,
                }
            })
            .collect();
        rows.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        rows
    }
}
