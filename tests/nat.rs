//! NAT traversal across network namespaces: a bootstrap node on a "public" network
//! (it runs the AutoNAT server and the circuit relay), a supplier serving SmolLM2
//! behind a NAT router of one kind, and a light gateway behind a home router (a
//! port-restricted cone) of its own (`support::nat_mesh`). Each test serves requests
//! end to end through the gateway, metered (usage in compute units) and settled in
//! the ledger as on loopback, and reports the link kind the gateway reached the
//! supplier by:
//!
//! | supplier's NAT | supplier's reachability | link from the gateway |
//! | --- | --- | --- |
//! | full cone | public (a dial-back gets in) | direct |
//! | port-restricted cone | relayed | hole-punched (DCUtR) |
//! | address-restricted cone | public, unconfirmed (a dial-back gets in; it keeps a relay slot) | hole-punched (DCUtR) |
//! | symmetric | relayed | relayed |
//!
//! Without NAT traversal each test fails (checked by taking parts out, and waiting 20 s
//! instead of for the supplier's reachability): with no relay slots, the supplier
//! behind either restricted NAT is never reached ("no supplier of smollm2 could take
//! the request … Dial error: no addresses for peer"); with no AutoNAT, neither is the
//! one behind the full cone (its router's address is advertised by nobody); with no
//! DCUtR, the link behind the port-restricted cone stays relayed. Needs root, iproute2
//! and nftables; elsewhere each test says SKIPPED.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::nat_mesh::{NatMesh, Place};
use support::netns::{self, api_json, Nat};

