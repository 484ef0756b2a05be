//! A fixed number of concurrent generations, with a bounded queue in front.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::BackendError;

/// Slots and a bounded wait queue: a request beyond both is refused at once with
/// [`BackendError::Busy`], never left to pile up.
#[derive(Clone, Debug)]
pub struct Slots {
    permits: Arc<Semaphore>,
    total: usize,
    max_queue: usize,
    queued: Arc<AtomicUsize>,
    retry_after: Duration,
}

/// A taken slot; dropping it frees the slot.
#[derive(Debug)]
pub struct SlotGuard {
    _permit: OwnedSemaphorePermit,
}

/// Decrements the queue count however the wait ends (granted or cancelled).
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Slots {
    /// `total` concurrent generations (at least 1), at most `max_queue` waiting;
    /// `retry_after` is the hint given to refused clients.
    pub fn new(total: usize, max_queue: usize, retry_after: Duration) -> Self {
        let total = total.max(1);
        Self {
            permits: Arc::new(Semaphore::new(total)),
            total,
            max_queue,
            queued: Arc::new(AtomicUsize::new(0)),
            retry_after,
        }
    }

    /// Free and total slots.
    pub fn available(&self) -> (usize, usize) {
        (self.permits.available_permits(), self.total)
    }

    /// Takes a slot, waiting in the queue if there is room in it.
    pub async fn acquire(&self) -> Result<SlotGuard, BackendError> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(SlotGuard { _permit: permit });
        }
        let before = self.queued.fetch_add(1, Ordering::SeqCst);
        let _queued = Queued(&self.queued);
        if before >= self.max_queue {
            return Err(BackendError::Busy {
                slots: self.total,
                queued: before,
                retry_after: self.retry_after,
            });
        }
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| BackendError::Internal("the slot pool was closed".into()))?;
        Ok(SlotGuard { _permit: permit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_beyond_slots_and_queue_and_frees_on_drop() {
        let slots = Slots::new(1, 1, Duration::from_secs(2));
        let first = slots.acquire().await.unwrap();
        assert_eq!(slots.available(), (0, 1));
        // One may wait...
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.acquire().await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        while slots.queued.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // ...the next is refused.
        match slots.acquire().await {
            Err(BackendError::Busy { retry_after, .. }) => {
                assert_eq!(retry_after, Duration::from_secs(2))
            }
            other => panic!("expected busy, got {other:?}"),
        }
        drop(first);
        waiter.await.unwrap().unwrap();
        assert_eq!(slots.available(), (1, 1));
        assert_eq!(slots.queued.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_cancelled_wait_leaves_the_queue() {
        let slots = Slots::new(1, 1, Duration::from_secs(1));
        let _held = slots.acquire().await.unwrap();
        let wait = slots.acquire();
        let _ = tokio::time::timeout(Duration::from_millis(10), wait).await;
        assert_eq!(slots.queued.load(Ordering::SeqCst), 0);
    }
}
