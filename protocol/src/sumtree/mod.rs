//! The sparse Merkle sum tree of a session's mined receipts (blake3; node = hash, CU
//! sum, leaf count; path = bits of the receipt's relay hash).

pub mod node;
pub mod path;
pub mod store;
pub mod tree;

pub use node::NodeSummary;
pub use path::{verify_path, PathError, PathVerifier};
pub use store::{LeafEntry, MemoryStore, Position, StoredNode, TreeStore};
pub use tree::{LeafPath, SumTree, TreeError};
