//! TTL expiry of the in-memory store: one background task per store deletes entries
//! when their deadline passes, so watchers see them go.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Inner, Memory};

impl Memory {
    /// Starts the expiry task if none runs (on the first TTL write, or again when the
    /// runtime that ran it has ended), and wakes it.
    pub(super) fn schedule_expiry(&self) {
        if !self.inner.reaper_started.swap(true, Ordering::AcqRel) {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    let running = ReaperRunning(Arc::downgrade(&self.inner));
                    handle.spawn(reap(running, self.inner.reaper.clone()));
                }
                // Reads still hide expired keys; only watchers miss the expiry.
                Err(_) => self.inner.reaper_started.store(false, Ordering::Release),
            }
        }
        self.inner.reaper.notify_one();
    }

    /// Makes sure pending TTLs reach watchers: a new watcher may live on a runtime
    /// other than the one whose expiry task ended with it.
    pub(super) fn ensure_expiry(&self) {
        // The flag first: a running task (the common case) costs no lock.
        if self.inner.reaper_started.load(Ordering::Acquire) {
            return;
        }
        let pending = !self
            .inner
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expiries
            .is_empty();
        if pending {
            self.schedule_expiry();
        }
    }
}

/// Owned by the expiry task: when the task ends, also because its runtime shut down
/// and dropped it, the store learns that no task runs, so the next TTL write or watch
/// starts one on a live runtime.
struct ReaperRunning(Weak<Inner>);

impl Drop for ReaperRunning {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.reaper_started.store(false, Ordering::Release);
        }
    }
}

/// Deletes expired entries when their deadline passes, so watchers see them go.
async fn reap(running: ReaperRunning, wake: Arc<Notify>) {
    let inner = running.0.clone();
    loop {
        let next = {
            let Some(inner) = inner.upgrade() else { return };
            if inner.closed.load(Ordering::Acquire) {
                return;
            }
            let mut state = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            let expired = state.expire(Instant::now());
            let next = state.expiries.first().map(|(at, _)| *at);
            drop(state);
            inner.watchers.notify(expired.iter().map(String::as_str));
            next
        };
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Lets the expiry task see that the store is gone and end.
        self.reaper.notify_one();
    }
}
