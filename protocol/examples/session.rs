//! One metered session from start to settlement, with the protocol crate alone:
//! `cargo run -p relaymesh-protocol --example session`
//!
//! An app and a supplier agree on terms, the app signs a request and acks the streamed
//! output, the supplier mines receipts into its sum tree and claims them, the app
//! reveals its secret, the supplier proves the claim, and a ledger settles it, paying
//! the model's Source its royalty.

use relaymesh_protocol::identity::signed::Signed;
use relaymesh_protocol::ledger::Ledger;
use relaymesh_protocol::messages::claim::Claim;
use relaymesh_protocol::messages::credit::CreditSlot;
use relaymesh_protocol::messages::manifest::ModelManifest;
use relaymesh_protocol::messages::reveal::commitment;
use relaymesh_protocol::messages::session::SessionOpen;
use relaymesh_protocol::metering::app::{RequestAcker, RequestTerms};
use relaymesh_protocol::metering::compute_units::CuFormula;
use relaymesh_protocol::params::{Allocation, MeshParams};
use relaymesh_protocol::settlement::proof::{sign_reveal, MinedSession};
use relaymesh_protocol::{BoundedString, Digest, Ed25519Verifier, Keypair, Signer};

fn main() {
    let verifier = Ed25519Verifier;
    // Keys would come from each node's data dir; fixed seeds keep the example repeatable.
    let (app, supplier, source) = (
        Keypair::from_secret([1; 32]),
        Keypair::from_secret([2; 32]),
        Keypair::from_secret([3; 32]),
    );
    let mut params = MeshParams::new(
        "example",
        vec![Allocation {
            account: app.public_key(),
            amount: 1_000_000,
        }],
    )
    .expect("valid parameters");
    params.tau_min = 1;
    println!("mesh {}", params.mesh_id());

    // The Source vouches for a GGUF file and takes a 5% royalty.
    let manifest = Signed::sign(
        ModelManifest {
            version: relaymesh_protocol::PROTOCOL_VERSION,
            name: BoundedString::new("SmolLM2-135M-Instruct").unwrap(),
            gguf_digest: Digest(*blake3::hash(b"the gguf file").as_bytes()),
            size_bytes: 98_000_000,
            licence: BoundedString::new("Apache-2.0").unwrap(),
            royalty_ppm: 50_000,
            source: source.public_key(),
        },
        &source,
    );

    // The app proposes terms with an escrow from its credit line, the supplier
    // countersigns them with a commitment to its secret mining key for the session.
    let secret = Digest(*blake3::hash(b"the app's secret r").as_bytes());
    let terms = SessionOpen {
        version: relaymesh_protocol::PROTOCOL_VERSION,
        mesh_id: params.mesh_id(),
        app: app.public_key(),
        supplier: supplier.public_key(),
        model_digest: manifest.body.gguf_digest,
        manifest: Some(manifest),
        cu: CuFormula::default(),
        price_per_cu: 2,
        tau: 100,
        max_token_bytes: 64,
        escrow: CreditSlot::new(0, 100_000),
        start_ms: 1_750_000_000_000,
        max_duration_ms: 60_000,
        reveal_commitment: commitment(&secret),
        nonce: 1,
    };
    let mining_secret = terms.mining_secret(&supplier);
    let open = Signed::sign(terms, &app).countersign(&supplier, &mining_secret);
    open.validate(&params, &verifier).expect("valid terms");
    let key = open.session_key();
    println!(
        "session {key} between app {} and supplier {}",
        app.public_key().peer_id(),
        supplier.public_key().peer_id()
    );

    // Three requests; the supplier streams text and the app acks each increment.
    let mut mined = MinedSession::new(mining_secret);
    let mut served = 0;
    for request_id in 0..3 {
        let prompt = "What is the capital of France?";
        let mut acker = RequestAcker::new(
            RequestTerms {
                session_key: key,
                request_id,
                prompt_digest: Digest(*blake3::hash(prompt.as_bytes()).as_bytes()),
                prompt_bytes: prompt.len() as u32,
                max_output_bytes: 4096,
                max_acks: 64,
            },
            Digest(*blake3::hash(&request_id.to_be_bytes()).as_bytes()),
            &app,
        );
        let mut previous_link = acker.request().body.ack_chain_head;
        // Each ack covers K tokens (here K = 3, a few words each) and names them, the
        // last one the rest.
        let increments = ["The capital ", "of France ", "is Paris."];
        for (i, text) in increments.iter().enumerate() {
            let ack = acker
                .ack(text.as_bytes(), 3, i + 1 == increments.len(), &app)
                .expect("within bounds");
            ack.verify(&app.public_key(), &verifier)
                .expect("app signed");
            let receipt = acker.receipt(ack);
            let facts = receipt
                .check_next(&key, &open.body, &previous_link)
                .expect("valid receipt");
            previous_link = receipt.ack.body.chain_secret;
            served += facts.weight;
            let paid = mined.offer(receipt, &facts, open.body.tau).unwrap();
            println!(
                "  request {request_id} ack {}: {:>3} CUs {}",
                i + 1,
                facts.weight,
                paid.map_or("".into(), |p| format!("mined, pays {p}"))
            );
        }
    }

    // The supplier claims, the app reveals, the supplier proves.
    let root = mined.root().unwrap();
    let claim = Signed::sign(
        Claim {
            version: relaymesh_protocol::PROTOCOL_VERSION,
            open: open.clone(),
            root: root.hash,
            sum: root.sum,
            count: root.count,
        },
        &supplier,
    );
    let reveal = sign_reveal(key, root.hash, secret, &app);
    let proof = mined
        .sampled_proof(claim.id(), reveal, params.proof_samples)
        .unwrap();
    println!(
        "served {served} CUs; claimed {} CUs in {} mined receipts",
        root.sum, root.count
    );

    // Any full node settles it.
    let mut ledger = Ledger::new(params);
    ledger.apply_claim(claim, &verifier).expect("valid claim");
    ledger.apply_proof(&proof, &verifier).expect("valid proof");
    for (who, k) in [("app", &app), ("supplier", &supplier), ("source", &source)] {
        let a = ledger.account(&k.public_key());
        println!(
            "{who:>8}: balance {:>9} earned {:>6} spent {:>6}",
            a.balance, a.earned, a.spent
        );
    }
}
