//! Metering: compute units, relay receipts, the ack chain, threshold mining and the
//! τ rule.

pub mod ack_chain;
pub mod app;
pub mod compute_units;
pub mod flow;
pub mod receipt;
pub mod tau;
pub mod threshold;
