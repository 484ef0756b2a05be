//! An app that speaks the inference stream protocol by hand, frame by frame, following
//! no gateway's rules: a bootstrap node, a supplier of SmolLM2 with a data dir, and a
//! light node whose streams the test drives.

use std::time::Duration;

use futures::io::{ReadHalf, WriteHalf};
use futures::AsyncReadExt;
use libp2p::Stream;
use relaymesh::Node;
use relaymesh_node::infer::codec::{read_frame, write_frame};
use relaymesh_protocol::identity::signed::Signed;
use relaymesh_protocol::messages::capability::ModelOffer;
use relaymesh_protocol::messages::infer::{FrameBody, InferPayload};
use relaymesh_protocol::messages::session::{SessionOpen, SignedSessionOpen};
use relaymesh_protocol::metering::app::RequestTerms;
use relaymesh_protocol::params::MeshParams;
use relaymesh_protocol::{Digest, Keypair, PublicKey, Signer};

use super::{address, wait_for};

/// The two halves of an inference stream.
pub type Halves = (ReadHalf<Stream>, WriteHalf<Stream>);

/// A mesh of a bootstrap node, one supplier and a light node with an API (on an
/// OS-chosen port) to open streams from, or to send requests to as a gateway.
pub struct RawMesh {
    pub boot: Node,
    pub supplier: Node,
    pub app_node: Node,
    pub params: MeshParams,
    /// The supplier's key and its ad's offer of SmolLM2.
    pub supplier_key: PublicKey,
    pub offer: ModelOffer,
    _dir: tempfile::TempDir,
}

impl RawMesh {
    /// Starts the mesh `mesh` and waits until the light node knows the supplier's ad
    /// and address.
    pub async fn start(mesh: &str) -> Self {
        let params = relaymesh_node::config::named_mesh(mesh);
        let boot = super::bootstrap(mesh).await;
        let boot_addr = address(&boot, "quic").await;
        let dir = tempfile::tempdir().unwrap();
        let supplier = super::data_supplier(mesh, &boot_addr, dir.path()).await;
        let app_node = super::mesh_gateway(mesh, &boot_addr).await;
        let (supplier_key, offer) =
            wait_for("the supplier's ad", Duration::from_secs(30), || async {
                app_node
                    .handle()
                    .offers("smollm2")
                    .await
                    .ok()?
                    .into_iter()
                    .next()
            })
            .await;
        // As the gateway does: the ad can come (synced from the bootstrap node) before
        // any address of its supplier, which the node then finds through the DHT.
        app_node
            .handle()
            .locate(supplier.handle().peer_id())
            .await
            .unwrap();
        Self {
            boot,
            supplier,
            app_node,
            params,
            supplier_key,
            offer,
            _dir: dir,
        }
    }

    /// A new inference stream to the supplier.
    pub async fn stream(&self) -> Halves {
        let protocol = relaymesh_node::mesh::names::infer_protocol(&self.params.mesh_id());
        self.app_node
            .handle()
            .streams()
            .open_stream(self.supplier.handle().peer_id(), protocol)
            .await
            .unwrap()
            .split()
    }

    /// A session `app` proposes on the offer's terms, countersigned by the supplier on
    /// a new stream, which is handed back for the request.
    pub async fn session(&self, app: &Keypair) -> (SignedSessionOpen, Halves) {
        let (mut r, mut w) = self.stream().await;
        let offer = &self.offer;
        let terms = SessionOpen {
            version: relaymesh_protocol::PROTOCOL_VERSION,
            mesh_id: self.params.mesh_id(),
            app: app.public_key(),
            supplier: self.supplier_key,
            model_digest: offer.gguf_digest.unwrap(),
            manifest: None,
            cu: offer.cu,
            price_per_cu: offer.price_per_cu,
            tau: offer.tau,
            max_token_bytes: offer.max_token_bytes,
            escrow: Default::default(),
            start_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64,
            max_duration_ms: self.params.max_session_ms,
            reveal_commitment: Digest([1; 32]),
            nonce: 1,
        };
        write_frame(&mut w, FrameBody::Propose(Signed::sign(terms, app)))
            .await
            .unwrap();
        let FrameBody::Accept(session) = read_frame(&mut r).await.unwrap().body else {
            panic!("the session was not accepted")
        };
        (session, (r, w))
    }

    /// The terms of request `id` of `session` for `payload`: at most `max_output_bytes`
    /// paid for, an ack chain of `max_acks` links.
    pub fn request_terms(
        session: &SignedSessionOpen,
        id: u64,
        payload: &InferPayload,
        max_output_bytes: u32,
        max_acks: u16,
    ) -> RequestTerms {
        RequestTerms {
            session_key: session.session_key(),
            request_id: id,
            prompt_digest: payload.digest(),
            prompt_bytes: payload.prompt_bytes() as u32,
            max_output_bytes,
            max_acks,
        }
    }

    /// Stops every node.
    pub async fn shutdown(self) {
        self.app_node.shutdown().await;
        self.supplier.shutdown().await;
        self.boot.shutdown().await;
    }
}
