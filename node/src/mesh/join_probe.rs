//! `relaymesh mesh probe`: dials peers of a private mesh with an invite (valid or not,
//! unchecked here) and reports, per address, whether the peer admitted it or why not.
//! An owner checks an invite with it before handing it out; the tests use it as the
//! stranger at the door.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::Multiaddr;
use relaymesh_protocol::messages::membership::Credential;
use relaymesh_protocol::params::MeshParams;
use relaymesh_protocol::Keypair;

use super::membership::Membership;
use crate::metrics::Metrics;

/// Dials each address in turn (at most `timeout` each) presenting `invite`: `Ok` where
/// the peer admitted this key, the refusal or failure otherwise.
pub async fn probe(
    params: &MeshParams,
    key: &Keypair,
    invite: Option<Credential>,
    addrs: &[Multiaddr],
    timeout: Duration,
) -> Result<Vec<(Multiaddr, Result<(), String>)>, String> {
    let tree = sled::Config::new()
        .temporary(true)
        .open()
        .and_then(|db| db.open_tree(super::membership::TREE))
        .map_err(|e| format!("temporary store: {e}"))?;
    let membership = Arc::new(Membership::presenting(
        params,
        key,
        invite,
        tree,
        Metrics::default(),
    ));
    let libp2p_key =
        libp2p::identity::Keypair::ed25519_from_bytes(key.secret()).map_err(|e| e.to_string())?;
    let peer_id = libp2p_key.public().to_peer_id();
    let (relay, _relay_client) = libp2p::relay::client::new(peer_id);
    let transport = super::transport(&libp2p_key, relay, Some(membership), Default::default())
        .map_err(|e| e.to_string())?;
    let mut swarm = libp2p::Swarm::new(
        transport,
        libp2p::swarm::dummy::Behaviour,
        peer_id,
        libp2p::swarm::Config::with_tokio_executor(),
    );
    let mut results = Vec::new();
    for addr in addrs {
        let outcome = match swarm.dial(addr.clone()) {
            Err(e) => Err(e.to_string()),
            Ok(()) => tokio::time::timeout(timeout, async {
                loop {
                    match swarm.select_next_some().await {
                        SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                            let _ = swarm.disconnect_peer_id(peer_id);
                            return Ok(());
                        }
                        SwarmEvent::OutgoingConnectionError { error, .. } => {
                            return Err(innermost(&error))
                        }
                        _ => {}
                    }
                }
            })
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} s", timeout.as_secs()))),
        };
        results.push((addr.clone(), outcome));
    }
    Ok(results)
}

/// A dial error in the words of its innermost transport error (the membership
/// verdict, where there was one).
fn innermost(error: &libp2p::swarm::DialError) -> String {
    match error {
        libp2p::swarm::DialError::Transport(errors) => errors
            .iter()
            .map(|(_, e)| {
                let mut source: &dyn std::error::Error = e;
                while let Some(next) = source.source() {
                    source = next;
                }
                source.to_string()
            })
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}
