//! Routing: how a node ranks the suppliers of a model. Pure functions over measured
//! statistics, shared by the node and the simulator.

pub mod score;

pub use score::{rank, ScoreWeights, SupplierScore, SupplierStats};
