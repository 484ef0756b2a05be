//! `relaymesh doctor`: what a node knows of its own health — the bootstrap nodes it
//! reached, whether peers can reach it (public, behind NAT, relayed), how it reaches
//! each peer (direct, hole-punched, relayed) and its clock against theirs — turned
//! into findings a hobbyist can act on. A pure function of the status, so the API and
//! the tests see the same words.

use serde::Serialize;

use crate::config::Role;
use crate::mesh::handle::{LinkKind, NodeStatus, PeerRow};
use crate::settle::ClockReport;

/// How a finding reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Works.
    Ok,
    /// Works, with a cost or a risk worth knowing.
    Warn,
    /// Does not work; the advice says what to do.
    Fail,
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Its level.
    pub level: Level,
    /// What it is about: `bootstrap`, `reachability`, `links`, `clock`, `peers`,
    /// `membership`.
    pub topic: &'static str,
    /// What is so, in plain words.
    pub what: String,
    /// What to do about it, if anything.
    pub advice: Option<String>,
}

fn finding(level: Level, topic: &'static str, what: String, advice: Option<String>) -> Finding {
    Finding {
        level,
        topic,
        what,
        advice,
    }
}

/// A private mesh's member: admitted as what, until when, or why no longer.
fn membership_finding(m: &crate::mesh::handle::OwnMembership, now_ms: u64) -> Finding {
    let renew = "ask the mesh's owner for a new invite (`relaymesh mesh invite`) and restart with --invite TOKEN".to_string();
    if let Some(why) = &m.ended {
        return finding(
            Level::Fail,
            "membership",
            format!("members refuse this node: {why}"),
            Some(renew),
        );
    }
    let whose = match &m.member.invite {
        Some(id) => format!("invite {}…", &id[..id.len().min(12)]),
        None => "an owner's key".to_string(),
    };
    match m.member.expires_ms {
        None => finding(
            Level::Ok,
            "membership",
            format!("member of this private mesh as {} ({whose})", m.member.role),
            None,
        ),
        Some(expires) => {
            let left_h = expires.saturating_sub(now_ms) / 3_600_000;
            let what = format!(
                "member of this private mesh as {} ({whose}), for {} more hour(s)",
                m.member.role, left_h
            );
            if left_h < 24 {
                finding(Level::Warn, "membership", what, Some(renew))
            } else {
                finding(Level::Ok, "membership", what, None)
            }
        }
    }
}

/// The port this node listens on beyond loopback, for advice about forwarding it.
fn port(status: &NodeStatus) -> String {
    status
        .listen_addrs
        .iter()
        .filter(|a| !a.contains("/127.0.0.1/") && !a.contains("/::1/"))
        .find_map(|a| {
            let mut parts = a.split('/');
            while let Some(p) = parts.next() {
                if p == "udp" || p == "tcp" {
                    return parts.next().map(str::to_owned);
                }
            }
            None
        })
        .unwrap_or_else(|| "(the port of --listen)".into())
}

