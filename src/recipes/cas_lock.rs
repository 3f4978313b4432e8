//! [`CasLock`]: a lock on any backend, built from its storage primitives.
//!
//! [`CasLock`] is a lock made of a create-only write, renewal by compare-and-swap, and a
//! watch of the lock key. The in-process stores (memory, redb) use it as their lock; a
//! backend with a native lock (etcd leases, ZooKeeper sequential nodes, Consul
//! sessions) uses its own.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::oneshot;

use crate::backend::{
    Backend, Cas, Expect, KvPair, LockGuard, LockLost, LockOptions, LostSignal, PutOptions,
};
use crate::error::{Error, Result};
use crate::key::Key;

type Reply = oneshot::Sender<Result<()>>;

/// A lock held by writing its key create-only; see the module docs.
///
/// While held, a background task renews a TTL lock every third of its TTL (by CAS, so a
/// holder that lost the key can never overwrite a new holder) and watches the key: if
/// the key is deleted, expires or is overwritten, the lock is lost. Dropping the guard
/// deletes the key by CAS in the background.
pub struct CasLock<B: Backend> {
    key: String,
    lost: LostSignal,
    release: Option<oneshot::Sender<Reply>>,
    _backend: std::marker::PhantomData<fn() -> B>,
}

impl<B: Backend> fmt::Debug for CasLock<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CasLock")
            .field("key", &self.key)
            .field("lost", &self.lost.is_fired())
            .finish()
    }
}

impl<B: Backend> CasLock<B> {
    /// Waits until the lock on `key` is taken: a backend's `Backend::lock`.
    pub async fn lock(backend: &B, key: &Key<'_>, options: &LockOptions) -> Result<Self> {
        Self::acquire(backend, key, options, true)
            .await?
            .ok_or(Error::Closed)
    }

    /// Takes the lock on `key` if it is free: a backend's `Backend::try_lock`.
    pub async fn try_lock(
        backend: &B,
        key: &Key<'_>,
        options: &LockOptions,
    ) -> Result<Option<Self>> {
        Self::acquire(backend, key, options, false).await
    }

    /// Takes the lock on `key`, waiting for the holder to release it when `wait`;
    /// `Ok(None)` when not waiting and the lock is taken.
    pub async fn acquire(
        backend: &B,
        key: &Key<'_>,
        options: &LockOptions,
        wait: bool,
    ) -> Result<Option<Self>> {
        let put_options = PutOptions { ttl: options.ttl };
        loop {
            match backend
                .compare_and_put(key, options.value.clone(), Expect::Absent, &put_options)
                .await?
            {
                Cas::Applied(pair) => {
                    // Cancel-safe: if this future is dropped before the guard exists,
                    // the taken lock is released instead of being left behind.
                    let mut taken = Taken {
                        backend: Some(backend.clone()),
                        key: key.owned(),
                        index: pair.last_index,
                    };
                    let guard = Self::hold(backend, key, options, pair).await;
                    if guard.is_ok() {
                        taken.backend = None;
                    }
                    return guard.map(Some);
                }
                Cas::Conflict { .. } if !wait => return Ok(None),
                Cas::Conflict { .. } => wait_until_absent(backend, key).await?,
            }
        }
    }

    async fn hold(backend: &B, key: &Key<'_>, options: &LockOptions, pair: KvPair) -> Result<Self> {
        // The watch starts before the guard is handed out, so no change is missed.
        let watch = backend.watch(key).await?;
        let lost = LostSignal::new();
        let (release, release_rx) = oneshot::channel();
        let task = Holder {
            backend: backend.clone(),
            key: key.owned(),
            value: options.value.clone(),
            ttl: options.ttl,
            pair,
            lost: lost.clone(),
        };
        tokio::spawn(task.run(watch, release_rx));
        Ok(CasLock {
            key: key.as_str().to_owned(),
            lost,
            release: Some(release),
            _backend: std::marker::PhantomData,
        })
    }
}

/// A lock taken by `acquire` whose guard does not exist yet; released on drop unless
/// disarmed (`backend = None`).
struct Taken<B: Backend> {
    backend: Option<B>,
    key: Key<'static>,
    index: u64,
}

impl<B: Backend> Drop for Taken<B> {
    fn drop(&mut self) {
        if let (Some(backend), Ok(runtime)) =
            (self.backend.take(), tokio::runtime::Handle::try_current())
        {
            let key = self.key.clone();
            let index = self.index;
            runtime.spawn(async move {
                let _ = backend.compare_and_delete(&key, index).await;
            });
        }
    }
}

/// Waits until `key` does not exist.
async fn wait_until_absent<B: Backend>(backend: &B, key: &Key<'_>) -> Result<()> {
    let mut watch = backend.watch(key).await?;
    while let Some(state) = watch.next().await {
        if state?.is_none() {
            return Ok(());
        }
    }
    Err(Error::Closed)
}

