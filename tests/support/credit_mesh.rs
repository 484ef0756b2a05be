//! A mesh with credit for tests of metering: its parameters, its nodes, and an app
//! that speaks the inference protocol itself.

use std::time::Duration;

use futures::io::{ReadHalf, WriteHalf};
use futures::AsyncReadExt;
use relaymesh::{NodeBuilder, Role};
use relaymesh_node::backend::embedded::{EmbeddedBackend, EmbeddedOptions};
use relaymesh_node::backend::{Models, ServedModel, SharedBackend};
use relaymesh_node::infer::codec::{read_frame, write_frame};
use relaymesh_protocol::identity::signed::Signed;
use relaymesh_protocol::messages::capability::ModelOffer;
use relaymesh_protocol::messages::credit::CreditSlot;
use relaymesh_protocol::messages::infer::{FrameBody, InferRequest, Refuse};
use relaymesh_protocol::messages::session::{SessionOpen, SignedSessionOpen};
use relaymesh_protocol::metering::app::{RequestAcker, RequestTerms};
use relaymesh_protocol::metering::flow::AppFlow;
use relaymesh_protocol::params::{Allocation, MeshParams};
use relaymesh_protocol::{Digest, Keypair, PublicKey, Signer};

use super::{address, quic, tcp};

/// A mesh with short epochs and sessions, and a τ floor high enough that threshold
/// mining samples real acks (about 250 CUs each) instead of mining them all.
pub fn params(name: &str, genesis: Vec<Allocation>) -> MeshParams {
    let mut p = MeshParams::new(name, genesis).unwrap();
    p.epoch_ms = 5_000;
    p.max_session_ms = 10_000;
    p.tau_min = 500;
    // No epoch freezes while a test runs (at 12 epochs a slow run froze the first
    // claims before the test read them): the ledger reports unfrozen epochs' claims.
    p.freeze_horizon_epochs = 120;
    p
}

/// A supplier of mesh `p` serving `model` with one slot (its data in `dir`).
pub async fn supplier(
    p: &MeshParams,
    boot: &libp2p::Multiaddr,
    dir: &std::path::Path,
    model: &std::path::Path,
) -> relaymesh::Node {
    let options = EmbeddedOptions {
        slots: 1,
        queue: 4,
        default_max_tokens: 64,
        progress: false,
        ..Default::default()
    };
    let backend = EmbeddedBackend::load("smollm2", model, &options).unwrap();
    supplier_with(p, boot, dir, std::sync::Arc::new(backend)).await
}

/// A supplier of mesh `p` serving `backend` at price 1 (its data in `dir`).
pub async fn supplier_with(
    p: &MeshParams,
    boot: &libp2p::Multiaddr,
    dir: &std::path::Path,
    backend: SharedBackend,
) -> relaymesh::Node {
    let mut models = Models::default();
    models.insert(ServedModel::new(backend, 1)).unwrap();
    let mut b = NodeBuilder::full()
        .mesh(p.clone())
        .data_dir(dir)
        .listen(vec![quic(), tcp()])
        .bootstrap(boot.clone());
    b.config_mut().models = std::sync::Arc::new(models);
    b.start().await.unwrap()
}

/// A bootstrap node of mesh `p` (its data in `dir`, if given) and its QUIC address.
pub async fn bootstrap(
    p: &MeshParams,
    dir: Option<std::path::PathBuf>,
) -> (relaymesh::Node, libp2p::Multiaddr) {
    let mut b = NodeBuilder::full()
        .mesh(p.clone())
        .listen(vec![quic(), tcp()]);
    if let Some(dir) = dir {
        b = b.data_dir(dir);
    }
    b.config_mut().role = Role::Bootstrap;
    let boot = b.start().await.unwrap();
    let addr = address(&boot, "quic").await;
    (boot, addr)
}

/// A node of mesh `p` on loopback (QUIC and TCP), joined through `boot`.
pub fn joined(b: NodeBuilder, p: &MeshParams, boot: &libp2p::Multiaddr) -> NodeBuilder {
    b.mesh(p.clone())
        .listen(vec![quic(), tcp()])
        .bootstrap(boot.clone())
}

