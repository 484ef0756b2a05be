//! Where proofs are verified, and how a supplier builds them.

use std::collections::BTreeMap;

use crate::identity::signed::Signed;
use crate::identity::verify::{SignatureError, SignatureVerifier, SignedItem};
use crate::messages::claim::SignedClaim;
use crate::messages::proof::{FullReveal, LeafProof, Proof, ProofEvidence, SampledProof};
use crate::messages::reveal::{commitment, SignedReveal};
use crate::messages::session::mining_commitment;
use crate::metering::receipt::{EncodedRequest, Receipt, ReceiptError, ReceiptFacts};
use crate::params::MeshParams;
use crate::settlement::challenge::{sample_point, seed};
use crate::sumtree::{
    LeafEntry, MemoryStore, NodeSummary, PathError, PathVerifier, SumTree, TreeError, TreeStore,
};
use crate::{BoundedVec, Digest};

/// Why a proof does not settle its claim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The proof names another claim.
    #[error("proof is for claim {found}, not {expected}")]
    WrongClaim {
        /// The claim being settled.
        expected: Digest,
        /// The id in the proof.
        found: Digest,
    },
    /// The reveal is for another session or root, or does not open the commitment.
    #[error("reveal: {0}")]
    BadReveal(&'static str),
    /// Not exactly one leaf per sampling point.
    #[error("proof has {found} sampled leaves; the mesh asks for {expected}")]
    WrongSampleCount {
        /// `proof_samples`.
        expected: usize,
        /// Leaves in the proof.
        found: usize,
    },
    /// A receipt breaks a rule.
    #[error("leaf {index}: {error}")]
    BadReceipt {
        /// Position in the proof.
        index: usize,
        /// The rule broken.
        error: ReceiptError,
    },
    /// A receipt that the threshold does not mine.
    #[error("leaf {0}: receipt is not mined at the session's tau")]
    NotMined(usize),
    /// A leaf does not sit under the claimed root.
    #[error("leaf {index}: {error}")]
    BadPath {
        /// Position in the proof.
        index: usize,
        /// Why.
        error: PathError,
    },
    /// A leaf does not cover its sampling point: a proof for a different seed.
    #[error("leaf {index} covers CUs [{offset}, {end}) but the challenge point is {point}")]
    WrongLeaf {
        /// Position in the proof.
        index: usize,
        /// The point.
        point: u64,
        /// Start of the leaf's interval.
        offset: u64,
        /// End of the leaf's interval.
        end: u64,
    },
    /// The full reveal does not rebuild the claimed root.
    #[error(
        "full reveal rebuilds root {found_sum} CUs / {found_count} leaves, not the claimed tree"
    )]
    RootMismatch {
        /// Sum rebuilt.
        found_sum: u64,
        /// Count rebuilt.
        found_count: u64,
    },
    /// The same receipt twice in a full reveal.
    #[error("full reveal lists receipt {0} twice")]
    DuplicateLeaf(Digest),
    /// A signature (request, ack or reveal) does not verify.
    #[error("proof signature: {0}")]
    Signature(#[from] SignatureError),
    /// A full reveal with another number of receipts than the claim's leaves.
    #[error("full reveal shows {found} receipts; the claim has {expected} leaves")]
    WrongLeafCount {
        /// The claim's count.
        expected: u64,
        /// Receipts in the reveal.
        found: usize,
    },
    /// The mining secret does not open the session's mining commitment.
    #[error("the mining secret does not open the session's mining commitment")]
    BadMiningSecret,
}

/// The leaf a receipt of the claimed session makes, and the app's two signatures on it
/// (from the encodings the check hashed).
/// The requests a proof's receipts carry, each encoded and hashed once, by the hash
/// their acks name.
type Requests = BTreeMap<Digest, EncodedRequest>;

fn leaf_of(
    receipt: &Receipt,
    index: usize,
    claim: &SignedClaim,
    session_key: &Digest,
    mining_secret: &Digest,
    requests: &mut Requests,
) -> Result<(LeafEntry, [SignedItem; 2]), ProofError> {
    let open = &claim.body.open;
    let tau = open.body.tau;
    let request = requests
        .entry(receipt.ack.body.request)
        .or_insert_with(|| EncodedRequest::new(&receipt.request));
    let (facts, signatures) = receipt
        .check_signed_with(Some(request), session_key, &open.body, open.body.app)
        .map_err(|error| ProofError::BadReceipt { index, error })?;
    if !facts.is_mined(mining_secret, tau) {
        return Err(ProofError::NotMined(index));
    }
    let leaf = LeafEntry {
        key: facts.relay_hash,
        value: facts.digest,
        weight: facts.mined_value(tau),
    };
    Ok((leaf, signatures))
}

fn claimed_root(claim: &SignedClaim) -> NodeSummary {
    NodeSummary {
        hash: claim.body.root,
        sum: claim.body.sum,
        count: claim.body.count,
    }
}

