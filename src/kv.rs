//! [`Kv`], the user-facing layer over any [`Backend`].

use std::time::Duration;

use bytes::Bytes;

use crate::backend::{Backend, Capabilities, Cas, Expect, KvPair, LockOptions, PutOptions};
use crate::error::{Error, Result};
use crate::key::{Dir, Key};

/// One key/value and coordination API over any [`Backend`], chosen at compile time.
///
/// A cheap `Clone + Send + Sync` handle: clones share the backend's connection. Every
/// method normalises and validates its key (see [`crate::key`]) and checks the value
/// size before any I/O, so every backend sees the same inputs and reports the same
/// errors.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> kvkit::Result<()> {
/// use kvkit::{Kv, PutOptions, memory::Memory};
///
/// let kv = Kv::new(Memory::new());
/// kv.put("app/config", "v1", PutOptions::default()).await?;
/// let pair = kv.get("/app/config/").await?; // the same key
/// assert_eq!(pair.value, "v1");
/// assert_eq!(kv.list("app").await?.len(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Kv<B> {
    backend: B,
}

impl<B: Backend> Kv<B> {
    /// Wraps a backend.
    pub fn new(backend: B) -> Self {
        Kv { backend }
    }

    /// The backend, for its own operations.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Unwraps the backend.
    pub fn into_backend(self) -> B {
        self.backend
    }

    /// What the backend can do.
    pub fn capabilities(&self) -> Capabilities {
        self.backend.capabilities()
    }

    /// The pair at `key`; `Error::NotFound` when absent.
    #[inline]
    pub async fn get(&self, key: impl AsRef<str>) -> Result<KvPair> {
        let key = Key::new(key.as_ref())?;
        match self.backend.get(&key).await {
            Ok(Some(pair)) => Ok(pair),
            Ok(None) => Err(Error::not_found(key.as_str())),
            Err(e) => Err(e),
        }
    }

    /// Writes `value` at `key` and returns the new pair (with its `last_index`).
    pub async fn put(
        &self,
        key: impl AsRef<str>,
        value: impl Into<Bytes>,
        options: PutOptions,
    ) -> Result<KvPair> {
        let key = Key::new(key.as_ref())?;
        let value = self.check_value(value.into())?;
        let options = self.effective(options);
        self.backend.put(&key, value, &options).await
    }

    /// Deletes `key`; `Error::NotFound` when absent. Keys below it are kept.
    pub async fn delete(&self, key: impl AsRef<str>) -> Result<()> {
        let key = Key::new(key.as_ref())?;
        if self.backend.delete(&key).await? {
            Ok(())
        } else {
            Err(Error::not_found(key.as_str()))
        }
    }

    /// Whether `key` exists.
    pub async fn exists(&self, key: impl AsRef<str>) -> Result<bool> {
        let key = Key::new(key.as_ref())?;
        self.backend.exists(&key).await
    }

    /// Every pair strictly below `dir`, recursively, sorted by key; never `dir` itself
    /// nor a sibling such as `dir2/x`. An empty `Vec` when there are none. `""` lists
    /// the whole store.
    pub async fn list(&self, dir: impl AsRef<str>) -> Result<Vec<KvPair>> {
        let dir = Dir::new(dir.as_ref())?;
        self.backend.list(&dir).await
    }

    /// Deletes `dir` and everything below it, and nothing else. Succeeds when there is
    /// nothing to delete.
    pub async fn delete_tree(&self, dir: impl AsRef<str>) -> Result<()> {
        let dir = Dir::new(dir.as_ref())?;
        self.backend.delete_tree(&dir).await
    }

    /// Compare-and-swap. With `previous = None`, creates the key only if it does not
    /// exist (`Error::KeyExists` otherwise). With `Some(prev)`, writes only if the key
    /// still has `prev.last_index` (`Error::KeyModified` when it changed,
    /// `Error::NotFound` when it is gone). Atomic on the server.
    pub async fn atomic_put(
        &self,
        key: impl AsRef<str>,
        value: impl Into<Bytes>,
        previous: Option<&KvPair>,
        options: PutOptions,
    ) -> Result<KvPair> {
        let key = Key::new(key.as_ref())?;
        let value = self.check_value(value.into())?;
        let options = self.effective(options);
        let expect = previous.map_or(Expect::Absent, |prev| Expect::Index(prev.last_index));
        match self
            .backend
            .compare_and_put(&key, value, expect, &options)
            .await?
        {
            Cas::Applied(pair) => Ok(pair),
            Cas::Conflict { current } => Err(conflict_error(key, expect, current)),
        }
    }

