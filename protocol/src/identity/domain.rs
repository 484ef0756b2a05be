//! The one place that says what every signature and every hash covers.
//!
//! A signature is always over `tag ‖ canonical CBOR of the body`, where the tag names
//! the message type and the protocol version; a hash is always over `tag ‖ fields`.
//! No tag is a prefix of another (each ends in NUL), so bytes signed or hashed for one
//! purpose can never be valid for another.
//!
//! | signature | signer | covers |
//! |---|---|---|
//! | `Manifest` | model Source | `ModelManifest` |
//! | `CapabilityAd` | supplier | `CapabilityAd` |
//! | `SessionOpenApp` | app | `SessionOpen` |
//! | `SessionOpenSupplier` | supplier | `SessionOpen` ‖ the app's signature ‖ the supplier's mining commitment |
//! | `RelayRequest` | app | `RelayRequest` |
//! | `Ack` | app | `Ack` |
//! | `Claim` | supplier | `Claim` (which embeds the countersigned `SessionOpen`) |
//! | `Reveal` | app | `Reveal` (the secret `r` together with the claimed root) |
//! | `Transfer` | payer | `Transfer` |
//! | `Invite` | an owner of the mesh | `Invite` |
//! | `Revocation` | an owner of the mesh | `Revocation` |
//! | `TokenProof` | an invite token's key | `TokenProof` (mesh id, presenting peer) |

/// What a signature is for; selects its tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    /// A Source signs a model manifest.
    Manifest,
    /// A supplier signs its capability advertisement.
    CapabilityAd,
    /// The app signs the terms of a session.
    SessionOpenApp,
    /// The supplier countersigns the terms and the app's signature.
    SessionOpenSupplier,
    /// The app signs one inference request.
    RelayRequest,
    /// The app acknowledges one increment of streamed output.
    Ack,
    /// The supplier claims the mined receipts of a session.
    Claim,
    /// The app reveals its challenge secret for one claimed root.
    Reveal,
    /// A payer moves credit to another account.
    Transfer,
    /// A private mesh's owner admits a peer.
    Invite,
    /// A private mesh's owner lists what it has revoked.
    Revocation,
    /// A token's key proves that a peer holds it.
    TokenProof,
}

impl Domain {
    /// The tag prepended to the signed bytes.
    pub const fn tag(self) -> &'static [u8] {
        match self {
            Domain::Manifest => b"relaymesh/7/sig/manifest\0",
            Domain::CapabilityAd => b"relaymesh/7/sig/capability-ad\0",
            Domain::SessionOpenApp => b"relaymesh/7/sig/session-open/app\0",
            Domain::SessionOpenSupplier => b"relaymesh/7/sig/session-open/supplier\0",
            Domain::RelayRequest => b"relaymesh/7/sig/relay-request\0",
            Domain::Ack => b"relaymesh/7/sig/ack\0",
            Domain::Claim => b"relaymesh/7/sig/claim\0",
            Domain::Reveal => b"relaymesh/7/sig/reveal\0",
            Domain::Transfer => b"relaymesh/7/sig/transfer\0",
            Domain::Invite => b"relaymesh/7/sig/invite\0",
            Domain::Revocation => b"relaymesh/7/sig/revocation\0",
            Domain::TokenProof => b"relaymesh/7/sig/token-proof\0",
        }
    }
}

