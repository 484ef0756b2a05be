//! Mesh parameters: the one file every node of a mesh shares. Its hash is the mesh id,
//! so two nodes that disagree on any parameter are simply in different meshes.

use serde_tuple::{Deserialize_tuple, Serialize_tuple};

use crate::identity::domain::{hash_tag, tagged_hash};
use crate::messages::manifest::PPM;
use crate::messages::membership::MAX_OWNERS;
use crate::metering::compute_units::DEFAULT_TOKEN_BYTES;
use crate::wire::{to_canonical, WireMessage};
use crate::{BoundedString, BoundedVec, Digest, PublicKey};

/// Most genesis allocations a mesh may have.
pub const MAX_GENESIS: usize = 4096;
/// Most samples a proof may be asked for.
pub const MAX_PROOF_SAMPLES: u16 = 64;
/// Most mined leaves one claim may hold (bounds the full-reveal proof).
pub const MAX_CLAIM_LEAVES: u32 = 1024;
/// Most models a mesh's royalty registry may list.
pub const MAX_SOURCES: usize = 256;
/// Largest per-token byte cap a mesh may allow: an inference frame's text limit.
pub const MAX_TOKEN_BYTES_LIMIT: u32 = 1024;
/// Largest ack step K a mesh may set: an ack names its increment's tokens in a `u16`.
pub const MAX_ACK_EVERY: u32 = 1024;

/// Credit given to an account at genesis, in micro-credits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct Allocation {
    /// The account.
    pub account: PublicKey,
    /// Micro-credits.
    pub amount: u64,
}

/// A model whose royalty the mesh enforces: every session for this GGUF file must pin
/// a manifest signed by this Source with this royalty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct RegisteredSource {
    /// blake3 of the GGUF file.
    pub model_digest: Digest,
    /// The Source: the only key whose manifest sessions for this file may pin.
    pub source: PublicKey,
    /// Its royalty, ppm of every settled claim's payment.
    pub royalty_ppm: u32,
}

/// Everything the nodes of one mesh must agree on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct MeshParams {
    /// Message version (3).
    #[serde(deserialize_with = "crate::wire::current_version")]
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
    /// Highest price per CU a session may name (micro-credits): bounds what one CU can
    /// move, so no arithmetic on amounts can approach overflow.
    pub max_price_per_cu: u64,
    /// Highest CUs per byte (prompt or output) a session's formula may name.
    pub max_cu_per_byte: u32,
    /// Highest per-token byte cap a session may name: a supplier streams at most this
    /// many bytes per token, so `max_tokens` bounds what an answer can bill.
    pub max_token_bytes: u32,
    /// Highest bytes per token a session's formula may pay for (`cu.token_bytes`): an
    /// increment of `t` tokens is paid for at most `t ×` this many bytes, so a supplier
    /// padding its tokens with junk gains at most this over honest text's ~4 bytes.
    pub max_paid_token_bytes: u32,
    /// Models whose royalty is enforced (sorted by digest, each once).
    pub sources: BoundedVec<RegisteredSource, MAX_SOURCES>,
    /// Owners of a private mesh (sorted, each once): only peers they invite, and the
    /// owners' own keys, are admitted (`membership`). Empty: a public mesh, open to
    /// anyone who names it.
    pub owners: BoundedVec<PublicKey, MAX_OWNERS>,
}

/// Why parameters are unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mesh parameters: {0}")]
pub struct ParamsError(pub String);

