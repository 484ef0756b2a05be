//! Inference over the mesh at the protocol's edges: apps speaking the inference stream
//! protocol by hand to suppliers serving SmolLM2 (acks withheld, forged, weightless;
//! embeddings and the ack that pays for them), real swarms on loopback. A client's
//! view of answers through a gateway is in `mesh_answers.rs`.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::raw_app::RawMesh;
use support::wait_for;

const MESH: &str = "mesh-infer-tests";

/// An app speaking the inference protocol by hand: it never acks, then sends a forged ack.
#[tokio::test(flavor = "multi_thread")]
async fn an_app_that_never_acks_gets_k_tokens_and_a_forged_ack_ends_the_stream() {
    use relaymesh_node::infer::codec::{read_frame, write_frame};
    use relaymesh_protocol::identity::signed::Signed;
    use relaymesh_protocol::messages::ack::Ack;
    use relaymesh_protocol::messages::infer::{FrameBody, InferRequest};
    use relaymesh_protocol::metering::app::RequestAcker;
    use relaymesh_protocol::{Digest, Keypair};

    let mesh = RawMesh::start("mesh-infer-window").await;
    let params = mesh.params.clone();
    let app = Keypair::generate(&mut rand_core::OsRng);
    let (session, (mut r, mut w)) = mesh.session(&app).await;
    let payload = story_payload(500);
    let mut acker = RequestAcker::new(
        RawMesh::request_terms(&session, 0, &payload, 1 << 20, 64),
        Digest([2; 32]),
        &app,
    );
    write_frame(
        &mut w,
        FrameBody::Request(InferRequest {
            request: acker.request().clone(),
            payload,
        }),
    )
    .await
    .unwrap();

    // Without acks the supplier stops at a stranger's window: one ack step, K tokens
    // (an app that has paid for two windows here would get W).
    // (Within the 5 s a supplier whose slots are all taken waits for an ack.)
    let mut tokens = Vec::new();
    while tokens.len() < params.ack_every_tokens as usize {
        let frame = tokio::time::timeout(Duration::from_secs(30), read_frame(&mut r))
            .await
            .expect("K tokens come")
            .unwrap();
        match frame.body {
            FrameBody::Token(t) => tokens.push(t.as_str().to_owned()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(1), read_frame(&mut r))
            .await
            .is_err(),
        "exactly K tokens, then a pause"
    );

    // An ack signed by someone else is refused and the supplier ends the stream.
    let text: String = tokens.concat();
    let genuine = acker
        .ack(text.as_bytes(), tokens.len() as u16, false, &app)
        .unwrap();
    let forged = Signed::<Ack>::sign(
        genuine.body.clone(),
        &Keypair::generate(&mut rand_core::OsRng),
    );
    write_frame(&mut w, FrameBody::Ack(forged)).await.unwrap();
    let after = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut r)).await;
    assert!(matches!(after, Ok(Err(_))), "the stream ends: {after:?}");

    // It owes the K tokens it left unacknowledged and, with nothing acknowledged, its
    // prompt: a stranger's allowance (2K) has no room for another window, so its next
    // request is refused (it was served while prompts under 8 KiB were read free).
    let short = story_payload(4);
    match first_answer(&mesh, &session, 1, 64, &app, &short).await {
        FrameBody::Refuse(refusal) => {
            assert!(refusal.message.as_str().contains("at risk"), "{refusal:?}")
        }
        other => panic!("served while it owes: {other:?}"),
    }
    mesh.shutdown().await;
}

