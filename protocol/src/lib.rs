//! # relaymesh-protocol
//!
//! The IO-free, deterministic core of relaymesh: the wire types and their canonical
//! CBOR encoding, identities and signatures, compute units, relay receipts, threshold
//! mining, the sparse Merkle sum tree, claims, challenges, proofs, the ledger rules and
//! the routing score. It has no tokio, no sockets, no clock and no OS randomness: time
//! and randomness are arguments, so the node and the simulator (`relaymesh-netsim`) run
//! the very same rules. What is *not* here: networking, storage engines, inference.
//!
//! Where to find a rule:
//! - what each signature and hash covers: [`identity::domain`];
//! - message fields and sizes: [`messages`]; canonical encoding: [`wire`];
//! - how receipts are weighed and mined: [`metering`];
//! - the sum tree: [`sumtree`]; where claims and proofs are verified: [`settlement`];
//! - balances: [`ledger`]; supplier ranking: [`routing`]; mesh parameters: [`params`];
//! - who may join a private mesh: [`membership`].
//!
//! ```
//! use relaymesh_protocol::metering::threshold::{is_mined, mined_value};
//! use relaymesh_protocol::Digest;
//!
//! // A receipt heavier than τ is always mined and pays its weight;
//! // a lighter one is mined with probability w/τ and then pays τ.
//! let relay_hash = Digest([0x42; 32]);
//! assert!(is_mined(&relay_hash, 500, 100));
//! assert_eq!(mined_value(500, 100), 500);
//! assert_eq!(mined_value(10, 100), 100);
//! ```

pub mod identity;
pub mod ledger;
pub mod membership;
pub mod messages;
pub mod metering;
pub mod params;
pub mod routing;
pub mod settlement;
pub mod sumtree;
pub mod wire;

pub use identity::verify::{Ed25519Verifier, SignatureVerifier, Signer};
pub use identity::Keypair;
pub use wire::{
    BoundedString, BoundedVec, DecodeError, Digest, PublicKey, Signature, TooLong, WireMessage,
};

/// The protocol version every message of this build carries.
pub const PROTOCOL_VERSION: u16 = 7;
