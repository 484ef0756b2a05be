//! Shared fixtures: deterministic keys, a test mesh, and an app and a supplier that
//! run sessions through the real message types.
#![allow(dead_code)]

use relaymesh_protocol::identity::signed::Signed;
use relaymesh_protocol::messages::claim::{Claim, SignedClaim};
use relaymesh_protocol::messages::credit::CreditSlot;
use relaymesh_protocol::messages::manifest::{ModelManifest, SignedManifest};
use relaymesh_protocol::messages::request::SignedRelayRequest;
use relaymesh_protocol::messages::reveal::commitment;
use relaymesh_protocol::messages::session::{SessionOpen, SignedSessionOpen};
use relaymesh_protocol::metering::app::{RequestAcker, RequestTerms};
use relaymesh_protocol::metering::compute_units::CuFormula;
use relaymesh_protocol::metering::receipt::Receipt;
use relaymesh_protocol::params::{Allocation, MeshParams};
use relaymesh_protocol::settlement::proof::MinedSession;
use relaymesh_protocol::{BoundedString, Digest, Keypair, Signer, PROTOCOL_VERSION};

/// Key number `n`, the same in every run.
pub fn key(n: u8) -> Keypair {
    Keypair::from_secret([n; 32])
}

/// The secret an app uses for session `nonce` (tests derive it; nodes draw it).
pub fn secret(nonce: u64) -> Digest {
    Digest(*blake3::hash(&nonce.to_be_bytes()).as_bytes())
}

/// A mesh with 10-second epochs and the given genesis.
pub fn params(genesis: &[(&Keypair, u64)]) -> MeshParams {
    let genesis = genesis
        .iter()
        .map(|(k, amount)| Allocation {
            account: k.public_key(),
            amount: *amount,
        })
        .collect();
    let mut p = MeshParams::new("test-mesh", genesis).unwrap();
    p.epoch_ms = 10_000;
    p.freeze_horizon_epochs = 3;
    p.tau_min = 1;
    p.proof_samples = 8;
    p.max_claim_leaves = 1024;
    p
}

pub fn manifest(source: &Keypair, royalty_ppm: u32) -> SignedManifest {
    Signed::sign(
        ModelManifest {
            version: PROTOCOL_VERSION,
            name: BoundedString::new("SmolLM2-135M-Instruct").unwrap(),
            gguf_digest: Digest([0xab; 32]),
            size_bytes: 98_000_000,
            licence: BoundedString::new("Apache-2.0").unwrap(),
            royalty_ppm,
            source: source.public_key(),
        },
        source,
    )
}

pub struct SessionTerms<'a> {
    pub params: &'a MeshParams,
    pub app: &'a Keypair,
    pub supplier: &'a Keypair,
    pub manifest: Option<SignedManifest>,
    pub tau: u64,
    pub price: u64,
    pub start_ms: u64,
    pub nonce: u64,
    /// The app's escrow slot.
    pub escrow: CreditSlot,
}

/// The supplier's mining secret for a session in these tests: derived from the terms,
/// as a node derives it from its key and the terms.
pub fn mining_secret(body: &SessionOpen) -> Digest {
    let bytes = relaymesh_protocol::wire::to_canonical(body);
    Digest(*blake3::hash(&[&bytes[..], b"mining"].concat()).as_bytes())
}

pub fn open(t: SessionTerms<'_>) -> SignedSessionOpen {
    let body = SessionOpen {
        version: PROTOCOL_VERSION,
        mesh_id: t.params.mesh_id(),
        app: t.app.public_key(),
        supplier: t.supplier.public_key(),
        model_digest: t
            .manifest
            .as_ref()
            .map_or(Digest([0xab; 32]), |m| m.body.gguf_digest),
        manifest: t.manifest,
        cu: CuFormula::default(),
        price_per_cu: t.price,
        tau: t.tau,
        max_token_bytes: 64,
        escrow: t.escrow,
        start_ms: t.start_ms,
        max_duration_ms: 60_000,
        reveal_commitment: commitment(&secret(t.nonce)),
        nonce: t.nonce,
    };
    let mining = mining_secret(&body);
    Signed::sign(body, t.app).countersign(t.supplier, &mining)
}

