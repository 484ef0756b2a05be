//! Metering: compute units, relay receipts, the ack chain, threshold mining, the τ
//! rule and what an app may leave unpaid at a supplier.

pub mod ack_chain;
pub mod allowance;
pub mod app;
pub mod compute_units;
pub mod flow;
pub mod receipt;
pub mod tau;
pub mod threshold;
