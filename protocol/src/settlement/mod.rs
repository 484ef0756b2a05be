//! Settlement: the challenge, and where claims and proofs are verified.

pub mod challenge;
pub mod claim;
pub mod duty;
pub mod proof;