/// The findings for a node with `status`, connected to `peers`, whose clock the
/// ledger compared with its peers' (`clock`), in a mesh that tolerates `skew_ms`.
pub fn diagnose(
    status: &NodeStatus,
    peers: &[PeerRow],
    clock: Option<&ClockReport>,
    skew_ms: u64,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let boot = &status.bootstrap;
    if boot.configured == 0 {
        let level = if status.role == Role::Bootstrap {
            Level::Ok
        } else {
            Level::Warn
        };
        out.push(finding(
            level,
            "bootstrap",
            "no bootstrap node configured: this node meets only peers that dial it".into(),
            (level == Level::Warn)
                .then(|| "start it with --bootstrap /ip4/…/udp/…/quic-v1/p2p/<peer id> of a bootstrap node".into()),
        ));
    } else if boot.connected == 0 {
        out.push(finding(
            Level::Fail,
            "bootstrap",
            format!(
                "none of the {} bootstrap node(s) answers ({} rounds of dials failed): {}",
                boot.configured,
                boot.failed_rounds,
                if boot.last_errors.is_empty() {
                    "still trying".into()
                } else {
                    boot.last_errors.join("; ")
                }
            ),
            Some("check --bootstrap (address, port and the /p2p/ id), that the bootstrap node runs, and that this machine may reach its port over UDP and TCP".into()),
        ));
    } else {
        out.push(finding(
            Level::Ok,
            "bootstrap",
            format!(
                "reached {} of {} bootstrap node(s): {}",
                boot.connected,
                boot.configured,
                boot.reached.join(", ")
            ),
            None,
        ));
    }

    let reach = &status.reachability;
    let serves = status.role == Role::Full;
    let forward = format!(
        "to be reached directly, forward port {} (UDP and TCP) on your router to this machine",
        port(status)
    );
    let relay = reach
        .relays
        .iter()
        .find(|r| r.slot == "reserved")
        .map(|r| r.addr.clone());
    match reach.state.as_str() {
        "public" => {
            let mut what = format!(
                "public: peers can dial this node directly at {}",
                reach.public_addrs.join(", ")
            );
            if !reach.stranger_reached && status.role == Role::Full {
                what.push_str(&format!(
                    "; no peer it had not contacted has reached it directly yet, so it keeps \
                     a relay slot{} in case its router lets in only hosts it has sent to",
                    relay.as_deref().map(|r| format!(" at {r}")).unwrap_or_default()
                ));
            }
            out.push(finding(Level::Ok, "reachability", what, None));
        }
        "relayed" => {
            let unpunched = status.links.relayed > 0 && status.links.hole_punched == 0;
            let what = if unpunched {
                format!(
                    "your node is behind a NAT that can't be punched; it serves through the relay at {}",
                    relay.as_deref().unwrap_or("(a bootstrap node)")
                )
            } else {
                format!(
                    "behind NAT: peers reach this node through the relay at {}, and hole-punch a direct link from there where both NATs allow",
                    relay.as_deref().unwrap_or("(a bootstrap node)")
                )
            };
            out.push(finding(Level::Warn, "reachability", what, Some(forward.clone())));
        }
        "behind_nat" if !serves => out.push(finding(
            Level::Ok,
            "reachability",
            "behind NAT: peers cannot dial this node, which a node that serves nothing does not need (it dials out)".into(),
            None,
        )),
        "behind_nat" => {
            let failed: Vec<String> = reach
                .relays
                .iter()
                .filter_map(|r| Some(format!("{}: {}", r.addr, r.error.as_ref()?)))
                .collect();
            let (level, what) = if reach.relays.is_empty() {
                (
                    Level::Fail,
                    "your node is behind NAT and no relay is known, so nobody can send it requests".to_string(),
                )
            } else if !failed.is_empty() {
                (
                    Level::Fail,
                    format!(
                        "your node is behind NAT and the relays refused it a slot: {}",
                        failed.join("; ")
                    ),
                )
            } else {
                (
                    Level::Warn,
                    "your node is behind NAT; it is asking a relay for a slot".to_string(),
                )
            };
            out.push(finding(
                level,
                "reachability",
                what,
                Some(format!(
                    "bootstrap nodes offer relay slots: check --bootstrap; or {forward}"
                )),
            ));
        }
        _ => {
            let local = !status.listen_addrs.is_empty()
                && status
                    .listen_addrs
                    .iter()
                    .all(|a| a.contains("/127.0.0.1/") || a.contains("/::1/"));
            out.push(finding(
                Level::Ok,
                "reachability",
                if local {
                    "this node listens on loopback only: only nodes on this machine reach it".into()
                } else if reach.probes_failed + reach.probes_ok == 0 && boot.connected > 0 {
                    "not known yet: a bootstrap node is checking whether it can dial this node back (ask again in a few seconds)".into()
                } else {
                    "not known: no bootstrap node has dialled this node back".into()
                },
                None,
            ));
        }
    }

    if peers.is_empty() {
        out.push(finding(
            Level::Fail,
            "peers",
            "no peer connected".into(),
            Some("see the bootstrap finding above".into()),
        ));
    } else {
        let links = &status.links;
        let relayed: Vec<&PeerRow> = peers
            .iter()
            .filter(|p| p.link == LinkKind::Relayed)
            .collect();
        let what = format!(
            "{} peer(s): {} connection(s) direct, {} hole-punched, {} relayed",
            peers.len(),
            links.direct,
            links.hole_punched,
            links.relayed
        );
        if relayed.is_empty() {
            out.push(finding(Level::Ok, "links", what, None));
        } else {
            out.push(finding(
                Level::Warn,
                "links",
                format!(
                    "{what}; reached only through a relay: {} (slower, and each circuit is bounded in bytes and time by the relay)",
                    relayed
                        .iter()
                        .map(|p| p.peer_id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Some("hole punching fails when a NAT on either side maps each destination to its own port (a symmetric NAT, common on mobile and carrier-grade NAT); forwarding a port on either router gives a direct link".into()),
            ));
        }
    }

    if let Some(m) = &status.membership {
        out.push(membership_finding(m, crate::mesh::now_ms()));
    }

    match clock {
        None => {}
        Some(c) => match c.offset_ms {
            None => out.push(finding(
                Level::Ok,
                "clock",
                format!(
                    "not compared yet ({} peer(s) heard; the ledger needs 3)",
                    c.peers
                ),
                None,
            )),
            Some(offset) => {
                let side = if offset > 0 { "behind" } else { "ahead of" };
                let what = format!(
                    "this node's clock is {:.1} s {side} its peers' (median of {}; the mesh allows {:.0} s)",
                    offset.unsigned_abs() as f64 / 1000.0,
                    c.peers,
                    skew_ms as f64 / 1000.0
                );
                if c.off {
                    out.push(finding(
                        Level::Fail,
                        "clock",
                        format!("{what}: the ledger freezes no epoch here until it is set right"),
                        Some(
                            "turn on time synchronisation (e.g. `timedatectl set-ntp true`)".into(),
                        ),
                    ));
                } else {
                    out.push(finding(Level::Ok, "clock", what, None));
                }
            }
        },
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::bootstrap::BootstrapStatus;
    use crate::mesh::handle::LinkCounts;
    use crate::mesh::reachability::{ReachabilityStatus, RelayRow};

    fn status(state: &str) -> NodeStatus {
        NodeStatus {
            peer_id: "12D3KooWself".into(),
            mesh_id: "00".into(),
            mesh_name: "public".into(),
            role: Role::Full,
            listen_addrs: vec!["/ip4/10.88.0.2/udp/4002/quic-v1/p2p/12D3KooWself".into()],
            external_addrs: vec![],
            connected_peers: 2,
            bootstrap: BootstrapStatus {
                configured: 1,
                connected: 1,
                reached: vec!["/ip4/198.51.100.1/udp/4002/quic-v1/p2p/12D3KooWboot".into()],
                failed_rounds: 0,
                last_errors: vec![],
            },
            reachability: ReachabilityStatus {
                state: state.into(),
                public_addrs: vec![],
                relayed_addrs: vec![],
                relays: vec![RelayRow {
                    peer_id: "12D3KooWboot".into(),
                    addr: "/ip4/198.51.100.1/udp/4002/quic-v1/p2p/12D3KooWboot".into(),
                    slot: "reserved".into(),
                    error: None,
                }],
                probes_ok: 0,
                probes_failed: 2,
                last_probe_error: None,
                stranger_reached: false,
            },
            links: LinkCounts {
                direct: 1,
                hole_punched: 0,
                relayed: 1,
            },
            clock: None,
            suppliers: 1,
            membership: None,
            version: "0".into(),
            uptime_secs: None,
        }
    }

    fn peer(id: &str, link: LinkKind) -> PeerRow {
        PeerRow {
            peer_id: id.into(),
            addresses: vec![],
            transports: vec!["quic".into()],
            link,
            agent: None,
            gossip_score: None,
            member: None,
            rtt_ms: Some(1.0),
            clock_offset_ms: None,
        }
    }

    #[test]
    fn a_supplier_behind_a_symmetric_nat_is_told_it_serves_through_the_relay() {
        let s = status("relayed");
        let peers = [
            peer("12D3KooWboot", LinkKind::Direct),
            peer("12D3KooWgw", LinkKind::Relayed),
        ];
        let clock = ClockReport {
            offset_ms: Some(-45_000),
            peers: 3,
            off: true,
            checkpoint_mismatches: 0,
        };
        let found = diagnose(&s, &peers, Some(&clock), 30_000);
        let reach = found.iter().find(|f| f.topic == "reachability").unwrap();
        assert_eq!(reach.level, Level::Warn);
        assert_eq!(
            reach.what,
            "your node is behind a NAT that can't be punched; it serves through the relay at /ip4/198.51.100.1/udp/4002/quic-v1/p2p/12D3KooWboot"
        );
        assert!(reach.advice.as_ref().unwrap().contains("forward port 4002"));
        let links = found.iter().find(|f| f.topic == "links").unwrap();
        assert!(links.what.contains("12D3KooWgw"), "{links:?}");
        let clock = found.iter().find(|f| f.topic == "clock").unwrap();
        assert_eq!(clock.level, Level::Fail);
        assert!(clock.what.contains("45.0 s ahead of"), "{clock:?}");
    }

    #[test]
    fn findings_follow_the_state() {
        let mut s = status("behind_nat");
        s.reachability.relays.clear();
        let found = diagnose(&s, &[peer("b", LinkKind::Direct)], None, 30_000);
        assert_eq!(found[1].level, Level::Fail);
        assert!(found[1].what.contains("no relay is known"));
        s.role = Role::Light;
        assert_eq!(diagnose(&s, &[], None, 30_000)[1].level, Level::Ok);

        let mut s = status("public");
        s.reachability.public_addrs = vec!["/ip4/203.0.113.2/udp/4002/quic-v1".into()];
        s.links.relayed = 0;
        s.bootstrap.connected = 0;
        s.bootstrap.failed_rounds = 3;
        s.bootstrap.last_errors = vec!["/ip4/…: Handshake with the remote timed out".into()];
        let found = diagnose(&s, &[], None, 30_000);
        assert_eq!(found[0].level, Level::Fail);
        assert!(found[0].what.contains("timed out"));
        assert_eq!(found[1].level, Level::Ok);
        assert_eq!(found[2].topic, "peers");
    }

    #[test]
    fn a_member_is_told_when_its_invite_runs_out_or_was_revoked() {
        use crate::mesh::handle::{MemberRow, OwnMembership};
        let member = |expires_ms, ended: Option<&str>| OwnMembership {
            member: MemberRow {
                role: "app".into(),
                invite: Some("984adc6e0c71559d758295bf".into()),
                expires_ms: Some(expires_ms),
            },
            ended: ended.map(Into::into),
        };
        let now = 1_000 * 3_600_000;
        let f = membership_finding(&member(now + 48 * 3_600_000, None), now);
        assert_eq!(
            (
                f.level,
                f.what
                    .contains("as app (invite 984adc6e0c71…), for 48 more")
            ),
            (Level::Ok, true),
            "{f:?}"
        );
        let f = membership_finding(&member(now + 3_600_000, None), now);
        assert_eq!(f.level, Level::Warn);
        assert!(f.advice.unwrap().contains("--invite"));
        let f = membership_finding(
            &member(now, Some("the invite has been revoked by the mesh's owner")),
            now,
        );
        assert_eq!(f.level, Level::Fail);
        assert!(f.what.contains("revoked"), "{f:?}");
    }
}