/// Request `id` of `session` ("Once upon a time", up to 400 tokens), and the app's
/// flow that acks its tokens.
pub fn request(
    session: &SignedSessionOpen,
    id: u64,
    app: &Keypair,
    p: &MeshParams,
) -> (FrameBody, AppFlow) {
    let payload = relaymesh_node::infer::payload(
        "smollm2",
        &relaymesh_node::backend::GenRequest {
            prompt: relaymesh_node::backend::Prompt::Text("Once upon a time".into()),
            sampling: relaymesh_node::backend::Sampling {
                temperature: Some(0.0),
                max_tokens: Some(400),
                ..Default::default()
            },
            tenant: relaymesh_node::backend::Tenant::Local,
        },
    )
    .unwrap();
    let acker = RequestAcker::new(
        RequestTerms {
            session_key: session.session_key(),
            request_id: id,
            prompt_digest: payload.digest(),
            prompt_bytes: payload.prompt_bytes() as u32,
            max_output_bytes: 1 << 20,
            max_acks: 1024,
        },
        Digest([2 + id as u8; 32]),
        app,
    );
    let flow = AppFlow::new(acker, relaymesh_node::infer::window(p), &session.body);
    let request = flow.request().clone();
    (FrameBody::Request(InferRequest { request, payload }), flow)
}

/// Sends request `id` of `session` on a stream (after its `Propose` or `Resume`) and
/// acks everything, as an honest app would, until the stream ends: the tokens it got
/// and the refusal that ended it, if one did.
pub async fn ask_and_ack<R, W>(
    mut r: R,
    mut w: W,
    session: &SignedSessionOpen,
    id: u64,
    app: &Keypair,
    p: &MeshParams,
) -> (u32, Option<Refuse>)
where
    R: futures::AsyncRead + Unpin,
    W: futures::AsyncWrite + Unpin,
{
    let (frame, mut flow) = request(session, id, app, p);
    // A supplier that refused the stream at its first frame has stopped reading it;
    // its refusal is still there to read.
    let _ = write_frame(&mut w, frame).await;
    let mut tokens = 0u32;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(60), read_frame(&mut r))
            .await
            .expect("the supplier goes on or ends the stream")
            .unwrap();
        match frame.body {
            FrameBody::Token(t) => {
                tokens += 1;
                if let Some(ack) = flow.on_token(t.as_str(), app).unwrap() {
                    write_frame(&mut w, FrameBody::Ack(ack)).await.unwrap();
                }
            }
            FrameBody::Refuse(refusal) => return (tokens, Some(refusal)),
            FrameBody::Done(_) => return (tokens, None),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A stream to `supplier` on mesh `p`'s inference protocol, as its two halves.
pub async fn stream(
    node: &relaymesh::Node,
    p: &MeshParams,
    supplier: PublicKey,
) -> (ReadHalf<libp2p::Stream>, WriteHalf<libp2p::Stream>) {
    let peer = relaymesh_node::mesh::peer_id_of_key(&supplier);
    node.handle().locate(peer).await.unwrap();
    let protocol = relaymesh_node::mesh::names::infer_protocol(&p.mesh_id());
    let stream = node
        .handle()
        .streams()
        .open_stream(peer, protocol)
        .await
        .unwrap();
    stream.split()
}

/// Proposes terms for `offer` of `supplier` on `escrow` (signed by `app`, `nonce` to
/// tell sessions apart) on a stream to it: the first frame answering.
pub async fn propose(
    (r, w): &mut (ReadHalf<libp2p::Stream>, WriteHalf<libp2p::Stream>),
    p: &MeshParams,
    app: &Keypair,
    (supplier, offer): &(PublicKey, ModelOffer),
    escrow: CreditSlot,
    nonce: u64,
) -> FrameBody {
    let terms = SessionOpen {
        version: relaymesh_protocol::PROTOCOL_VERSION,
        mesh_id: p.mesh_id(),
        app: app.public_key(),
        supplier: *supplier,
        model_digest: offer.gguf_digest.unwrap(),
        manifest: offer.manifest.clone(),
        cu: offer.cu,
        price_per_cu: offer.price_per_cu,
        tau: offer.tau,
        max_token_bytes: offer.max_token_bytes,
        escrow,
        start_ms: now_ms(),
        max_duration_ms: p.max_session_ms,
        reveal_commitment: Digest([1; 32]),
        nonce,
    };
    write_frame(w, FrameBody::Propose(Signed::sign(terms, app)))
        .await
        .unwrap();
    read_frame(r).await.unwrap().body
}

/// A light node of mesh `p` once it holds the ads of `suppliers` suppliers of the
/// test model, and their offers.
pub async fn app_node(
    p: &MeshParams,
    boot: &libp2p::Multiaddr,
    suppliers: usize,
) -> (relaymesh::Node, Vec<(PublicKey, ModelOffer)>) {
    let node = joined(NodeBuilder::light(), p, boot).start().await.unwrap();
    let offers = super::wait_for("the suppliers' ads", Duration::from_secs(30), || async {
        let offers = node.handle().offers("smollm2").await.ok()?;
        (offers.len() == suppliers).then_some(offers)
    })
    .await;
    (node, offers)
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
