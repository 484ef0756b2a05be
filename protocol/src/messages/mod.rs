//! Every message of the protocol, one file each. `docs/PROTOCOL.md` describes their
//! fields and the rules verifiers apply.

pub mod ack;
pub mod capability;
pub mod claim;
pub mod equivocation;
pub mod manifest;
pub mod proof;
pub mod request;
pub mod reveal;
pub mod session;
pub mod transfer;
