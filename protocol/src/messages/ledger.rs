//! `LedgerMessage`: what travels on a mesh's ledger gossip topic and in its
//! anti-entropy exchange, one envelope for every message a ledger or a supplier waits
//! for.

use serde::{Deserialize, Serialize};
use serde_tuple::{Deserialize_tuple, Serialize_tuple};

use crate::messages::claim::SignedClaim;
use crate::messages::equivocation::EquivocationEvidence;
use crate::messages::proof::Proof;
use crate::messages::reveal::SignedReveal;
use crate::messages::session::{SessionProposal, SignedSessionOpen};
use crate::messages::transfer::SignedTransfer;
use crate::wire::WireMessage;

/// One ledger message.
// Messages are decoded and handled one at a time; boxing the claims would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerBody {
    /// A supplier announces a session it countersigned: the app's escrow is then known
    /// mesh-wide while the session runs, so another supplier offered an overlapping
    /// slot refuses it (the claim carries the same terms later anyway).
    Open(SignedSessionOpen),
    /// A supplier's claim at session end.
    Claim(SignedClaim),
    /// An app's reveal of `r` for a claimed root: the supplier's challenge seed.
    Reveal(SignedReveal),
    /// A supplier's proof for a claim.
    Proof(Proof),
    /// A signed transfer of credit.
    Transfer(SignedTransfer),
    /// Two claims by one supplier for one session.
    Evidence(EquivocationEvidence),
    /// An app withdraws terms it proposed and no supplier countersigned (as far as it
    /// knows): the escrow slot it gave them becomes a debit with no claims, whose
    /// escrow returns to the app's line when its epoch freezes. Without it, a refused
    /// proposal's slot could never be reused (the supplier holds the signed terms and
    /// could countersign them later) and its credit would be lost to the app.
    Withdraw(SessionProposal),
}

/// The envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct LedgerMessage {
    /// Message version: the protocol version (`PROTOCOL_VERSION`).
    #[serde(deserialize_with = "crate::wire::current_version")]
    pub version: u16,
    /// The content.
    pub body: LedgerBody,
}

impl LedgerMessage {
    /// A version-1 message.
    pub fn new(body: LedgerBody) -> Self {
        Self {
            version: crate::PROTOCOL_VERSION,
            body,
        }
    }
}

impl WireMessage for LedgerMessage {
    const NAME: &'static str = "LedgerMessage";
    const VERSION: u16 = crate::PROTOCOL_VERSION;
    // The largest body is a full-reveal proof.
    const MAX_SIZE: usize = <Proof as WireMessage>::MAX_SIZE + 64;
    fn version(&self) -> u16 {
        self.version
    }
}