/// A transfer of `amount` from `from` to `to`, dated `epoch`, on the slot at
/// `slot_start` of the payer's credit line.
pub fn transfer(
    params: &MeshParams,
    from: &Keypair,
    to: &Keypair,
    amount: u64,
    epoch: u64,
    slot_start: u64,
) -> relaymesh_protocol::messages::transfer::SignedTransfer {
    Signed::sign(
        relaymesh_protocol::messages::transfer::Transfer {
            version: PROTOCOL_VERSION,
            mesh_id: params.mesh_id(),
            from: from.public_key(),
            to: to.public_key(),
            amount,
            epoch,
            slot_start,
        },
        from,
    )
}

/// The app's side of one request, with fixture values for the request terms.
pub struct AppRequest {
    pub request: SignedRelayRequest,
    acker: RequestAcker,
}

impl AppRequest {
    pub fn new(session_key: Digest, request_id: u64, prompt_bytes: u32, app: &Keypair) -> Self {
        let seed = blake3::hash(&[session_key.0.as_slice(), &request_id.to_be_bytes()].concat());
        let terms = RequestTerms {
            session_key,
            request_id,
            prompt_digest: Digest(*blake3::hash(&request_id.to_le_bytes()).as_bytes()),
            prompt_bytes,
            max_output_bytes: 1 << 20,
            max_acks: 256,
        };
        let acker = RequestAcker::new(terms, Digest(*seed.as_bytes()), app);
        Self {
            request: acker.request().clone(),
            acker,
        }
    }

    /// Acks `bytes` more output bytes, one token a byte (so every byte is paid);
    /// returns the receipt.
    pub fn ack(&mut self, bytes: &[u8], last: bool, app: &Keypair) -> Receipt {
        let tokens = u16::try_from(bytes.len()).unwrap();
        let ack = self.acker.ack(bytes, tokens, last, app).unwrap();
        self.acker.receipt(ack)
    }
}

/// Result of running a session honestly.
pub struct RanSession {
    pub open: SignedSessionOpen,
    pub mined: MinedSession,
    /// CUs really served (Σ w_i over all receipts).
    pub served: u64,
    pub receipts: Vec<Receipt>,
}

/// Runs `requests` requests of `increments` acks each, output increments of
/// `bytes_per_ack` bytes, through the real receipt checks and mining.
pub fn run_session(
    open: SignedSessionOpen,
    app: &Keypair,
    requests: u64,
    increments: u16,
    bytes_per_ack: usize,
) -> RanSession {
    let key = open.session_key();
    let tau = open.body.tau;
    let mut mined = MinedSession::new(mining_secret(&open.body));
    let mut served = 0;
    let mut receipts = Vec::new();
    for r in 0..requests {
        let mut req = AppRequest::new(key, r, 200 + r as u32, app);
        for i in 0..increments {
            let text = vec![b'a' + (i % 26) as u8; bytes_per_ack];
            let receipt = req.ack(&text, i + 1 == increments, app);
            let facts = receipt.check(&key, &open.body).unwrap();
            served += facts.weight;
            mined.offer(receipt.clone(), &facts, tau).unwrap();
            receipts.push(receipt);
        }
    }
    RanSession {
        open,
        mined,
        served,
        receipts,
    }
}

/// The supplier's signed claim over what it mined.
pub fn claim(ran: &RanSession, supplier: &Keypair) -> SignedClaim {
    let root = ran.mined.root().unwrap();
    Signed::sign(
        Claim {
            version: PROTOCOL_VERSION,
            open: ran.open.clone(),
            root: root.hash,
            sum: root.sum,
            count: root.count,
        },
        supplier,
    )
}
