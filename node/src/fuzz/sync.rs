//! The ads and ledger sync protocols: bytes read by the node's own request-response
//! codecs (libp2p's CBOR codec with the node's size limits), then what the node does
//! with what they decode, the event loop's steps without a swarm: ads validated and
//! put in a peer table; ledger keys answered from, clocks and checkpoints compared
//! against, and ledger messages ingested into a real settlement state on a temporary
//! sled database.

use std::cell::Cell;
use std::rc::Rc;

use futures::FutureExt;
use libp2p::request_response::Codec;
use libp2p::StreamProtocol;
use relaymesh_protocol::messages::capability::SignedCapabilityAd;
use relaymesh_protocol::params::MeshParams;
use relaymesh_protocol::{Digest, Ed25519Verifier, Keypair, WireMessage};

use super::{vectors_of, FuzzTarget, Mutation};
use crate::mesh::behaviour::{
    ads_sync_codec, ledger_sync_codec, AdsRequest, AdsResponse, LedgerSyncRequest,
    LedgerSyncResponse, MAX_SYNC_ADS,
};
use crate::mesh::names;
use crate::mesh::peer_table::PeerTable;
use crate::metrics::Metrics;
use crate::settle::{Settlement, MAX_SYNC_KEYS};

/// Peers the clock observations rotate through: more than the clock watch keeps.
const PEERS: u64 = 40;

fn ready<T>(f: impl std::future::Future<Output = T>) -> T {
    f.now_or_never().expect("reading from memory never waits")
}

fn encoded<C: Codec<Protocol = StreamProtocol>>(
    codec: &mut C,
    protocol: &StreamProtocol,
    request: Option<C::Request>,
    response: Option<C::Response>,
) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(r) = request {
        ready(codec.write_request(protocol, &mut out, r)).expect("encodes");
    }
    if let Some(r) = response {
        ready(codec.write_response(protocol, &mut out, r)).expect("encodes");
    }
    out
}

/// An unknown field whose value nests `depth` arrays deep, in a one-field map (what
/// serde skips, recursively, when it reads a struct).
fn deep_unknown_field(known: &[u8], depth: usize) -> Vec<u8> {
    // `known` is a map of one or more fields: bump its count and add "zz": [[[…]]].
    let mut out = known.to_vec();
    out[0] += 1;
    out.extend_from_slice(&[0x62, b'z', b'z']);
    out.extend(std::iter::repeat_n(0x81, depth));
    out.push(0x00);
    out
}