impl<B: Backend> LockGuard for CasLock<B> {
    fn key(&self) -> &str {
        &self.key
    }

    fn lost(&self) -> LockLost {
        self.lost.wait()
    }

    fn is_lost(&self) -> bool {
        self.lost.is_fired()
    }

    async fn unlock(mut self) -> Result<()> {
        let (reply, outcome) = oneshot::channel();
        let release = self
            .release
            .take()
            .expect("release is taken only here and in drop");
        if release.send(reply).is_err() {
            return Err(Error::LockLost {
                key: self.key.clone(),
            });
        }
        outcome.await.unwrap_or_else(|_| {
            Err(Error::LockLost {
                key: self.key.clone(),
            })
        })
    }
}

impl<B: Backend> Drop for CasLock<B> {
    fn drop(&mut self) {
        // Dropping the sender tells the holder task to release.
        self.release.take();
    }
}

/// The background task of a held [`CasLock`].
struct Holder<B> {
    backend: B,
    key: Key<'static>,
    value: Bytes,
    ttl: Option<Duration>,
    pair: KvPair,
    lost: LostSignal,
}

impl<B: Backend> Holder<B> {
    async fn run(mut self, mut watch: B::Watch, mut release: oneshot::Receiver<Reply>) {
        let renew_every = self.ttl.map(|ttl| (ttl / 3).max(Duration::from_millis(1)));
        let period = renew_every.unwrap_or(Duration::from_secs(3600));
        // First renewal one period from now. Awaiting an interval's immediate first tick
        // here instead parked the holder for up to a timer tick (~1 ms) before it
        // listened for `unlock`.
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                request = &mut release => {
                    let outcome = self.release().await;
                    if let Ok(reply) = request {
                        let _ = reply.send(outcome);
                    }
                    return;
                }
                _ = renew.tick(), if renew_every.is_some() && !self.lost.is_fired() => {
                    self.renew().await;
                }
                state = watch.next(), if !self.lost.is_fired() => {
                    match state {
                        Some(Ok(Some(pair))) if pair.last_index <= self.pair.last_index => {}
                        // The store is closed or the watch ended: the lock is gone with it.
                        Some(Err(Error::Closed)) | None => self.lost.fire(),
                        // A failed read says nothing about the key: look at it directly.
                        Some(Err(err)) => self.recheck(err).await,
                        // Deleted, expired or overwritten: not ours any more.
                        Some(Ok(_)) => self.lost.fire(),
                    }
                }
            }
        }
    }

    async fn renew(&mut self) {
        let options = PutOptions { ttl: self.ttl };
        let outcome = self
            .backend
            .compare_and_put(
                &self.key,
                self.value.clone(),
                Expect::Index(self.pair.last_index),
                &options,
            )
            .await;
        match outcome {
            Ok(Cas::Applied(pair)) => self.pair = pair,
            // A transient failure is retried at the next tick; the TTL covers three.
            Err(err) if err.is_retryable() => {
                tracing::warn!(key = %self.key, %err, "lock renewal failed, will retry");
            }
            Ok(Cas::Conflict { .. }) | Err(_) => self.lost.fire(),
        }
    }

    /// After the watch reported `err`: the lock is lost only if the key is no longer
    /// our write. A read that fails too keeps the lock (a TTL lock is still guarded by
    /// its renewals), so a transient error never gives up a key that stays taken.
    async fn recheck(&self, err: Error) {
        tracing::debug!(key = %self.key, %err, "lock watch reported an error; checking the key");
        match self.backend.get(&self.key).await {
            Ok(Some(pair)) if pair.last_index == self.pair.last_index => {}
            Ok(_) => self.lost.fire(),
            Err(Error::Closed) => self.lost.fire(),
            Err(err) => tracing::warn!(key = %self.key, %err, "lock key unreadable; still held"),
        }
    }

    /// Deletes the key if it still holds our write, also after the lock was reported
    /// lost (the delete is conditional on our index, so it never touches a new
    /// holder's key): a lost lock never strands its key.
    async fn release(&self) -> Result<()> {
        let was_lost = self.lost.is_fired();
        let outcome = self
            .backend
            .compare_and_delete(&self.key, self.pair.last_index)
            .await;
        let lost = || {
            Err(Error::LockLost {
                key: self.key.as_str().to_owned(),
            })
        };
        match outcome {
            _ if was_lost => lost(),
            Ok(Cas::Applied(())) => Ok(()),
            Ok(Cas::Conflict { .. }) => {
                self.lost.fire();
                lost()
            }
            Err(err) => Err(err),
        }
    }
}
