//! Locks: a session (`Behavior=release`, a TTL, a lock-delay) per lock, `acquire`
//! through a one-op transaction, waiting through blocking queries on the lock key.
//!
//! While a contender waits, it blocks on the key until the key looks free, then tries
//! again. A key that looks free but cannot be acquired is under a lock-delay (its
//! holder's session was invalidated); only then does the waiter retry on a capped
//! backoff, which ends with the lock-delay. The guard renews its session every TTL/2
//! and watches the key with blocking queries: the lock is lost when the key is
//! deleted, overwritten by a kvkit put, or released by Consul because the session was
//! invalidated (destroyed, or expired after the renewals failed for a whole TTL).
//! Unlock deletes the key (only while this session holds it) and destroys the session.
//!
//! Every session is registered with its handle: `close` releases the key of each one
//! (only while that session holds it) and destroys it, and the guards' `lost()` fires,
//! so a closed handle never goes on believing it holds a lock that Consul hands to
//! someone else once the session expires. A waiter rides out transport failures
//! (a dropped TLS connection, an agent restart) and resumes waiting.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::json;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::client::{Entry, NAME, encode};
use super::{Inner, Txn};
use crate::backend::{LockGuard, LockLost, LockOptions, LostSignal};
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::key::Key;

/// A held Consul lock. Dropping it releases the lock in the background;
/// [`LockGuard::unlock`] releases it and reports the outcome.
#[derive(Debug)]
pub struct ConsulLock {
    key: String,
    remote: String,
    session: Session,
}

/// A lock session with its keep-alive; destroyed on drop unless disarmed.
#[derive(Debug)]
struct Session {
    inner: Arc<Inner>,
    id: String,
    lost: LostSignal,
    tasks: Vec<AbortHandle>,
    armed: bool,
    /// Still in the handle's `lock_sessions` (so `close` releases it); a release run
    /// in the background unregisters it only when done, so a `close` meanwhile still
    /// finds it.
    registered: bool,
}

/// Forgets a lock session in the handle's registry (released, or released by `close`).
fn unregister(inner: &Inner, id: &str) {
    inner
        .lock_sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(id);
}

impl Session {
    /// Creates a session for the lock on `remote`, registered with the handle.
    async fn create(inner: Arc<Inner>, ttl: Duration, remote: &str) -> Result<Self> {
        let lock_delay = inner.config.lock_delay;
        let id = inner
            .create_session("kvkit-lock", ttl, "release", lock_delay)
            .await?;
        let lost = LostSignal::new();
        inner
            .lock_sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), (remote.to_owned(), lost.clone()));
        let renew = tokio::spawn(renew_loop(inner.clone(), id.clone(), ttl, lost.clone()));
        Ok(Session {
            inner,
            id,
            lost,
            tasks: vec![renew.abort_handle()],
            armed: true,
            registered: true,
        })
    }

    fn stop_tasks(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }

    fn unregister(&mut self) {
        if std::mem::take(&mut self.registered) {
            unregister(&self.inner, &self.id);
        }
    }

    /// Stops the keep-alive and destroys the session now.
    async fn destroy(mut self) -> Result<()> {
        self.stop_tasks();
        self.armed = false;
        let destroyed = self.inner.destroy_session(&self.id).await;
        self.unregister();
        destroyed
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop_tasks();
        if self.armed && self.registered {
            let inner = self.inner.clone();
            let id = self.id.clone();
            let spawned = crate::background::release_in_background("consul session", async move {
                let destroyed = inner.destroy_session(&id).await;
                unregister(&inner, &id);
                destroyed
            });
            self.registered &= !spawned;
        }
        self.unregister();
    }
}

/// First delay of every retry here; doubled per failure up to the loop's cap.
const RETRY_FIRST: Duration = Duration::from_millis(50);
/// Cap of the retries after failed requests.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Cap of the waits for a lock-delay to end.
const LOCK_DELAY_MAX: Duration = Duration::from_secs(1);

