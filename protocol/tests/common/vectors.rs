//! The golden messages: fixed inputs, so their encodings never change by accident.
#![allow(dead_code)]

use relaymesh_protocol::identity::signed::Signed;
use relaymesh_protocol::messages::capability::{CapabilityAd, ModelOffer, OfferDetails};
use relaymesh_protocol::messages::credit::CreditSlot;
use relaymesh_protocol::messages::equivocation::EquivocationEvidence;
use relaymesh_protocol::messages::infer::{
    Embedding, FrameBody, InferFrame, InferPayload, InferRequest, OutputFormat, PromptBody, Refuse,
    RefuseCode, TokenChoice, TokenLogprobs, Turn, TurnRole,
};
use relaymesh_protocol::messages::ledger::{LedgerBody, LedgerMessage};
use relaymesh_protocol::messages::membership::{
    Credential, Hello, Holder, Invite, Revocation, Verdict, ROLE_BOTH,
};
use relaymesh_protocol::messages::transfer::Transfer;
use relaymesh_protocol::metering::compute_units::CuFormula;
use relaymesh_protocol::settlement::proof::{sign_reveal, verify_proof};
use relaymesh_protocol::wire::WireMessage;
use relaymesh_protocol::{BoundedString, BoundedVec, Keypair, Signer, PROTOCOL_VERSION};

use crate::common::*;

/// Decodes golden bytes and checks value, re-encoding and signatures.
pub type Check = Box<dyn Fn(&[u8]) -> Result<(), String>>;

/// One golden message: file stem, canonical bytes, and a check of its signatures.
pub struct Golden {
    pub file: String,
    pub bytes: Vec<u8>,
    pub decode_and_verify: Check,
}

fn golden<T: WireMessage + PartialEq + std::fmt::Debug + 'static>(
    variant: Option<&str>,
    value: T,
    verify: impl Fn(&T) -> bool + 'static,
) -> Golden {
    let bytes = value.encode().expect("golden values fit their limits");
    let file = match variant {
        Some(v) => format!("{}.{v}", T::NAME),
        None => T::NAME.to_string(),
    };
    Golden {
        file,
        bytes,
        decode_and_verify: Box::new(move |bytes| {
            let decoded = T::decode(bytes).map_err(|e| e.to_string())?;
            if decoded != value {
                return Err("decodes to a different value".into());
            }
            if decoded.encode().unwrap() != bytes {
                return Err("does not re-encode to the same bytes".into());
            }
            if !verify(&decoded) {
                return Err("signature does not verify".into());
            }
            Ok(())
        }),
    }
}

