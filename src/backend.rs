//! The small trait a store implements, and the values that cross it.
//!
//! A [`Backend`] offers primitives only: get, put, delete, conditional put/delete, a
//! range below a directory, a delete below a directory, watches and locks. Everything
//! else ([`Backend::exists`], [`Backend::list`], [`Backend::delete_tree`], and the error
//! mapping of atomic operations in [`crate::Kv`]) is derived from them by the generic
//! adapters in [`derived`]; a backend that can do better in one round trip overrides
//! the provided method with a native one.
//!
//! Keys reach a backend already normalised and validated ([`Key`], [`Dir`]), and values
//! already checked against [`Capabilities::max_value_size`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::error::Result;
use crate::key::{Dir, Key};

/// A key with its value and version.
#[derive(Clone, PartialEq, Eq)]
pub struct KvPair {
    /// The normalised key (without any backend prefix).
    pub key: String,
    /// The value.
    pub value: Bytes,
    /// The version of this key: nonzero, changes on every write of the key and never
    /// goes back (also across delete and re-create). Pass the pair to
    /// [`crate::Kv::atomic_put`] to write only if nobody wrote since.
    pub last_index: u64,
}

impl fmt::Debug for KvPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.value[..self.value.len().min(64)];
        f.debug_struct("KvPair")
            .field("key", &self.key)
            .field("value", &String::from_utf8_lossy(shown))
            .field("len", &self.value.len())
            .field("last_index", &self.last_index)
            .finish()
    }
}

/// Options of a write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Delete the key this long after the write. `None`: never expires. Rounded up to
    /// the backend's [`Capabilities::min_ttl`] and [`Capabilities::ttl_granularity`].
    pub ttl: Option<Duration>,
}

impl PutOptions {
    /// A write that expires after `ttl`.
    pub fn with_ttl(ttl: Duration) -> Self {
        PutOptions { ttl: Some(ttl) }
    }

    /// Sets the time to live.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
}

/// Options of a lock.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockOptions {
    /// Written to the lock key while the lock is held.
    pub value: Bytes,
    /// How long the lock outlives a holder that stopped renewing it (a crashed
    /// process). The guard renews it in the background while it lives. `None`: the
    /// backend's default ([`Capabilities::default_lock_ttl`]; memory and redb locks
    /// then never expire).
    pub ttl: Option<Duration>,
}

impl LockOptions {
    /// Sets the value written to the lock key while held.
    pub fn value(mut self, value: impl AsRef<[u8]>) -> Self {
        self.value = Bytes::copy_from_slice(value.as_ref());
        self
    }

    /// Sets the lock's time to live.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
}

/// What a backend can do, so callers and the shared tests can adapt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// The backend's short name, used in errors.
    pub name: &'static str,
    /// TTLs are rounded up to a multiple of this.
    pub ttl_granularity: Duration,
    /// Shorter TTLs are raised to this.
    pub min_ttl: Duration,
    /// A key put with TTL `t` is gone at the latest after `t * ttl_expiry_factor` plus
    /// [`Capabilities::ttl_granularity`] (Consul may take twice the TTL).
    pub ttl_expiry_factor: u32,
    /// The lock TTL used when [`LockOptions::ttl`] is `None`; `None` for no expiry.
    pub default_lock_ttl: Option<Duration>,
    /// True when locks exclude holders in other processes (false: one process only).
    pub cross_process_locks: bool,
    /// True when a watch yields every intermediate write; false when it may coalesce
    /// writes that happen in quick succession (it still converges).
    pub watch_sees_every_write: bool,
    /// Largest value accepted, in bytes.
    pub max_value_size: usize,
    /// True when data survives a restart of the process.
    pub persistent: bool,
}

impl Capabilities {
    /// The TTL a backend applies for a requested one: at least `min_ttl`, rounded up to
    /// a multiple of `ttl_granularity`.
    pub fn effective_ttl(&self, requested: Duration) -> Duration {
        let ttl = requested.max(self.min_ttl);
        let grain = self.ttl_granularity.as_nanos();
        if grain <= 1 {
            return ttl;
        }
        let rounded = ttl.as_nanos().div_ceil(grain) * grain;
        Duration::from_nanos(u64::try_from(rounded).unwrap_or(u64::MAX))
    }
}

/// The expected state of a key for a conditional write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The key must not exist.
    Absent,
    /// The key must exist with this `last_index`.
    Index(u64),
}

/// The result of a conditional operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cas<T> {
    /// The condition held and the write was applied.
    Applied(T),
    /// The condition failed; nothing was written. `current` is the key's `last_index`
    /// at the time, `None` when it did not exist.
    Conflict {
        /// The key's current version, if it exists.
        current: Option<u64>,
    },
}