/// A session goes on in new streams (`Resume`): a replayed request is refused, a
/// request whose ack chain is shorter than its tokens need is refused (found by review:
/// with none, the answer ended at once and the stream was held, nothing owed), a
/// request signed by another key is refused without using its id up (found by review:
/// anyone holding the gossiped session could burn its ids), and a new request id is
/// served.
#[tokio::test(flavor = "multi_thread")]
async fn a_resumed_session_refuses_replayed_short_and_foreign_requests() {
    use relaymesh_node::infer::codec::{read_frame, write_frame};
    use relaymesh_protocol::messages::infer::{FrameBody, InferRequest};
    use relaymesh_protocol::metering::app::RequestAcker;
    use relaymesh_protocol::metering::flow::AppFlow;
    use relaymesh_protocol::{Digest, Keypair};

    let mesh = RawMesh::start("mesh-infer-resume").await;
    let app = Keypair::generate(&mut rand_core::OsRng);
    let (session, (mut r, mut w)) = mesh.session(&app).await;
    // Request 0, answered and acknowledged in full.
    let short = story_payload(4);
    let acker = RequestAcker::new(
        RawMesh::request_terms(&session, 0, &short, 1 << 20, 64),
        Digest([2; 32]),
        &app,
    );
    let mut flow = AppFlow::new(
        acker,
        relaymesh_node::infer::window(&mesh.params),
        &session.body,
    );
    let request = InferRequest {
        request: flow.request().clone(),
        payload: short.clone(),
    };
    write_frame(&mut w, FrameBody::Request(request))
        .await
        .unwrap();
    loop {
        match read_frame(&mut r).await.unwrap().body {
            FrameBody::Token(t) => {
                if let Some(ack) = flow.on_token(t.as_str(), &app).unwrap() {
                    write_frame(&mut w, FrameBody::Ack(ack)).await.unwrap();
                }
            }
            FrameBody::Done(_) => {
                let last = flow.finish(&app).unwrap();
                write_frame(&mut w, FrameBody::Ack(last)).await.unwrap();
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let stranger = Keypair::generate(&mut rand_core::OsRng);
    for (id, max_acks, signer, refused) in [
        (0u64, 64, &app, Some("served already")),
        (1, 1, &app, Some("ack chain")),
        (2, 64, &stranger, Some("not signed by the session's app")),
        (2, 64, &app, None),
    ] {
        match (
            first_answer(&mesh, &session, id, max_acks, signer, &short).await,
            refused,
        ) {
            (FrameBody::Token(_), None) => {}
            (FrameBody::Refuse(refusal), Some(why)) => {
                assert!(refusal.message.as_str().contains(why), "{refusal:?}");
            }
            (other, _) => panic!("request {id}: unexpected {other:?}"),
        }
    }
    mesh.shutdown().await;
}

/// Request `id` of `session`, signed by `signer`, sent on a new stream (`Resume`): the
/// supplier's first frame.
async fn first_answer(
    mesh: &RawMesh,
    session: &relaymesh_protocol::messages::session::SignedSessionOpen,
    id: u64,
    max_acks: u16,
    signer: &relaymesh_protocol::Keypair,
    payload: &relaymesh_protocol::messages::infer::InferPayload,
) -> relaymesh_protocol::messages::infer::FrameBody {
    use relaymesh_node::infer::codec::{read_frame, write_frame};
    use relaymesh_protocol::messages::infer::{FrameBody, InferRequest};
    use relaymesh_protocol::metering::app::RequestAcker;
    use relaymesh_protocol::Digest;

    let (mut r, mut w) = mesh.stream().await;
    let request = RequestAcker::new(
        RawMesh::request_terms(session, id, payload, 1 << 20, max_acks),
        Digest([3; 32]),
        signer,
    );
    write_frame(&mut w, FrameBody::Resume(session.clone()))
        .await
        .unwrap();
    write_frame(
        &mut w,
        FrameBody::Request(InferRequest {
            request: request.request().clone(),
            payload: payload.clone(),
        }),
    )
    .await
    .unwrap();
    read_frame(&mut r).await.unwrap().body
}

/// Embeddings over the mesh (protocol version 6): a light gateway's `/v1/embeddings`
/// and `/api/embed` go to the supplier that advertises them, the vectors are its
/// engine's own, and the app's one last ack is the supplier's receipt for the inputs,
/// weighed at the session's embedding factor.
#[tokio::test(flavor = "multi_thread")]
async fn embeddings_come_from_a_supplier_whose_receipt_pays_for_the_inputs() {
    use relaymesh_node::backend::{Backend, Tenant};
    let mesh = RawMesh::start("mesh-embed-tests").await;
    let (supplier, gateway) = (&mesh.supplier, &mesh.app_node);
    let base = format!("http://{}", gateway.api_addr().unwrap());
    let client = reqwest::Client::new();
    // The offer says it embeds, and at what price routing compares.
    let rows = support::get_json(&format!("{base}/relaymesh/v1/models"))
        .await
        .expect("the models view");
    assert_eq!(rows[0]["embedding_dims"], 576, "{rows}");
    assert_eq!(rows[0]["list_price"], 1, "{rows}");
    let texts = [
        "The capital of France is Paris.",
        "Paris is in France.",
        "Bananas are yellow.",
    ];

    let r = client
        .post(format!("{base}/v1/embeddings"))
        .json(&json!({ "model": "smollm2", "input": texts, "encoding_format": "float" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let served_by = r.headers()["x-relaymesh-supplier"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(served_by, supplier.handle().peer_id().to_string());
    let v: Value = r.json().await.unwrap();
    let vectors: Vec<Vec<f32>> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| serde_json::from_value(d["embedding"].clone()).unwrap())
        .collect();
    // The supplier's engine's own vectors, as the same model makes them here.
    let local = support::smollm(1, 4)
        .embed(&texts.map(String::from), Tenant::Local)
        .await
        .unwrap();
    assert_eq!(vectors.len(), 3);
    for (mesh, here) in vectors.iter().zip(&local.vectors) {
        assert_eq!(mesh.len(), 576);
        let gap = mesh
            .iter()
            .zip(here)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(gap < 1e-4, "{gap}");
    }
    let input_bytes: usize = texts.iter().map(|t| t.len()).sum();
    let report = &v["usage"]["relaymesh"];
    assert_eq!(report["suppliers"], json!([served_by]), "{v}");
    assert_eq!(
        report["compute_units"],
        json!(input_bytes),
        "one CU an input byte"
    );

    // The supplier keeps the app's one ack as the request's receipt: it asks for no
    // output, and pays for the inputs.
    let stored = wait_for(
        "the embedding's receipt",
        Duration::from_secs(10),
        || async {
            let r = support::stored_receipts(supplier, MESH);
            (!r.is_empty()).then_some(r)
        },
    )
    .await;
    assert_eq!(stored.len(), 1);
    let receipt = &stored[0];
    assert!(receipt.request.body.is_embedding() && receipt.ack.body.last);
    assert_eq!(receipt.request.body.prompt_bytes as usize, input_bytes);
    assert_eq!((receipt.ack.body.index, receipt.ack.body.new_bytes), (1, 0));

    // Ollama's routes, through the same session.
    let r: Value = client
        .post(format!("{base}/api/embed"))
        .json(&json!({ "model": "smollm2", "input": texts }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let again: Vec<Vec<f32>> = serde_json::from_value(r["embeddings"].clone()).unwrap();
    assert_eq!(again, vectors, "the same inputs, the same vectors");
    assert_eq!(r["relaymesh"]["suppliers"], json!([served_by]));

    mesh.shutdown().await;
}

/// A stream whose every token was acknowledged ends a round trip or so after `Done`
/// when its last ack, which would pay for nothing, does not come (found by review: the
/// supplier waited 30 s for it, so an app held a stream 30 s for every K tokens paid).
#[tokio::test(flavor = "multi_thread")]
async fn a_last_ack_that_pays_for_nothing_is_not_waited_for() {
    use relaymesh_node::infer::codec::{read_frame, write_frame};
    use relaymesh_protocol::messages::infer::{FrameBody, InferRequest};
    use relaymesh_protocol::metering::app::RequestAcker;
    use relaymesh_protocol::{Digest, Keypair};

    let mesh = RawMesh::start("mesh-weightless-ack").await;
    let k = mesh.params.ack_every_tokens;
    let app = Keypair::generate(&mut rand_core::OsRng);
    let (session, (mut r, mut w)) = mesh.session(&app).await;
    // Exactly K tokens: one ack covers them all (and the prompt).
    let payload = story_payload(k);
    let mut acker = RequestAcker::new(
        RawMesh::request_terms(&session, 0, &payload, 1 << 20, 64),
        Digest([2; 32]),
        &app,
    );
    let request = acker.request().clone();
    write_frame(
        &mut w,
        FrameBody::Request(InferRequest { request, payload }),
    )
    .await
    .unwrap();
    let mut text = String::new();
    let mut tokens = 0u16;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(60), read_frame(&mut r))
            .await
            .expect("the answer goes on")
            .unwrap();
        match frame.body {
            FrameBody::Token(t) => {
                text.push_str(t.as_str());
                tokens += 1;
                if u32::from(tokens) == k {
                    let ack = acker.ack(text.as_bytes(), tokens, false, &app).unwrap();
                    write_frame(&mut w, FrameBody::Ack(ack)).await.unwrap();
                }
            }
            FrameBody::Done(_) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(u32::from(tokens), k, "an answer of K tokens");
    // The empty last ack is withheld: the supplier closes the stream well before its
    // 30 s frame timeout.
    let after = tokio::time::timeout(Duration::from_secs(15), read_frame(&mut r)).await;
    assert!(matches!(after, Ok(Err(_))), "the stream ends: {after:?}");
    mesh.shutdown().await;
}

/// An embedding request's vectors come only once the app's last ack has paid for its
/// inputs (found by review: sent first, an app took them and left owing a token per 64
/// bytes beyond 8 KiB), and a request that asks for no output must embed.
#[tokio::test(flavor = "multi_thread")]
async fn vectors_come_only_after_the_ack_that_pays_for_them() {
    use relaymesh_node::infer::codec::{read_frame, write_frame};
    use relaymesh_protocol::messages::infer::{FrameBody, InferRequest};
    use relaymesh_protocol::metering::app::RequestAcker;
    use relaymesh_protocol::{Digest, Keypair};

    let mesh = RawMesh::start("mesh-embed-order").await;
    let app = Keypair::generate(&mut rand_core::OsRng);
    let (session, (mut r, mut w)) = mesh.session(&app).await;
    let inputs = ["Paris".to_string(), "Bananas are yellow.".to_string()];
    let payload = relaymesh_node::infer::embed_payload("smollm2", &inputs).unwrap();
    // "Paris" is billed as 16 bytes: an input's forward pass costs at least that.
    assert_eq!(payload.prompt_bytes(), 16 + 19);
    let terms =
        |id, max_output_bytes| RawMesh::request_terms(&session, id, &payload, max_output_bytes, 2);
    let mut acker = RequestAcker::new(terms(0, 0), Digest([2; 32]), &app);
    let request = |acker: &RequestAcker| {
        FrameBody::Request(InferRequest {
            request: acker.request().clone(),
            payload: payload.clone(),
        })
    };
    write_frame(&mut w, request(&acker)).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(60), read_frame(&mut r))
        .await
        .expect("an answer")
        .unwrap();
    assert!(matches!(done.body, FrameBody::Done(_)), "{:?}", done.body);
    assert!(
        tokio::time::timeout(Duration::from_secs(2), read_frame(&mut r))
            .await
            .is_err(),
        "no vector before the ack"
    );
    let ack = acker.ack(b"", 0, true, &app).unwrap();
    write_frame(&mut w, FrameBody::Ack(ack)).await.unwrap();
    for _ in &inputs {
        match read_frame(&mut r).await.unwrap().body {
            FrameBody::Embedding(e) => assert_eq!(e.values().len(), 576),
            other => panic!("unexpected {other:?}"),
        }
    }

    // The same inputs on a request that asks for output are refused.
    let (mut r, mut w) = mesh.stream().await;
    write_frame(&mut w, FrameBody::Resume(session.clone()))
        .await
        .unwrap();
    let acker = RequestAcker::new(terms(1, 64), Digest([3; 32]), &app);
    write_frame(&mut w, request(&acker)).await.unwrap();
    match read_frame(&mut r).await.unwrap().body {
        FrameBody::Refuse(refusal) => {
            assert!(
                refusal.message.as_str().contains("no output"),
                "{refusal:?}"
            )
        }
        other => panic!("unexpected {other:?}"),
    }
    mesh.shutdown().await;
}

/// The payload of a greedy "Once upon a time" completion of up to `max` tokens.
fn story_payload(max: u32) -> relaymesh_protocol::messages::infer::InferPayload {
    relaymesh_node::infer::payload(
        "smollm2",
        &relaymesh_node::backend::GenRequest {
            prompt: relaymesh_node::backend::Prompt::Text("Once upon a time".into()),
            sampling: relaymesh_node::backend::Sampling {
                temperature: Some(0.0),
                max_tokens: Some(max),
                ..Default::default()
            },
            tenant: relaymesh_node::backend::Tenant::Local,
        },
    )
    .unwrap()
}
