//! Mesh parameters: the one file every node of a mesh shares. Its hash is the mesh id,
//! so two nodes that disagree on any parameter are simply in different meshes.

use serde_tuple::{Deserialize_tuple, Serialize_tuple};

use crate::identity::domain::{hash_tag, tagged_hash};
use crate::wire::{to_canonical, WireMessage};
use crate::{BoundedString, BoundedVec, Digest, PublicKey};

/// Most genesis allocations a mesh may have.
pub const MAX_GENESIS: usize = 4096;
/// Most samples a proof may be asked for.
pub const MAX_PROOF_SAMPLES: u16 = 64;
/// Most mined leaves one claim may hold (bounds the full-reveal proof).
pub const MAX_CLAIM_LEAVES: u32 = 1024;

/// Credit given to an account at genesis, in micro-credits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct Allocation {
    /// The account.
    pub account: PublicKey,
    /// Micro-credits.
    pub amount: u64,
}

/// Everything the nodes of one mesh must agree on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct MeshParams {
    /// Message version (1).
    pub version: u16,
    /// Human-readable name; part of the id, so two meshes may share parameters.
    pub name: BoundedString<64>,
    /// Length of a ledger epoch (minutes in production, seconds in tests).
    pub epoch_ms: u64,
    /// Epochs after which an epoch's ledger is frozen.
    pub freeze_horizon_epochs: u32,
    /// The app acks every K output tokens.
    pub ack_every_tokens: u32,
    /// The supplier pauses with more than W tokens unacknowledged.
    pub max_unacked_tokens: u32,
    /// Lower bound on a session's τ (CUs).
    pub tau_min: u64,
    /// Upper bound on a session's τ (CUs).
    pub tau_max: u64,
    /// Mined receipts per session the τ rule aims for.
    pub tau_target_mined: u32,
    /// Claims worth less (sum × price, micro-credits) are refused as spam.
    pub min_claim_value: u64,
    /// Leaves sampled by a proof.
    pub proof_samples: u16,
    /// Most mined leaves per claim.
    pub max_claim_leaves: u32,
    /// Longest session.
    pub max_session_ms: u64,
    /// Tolerated clock difference when a session opens.
    pub max_clock_skew_ms: u64,
    /// Where credit comes from.
    pub genesis: BoundedVec<Allocation, MAX_GENESIS>,
}

/// Why parameters are unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mesh parameters: {0}")]
pub struct ParamsError(pub String);

impl MeshParams {
    /// Defaults for a mesh named `name` with the given genesis; minutes-long epochs.
    pub fn new(name: &str, genesis: Vec<Allocation>) -> Result<Self, ParamsError> {
        let params = Self {
            version: 1,
            name: BoundedString::new(name).map_err(|e| ParamsError(format!("name: {e}")))?,
            epoch_ms: 5 * 60 * 1000,
            freeze_horizon_epochs: 12,
            ack_every_tokens: 16,
            max_unacked_tokens: 64,
            tau_min: 64,
            tau_max: 1 << 40,
            tau_target_mined: 32,
            min_claim_value: 1,
            proof_samples: 16,
            max_claim_leaves: 256,
            max_session_ms: 60 * 60 * 1000,
            max_clock_skew_ms: 30_000,
            genesis: BoundedVec::try_from_vec(genesis)
                .map_err(|e| ParamsError(format!("genesis: {e}")))?,
        };
        params.validate()?;
        Ok(params)
    }

    /// The mesh id: hash of the canonical parameters.
    pub fn mesh_id(&self) -> Digest {
        tagged_hash(hash_tag::MESH_ID, &[&to_canonical(self)])
    }

    /// The epoch a time (unix ms) falls in.
    pub fn epoch_of(&self, time_ms: u64) -> u64 {
        time_ms / self.epoch_ms
    }

    /// Checks internal consistency.
    pub fn validate(&self) -> Result<(), ParamsError> {
        let fail = |why: &str| Err(ParamsError(why.to_string()));
        if self.epoch_ms == 0 {
            return fail("epoch_ms must be positive");
        }
        if self.freeze_horizon_epochs == 0 {
            return fail("freeze_horizon_epochs must be at least 1");
        }
        if self.tau_min == 0 || self.tau_min > self.tau_max {
            return fail("need 0 < tau_min <= tau_max");
        }
        if self.proof_samples == 0 || self.proof_samples > MAX_PROOF_SAMPLES {
            return fail("proof_samples must be in 1..=64");
        }
        if self.max_claim_leaves == 0 || self.max_claim_leaves > MAX_CLAIM_LEAVES {
            return fail("max_claim_leaves must be in 1..=1024");
        }
        if self.ack_every_tokens == 0 || self.max_unacked_tokens < self.ack_every_tokens {
            return fail("need 0 < ack_every_tokens <= max_unacked_tokens");
        }
        let mut accounts: Vec<_> = self.genesis.iter().map(|a| a.account).collect();
        accounts.sort();
        if accounts.windows(2).any(|w| w[0] == w[1]) {
            return fail("an account appears twice in genesis");
        }
        Ok(())
    }
}

impl WireMessage for MeshParams {
    const NAME: &'static str = "MeshParams";
    const VERSION: u16 = 1;
    const MAX_SIZE: usize = 256 * 1024;
    fn version(&self) -> u16 {
        self.version
    }
}