/// A key/value store that kvkit can drive.
///
/// Implementations are cheap handles (`Clone` shares the connection). Every async
/// method returns a `Send` future; none is boxed.
pub trait Backend: Clone + Send + Sync + 'static {
    /// The stream of [`crate::Kv::watch`]: the current state first, then every change.
    type Watch: Stream<Item = Result<Option<KvPair>>> + Send + Unpin + 'static;
    /// The stream of [`crate::Kv::watch_tree`]: the sorted subtree after every change.
    type WatchTree: Stream<Item = Result<Vec<KvPair>>> + Send + Unpin + 'static;
    /// The guard of a held lock.
    type Lock: LockGuard;

    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// The pair at `key`, or `None`.
    fn get(&self, key: &Key<'_>) -> impl Future<Output = Result<Option<KvPair>>> + Send;

    /// Writes `value` at `key` unconditionally and returns the new pair.
    fn put(
        &self,
        key: &Key<'_>,
        value: Bytes,
        options: &PutOptions,
    ) -> impl Future<Output = Result<KvPair>> + Send;

    /// Deletes `key`; `false` when it did not exist. Keys below it are kept.
    fn delete(&self, key: &Key<'_>) -> impl Future<Output = Result<bool>> + Send;

    /// Writes `value` at `key` only if the key is in the `expect`ed state, atomically
    /// on the server.
    fn compare_and_put(
        &self,
        key: &Key<'_>,
        value: Bytes,
        expect: Expect,
        options: &PutOptions,
    ) -> impl Future<Output = Result<Cas<KvPair>>> + Send;

    /// Deletes `key` only if its `last_index` is `index`, atomically on the server.
    fn compare_and_delete(
        &self,
        key: &Key<'_>,
        index: u64,
    ) -> impl Future<Output = Result<Cas<()>>> + Send;

    /// Every pair strictly below `dir` (keys starting with [`Dir::child_prefix`]),
    /// recursively, in any order.
    fn scan_below(&self, dir: &Dir) -> impl Future<Output = Result<Vec<KvPair>>> + Send;

    /// Deletes every key strictly below `dir`; `dir` itself is kept.
    fn delete_below(&self, dir: &Dir) -> impl Future<Output = Result<()>> + Send;

    /// Watches one key; see [`crate::Kv::watch`] for the guarantees.
    fn watch(&self, key: &Key<'_>) -> impl Future<Output = Result<Self::Watch>> + Send;

    /// Watches everything below `dir`; see [`crate::Kv::watch_tree`].
    fn watch_tree(&self, dir: &Dir) -> impl Future<Output = Result<Self::WatchTree>> + Send;

    /// Waits until the lock on `key` is acquired.
    fn lock(
        &self,
        key: &Key<'_>,
        options: &LockOptions,
    ) -> impl Future<Output = Result<Self::Lock>> + Send;

    /// Acquires the lock on `key` if it is free right now; never waits for a holder.
    fn try_lock(
        &self,
        key: &Key<'_>,
        options: &LockOptions,
    ) -> impl Future<Output = Result<Option<Self::Lock>>> + Send;

    /// Stops background work and releases connections. Later calls may fail with
    /// [`crate::Error::Closed`].
    fn close(&self) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// Derived: whether `key` exists. Default: [`derived::exists`].
    fn exists(&self, key: &Key<'_>) -> impl Future<Output = Result<bool>> + Send {
        derived::exists(self, key)
    }

    /// Derived: every pair strictly below `dir`, sorted by key. Default:
    /// [`derived::list`].
    fn list(&self, dir: &Dir) -> impl Future<Output = Result<Vec<KvPair>>> + Send {
        derived::list(self, dir)
    }

    /// Derived: deletes `dir` and everything below it. Default:
    /// [`derived::delete_tree`] (two operations, not atomic).
    fn delete_tree(&self, dir: &Dir) -> impl Future<Output = Result<()>> + Send {
        derived::delete_tree(self, dir)
    }
}

/// The guard of a held lock. Dropping it releases the lock (in the background);
/// [`LockGuard::unlock`] releases it and reports the outcome.
pub trait LockGuard: Send + Sync + 'static {
    /// The normalised lock key.
    fn key(&self) -> &str;

    /// A future that resolves when the lock is lost (its lease or session expired, a
    /// renewal failed, or its key was overwritten or deleted by someone else). It
    /// stays pending while the lock is held and after a clean unlock.
    fn lost(&self) -> LockLost;

    /// True once the lock is known to be lost.
    fn is_lost(&self) -> bool;

    /// Releases the lock. `Err(Error::LockLost)` when it had already been lost.
    fn unlock(self) -> impl Future<Output = Result<()>> + Send;
}

/// A one-way signal that a lock was lost, shared by a guard and its keep-alive task.
#[derive(Clone, Debug, Default)]
pub struct LostSignal(CancellationToken);

impl LostSignal {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the signal; idempotent.
    pub fn fire(&self) {
        self.0.cancel();
    }

    /// True once fired.
    pub fn is_fired(&self) -> bool {
        self.0.is_cancelled()
    }

    /// A future resolving when the signal fires.
    pub fn wait(&self) -> LockLost {
        LockLost {
            inner: self.0.clone().cancelled_owned(),
        }
    }
}

/// Resolves when a lock is lost; see [`LockGuard::lost`].
#[pin_project::pin_project]
#[derive(Debug)]
pub struct LockLost {
    #[pin]
    inner: WaitForCancellationFutureOwned,
}

impl Future for LockLost {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().inner.poll(cx)
    }
}

/// The generic adapters that derive operations from a backend's primitives. A backend
/// overrides the matching [`Backend`] method when it has a native operation.
pub mod derived {
    use super::*;

    /// `get` mapped to a bool.
    pub async fn exists<B: Backend>(backend: &B, key: &Key<'_>) -> Result<bool> {
        Ok(backend.get(key).await?.is_some())
    }

    /// `scan_below`, restricted to strict descendants of `dir` and sorted by key, so a
    /// backend's raw prefix match can never leak a sibling such as `dir2/x`.
    pub async fn list<B: Backend>(backend: &B, dir: &Dir) -> Result<Vec<KvPair>> {
        let mut pairs = backend.scan_below(dir).await?;
        pairs.retain(|pair| dir.contains(&pair.key));
        pairs.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        Ok(pairs)
    }

    /// `delete` of `dir` itself, then `delete_below` below it.
    pub async fn delete_tree<B: Backend>(backend: &B, dir: &Dir) -> Result<()> {
        if let Some(key) = dir.as_key() {
            backend.delete(&key).await?;
        }
        backend.delete_below(dir).await
    }
}