/// Checks that `proof` settles `claim` (which the caller has verified). Receipt
/// signatures are checked in one batch.
pub fn verify_proof(
    claim: &SignedClaim,
    proof: &Proof,
    params: &MeshParams,
    verifier: &impl SignatureVerifier,
) -> Result<(), ProofError> {
    let claim_id = claim.id();
    if proof.claim != claim_id {
        return Err(ProofError::WrongClaim {
            expected: claim_id,
            found: proof.claim,
        });
    }
    let app = claim.body.open.body.app;
    if mining_commitment(&proof.mining_secret) != claim.body.open.mining_commitment {
        return Err(ProofError::BadMiningSecret);
    }
    let secret = &proof.mining_secret;
    // The session key hashes the whole countersigned open: once per proof, not per leaf.
    let session_key = claim.session_key();
    let mut signatures: Vec<SignedItem> = Vec::new();
    match &proof.evidence {
        ProofEvidence::Sampled(sampled) => {
            let reveal = &sampled.reveal.body;
            if reveal.session_key != session_key || reveal.root != claim.body.root {
                return Err(ProofError::BadReveal("it answers another session or root"));
            }
            if commitment(&reveal.secret) != claim.body.open.body.reveal_commitment {
                return Err(ProofError::BadReveal(
                    "the secret does not open the session's commitment",
                ));
            }
            let expected = usize::from(params.proof_samples);
            if sampled.leaves.len() != expected {
                return Err(ProofError::WrongSampleCount {
                    expected,
                    found: sampled.leaves.len(),
                });
            }
            let seed = seed(&reveal.secret, &reveal.root);
            let root = claimed_root(claim);
            // Samples draw with replacement, so a small session's leaf comes up again:
            // an identical leaf proof is checked once (comparing is far cheaper than
            // re-encoding, hashing and walking its path).
            let mut checked: Vec<(&LeafProof, LeafEntry, u64)> = Vec::new();
            let mut requests = Requests::new();
            let mut paths = PathVerifier::new(root);
            for (index, leaf_proof) in sampled.leaves.iter().enumerate() {
                // The ack's chain secret differs between any two acks: compared first,
                // it settles most comparisons in one word.
                let known = checked.iter().find(|(seen, ..)| {
                    seen.receipt.ack.body.chain_secret == leaf_proof.receipt.ack.body.chain_secret
                        && *seen == leaf_proof
                });
                let (leaf, offset) = match known {
                    Some(&(_, leaf, offset)) => (leaf, offset),
                    None => {
                        let (leaf, items) = leaf_of(
                            &leaf_proof.receipt,
                            index,
                            claim,
                            &session_key,
                            secret,
                            &mut requests,
                        )?;
                        let offset = paths
                            .verify(&leaf.key, leaf.weight, &leaf.value, &leaf_proof.siblings)
                            .map_err(|error| ProofError::BadPath { index, error })?;
                        signatures.extend(items);
                        checked.push((leaf_proof, leaf, offset));
                        (leaf, offset)
                    }
                };
                let point = sample_point(&seed, index as u16, claim.body.sum);
                let end = offset.saturating_add(leaf.weight);
                if point < offset || point >= end {
                    return Err(ProofError::WrongLeaf {
                        index,
                        point,
                        offset,
                        end,
                    });
                }
            }
            signatures.push(sampled.reveal.signed_item(app));
        }
        ProofEvidence::Full(full) => {
            // The claim says how many leaves there are: any other number fails before a
            // single receipt is checked.
            if full.receipts.len() as u64 != claim.body.count {
                return Err(ProofError::WrongLeafCount {
                    expected: claim.body.count,
                    found: full.receipts.len(),
                });
            }
            let mut leaves = Vec::with_capacity(full.receipts.len());
            let mut requests = Requests::new();
            for (index, receipt) in full.receipts.iter().enumerate() {
                let (leaf, items) =
                    leaf_of(receipt, index, claim, &session_key, secret, &mut requests)?;
                leaves.push(leaf);
                signatures.extend(items);
            }
            let tree = SumTree::build(MemoryStore::for_leaves(leaves.len()), leaves).map_err(
                |e| match e {
                    TreeError::DuplicateKey(key) => ProofError::DuplicateLeaf(key),
                    _ => ProofError::RootMismatch {
                        found_sum: 0,
                        found_count: 0,
                    },
                },
            )?;
            let root = tree.root().expect("memory store cannot fail");
            if root != claimed_root(claim) {
                return Err(ProofError::RootMismatch {
                    found_sum: root.sum,
                    found_count: root.count,
                });
            }
        }
    }
    // Leaves of one request carry the same signed request: check each signature once.
    signatures.sort_unstable();
    signatures.dedup();
    verifier.verify_batch(&signatures)?;
    Ok(())
}

/// Where a session's mined receipts are kept: by relay hash.
pub trait MinedReceipts {
    /// The receipt mined under `relay`, if any.
    fn receipt(&self, relay: &Digest) -> Option<Receipt>;
    /// Every mined receipt, in relay-hash order.
    fn all(&self) -> Vec<Receipt>;
}

