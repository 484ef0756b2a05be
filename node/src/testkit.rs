//! Sessions made up for tests and benchmarks (not part of the node's API).

use relaymesh_protocol::identity::signed::Signed;
use relaymesh_protocol::messages::credit::CreditSlot;
use relaymesh_protocol::messages::reveal::commitment;
use relaymesh_protocol::messages::session::{SessionOpen, SignedSessionOpen};
use relaymesh_protocol::params::MeshParams;
use relaymesh_protocol::{Digest, Keypair, Signer};

/// Escrow of a test session in a mesh with credit: session `nonce` takes slot
/// `[nonce × ESCROW, (nonce + 1) × ESCROW)` of its app's credit line.
pub const ESCROW: u64 = 1_000_000;

/// Terms of a session between `app` and `supplier` at price 1 and threshold `tau`,
/// starting at `start_ms` for the mesh's longest session, with the escrow slot of
/// `nonce` (see [`ESCROW`]; none in a mesh without credit), countersigned with the
/// supplier's mining secret; the app's secret `r` is derived from `nonce` and returned
/// beside them.
pub fn session(
    params: &MeshParams,
    app: &Keypair,
    supplier: &Keypair,
    tau: u64,
    start_ms: u64,
    nonce: u64,
) -> (SignedSessionOpen, Digest) {
    let secret = Digest(*blake3::hash(&nonce.to_be_bytes()).as_bytes());
    let terms = SessionOpen {
        version: relaymesh_protocol::PROTOCOL_VERSION,
        mesh_id: params.mesh_id(),
        app: app.public_key(),
        supplier: supplier.public_key(),
        model_digest: Digest([7; 32]),
        manifest: None,
        cu: Default::default(),
        price_per_cu: 1,
        tau,
        max_token_bytes: 64.min(params.max_token_bytes),
        escrow: if params.has_credit() {
            CreditSlot::new(nonce * ESCROW, ESCROW)
        } else {
            CreditSlot::default()
        },
        start_ms,
        max_duration_ms: params.max_session_ms,
        reveal_commitment: commitment(&secret),
        nonce,
    };
    let mining = terms.mining_secret(supplier);
    (
        Signed::sign(terms, app).countersign(supplier, &mining),
        secret,
    )
}

/// Opens the sled database in `dir`, waiting while a handle of it closed just before in
/// this process still holds its lock (see [`crate::store::open_db`]).
pub fn open_db(dir: &std::path::Path) -> sled::Db {
    crate::store::open_db(&sled::Config::new().path(dir)).expect("open the test database")
}

/// Terms with fixture values (no credit), for tests of one rule.
pub fn terms_for_tests() -> SessionOpen {
    let params = crate::config::named_mesh("testkit");
    let (app, supplier) = (Keypair::from_secret([1; 32]), Keypair::from_secret([2; 32]));
    session(&params, &app, &supplier, params.tau_min, 0, 0)
        .0
        .body
}