/// Renews the session every TTL/2; fires `lost` when Consul no longer knows it, or
/// when no renewal succeeded for a whole TTL.
async fn renew_loop(inner: Arc<Inner>, id: String, ttl: Duration, lost: LostSignal) {
    let every = (ttl / 2).max(Duration::from_millis(100));
    // A failed renewal is retried sooner, never later than every TTL/8.
    let mut retries = Backoff::new(RETRY_FIRST, (every / 4).max(RETRY_FIRST));
    let mut last_ok = Instant::now();
    let mut delay = every;
    loop {
        tokio::select! {
            // `close` released the lock and destroyed the session.
            _ = inner.closed.cancelled() => { lost.fire(); return }
            _ = tokio::time::sleep(delay) => {}
        }
        let path = format!("/v1/session/renew/{}", encode(&id, false));
        match inner
            .client
            .request(Method::PUT, &path, Bytes::new(), Duration::ZERO)
            .await
        {
            Ok(resp) if resp.status == StatusCode::OK => {
                last_ok = Instant::now();
                retries.reset();
                delay = every;
            }
            Ok(resp) if resp.status == StatusCode::NOT_FOUND => {
                lost.fire();
                return;
            }
            _ => {
                if last_ok.elapsed() >= ttl {
                    lost.fire();
                    return;
                }
                delay = retries.next_delay();
            }
        }
    }
}

/// Watches the lock key; fires `lost` once this session no longer holds it.
async fn watch_for_loss(
    inner: Arc<Inner>,
    remote: String,
    session: String,
    lost: LostSignal,
    mut index: u64,
) {
    let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            _ = inner.closed.cancelled() => { lost.fire(); return }
            outcome = inner.get_entry(&remote, index) => outcome,
        };
        match outcome {
            Ok((entry, at)) => {
                backoff.reset();
                if entry.and_then(|e| e.session).as_deref() != Some(session.as_str()) {
                    lost.fire();
                    return;
                }
                let unchanged = at == index;
                index = if at < index { 0 } else { at };
                if unchanged && started.elapsed() < Duration::from_millis(50) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Err(_) => tokio::time::sleep(backoff.next_delay()).await,
        }
    }
}

/// Sleeps `delay`; `Err(Closed)` as soon as the handle is closed.
async fn pause(inner: &Inner, delay: Duration) -> Result<()> {
    tokio::select! {
        _ = inner.closed.cancelled() => Err(Error::Closed),
        _ = tokio::time::sleep(delay) => Ok(()),
    }
}

fn is_free(entry: &Option<Entry>) -> bool {
    entry
        .as_ref()
        .is_none_or(|e| e.session.as_deref().unwrap_or("").is_empty())
}