/// The four sync targets.
pub fn targets(vectors: &[(String, Vec<u8>)]) -> Result<Vec<FuzzTarget>, String> {
    let ad_bytes = vectors_of(vectors, "CapabilityAd");
    let ad = SignedCapabilityAd::decode(ad_bytes.first().ok_or("no CapabilityAd vector")?)
        .map_err(|e| e.to_string())?;
    let params = MeshParams::decode(
        vectors_of(vectors, "MeshParams")
            .first()
            .ok_or("no MeshParams vector")?,
    )
    .map_err(|e| e.to_string())?;
    let mesh_id = ad.body.mesh_id;
    // The ad's own clock: the golden ad is fresh then.
    let now = ad.body.issued_ms;
    let skew = params.max_clock_skew_ms;
    let ledger = vectors_of(vectors, "LedgerMessage");

    // Ads sync.
    let ads_protocol = names::ads_sync_protocol(&mesh_id);
    let mut codec = ads_sync_codec();
    let requests = [0, 64, u16::MAX]
        .map(|max| encoded(&mut codec, &ads_protocol, Some(AdsRequest { max }), None));
    let mut corpus = requests.to_vec();
    corpus.push(deep_unknown_field(&requests[1], 300));
    corpus.push(deep_unknown_field(&requests[1], 200));
    let ads_request = {
        let protocol = ads_protocol.clone();
        let mut table = PeerTable::default();
        table.upsert(ad.clone(), now);
        FuzzTarget::new("AdsRequest", corpus, Mutation::Bytes, move |bytes| {
            let Ok(request) = ready(codec.read_request(&protocol, &mut &bytes[..])) else {
                return false;
            };
            let max = usize::from(request.max).min(MAX_SYNC_ADS);
            let ads: Vec<Vec<u8>> = table
                .fresh_ads(now, max)
                .iter()
                .filter_map(|ad| ad.encode().ok())
                .collect();
            assert!(ads.len() <= max);
            true
        })
    };
    let mut codec = ads_sync_codec();
    let corpus = [
        Vec::new(),
        ad_bytes.clone(),
        vec![ad_bytes[0].clone(); 3],
        vec![ad_bytes[0][..ad_bytes[0].len() / 2].to_vec()],
    ]
    .map(|ads| encoded(&mut codec, &ads_protocol, None, Some(AdsResponse { ads })))
    .to_vec();
    let ads_response = {
        let mut table = PeerTable::default();
        FuzzTarget::new("AdsResponse", corpus, Mutation::Bytes, move |bytes| {
            let Ok(response) = ready(codec.read_response(&ads_protocol, &mut &bytes[..])) else {
                return false;
            };
            for bytes in response.ads.iter().take(MAX_SYNC_ADS) {
                let Ok(ad) = SignedCapabilityAd::decode(bytes) else {
                    continue;
                };
                if ad.validate(&mesh_id, now, skew, &Ed25519Verifier).is_ok() {
                    table.upsert(ad, now);
                }
            }
            true
        })
    };

    // Ledger sync, against one settlement state for both directions.
    let db = sled::Config::new()
        .temporary(true)
        .open()
        .map_err(|e| e.to_string())?;
    let settlement = Rc::new(
        Settlement::open(
            Keypair::from_secret([9; 32]),
            params,
            &db,
            None,
            Metrics::default(),
            now,
        )
        .map_err(|e| e.to_string())?,
    );
    for message in &ledger {
        let _ = settlement.ingest_bytes(message, now);
    }
    let ledger_protocol = names::ledger_sync_protocol(&mesh_id);
    let mut codec = ledger_sync_codec();
    let frozen = settlement.frozen_digest();
    let mut keys = settlement.sync_keys();
    keys.extend([vec![b'c'; 41], Vec::new(), vec![0xff; 64]]);
    let corpus = [
        (Vec::new(), now, frozen),
        (keys.clone(), now, frozen),
        (keys, u64::MAX, (u64::MAX, Digest([7; 32]))),
        (vec![vec![b'p'; 41]; 3], 1 << 63, (0, Digest::ZERO)),
    ]
    .map(|(have, now_ms, frozen)| {
        let request = LedgerSyncRequest {
            have,
            now_ms,
            frozen,
        };
        encoded(&mut codec, &ledger_protocol, Some(request), None)
    })
    .to_vec();
    let heard = Rc::new(Cell::new(0u64));
    let ledger_request = {
        let (s, protocol, heard) = (settlement.clone(), ledger_protocol.clone(), heard.clone());
        FuzzTarget::new("LedgerSyncRequest", corpus, Mutation::Bytes, move |bytes| {
            let Ok(request) = ready(codec.read_request(&protocol, &mut &bytes[..])) else {
                return false;
            };
            let peer = format!("peer{}", heard.get() % PEERS);
            heard.set(heard.get() + 1);
            if request.have.len() <= MAX_SYNC_KEYS {
                s.sync_answer(&request.have);
            }
            s.observe_peer_clock(&peer, request.now_ms, now);
            s.compare_checkpoint(&peer, request.frozen.0, request.frozen.1);
            true
        })
    };
    let mut codec = ledger_sync_codec();
    let corpus = [
        (Vec::new(), now, now, frozen),
        (ledger.clone(), now - 40, now - 20, frozen),
        (ledger, u64::MAX, 1 << 63, (u64::MAX, Digest([7; 32]))),
    ]
    .map(|(messages, echo_ms, now_ms, frozen)| {
        let response = LedgerSyncResponse {
            messages,
            echo_ms,
            now_ms,
            frozen,
        };
        encoded(&mut codec, &ledger_protocol, None, Some(response))
    })
    .to_vec();
    let ledger_response = {
        let s = settlement;
        FuzzTarget::new(
            "LedgerSyncResponse",
            corpus,
            Mutation::Bytes,
            move |bytes| {
                let Ok(response) = ready(codec.read_response(&ledger_protocol, &mut &bytes[..]))
                else {
                    return false;
                };
                // Keep the database alive as long as the settlement state on it.
                let _ = &db;
                let peer = format!("peer{}", heard.get() % PEERS);
                heard.set(heard.get() + 1);
                let midpoint = response.echo_ms / 2 + now / 2;
                s.observe_peer_clock(&peer, response.now_ms, midpoint);
                s.compare_checkpoint(&peer, response.frozen.0, response.frozen.1);
                for bytes in &response.messages {
                    let _ = s.ingest_bytes(bytes, now);
                }
                true
            },
        )
    };
    Ok(vec![
        ads_request,
        ads_response,
        ledger_request,
        ledger_response,
    ])
}
