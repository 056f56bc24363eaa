//! Whether the store can serve, as last seen: kept by a background watch that probes the store
//! every few seconds, and by failed storage calls on the request path. A storage error seen by
//! a request also wakes the watch ([`Health::wake`]): it probes at once instead of at its next
//! interval, so an outage is confirmed (and redirects stop) a round trip after the first failure,
//! and a passing error is cleared as fast. Woken probes are at least [`WOKEN_PROBE_GAP`] apart,
//! so a flood of failing requests costs storage at most one probe a second.
//!
//! `GET /health` answers from here, never from a storage call of its own, so nobody can turn it
//! into storage traffic. The Azure backend also reads it on every GET: while storage is down, a
//! GET is a miss instead of a redirect to a store the client cannot reach (which would abort the
//! client's build).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Store, StoreError};

/// The least time between the start of one probe and a probe woken by a request's error.
pub const WOKEN_PROBE_GAP: Duration = Duration::from_secs(1);

/// The last known health of a store. Transitions are logged, once each.
#[derive(Debug)]
pub struct Health {
    healthy: AtomicBool,
    /// Why the store is not healthy; for the log and `handler doctor`, not for `/health`.
    reason: RwLock<Option<String>>,
    /// Wakes the watch for a probe now. Shared with the watch, which waits on it without holding
    /// the store (so the watch ends when the store is dropped).
    woken: Arc<Notify>,
}

/// Wakes a store's health watch ([`Health::waker`]); keeps no store alive.
#[derive(Debug, Clone, Default)]
pub struct Waker(Arc<Notify>);

impl Waker {
    /// The same as [`Health::wake`].
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

impl Default for Health {
    fn default() -> Self {
        Self {
            healthy: AtomicBool::new(true),
            reason: RwLock::new(None),
            woken: Arc::new(Notify::new()),
        }
    }
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// The reason the store is unhealthy, if it is.
    pub fn reason(&self) -> Option<String> {
        self.reason
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sets the state without logging (startup reports the first probe itself).
    pub fn set(&self, result: &Result<(), StoreError>) {
        *self.reason.write().unwrap_or_else(|e| e.into_inner()) =
            result.as_ref().err().map(|e| e.to_string());
        self.healthy.store(result.is_ok(), Ordering::Relaxed);
    }

    /// Records a probe or a storage call's outcome; logs only the transitions.
    pub fn record(&self, result: &Result<(), StoreError>) {
        let was = self.is_healthy();
        self.set(result);
        match (was, result) {
            (true, Err(e)) => tracing::warn!(error = %e,
                "storage unavailable: GETs answer misses and uploads are not stored until it recovers"),
            (false, Ok(())) => tracing::info!("storage available again"),
            _ => {}
        }
    }

    /// Asks the watch for a probe now: a request saw storage fail. Cheap and never waits; wakes
    /// that come while a probe runs give one more probe after it.
    pub fn wake(&self) {
        self.woken.notify_one();
    }

    /// What wakes the watch, for work that outlives the request that began it (a streamed
    /// download's body).
    pub fn waker(&self) -> Waker {
        Waker(self.woken.clone())
    }

    /// Probes `store` every `every`, and when woken ([`Health::wake`]), for as long as the store
    /// exists.
    pub fn spawn_watch(store: Weak<dyn Store>, every: Duration) {
        let Some(woken) = store.upgrade().map(|s| s.health().woken.clone()) else {
            return;
        };
        tokio::spawn(async move {
            let mut last = Instant::now();
            loop {
                let woke = tokio::select! {
                    _ = tokio::time::sleep_until(last + every) => false,
                    _ = woken.notified() => true,
                };
                if woke {
                    tokio::time::sleep_until(last + WOKEN_PROBE_GAP).await;
                }
                last = Instant::now();
                let Some(store) = store.upgrade() else { return };
                let result = store.ready().await;
                tracing::debug!(ok = result.is_ok(), woken = woke, "storage probe");
                store.health().record(&result);
            }
        });
    }
}

/// Starts the watch for a store held in an `Arc`.
pub fn watch(store: &Arc<dyn Store>, every: Duration) {
    Health::spawn_watch(Arc::downgrade(store), every);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_keep_the_reason() {
        let health = Health::default();
        assert!(health.is_healthy());
        health.record(&Err(StoreError::Backend("account 'acme' is gone".into())));
        assert!(!health.is_healthy());
        assert_eq!(health.reason().unwrap(), "account 'acme' is gone");
        health.record(&Ok(()));
        assert!(health.is_healthy());
        assert!(health.reason().is_none());
    }
}