/// Takes the lock on `key`; waits for it when `wait`, else returns `None` when held.
pub(crate) async fn lock(
    inner: Arc<Inner>,
    key: &Key<'_>,
    options: &LockOptions,
    wait: bool,
) -> Result<Option<ConsulLock>> {
    if inner.closed.is_cancelled() {
        return Err(Error::Closed);
    }
    let ttl = options
        .ttl
        .unwrap_or(inner.config.lock_ttl)
        .max(inner.config.min_session_ttl);
    let remote = inner.remote(key.as_str());
    let mut session = Session::create(inner.clone(), ttl, &remote).await?;
    let mut failures = Backoff::new(RETRY_FIRST, RETRY_MAX);
    let mut delay_backoff = Backoff::new(RETRY_FIRST, LOCK_DELAY_MAX);
    let acquired_at = loop {
        if session.lost.is_fired() {
            return Err(Error::unavailable(
                NAME,
                "the lock session expired while waiting for the lock",
            ));
        }
        let ops = vec![json!({
            "Verb": "lock",
            "Key": remote,
            "Value": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &options.value),
            "Session": session.id,
        })];
        let attempt = match inner.txn(ops).await {
            // A waiter rides out an outage; the session's renewals tell when it is over.
            Err(e) if wait && e.is_retryable() => {
                pause(&inner, failures.next_delay()).await?;
                continue;
            }
            other => other?,
        };
        failures.reset();
        match attempt {
            Txn::Applied(entries) => {
                let index = entries
                    .iter()
                    .rev()
                    .find(|e| e.key == remote)
                    .map_or(0, |e| e.modify_index);
                break index;
            }
            Txn::RolledBack(_) if !wait => {
                session.destroy().await?;
                return Ok(None);
            }
            Txn::RolledBack(_) => {}
        }
        // Held by someone, or under a lock-delay. Look now.
        let (entry, at) = match inner.get_entry(&remote, 0).await {
            Err(e) if e.is_retryable() => {
                pause(&inner, failures.next_delay()).await?;
                continue;
            }
            other => other?,
        };
        if is_free(&entry) {
            // Free but refused: a lock-delay. Back off until it ends.
            pause(&inner, delay_backoff.next_delay()).await?;
            continue;
        }
        delay_backoff.reset();
        // Held: block on the key until it looks free.
        let mut index = at;
        let mut errors = Backoff::new(RETRY_FIRST, RETRY_MAX);
        loop {
            if session.lost.is_fired() {
                break;
            }
            let outcome = tokio::select! {
                _ = inner.closed.cancelled() => return Err(Error::Closed),
                outcome = inner.get_entry(&remote, index) => outcome,
            };
            match outcome {
                Ok((entry, at)) => {
                    errors.reset();
                    if is_free(&entry) {
                        break;
                    }
                    index = if at < index { 0 } else { at };
                }
                Err(e) if e.is_retryable() => pause(&inner, errors.next_delay()).await?,
                Err(e) => return Err(e),
            }
        }
    };
    let loss_watch = tokio::spawn(watch_for_loss(
        inner.clone(),
        remote.clone(),
        session.id.clone(),
        session.lost.clone(),
        acquired_at,
    ));
    session.tasks.push(loss_watch.abort_handle());
    Ok(Some(ConsulLock {
        key: key.as_str().to_owned(),
        remote,
        session,
    }))
}

impl ConsulLock {
    /// The id of the Consul session holding the lock.
    pub fn session_id(&self) -> &str {
        &self.session.id
    }
}

impl LockGuard for ConsulLock {
    fn key(&self) -> &str {
        &self.key
    }

    fn lost(&self) -> LockLost {
        self.session.lost.wait()
    }

    fn is_lost(&self) -> bool {
        self.session.lost.is_fired()
    }

    async fn unlock(mut self) -> Result<()> {
        self.session.stop_tasks();
        let inner = self.session.inner.clone();
        let outcome = if self.session.lost.is_fired() {
            Err(Error::LockLost {
                key: self.key.clone(),
            })
        } else {
            let ops = vec![
                json!({"Verb": "check-session", "Key": self.remote, "Session": self.session.id}),
                json!({"Verb": "delete", "Key": self.remote}),
            ];
            match inner.txn_even_if_closed(ops).await {
                Ok(Txn::Applied(_)) => Ok(()),
                Ok(Txn::RolledBack(_)) => {
                    self.session.lost.fire();
                    Err(Error::LockLost {
                        key: self.key.clone(),
                    })
                }
                Err(e) => Err(e),
            }
        };
        self.session.armed = false;
        let destroyed = inner.destroy_session(&self.session.id).await;
        self.session.unregister();
        outcome?;
        destroyed
    }
}

impl Drop for ConsulLock {
    fn drop(&mut self) {
        if !self.session.armed {
            return;
        }
        // Released in the background: delete the key if still ours, then destroy the
        // session (destroying alone would start a lock-delay).
        self.session.stop_tasks();
        self.session.armed = false;
        let inner = self.session.inner.clone();
        let id = self.session.id.clone();
        let remote = self.remote.clone();
        let spawned = crate::background::release_in_background("consul lock", async move {
            let ops = vec![
                json!({"Verb": "check-session", "Key": remote, "Session": id}),
                json!({"Verb": "delete", "Key": remote}),
            ];
            // The session goes even if the delete failed (its key is released then).
            let deleted = inner.txn_even_if_closed(ops).await;
            let destroyed = inner.destroy_session(&id).await;
            unregister(&inner, &id);
            destroyed?;
            deleted.map(drop)
        });
        // Unregistered by the release when it is done (the session drops after this).
        self.session.registered &= !spawned;
    }
}
