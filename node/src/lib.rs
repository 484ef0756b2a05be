//! # relaymesh-node
//!
//! A relaymesh node: the libp2p swarm (QUIC first, TCP + noise + yamux as fallback;
//! identify, ping, Kademlia, gossipsub, opt-in mDNS) owned by one task, capability ads
//! validated by `relaymesh-protocol` before they are forwarded, a bounded peer table of
//! who serves which model, the local HTTP API, metrics, and the data dir (identity key
//! and sled). It is *not* the protocol's rules (those live in `relaymesh-protocol`,
//! free of IO) nor the CLI (the root `relaymesh` crate).

pub mod api;
pub mod backend;
pub mod config;
pub mod fuzz;
pub mod infer;
pub mod mesh;
pub mod metrics;
pub mod mining;
pub mod node;
pub mod settle;
pub mod stopping;
pub mod store;
#[doc(hidden)]
pub mod testkit;

pub use config::{Identity, NodeConfig, Role};
pub use mesh::{NodeGone, NodeHandle, NodeStatus, PeerRow};
pub use node::{Node, NodeError};