    /// Deletes `key` only if it still has `previous.last_index`: `Error::KeyModified`
    /// when it changed, `Error::NotFound` when it is gone. Atomic on the server.
    pub async fn atomic_delete(&self, key: impl AsRef<str>, previous: &KvPair) -> Result<()> {
        let key = Key::new(key.as_ref())?;
        let expect = Expect::Index(previous.last_index);
        match self
            .backend
            .compare_and_delete(&key, previous.last_index)
            .await?
        {
            Cas::Applied(()) => Ok(()),
            Cas::Conflict { current } => Err(conflict_error(key, expect, current)),
        }
    }

    /// Watches `key`: yields its current state first (`None` when absent), then every
    /// later state in order. Versions never go backwards and the last item converges to
    /// the current value; a backend whose [`Capabilities::watch_sees_every_write`] is
    /// false may skip intermediate states. Dropping the stream stops the watch.
    pub async fn watch(&self, key: impl AsRef<str>) -> Result<B::Watch> {
        let key = Key::new(key.as_ref())?;
        self.backend.watch(&key).await
    }

    /// Watches everything below `dir` (which need not exist): yields the current
    /// sorted subtree first, then the new subtree after every change below it,
    /// including value changes and deletions.
    pub async fn watch_tree(&self, dir: impl AsRef<str>) -> Result<B::WatchTree> {
        let dir = Dir::new(dir.as_ref())?;
        self.backend.watch_tree(&dir).await
    }

    /// Waits until the lock on `key` is held. The key holds `options.value` while the
    /// lock is held; the guard renews a TTL lock in the background and releases the
    /// lock on drop.
    pub async fn lock(&self, key: impl AsRef<str>, options: LockOptions) -> Result<B::Lock> {
        let key = Key::new(key.as_ref())?;
        let options = self.effective_lock(options)?;
        self.backend.lock(&key, &options).await
    }

    /// Takes the lock on `key` if it is free now; `None` when someone holds it.
    pub async fn try_lock(
        &self,
        key: impl AsRef<str>,
        options: LockOptions,
    ) -> Result<Option<B::Lock>> {
        let key = Key::new(key.as_ref())?;
        let options = self.effective_lock(options)?;
        self.backend.try_lock(&key, &options).await
    }

    /// The value at `key` decoded from JSON; `Error::Decode` when it is not a `T`.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: impl AsRef<str>,
    ) -> Result<T> {
        let pair = self.get(key).await?;
        serde_json::from_slice(&pair.value).map_err(|e| Error::Decode {
            key: pair.key,
            source: Box::new(e),
        })
    }

    /// Writes `value` at `key` as JSON; `Error::Encode` when `value` cannot be
    /// serialised (nothing is written then).
    pub async fn put_json<T: serde::Serialize + ?Sized>(
        &self,
        key: impl AsRef<str>,
        value: &T,
        options: PutOptions,
    ) -> Result<KvPair> {
        let key = key.as_ref();
        let encoded = serde_json::to_vec(value).map_err(|e| Error::Encode {
            key: key.to_owned(),
            source: Box::new(e),
        })?;
        self.put(key, encoded, options).await
    }

    /// Stops the backend's background work and releases its connections.
    pub async fn close(&self) -> Result<()> {
        self.backend.close().await
    }

    fn check_value(&self, value: Bytes) -> Result<Bytes> {
        let limit = self.backend.capabilities().max_value_size;
        if value.len() > limit {
            return Err(Error::ValueTooLarge {
                size: value.len(),
                limit,
            });
        }
        Ok(value)
    }

    fn effective_ttl(&self, ttl: Option<Duration>) -> Option<Duration> {
        ttl.map(|ttl| self.backend.capabilities().effective_ttl(ttl))
    }

    fn effective(&self, options: PutOptions) -> PutOptions {
        PutOptions {
            ttl: self.effective_ttl(options.ttl),
        }
    }

    fn effective_lock(&self, options: LockOptions) -> Result<LockOptions> {
        let value = self.check_value(options.value)?;
        Ok(LockOptions {
            value,
            ttl: self.effective_ttl(options.ttl),
        })
    }
}

/// Maps a failed condition to the caller's decision.
fn conflict_error(key: Key, expect: Expect, current: Option<u64>) -> Error {
    let key = key.into_string();
    match (expect, current) {
        (Expect::Absent, _) => Error::KeyExists { key },
        (Expect::Index(_), None) => Error::NotFound { key },
        (Expect::Index(expected), Some(_)) => Error::KeyModified { key, expected },
    }
}
