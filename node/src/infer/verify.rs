//! Ack signatures verified in batches across all of a supplier's streams.
//!
//! Verifying one ed25519 signature costs about as much as all the rest of a receipt's
//! work (chain check, storage, mining); batch verification costs a fraction of that
//! per signature. Each stream hands its ack's signature to one task, which verifies
//! whatever has queued up since its last batch (at most [`MAX_BATCH`]) in one batch and
//! answers each stream. Nothing waits for a batch to fill: with one stream the batch is
//! one signature; under load, batches grow by themselves. Every ack is still verified
//! before its receipt is accepted.

use relaymesh_protocol::identity::verify::{SignatureError, SignedItem};
use relaymesh_protocol::{Ed25519Verifier, PublicKey, Signature, SignatureVerifier};
use tokio::sync::{mpsc, oneshot};

/// Most signatures verified in one batch.
pub const MAX_BATCH: usize = 64;
/// Signatures queued at most (streams wait beyond that).
const QUEUE: usize = 1024;

type Job = (SignedItem, oneshot::Sender<bool>);

/// The handle streams use.
#[derive(Clone, Debug)]
pub struct AckVerifier {
    jobs: mpsc::Sender<Job>,
}

impl AckVerifier {
    /// Starts the verifying thread (a thread of its own, so that batches never block
    /// the runtime's workers and no job waits for a blocking-pool hand-off). It ends
    /// when the last handle is dropped.
    pub fn spawn() -> Self {
        let (jobs, mut rx) = mpsc::channel::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("ack-verify".into())
            .spawn(move || {
                let mut items: Vec<SignedItem> = Vec::with_capacity(MAX_BATCH);
                let mut replies = Vec::with_capacity(MAX_BATCH);
                while let Some(first) = rx.blocking_recv() {
                    let mut next = Some(first);
                    while let Some((item, reply)) = next {
                        items.push(item);
                        replies.push(reply);
                        next = if items.len() < MAX_BATCH {
                            rx.try_recv().ok()
                        } else {
                            None
                        };
                    }
                    let ok = Ed25519Verifier.verify_each(&items);
                    items.clear();
                    for (reply, ok) in replies.drain(..).zip(ok) {
                        let _: Result<(), bool> = reply.send(ok);
                    }
                }
            })
            .expect("start the ack verifying thread");
        Self { jobs }
    }

    /// Whether `item`'s signature verifies (false too if the node is stopping).
    pub async fn verify(&self, item: SignedItem) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.jobs.send((item, tx)).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }
}

/// A verifier for exactly the item the caller has just verified with [`AckVerifier`]:
/// it accepts that one signature and refuses everything else.
pub struct Verified(pub SignedItem);

impl SignatureVerifier for Verified {
    fn verify(
        &self,
        key: &PublicKey,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), SignatureError> {
        if *key == self.0.key
            && message == self.0.message.as_slice()
            && *signature == self.0.signature
        {
            Ok(())
        } else {
            Ed25519Verifier.verify(key, message, signature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaymesh_protocol::identity::signed::Signed;
    use relaymesh_protocol::messages::transfer::Transfer;
    use relaymesh_protocol::{Digest, Keypair, Signer};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_signatures_are_verified_each_and_bad_ones_refused() {
        let verifier = AckVerifier::spawn();
        let key = Keypair::from_secret([1; 32]);
        let item = |n: u64, signer: &Keypair| {
            Signed::sign(
                Transfer {
                    version: relaymesh_protocol::PROTOCOL_VERSION,
                    mesh_id: Digest::ZERO,
                    from: key.public_key(),
                    to: key.public_key(),
                    amount: n,
                    epoch: 0,
                    slot_start: n,
                },
                signer,
            )
            .signed_item(key.public_key())
        };
        let forger = Keypair::from_secret([2; 32]);
        let checks = (0..200u64).map(|n| {
            let v = verifier.clone();
            let it = item(n, if n % 7 == 3 { &forger } else { &key });
            tokio::spawn(async move { (n, v.verify(it).await) })
        });
        for check in futures::future::join_all(checks).await {
            let (n, ok) = check.unwrap();
            assert_eq!(ok, n % 7 != 3, "signature {n}");
        }
    }
}