impl MinedReceipts for BTreeMap<Digest, Receipt> {
    fn receipt(&self, relay: &Digest) -> Option<Receipt> {
        self.get(relay).cloned()
    }

    fn all(&self) -> Vec<Receipt> {
        self.values().cloned().collect()
    }
}

/// The supplier's mined receipts of one session: the sum tree, the receipts behind
/// its leaves (in an ordered map unless the supplier keeps them its own way), and the
/// supplier's mining secret, which decides mining and goes into every proof.
#[derive(Debug)]
pub struct MinedSession<S = MemoryStore, R = BTreeMap<Digest, Receipt>> {
    tree: SumTree<S>,
    receipts: R,
    mining_secret: Digest,
}

impl MinedSession<MemoryStore> {
    /// An empty session in memory, mining with `mining_secret` (the one the supplier
    /// committed to in the countersigned terms).
    pub fn new(mining_secret: Digest) -> Self {
        Self {
            tree: SumTree::new(),
            receipts: BTreeMap::new(),
            mining_secret,
        }
    }
}

impl<S: TreeStore, R: MinedReceipts> MinedSession<S, R> {
    /// Resumes over a store and the receipts previously mined into it.
    pub fn with_parts(tree: SumTree<S>, receipts: R, mining_secret: Digest) -> Self {
        Self {
            tree,
            receipts,
            mining_secret,
        }
    }

    /// The mining secret.
    pub fn mining_secret(&self) -> Digest {
        self.mining_secret
    }

    /// Root hash, sum and count, for the claim.
    pub fn root(&self) -> Result<NodeSummary, TreeError<S::Error>> {
        self.tree.root()
    }

    /// The sampled proof for the seed the app's reveal gives.
    pub fn sampled_proof(
        &self,
        claim_id: Digest,
        reveal: SignedReveal,
        samples: u16,
    ) -> Result<Proof, TreeError<S::Error>> {
        let root = self.tree.root()?;
        let seed = seed(&reveal.body.secret, &root.hash);
        let points: Vec<u64> = (0..samples)
            .map(|index| sample_point(&seed, index, root.sum))
            .collect();
        let mut leaves = BoundedVec::new();
        for path in self.tree.sample_many(&points)? {
            let receipt = self
                .receipts
                .receipt(&path.leaf.key)
                .ok_or(TreeError::NotFound(path.leaf.key))?;
            let siblings =
                BoundedVec::try_from_vec(path.siblings).map_err(|_| TreeError::Corrupt(256))?;
            leaves
                .try_push(LeafProof { receipt, siblings })
                .map_err(|_| TreeError::Corrupt(0))?;
        }
        Ok(Proof {
            version: crate::PROTOCOL_VERSION,
            claim: claim_id,
            mining_secret: self.mining_secret,
            evidence: ProofEvidence::Sampled(SampledProof { reveal, leaves }),
        })
    }

    /// The full-reveal proof, for when the app never reveals. Fails only if the session
    /// mined more leaves than any claim may hold: a supplier closes its session before.
    pub fn full_reveal(&self, claim_id: Digest) -> Result<Proof, crate::TooLong> {
        let receipts = BoundedVec::try_from_vec(self.receipts.all())?;
        Ok(Proof {
            version: crate::PROTOCOL_VERSION,
            claim: claim_id,
            mining_secret: self.mining_secret,
            evidence: ProofEvidence::Full(FullReveal { receipts }),
        })
    }
}

impl<S: TreeStore> MinedSession<S> {
    /// Mines one receipt that the caller has checked (`Receipt::check` or `check_next`,
    /// and its signatures): if τ selects it, it becomes a leaf. Returns the CUs it pays
    /// when mined.
    pub fn offer(
        &mut self,
        receipt: Receipt,
        facts: &ReceiptFacts,
        tau: u64,
    ) -> Result<Option<u64>, TreeError<S::Error>> {
        if !facts.is_mined(&self.mining_secret, tau) {
            return Ok(None);
        }
        let paid = facts.mined_value(tau);
        self.tree.insert(LeafEntry {
            key: facts.relay_hash,
            value: facts.digest,
            weight: paid,
        })?;
        self.receipts.insert(facts.relay_hash, receipt);
        Ok(Some(paid))
    }

    /// The mined receipts by relay hash.
    pub fn receipts(&self) -> &BTreeMap<Digest, Receipt> {
        &self.receipts
    }
}

/// Signs the app's reveal of `secret` for `root`.
pub fn sign_reveal(
    session_key: Digest,
    root: Digest,
    secret: Digest,
    app: &impl crate::identity::verify::Signer,
) -> SignedReveal {
    Signed::sign(
        crate::messages::reveal::Reveal {
            version: crate::PROTOCOL_VERSION,
            session_key,
            root,
            secret,
        },
        app,
    )
}