/// Tags of the protocol's hashes (blake3 over `tag ‖ fields`).
pub mod hash_tag {
    /// Mesh id: hash of the canonical mesh parameters.
    pub const MESH_ID: &[u8] = b"relaymesh/7/hash/mesh-id\0";
    /// Manifest hash: pinned by sessions.
    pub const MANIFEST: &[u8] = b"relaymesh/7/hash/manifest\0";
    /// Session key: hash of the `SessionOpen` terms.
    pub const SESSION_KEY: &[u8] = b"relaymesh/7/hash/session-key\0";
    /// Request hash: identifies a signed request within its session.
    pub const REQUEST: &[u8] = b"relaymesh/7/hash/request\0";
    /// Relay hash: decides mining and places a receipt in the sum tree.
    pub const RELAY: &[u8] = b"relaymesh/7/hash/relay\0";
    /// One step of a request's ack chain.
    pub const ACK_CHAIN: &[u8] = b"relaymesh/7/hash/ack-chain\0";
    /// Sum-tree leaf.
    pub const TREE_LEAF: &[u8] = b"relaymesh/7/hash/tree-leaf\0";
    /// Sum-tree internal node.
    pub const TREE_NODE: &[u8] = b"relaymesh/7/hash/tree-node\0";
    /// The app's commitment `H(r)`.
    pub const COMMITMENT: &[u8] = b"relaymesh/7/hash/commitment\0";
    /// Challenge seed `H(r, root)`.
    pub const SEED: &[u8] = b"relaymesh/7/hash/seed\0";
    /// The i-th sampling point drawn from a seed.
    pub const SAMPLE: &[u8] = b"relaymesh/7/hash/sample\0";
    /// Claim id: hash of a signed claim.
    pub const CLAIM: &[u8] = b"relaymesh/7/hash/claim\0";
    /// Transfer id: hash of a signed transfer.
    pub const TRANSFER: &[u8] = b"relaymesh/7/hash/transfer\0";
    /// Coefficients of a batch signature check.
    pub const BATCH: &[u8] = b"relaymesh/7/hash/batch-verify\0";
    /// Prompt digest: hash of an inference payload, committed to by the request.
    pub const PROMPT: &[u8] = b"relaymesh/7/hash/prompt\0";
    /// The supplier's commitment `H(s)` to its session's mining secret.
    pub const MINING_COMMITMENT: &[u8] = b"relaymesh/7/hash/mining-commitment\0";
    /// The lottery a receipt's mining is decided by: `H(s, relay hash)`.
    pub const LOTTERY: &[u8] = b"relaymesh/7/hash/lottery\0";
    /// Debit id of a session: hash of the app-signed terms (the escrow they commit).
    pub const DEBIT: &[u8] = b"relaymesh/7/hash/debit\0";
    /// A secret a key derives for one purpose (a supplier's mining secret per session).
    pub const DERIVE: &[u8] = b"relaymesh/7/hash/derive\0";
}

/// blake3 over `tag ‖ parts…`.
///
/// Most inputs (tree nodes, chain links, sample points, receipt bodies) are a few
/// hundred bytes: they are gathered on the stack and hashed in one call, which skips
/// the incremental hasher's bookkeeping (a sixth of the cost of hashing a tree node).
/// Longer inputs go through the incremental hasher. Both give the same hash.
pub fn tagged_hash(tag: &[u8], parts: &[&[u8]]) -> crate::Digest {
    const SMALL: usize = 512;
    let len = tag.len() + parts.iter().map(|p| p.len()).sum::<usize>();
    if len <= SMALL {
        let mut buffer = [0u8; SMALL];
        buffer[..tag.len()].copy_from_slice(tag);
        let mut at = tag.len();
        for part in parts {
            buffer[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        return crate::Digest(*blake3::hash(&buffer[..len]).as_bytes());
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(tag);
    for part in parts {
        hasher.update(part);
    }
    crate::Digest(*hasher.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_inputs_hash_as_one_stream() {
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
        for total in [0usize, 1, 63, 64, 65, 400, 487, 488, 489, 1024, 3000] {
            let body = &data[..total];
            // Split the same bytes differently: the hash is of their concatenation.
            let (a, b) = body.split_at(total / 3);
            let mut reference = blake3::Hasher::new();
            reference.update(hash_tag::RELAY);
            reference.update(body);
            let expected = crate::Digest(*reference.finalize().as_bytes());
            assert_eq!(tagged_hash(hash_tag::RELAY, &[body]), expected, "{total}");
            assert_eq!(tagged_hash(hash_tag::RELAY, &[a, b]), expected, "{total}");
        }
    }
}