/// All golden messages.
pub fn all() -> Vec<Golden> {
    let v = relaymesh_protocol::Ed25519Verifier;
    let (app, supplier, source) = (key(1), key(2), key(3));
    let params = params(&[(&app, 1_000_000)]);
    let manifest = manifest(&source, 50_000);
    let o = open(SessionTerms {
        params: &params,
        app: &app,
        supplier: &supplier,
        manifest: Some(manifest.clone()),
        tau: 300,
        price: 2,
        start_ms: 1_750_000_000_000,
        nonce: 1,
        escrow: CreditSlot::new(0, 500_000),
    });
    let proposal = Signed::sign(o.body.clone(), &app);
    let ran = run_session(o.clone(), &app, 2, 6, 40);
    let claim = claim(&ran, &supplier);
    let root = ran.mined.root().unwrap();
    let private = private_params();
    let owner = key(7);
    let (po, po2, po3) = (owner.public_key(), owner.public_key(), owner.public_key());
    let invite = invite(Some(&supplier), 1_750_000_300_000);
    let token = self::token(1_750_000_300_000);
    let revocation = Signed::sign(
        Revocation {
            version: PROTOCOL_VERSION,
            mesh_id: private.mesh_id(),
            owner: owner.public_key(),
            seq: 2,
            invites: BoundedVec::try_from_vec(vec![relaymesh_protocol::Digest([9; 32])]).unwrap(),
            peers: BoundedVec::try_from_vec(vec![app.public_key()]).unwrap(),
        },
        &owner,
    );
    let reveal = sign_reveal(o.session_key(), root.hash, secret(1), &app);
    let sampled = ran
        .mined
        .sampled_proof(claim.id(), reveal.clone(), params.proof_samples)
        .unwrap();
    let full = ran.mined.full_reveal(claim.id()).unwrap();
    let mut other = claim.body.clone();
    other.sum += 1;
    let evidence =
        EquivocationEvidence::new(claim.clone(), Signed::sign(other, &supplier)).unwrap();
    let receipt = ran.receipts[0].clone();
    let ad = Signed::sign(
        CapabilityAd {
            version: PROTOCOL_VERSION,
            mesh_id: params.mesh_id(),
            supplier: supplier.public_key(),
            seq: 7,
            issued_ms: 1_750_000_000_000,
            expires_ms: 1_750_000_300_000,
            models: BoundedVec::try_from_vec(vec![ModelOffer {
                name: BoundedString::new("smollm2").unwrap(),
                gguf_digest: Some(manifest.body.gguf_digest),
                manifest: Some(manifest.clone()),
                context_length: 8192,
                free_slots: 3,
                total_slots: 4,
                tokens_per_sec_milli: 28_500,
                ttft_ms: 120,
                price_per_cu: 2,
                cu: CuFormula::default(),
                tau: 300,
                max_token_bytes: 48,
                details: OfferDetails::new("llama", "135M", "Q4_1"),
                embedding_dims: Some(576),
            }])
            .unwrap(),
        },
        &supplier,
    );
    let transfer = Signed::sign(
        Transfer {
            version: PROTOCOL_VERSION,
            mesh_id: params.mesh_id(),
            from: app.public_key(),
            to: source.public_key(),
            amount: 12_345,
            epoch: 3,
            slot_start: 500_000,
        },
        &app,
    );
    let payload = InferPayload {
        model: BoundedString::new("smollm2").unwrap(),
        prompt: PromptBody::Chat(
            BoundedVec::try_from_vec(vec![Turn {
                role: TurnRole::User,
                content: BoundedString::new("What is the capital of France?").unwrap(),
            }])
            .unwrap(),
        ),
        temperature_milli: Some(0),
        top_p_micro: None,
        top_k: Some(40),
        seed: Some(7),
        max_tokens: 64,
        stop: BoundedVec::try_from_vec(vec![BoundedString::new("\n\n").unwrap()]).unwrap(),
        format: Some(OutputFormat::JsonSchema(
            BoundedString::new(r#"{"type":"object","properties":{"city":{"type":"string"}}}"#)
                .unwrap(),
        )),
        logprobs: Some(2),
    };
    let frame_request = InferFrame::new(FrameBody::Request(InferRequest {
        request: receipt.request.clone(),
        payload,
    }));
    let frame_token = InferFrame::new(FrameBody::Token(BoundedString::new(" Paris").unwrap()));
    // Version 6: an embedding request's payload and one of its vectors.
    let frame_embed = InferFrame::new(FrameBody::Request(InferRequest {
        request: receipt.request.clone(),
        payload: InferPayload::embed(
            BoundedString::new("smollm2").unwrap(),
            BoundedVec::try_from_vec(vec![BoundedString::new("Paris").unwrap()]).unwrap(),
        ),
    }));
    let frame_vector = InferFrame::new(FrameBody::Embedding(
        Embedding::new(&[0.6, -0.8, 0.0]).unwrap(),
    ));
    // Version 7: one token's log probability and two alternatives.
    let frame_logprobs = InferFrame::new(FrameBody::Logprobs(
        BoundedVec::try_from_vec(vec![TokenLogprobs {
            chosen: TokenChoice::new(b" Paris", -0.25),
            top: BoundedVec::try_from_vec(vec![
                TokenChoice::new(b" Paris", -0.25),
                TokenChoice::new(b" Lyon", -2.5),
            ])
            .unwrap(),
        }])
        .unwrap(),
    ));
    let frame_refuse = InferFrame::new(FrameBody::Refuse(Refuse {
        code: RefuseCode::Busy,
        message: BoundedString::new("all 1 slots are busy").unwrap(),
        retry_after_ms: 2000,
    }));
    let frame_ack = InferFrame::new(FrameBody::Ack(receipt.ack.clone()));
    let frame_resume = InferFrame::new(FrameBody::Resume(o.clone()));
    let (pa4, ps4) = (app.public_key(), supplier.public_key());
    let pa6 = app.public_key();
    let (pa, ps, pso) = (app.public_key(), supplier.public_key(), source.public_key());
    let (c1, c2, p1, p2, p3, p4) = (
        claim.clone(),
        claim.clone(),
        params.clone(),
        params.clone(),
        params.clone(),
        params.clone(),
    );
    let (p5, mesh_id) = (params.clone(), params.mesh_id());
    let (pa2, pa3) = (pa, pa);
    let (pa5, ps5) = (pa, ps);
    vec![
        golden(Some("request"), frame_request, move |f| match &f.body {
            FrameBody::Request(r) => r.request.verify(&pa2, &v).is_ok(),
            _ => false,
        }),
        golden(Some("ack"), frame_ack, move |f| match &f.body {
            FrameBody::Ack(a) => a.verify(&pa3, &v).is_ok(),
            _ => false,
        }),
        golden(Some("token"), frame_token, |_| true),
        golden(
            Some("embed"),
            frame_embed,
            |f| matches!(&f.body, FrameBody::Request(r) if r.payload.embedding().is_some_and(|e| e.is_ok())),
        ),
        golden(Some("embedding"), frame_vector, |f| match &f.body {
            FrameBody::Embedding(e) => e.values() == [0.6, -0.8, 0.0],
            _ => false,
        }),
        golden(Some("logprobs"), frame_logprobs, |f| match &f.body {
            FrameBody::Logprobs(l) => {
                l[0].chosen.logprob() == Some(-0.25) && l[0].top[1].bytes.as_slice() == b" Lyon"
            }
            _ => false,
        }),
        golden(Some("resume"), frame_resume, move |f| match &f.body {
            FrameBody::Resume(s) => s.body.app == pa4 && s.body.supplier == ps4,
            _ => false,
        }),
        golden(Some("refuse"), frame_refuse, |_| true),
        golden(None, manifest, move |m| m.verify(&pso, &v).is_ok()),
        golden(None, ad, move |a| a.verify(&ps, &v).is_ok()),
        golden(
            Some("withdraw"),
            LedgerMessage::new(LedgerBody::Withdraw(proposal.clone())),
            move |m| matches!(&m.body, LedgerBody::Withdraw(p) if p.verify(&pa6, &v).is_ok()),
        ),
        golden(None, proposal, move |p| p.verify(&pa, &v).is_ok()),
        golden(
            Some("open"),
            LedgerMessage::new(LedgerBody::Open(o.clone())),
            move |m| matches!(&m.body, LedgerBody::Open(o) if o.validate(&p4, &v).is_ok()),
        ),
        golden(None, o, move |o| o.validate(&p1, &v).is_ok()),
        golden(None, receipt.request, move |r| r.verify(&pa, &v).is_ok()),
        golden(None, receipt.ack, move |a| a.verify(&pa, &v).is_ok()),
        golden(None, claim.clone(), move |c| c.verify(&ps, &v).is_ok()),
        golden(None, reveal.clone(), move |r| r.verify(&pa, &v).is_ok()),
        golden(Some("sampled"), sampled, move |p| {
            verify_proof(&c1, p, &p2, &v).is_ok()
        }),
        golden(Some("full"), full, move |p| {
            verify_proof(&c2, p, &p3, &v).is_ok()
        }),
        golden(
            Some("claim"),
            LedgerMessage::new(LedgerBody::Claim(claim.clone())),
            move |m| matches!(&m.body, LedgerBody::Claim(c) if c.verify(&ps5, &v).is_ok()),
        ),
        golden(
            Some("reveal"),
            LedgerMessage::new(LedgerBody::Reveal(reveal.clone())),
            move |m| matches!(&m.body, LedgerBody::Reveal(r) if r.verify(&pa5, &v).is_ok()),
        ),
        golden(
            Some("transfer"),
            LedgerMessage::new(LedgerBody::Transfer(transfer.clone())),
            move |m| matches!(&m.body, LedgerBody::Transfer(t) if t.verify(&pa5, &v).is_ok()),
        ),
        golden(None, evidence, move |e| e.verify(&p5, &mesh_id, &v).is_ok()),
        golden(None, transfer, move |t| t.verify(&pa, &v).is_ok()),
        golden(None, params_for_vectors(), |p| p.validate().is_ok()),
        golden(None, invite.clone(), move |i| i.verify(&po, &v).is_ok()),
        golden(Some("token"), token.invite.clone(), move |i| {
            i.verify(&po2, &v).is_ok()
        }),
        golden(None, revocation.clone(), move |r| {
            r.verify(&po3, &v).is_ok()
        }),
        golden(
            None,
            Hello {
                version: PROTOCOL_VERSION,
                mesh_id: private.mesh_id(),
                invite: Some(token.invite.clone()),
                proof: token.proof(supplier.public_key()),
                revocations: BoundedVec::try_from_vec(vec![revocation]).unwrap(),
            },
            |_| true,
        ),
        golden(None, Verdict::admitted(), |_| true),
        golden(
            Some("refused"),
            Verdict::refused("the invite expired"),
            |_| true,
        ),
    ]
}

/// A private mesh's parameters: those of the vectors with one owner, `key(7)`.
pub fn private_params() -> relaymesh_protocol::params::MeshParams {
    let mut p = params_for_vectors();
    p.owners = BoundedVec::try_from_vec(vec![key(7).public_key()]).unwrap();
    p
}

/// The secret of the vectors' invite token.
pub const TOKEN_SECRET: [u8; 32] = [11; 32];

/// An invite to the private mesh for `holder` (the token of [`TOKEN_SECRET`] if `None`).
pub fn invite(holder: Option<&Keypair>, expires_ms: u64) -> Signed<Invite> {
    Signed::sign(
        Invite {
            version: PROTOCOL_VERSION,
            mesh_id: private_params().mesh_id(),
            id: relaymesh_protocol::Digest([9; 32]),
            owner: key(7).public_key(),
            holder: match holder {
                Some(k) => Holder::Peer(k.public_key()),
                None => Holder::Token(Keypair::from_secret(TOKEN_SECRET).public_key()),
            },
            role: ROLE_BOTH,
            expires_ms,
        },
        &key(7),
    )
}

/// The token credential of [`invite`]`(None, …)`.
pub fn token(expires_ms: u64) -> Credential {
    Credential {
        invite: invite(None, expires_ms),
        token_secret: Some(TOKEN_SECRET),
    }
}

fn params_for_vectors() -> relaymesh_protocol::params::MeshParams {
    // Valid as a mesh file would be: sessions fit before their epoch freezes.
    let mut p = params(&[(&key(1), 1_000_000), (&key(4), 5)]);
    p.freeze_horizon_epochs = 12;
    p.max_session_ms = 60_000;
    p.max_clock_skew_ms = 10_000;
    p
}

/// The golden encodings of the message type with wire name `name`: the fuzz corpus.
pub fn corpus(all: &[Golden], name: &str) -> Vec<Vec<u8>> {
    all.iter()
        .filter(|g| g.file.split('.').next() == Some(name))
        .map(|g| g.bytes.clone())
        .collect()
}
