//! A fixed number of concurrent generations, with a bounded queue in front, and one
//! place more for a tenant that holds none.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::BackendError;

/// On whose behalf a generation runs. Backends share slots and compute fairly among
/// tenants: one tenant holding every slot cannot keep another out ([`Slots`]), and the
/// embedded engine gives each tenant its turn in every decode step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tenant {
    /// This node's own clients (its local API).
    #[default]
    Local,
    /// A mesh app, by its public key.
    App([u8; 32]),
}

/// Slots and a bounded wait queue: a request beyond both is refused at once with
/// [`BackendError::Busy`], never left to pile up.
///
/// Besides the `total` slots there is one spare, taken only by a tenant that holds no
/// slot when every slot is taken: an app that keeps every slot busy (a flood, or just
/// a heavy user) cannot make another app wait behind it; the decode loop then gives
/// both their turns. The spare is not advertised (ads and 503s count `total`); it costs
/// one sequence's KV cache in the embedded engine.
#[derive(Clone, Debug)]
pub struct Slots {
    permits: Arc<Semaphore>,
    spare: Arc<Semaphore>,
    held: Arc<Mutex<HashMap<Tenant, usize>>>,
    total: usize,
    max_queue: usize,
    queued: Arc<AtomicUsize>,
    retry_after: Duration,
}

/// A taken slot; dropping it frees the slot.
#[derive(Debug)]
pub struct SlotGuard {
    _permit: OwnedSemaphorePermit,
    tenant: Tenant,
    held: Arc<Mutex<HashMap<Tenant, usize>>>,
}

impl SlotGuard {
    /// Whose slot it is.
    pub fn tenant(&self) -> Tenant {
        self.tenant
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut held = self.held.lock().expect("slots lock");
        if let Some(n) = held.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.tenant);
            }
        }
    }
}

/// Decrements the queue count however the wait ends (granted or cancelled).
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Slots {
    /// `total` concurrent generations (at least 1) and the spare, at most `max_queue`
    /// waiting; `retry_after` is the hint given to refused clients.
    pub fn new(total: usize, max_queue: usize, retry_after: Duration) -> Self {
        let total = total.max(1);
        Self {
            permits: Arc::new(Semaphore::new(total)),
            spare: Arc::new(Semaphore::new(1)),
            held: Arc::default(),
            total,
            max_queue,
            queued: Arc::new(AtomicUsize::new(0)),
            retry_after,
        }
    }

    /// Free and total slots (the spare not counted).
    pub fn available(&self) -> (usize, usize) {
        (self.permits.available_permits(), self.total)
    }

    /// Generations that may run at once: the slots and the spare.
    pub fn places(&self) -> usize {
        self.total + 1
    }

    fn guard(&self, permit: OwnedSemaphorePermit, tenant: Tenant) -> SlotGuard {
        *self
            .held
            .lock()
            .expect("slots lock")
            .entry(tenant)
            .or_default() += 1;
        SlotGuard {
            _permit: permit,
            tenant,
            held: self.held.clone(),
        }
    }

    /// Takes a slot for `tenant`: a free one, else the spare if `tenant` holds none,
    /// else a place in the queue if there is room in it.
    pub async fn acquire(&self, tenant: Tenant) -> Result<SlotGuard, BackendError> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(self.guard(permit, tenant));
        }
        let holds_none = !self.held.lock().expect("slots lock").contains_key(&tenant);
        if holds_none {
            if let Ok(permit) = self.spare.clone().try_acquire_owned() {
                return Ok(self.guard(permit, tenant));
            }
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
        Ok(self.guard(permit, tenant))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_beyond_slots_and_queue_and_frees_on_drop() {
        let slots = Slots::new(1, 1, Duration::from_secs(2));
        let first = slots.acquire(Tenant::Local).await.unwrap();
        assert_eq!(slots.available(), (0, 1));
        // One may wait...
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.acquire(Tenant::Local).await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        while slots.queued.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // ...the next is refused.
        match slots.acquire(Tenant::Local).await {
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
    async fn a_tenant_holding_no_slot_gets_the_spare_once() {
        let flood = Tenant::App([1; 32]);
        let slots = Slots::new(2, 0, Duration::from_secs(1));
        let held = [
            slots.acquire(flood).await.unwrap(),
            slots.acquire(flood).await.unwrap(),
        ];
        // The app holding every slot does not get the spare...
        assert!(matches!(
            slots.acquire(flood).await,
            Err(BackendError::Busy { .. })
        ));
        // ...an app holding none does, and then it holds one.
        let honest = slots.acquire(Tenant::Local).await.unwrap();
        assert_eq!(honest.tenant(), Tenant::Local);
        assert!(slots.acquire(Tenant::Local).await.is_err());
        assert!(
            slots.acquire(Tenant::App([2; 32])).await.is_err(),
            "one spare"
        );
        assert_eq!(slots.available(), (0, 2));
        // A regular slot freed goes to anyone; the spare, freed, is there again.
        drop(held);
        drop(honest);
        assert!(slots.held.lock().unwrap().is_empty());
        let again: Vec<_> = futures::future::join_all((0..3).map(|_| slots.acquire(flood)))
            .await
            .into_iter()
            .map(|s| s.is_ok())
            .collect();
        assert_eq!(again, [true, true, false]);
        assert!(slots.acquire(Tenant::Local).await.is_ok());
    }

    #[tokio::test]
    async fn a_cancelled_wait_leaves_the_queue() {
        let slots = Slots::new(1, 1, Duration::from_secs(1));
        let _held = slots.acquire(Tenant::Local).await.unwrap();
        let wait = slots.acquire(Tenant::Local);
        let _ = tokio::time::timeout(Duration::from_millis(10), wait).await;
        assert_eq!(slots.queued.load(Ordering::SeqCst), 0);
    }
}