/// Runs `relaymesh ARGS` in namespace `ns` to the end: its stdout.
fn relaymesh_in(ns: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_relaymesh")])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asks the gateway; the answer must come from the supplier and be metered.
fn ask(mesh: &NatMesh) {
    let (code, headers, body) = mesh.ask(8, false, Duration::from_secs(300));
    assert_eq!(
        code,
        200,
        "the gateway did not answer: {body}\n{}",
        mesh.tail()
    );
    assert_eq!(
        headers
            .get("x-relaymesh-supplier")
            .and_then(|v| v.to_str().ok()),
        Some(mesh.supplier_id.as_str()),
        "{body}"
    );
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert!(
        answer["usage"]["relaymesh"]["compute_units"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "not metered: {body}"
    );
}

/// The mesh of the module comment with the supplier behind `nat`; the supplier must
/// come to `reachability`, the gateway must reach it by `link`, and the supplier's
/// doctor must say `doctor_says`.
fn served_through(nat: Nat, reachability: &str, link: &str, doctor_says: &str) {
    let Some(mesh) = NatMesh::start(
        "nat",
        Place::Behind(nat),
        Place::Behind(Nat::PortRestricted),
    ) else {
        return;
    };
    let wait = |what: &str, secs: u64, check: &mut dyn FnMut() -> Option<()>| {
        netns::wait_until(what, Duration::from_secs(secs), mesh.logs(), check)
    };
    wait(
        &format!(
            "the supplier behind a {} NAT to be {reachability}",
            nat.name()
        ),
        90,
        &mut || {
            let s = api_json(&mesh.sup, "/relaymesh/v1/status")?;
            (s["reachability"]["state"] == reachability).then_some(())
        },
    );
    supplier_listed_at(&mesh, &mesh.gw);

    ask(&mesh);
    // A hole punch follows the relayed connection within a few round trips.
    let settled = support::poll(Duration::from_secs(30), || {
        mesh.link().filter(|r| r["link"] == link)
    })
    .unwrap_or_else(|| {
        panic!(
            "the gateway's link to the supplier is not {link} after 30 s: {:?}\n{}",
            mesh.link(),
            mesh.tail()
        )
    });
    eprintln!(
        "supplier behind a {} NAT: {reachability}; the gateway reaches it {link} ({}, RTT {} ms)",
        nat.name(),
        settled["addresses"],
        settled["rtt_ms"]
    );
    // The next request takes that link.
    ask(&mesh);

    // Metered as on loopback: the session is claimed, revealed, proven and settled.
    wait(
        "the supplier's claim settled at the gateway",
        120,
        &mut || {
            let claims = api_json(&mesh.gw, "/relaymesh/v1/claims")?;
            claims["claims"]
                .as_array()?
                .iter()
                .any(|c| c["supplier"] == mesh.supplier_id.as_str() && c["status"] == "settled")
                .then_some(())
        },
    );
    let ledger = api_json(&mesh.sup, "/relaymesh/v1/ledger").unwrap();
    assert!(
        ledger["me"]["earned"].as_u64().unwrap_or(0) > 0,
        "the supplier earned nothing: {ledger}"
    );

    let doctor = relaymesh_in(&mesh.sup, &["doctor", "--api", "127.0.0.1:7434"]);
    assert!(
        doctor.contains(doctor_says),
        "the supplier's doctor does not say {doctor_says:?}:\n{doctor}"
    );
    eprintln!("the supplier's doctor:\n{doctor}");
}

/// A full-cone NAT lets a dial-back in, so AutoNAT finds the supplier public at its
/// router's address and the gateway dials it there: a direct link, no relay slot.
#[test]
fn a_supplier_behind_a_full_cone_nat_is_dialled_directly() {
    served_through(
        Nat::FullCone,
        "public",
        "direct",
        "public: peers can dial this node directly at /ip4/198.51.100.2/",
    );
}

/// A port-restricted cone (a home router) lets in only whom the supplier sent to: it
/// reserves a relay slot, the gateway reaches it through the relay, and both hole-punch
/// a direct link from there (both routers keep a host's port towards everyone).
#[test]
fn a_supplier_behind_a_port_restricted_nat_is_hole_punched() {
    served_through(
        Nat::PortRestricted,
        "relayed",
        "hole-punched",
        "peers reach this node through the relay at /ip4/198.51.100.1/",
    );
}

/// An address-restricted cone lets in any port of a host the supplier sent to, so the
/// bootstrap node's dial-back (from another port) gets in and finds the supplier public;
/// but a stranger's dial does not. The supplier keeps a relay slot until a stranger
/// reaches it directly, so the gateway reaches it through the relay and both
/// hole-punch from there.
#[test]
fn a_supplier_behind_an_address_restricted_nat_is_hole_punched() {
    served_through(
        Nat::AddressRestricted,
        "public",
        "hole-punched",
        "no peer it had not contacted has reached it directly yet",
    );
}

/// A gateway that joins once the supplier behind an address-restricted cone is public
/// still reaches it: through the relay slot it kept, then hole-punched. Failed when a
/// dial-back alone made a node public: the supplier gave its slot back, advertised only
/// its router's address, which lets in nobody it had not sent to, and the newcomer's
/// requests found no way to it.
#[test]
fn a_gateway_joining_later_reaches_a_supplier_behind_an_address_restricted_nat() {
    let Some(mut mesh) = NatMesh::start(
        "nat-later",
        Place::Behind(Nat::AddressRestricted),
        Place::Behind(Nat::PortRestricted),
    ) else {
        return;
    };
    let wait = |mesh: &NatMesh, what: &str, check: &mut dyn FnMut() -> Option<()>| {
        netns::wait_until(what, Duration::from_secs(90), mesh.logs(), check)
    };
    wait(&mesh, "the supplier to be public", &mut || {
        let s = api_json(&mesh.sup, "/relaymesh/v1/status")?;
        (s["reachability"]["state"] == "public").then_some(())
    });
    // Time to give a slot back, were it given back.
    std::thread::sleep(Duration::from_secs(3));
    let (late, _) = mesh.add_gateway(
        Place::Behind(Nat::PortRestricted),
        "late",
        "198.51.100.4/24",
    );
    supplier_listed_at(&mesh, &late);
    let (code, _, body) = mesh.ask_from(&late, 8, false, Duration::from_secs(120));
    assert_eq!(
        code,
        200,
        "the late gateway was not answered: {body}\n{}",
        mesh.tail()
    );
    let punched = support::poll(Duration::from_secs(30), || {
        mesh.link_from(&late)
            .filter(|r| r["link"] == "hole-punched")
    });
    assert!(
        punched.is_some(),
        "the late gateway's link is not hole-punched: {:?}",
        mesh.link_from(&late)
    );
}

/// A symmetric NAT gives every destination its own port, so hole punching cannot get
/// through: the supplier serves through the relay, and its doctor says so.
#[test]
fn a_supplier_behind_a_symmetric_nat_is_served_through_the_relay() {
    served_through(
        Nat::Symmetric,
        "relayed",
        "relayed",
        "your node is behind a NAT that can't be punched; it serves through the relay at /ip4/198.51.100.1/",
    );
}

/// Peer ids cost nothing, and a home router puts every host behind it at one address:
/// forty peer ids on one host behind a NAT dial a public supplier again and again (as
/// `abuse::peer_ids_from_one_address_leave_room_for_newcomers` does from 127.0.0.2,
/// here across hosts, where the supplier sees the router's address and a new port
/// per peer id). The supplier lets at most `connections_per_ip` (8 here) of them in
/// and counts the rest, and a gateway joining from another address during the flood
/// is served. Hosts behind one carrier-grade NAT share the bound the same way.
#[test]
fn peer_ids_behind_one_router_share_one_addresses_connections() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let Some(mut mesh) = NatMesh::start_with(
        "per-ip",
        Place::Public,
        Place::Public,
        &["--limit", "connections_per_ip=8"],
    ) else {
        return;
    };
    let gw = mesh.gw.clone();
    supplier_listed_at(&mesh, &gw);
    ask(&mesh);
    let flood_ns = mesh
        .net
        .host_behind(Nat::PortRestricted, "flood", "198.51.100.9/24");
    let target: libp2p::Multiaddr =
        format!("/ip4/198.51.100.2/udp/{}/quic-v1", support::nat_mesh::PORT)
            .parse()
            .unwrap();
    let supplier: libp2p::PeerId = mesh.supplier_id.parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            support::netns::Net::within(&flood_ns, move || async move {
                let tasks: Vec<_> = (0..40)
                    .map(|_| {
                        tokio::spawn(support::redialling_peer(
                            supplier,
                            target.clone(),
                            None,
                            stop.clone(),
                        ))
                    })
                    .collect();
                for task in tasks {
                    task.await.unwrap();
                }
            })
        })
    };
    let flooders = |mesh: &NatMesh| -> Option<usize> {
        let peers = api_json(&mesh.sup, "/relaymesh/v1/peers")?;
        Some(
            peers
                .as_array()?
                .iter()
                .filter(|p| {
                    p["addresses"].as_array().is_some_and(|a| {
                        a.iter()
                            .any(|a| a.as_str().is_some_and(|a| a.contains("/198.51.100.9/")))
                    })
                })
                .count(),
        )
    };
    let refused = |mesh: &NatMesh| -> u64 {
        let (_, metrics) = support::nat_mesh::get(&mesh.sup, "/metrics");
        support::counter(
            &metrics,
            "relaymesh_limited_total{reason=\"connections_per_ip\"}",
        )
    };
    // The flood is at the bound: it holds connections and has been refused some (its
    // handshakes in progress count too, so it need not hold all 8 at one moment).
    let mut most = netns::wait_until(
        "the flood to hold connections from its router's address and be refused more",
        Duration::from_secs(60),
        mesh.logs(),
        || flooders(&mesh).filter(|&n| n >= 4 && refused(&mesh) > 0),
    );
    for _ in 0..20 {
        most = most.max(flooders(&mesh).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(100));
    }
    let (late, _) = mesh.add_gateway(Place::Public, "late", "198.51.100.4/24");
    supplier_listed_at(&mesh, &late);
    let (code, _, body) = mesh.ask_from(&late, 8, false, Duration::from_secs(120));
    most = most.max(flooders(&mesh).unwrap_or(0));
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    let refused = refused(&mesh);
    eprintln!(
        "peer ids behind 198.51.100.9 held at most {most} connections at the supplier; {refused} refused"
    );
    assert_eq!(
        code,
        200,
        "the late gateway was not served: {body}\n{}",
        mesh.tail()
    );
    assert!(most <= 8, "{most} connections from one router's address");
    assert!(refused > 0, "the refused connections are counted");
}

/// Waits until the gateway in namespace `gw` lists the supplier's model.
fn supplier_listed_at(mesh: &NatMesh, gw: &str) {
    netns::wait_until(
        "the supplier's ad at the gateway",
        Duration::from_secs(90),
        mesh.logs(),
        || {
            let models = api_json(gw, "/relaymesh/v1/models")?;
            models
                .as_array()?
                .iter()
                .any(|m| m["supplier"] == mesh.supplier_id.as_str())
                .then_some(())
        },
    );
}
