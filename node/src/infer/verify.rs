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
    /// Starts the verifying task.
    pub fn spawn() -> Self {
        let (jobs, mut rx) = mpsc::channel::<Job>(QUEUE);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let work = std::mem::take(&mut batch);
                let Ok(verdicts) = tokio::task::spawn_blocking(move || {
                    let items: Vec<SignedItem> = work.iter().map(|(i, _)| i.clone()).collect();
                    let ok = Ed25519Verifier.verify_each(&items);
                    (work, ok)
                })
                .await
                else {
                    return;
                };
                let (work, ok) = verdicts;
                for ((_, reply), ok) in work.into_iter().zip(ok) {
                    let _ = reply.send(ok);
                }
            }
        });
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
                    version: 1,
                    mesh_id: Digest::ZERO,
                    from: key.public_key(),
                    to: key.public_key(),
                    amount: n,
                    epoch: 0,
                    nonce: n,
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