impl MeshParams {
    /// Defaults for a mesh named `name` with the given genesis; minutes-long epochs.
    pub fn new(name: &str, genesis: Vec<Allocation>) -> Result<Self, ParamsError> {
        let params = Self {
            version: crate::PROTOCOL_VERSION,
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
            max_session_ms: 20 * 60 * 1000,
            max_clock_skew_ms: 30_000,
            genesis: BoundedVec::try_from_vec(genesis)
                .map_err(|e| ParamsError(format!("genesis: {e}")))?,
            max_price_per_cu: 1_000_000,
            max_cu_per_byte: 1_000,
            max_token_bytes: 256,
            max_paid_token_bytes: DEFAULT_TOKEN_BYTES,
            sources: BoundedVec::new(),
            owners: BoundedVec::new(),
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
        if self.ack_every_tokens == 0
            || self.ack_every_tokens > MAX_ACK_EVERY
            || self.max_unacked_tokens < self.ack_every_tokens
        {
            return fail("need 0 < ack_every_tokens <= 1024 and <= max_unacked_tokens");
        }
        let mut accounts: Vec<_> = self.genesis.iter().map(|a| a.account).collect();
        accounts.sort();
        if accounts.windows(2).any(|w| w[0] == w[1]) {
            return fail("an account appears twice in genesis");
        }
        if self.max_price_per_cu == 0 || self.max_cu_per_byte == 0 {
            return fail("max_price_per_cu and max_cu_per_byte must be positive");
        }
        if self.max_token_bytes == 0 || self.max_token_bytes > MAX_TOKEN_BYTES_LIMIT {
            return fail("max_token_bytes must be in 1..=1024");
        }
        // A frame holds at least one whole character (4 bytes): paying less per token
        // would leave honest text unpaid however the supplier cut it.
        if !(4..=MAX_TOKEN_BYTES_LIMIT).contains(&self.max_paid_token_bytes) {
            return fail("max_paid_token_bytes must be in 4..=1024");
        }
        // A session's claims count in the epoch of its start, and that epoch freezes H
        // epochs later: the session, its supplier's claim, the wait for the app's
        // reveal and the clocks' skew must all fit before that, with an epoch to spare
        // for gossip, or no session could ever be claimed.
        let needed = self
            .max_session_ms
            .saturating_add(self.max_clock_skew_ms)
            .saturating_add(self.reveal_wait_ms())
            .saturating_add(self.epoch_ms);
        let horizon = self
            .epoch_ms
            .saturating_mul(u64::from(self.freeze_horizon_epochs).saturating_sub(1));
        if needed > horizon {
            return Err(ParamsError(format!(
                "sessions of {} s, {} s of clock skew and the reveal wait ({} s) do not fit before their epoch freezes ({} epochs of {} s): raise freeze_horizon_epochs or shorten max_session",
                self.max_session_ms / 1000,
                self.max_clock_skew_ms / 1000,
                self.reveal_wait_ms() / 1000,
                self.freeze_horizon_epochs,
                self.epoch_ms / 1000
            )));
        }
        if self
            .sources
            .windows(2)
            .any(|w| w[0].model_digest >= w[1].model_digest)
        {
            return fail("sources must be sorted by model digest, each digest once");
        }
        if self.sources.iter().any(|s| s.royalty_ppm > PPM) {
            return fail("a registered royalty exceeds 1,000,000 ppm (100%)");
        }
        if self.owners.windows(2).any(|w| w[0] >= w[1]) {
            return fail("owners must be sorted, each once");
        }
        Ok(())
    }

    /// How long a supplier waits for the app's reveal before it proves with the full
    /// reveal: two epochs, at least 10 s.
    pub fn reveal_wait_ms(&self) -> u64 {
        self.epoch_ms.saturating_mul(2).max(10_000)
    }

    /// Whole epochs of clock skew a message may be dated ahead (at least one).
    pub fn skew_epochs(&self) -> u64 {
        self.max_clock_skew_ms.div_ceil(self.epoch_ms.max(1)).max(1)
    }

    /// How many epochs back the credit line that funds a debit lies: `H + 1` plus the
    /// skew, so the line is frozen on every node by the time any node admits a debit
    /// (a debit may be dated up to the skew ahead of the receiver's clock).
    pub fn funding_lag_epochs(&self) -> u64 {
        u64::from(self.freeze_horizon_epochs) + 1 + self.skew_epochs()
    }

    /// The registered Source of a model file, if the mesh enforces one.
    pub fn registered_source(&self, model_digest: &Digest) -> Option<&RegisteredSource> {
        self.sources
            .binary_search_by(|s| s.model_digest.cmp(model_digest))
            .ok()
            .map(|i| &self.sources[i])
    }

    /// Checks that every account the parameters name (genesis, Sources) is a key only
    /// its owner can sign for (`verifier.check_key`): a small-order ed25519 key is
    /// signed for by anyone, so credit given to it could be spent by anyone.
    pub fn check_accounts(
        &self,
        verifier: &impl crate::SignatureVerifier,
    ) -> Result<(), ParamsError> {
        let keys = self.genesis.iter().map(|a| a.account);
        let keys = keys
            .chain(self.sources.iter().map(|s| s.source))
            .chain(self.owners.iter().copied());
        for key in keys {
            verifier
                .check_key(&key)
                .map_err(|e| ParamsError(format!("account {}: {e}", key.peer_id())))?;
        }
        Ok(())
    }

    /// Whether only invited peers may join (the parameters name owners).
    pub fn is_private(&self) -> bool {
        !self.owners.is_empty()
    }

    /// Whether `key` is one of the mesh's owners.
    pub fn is_owner(&self, key: &PublicKey) -> bool {
        self.owners.contains(key)
    }

    /// Whether the mesh has credit (genesis allocations): sessions are then paid from
    /// the app's escrow, and suppliers admit only funded sessions.
    pub fn has_credit(&self) -> bool {
        !self.genesis.is_empty()
    }
}

impl WireMessage for MeshParams {
    const NAME: &'static str = "MeshParams";
    const VERSION: u16 = crate::PROTOCOL_VERSION;
    const MAX_SIZE: usize = 256 * 1024;
    fn version(&self) -> u16 {
        self.version
    }
}
