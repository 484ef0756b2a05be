//! A private mesh's membership over the local API: `GET /relaymesh/v1/membership`
//! (this node's own admission and the revocation lists it enforces) and
//! `POST /relaymesh/v1/revocations` (an owner's new list, enforced and gossiped).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use relaymesh_protocol::messages::membership::SignedRevocation;
use relaymesh_protocol::wire::WireMessage;
use serde_json::json;

use super::{error, gone, ApiState};

/// One revocation list as the API shows it: readable fields and the signed bytes.
fn list_json(list: &SignedRevocation) -> serde_json::Value {
    json!({
        "owner": list.body.owner.peer_id(),
        "seq": list.body.seq,
        "invites": list.body.invites.iter().map(|i| i.to_hex()).collect::<Vec<_>>(),
        "peers": list.body.peers.iter().map(|p| p.peer_id()).collect::<Vec<_>>(),
        "signed": hex::encode(list.encode().unwrap_or_default()),
    })
}

/// This node's membership: `{"private": false}` in a public mesh.
pub(super) async fn membership(State(s): State<ApiState>) -> Response {
    let Some(membership) = s.node.membership() else {
        return Json(json!({ "private": false })).into_response();
    };
    let lists: Vec<_> = membership.revocations().iter().map(list_json).collect();
    Json(json!({
        "private": true,
        "own": crate::mesh::MemberRow::of(&membership.own()),
        "revocations": lists,
    }))
    .into_response()
}

/// `{"revocation": HEX}`: an owner's signed list.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    revocation: String,
}

/// Reads a revocation body; a 400's message when it is not one.
pub(crate) fn revocation_request(bytes: &[u8]) -> Result<SignedRevocation, String> {
    let body: RevokeBody = serde_json::from_slice(bytes)
        .map_err(|e| format!("expected {{\"revocation\": HEX}}: {e}"))?;
    if body.revocation.len() > 2 * SignedRevocation::MAX_SIZE {
        return Err("the revocation list is longer than any valid one".into());
    }
    let bytes =
        hex::decode(body.revocation.trim()).map_err(|e| format!("revocation: not hex ({e})"))?;
    SignedRevocation::decode(&bytes).map_err(|e| format!("revocation: {e}"))
}

/// Takes an owner's list: enforced here at once and gossiped to the mesh.
pub(super) async fn revoke(State(s): State<ApiState>, body: axum::body::Bytes) -> Response {
    if s.node.membership().is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "this mesh is public: it has no members to revoke",
        );
    }
    let list = match revocation_request(&body) {
        Ok(list) => list,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let shown = list_json(&list);
    match s.node.revoke(list).await {
        Ok(Ok(new)) => Json(json!({ "new": new, "list": shown })).into_response(),
        Ok(Err(why)) => error(StatusCode::BAD_REQUEST, why),
        Err(_) => gone(),
    }
}
