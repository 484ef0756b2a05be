//! One signal that the node is stopping, seen by every part that must end its work
//! cleanly: a supplier's streams end with a refusal the app fails over on at once, and
//! the local API's answers get [`STOP_GRACE`] to finish before they end with an error
//! (an event in a stream, 503 otherwise) instead of being cut.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

/// How long the local API's answers in flight may still run once the node stops.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// What an answer cut by [`STOP_GRACE`] ends with.
pub const STOPPED: &str =
    "this node is shutting down: ask again (another node, or this one once it is back)";

/// The stopping signal; clones share it.
#[derive(Clone, Debug)]
pub struct Stopping(watch::Sender<bool>);

impl Default for Stopping {
    fn default() -> Self {
        Self(watch::Sender::new(false))
    }
}

impl Stopping {
    /// The node stops now.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }

    /// Whether it does.
    pub fn is_stopping(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the node stops (at once if it has).
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_stop_and_a_late_waiter_too() {
        let stopping = Stopping::default();
        let waiter = tokio::spawn(stopping.clone().stopped());
        assert!(!stopping.is_stopping());
        stopping.stop();
        waiter.await.unwrap();
        stopping.stopped().await;
        assert!(stopping.clone().is_stopping());
    }
}
