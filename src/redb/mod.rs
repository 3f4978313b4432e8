//! The embedded, file-backed store on [redb](https://www.redb.org): kvkit's default.
//!
//! * Data survives close and reopen; `last_index` comes from a revision counter stored
//!   in the same transactions as the data, so it never goes back.
//! * TTLs are wall-clock deadlines stored with the data and in a deadline index, so a
//!   key that expired while the process was down is gone after reopen.
//! * Writes go to one writer thread per database. It takes every write that is waiting
//!   and commits them in one durable transaction (group commit): a write returns only
//!   after its data is synced, and concurrent writers share the sync. The async
//!   runtime's worker threads never wait for the disk on a write; short reads run
//!   inline on the caller's thread.
//! * Watches and locks work among all handles of one database in one process
//!   (opening the same path twice in a process returns the same shared store). They
//!   are process-local: a second process cannot open the file at all and gets
//!   [`Error::Backend`] saying the database is already open.
//! * Locks survive their holder's crash: every lock write is also recorded (key and
//!   index) in a lock table, in the same transaction. The file is process-exclusive,
//!   so a lock record found when the file is opened belongs to a process that died
//!   (or a store that was closed): its key is deleted at open if it still holds that
//!   lock write. `close` releases the locks of its store the same way.

mod config;
pub use config::RedbConfig;

mod codec;
mod error;
mod store;
mod tables;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::backend::{Backend, Capabilities, Cas, Expect, KvPair, LockOptions, PutOptions};
use crate::error::{Error, Result};
use crate::key::{Dir, Key};
use crate::local_watch::{LocalStore, LocalWatch, LocalWatchTree};
use crate::recipe::CasLock;

use store::Inner;
use writer::Write;

/// Largest value accepted.
pub const MAX_VALUE_SIZE: usize = crate::memory::MAX_VALUE_SIZE;

const NAME: &str = "redb";

/// The embedded store. Cloning shares the database.
#[derive(Clone)]
pub struct Redb {
    inner: Arc<Inner>,
    /// Set on the handle a lock works through: its conditional writes record lock
    /// ownership (see the module docs).
    lock_records: bool,
}

impl std::fmt::Debug for Redb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redb")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl Redb {
    /// Opens (or creates) the database at `path`. Opening a path this process already
    /// has open returns the same shared store; a path open in another process is an
    /// error.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Redb {
            inner: Inner::open_shared(path.as_ref())?,
            lock_records: false,
        })
    }

    /// The handle a lock works through: its conditional writes keep the lock table.
    fn locker(&self) -> Redb {
        Redb {
            inner: self.inner.clone(),
            lock_records: true,
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Hands a write to the writer thread and waits for its durable outcome.
    async fn submit<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Write) -> Result<T> {
        self.check_open()?;
        let (reply, outcome) = oneshot::channel();
        {
            let writes = self.inner.writes.lock().unwrap_or_else(|e| e.into_inner());
            let sender = writes.as_ref().ok_or(Error::Closed)?;
            sender.send(make(reply)).map_err(|_| Error::Closed)?;
        }
        outcome.await.map_err(|_| Error::Closed)?
    }
}

crate::local_watch::local_watch_streams!(Inner, "Redb", RedbWatch, RedbWatchTree);

impl Backend for Redb {
    type Watch = RedbWatch;
    type WatchTree = RedbWatchTree;
    type Lock = CasLock<Redb>;

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: NAME,
            ttl_granularity: Duration::from_millis(1),
            min_ttl: Duration::from_millis(1),
            ttl_expiry_factor: 1,
            default_lock_ttl: None,
            cross_process_locks: false,
            watch_sees_every_write: false,
            max_value_size: MAX_VALUE_SIZE,
            persistent: true,
        }
    }

    async fn get(&self, key: &Key<'_>) -> Result<Option<KvPair>> {
        self.check_open()?;
        self.inner.read_key(key.as_str())
    }

    async fn put(&self, key: &Key<'_>, value: Bytes, options: &PutOptions) -> Result<KvPair> {
        let ttl = options.ttl;
        let key = key.owned();
        match self
            .submit(|reply| Write::Put {
                key,
                value,
                ttl,
                expect: None,
                lock: false,
                reply,
            })
            .await?
        {
            Cas::Applied(pair) => Ok(pair),
            Cas::Conflict { .. } => unreachable!("an unconditional write cannot conflict"),
        }
    }

    async fn delete(&self, key: &Key<'_>) -> Result<bool> {
        let key = key.owned();
        match self
            .submit(|reply| Write::Delete {
                key,
                expect: None,
                lock: false,
                reply,
            })
            .await?
        {
            Cas::Applied(existed) => Ok(existed),
            Cas::Conflict { .. } => unreachable!("an unconditional delete cannot conflict"),
        }
    }

    async fn compare_and_put(
        &self,
        key: &Key<'_>,
        value: Bytes,
        expect: Expect,
        options: &PutOptions,
    ) -> Result<Cas<KvPair>> {
        let ttl = options.ttl;
        let key = key.owned();
        let lock = self.lock_records;
        self.submit(|reply| Write::Put {
            key,
            value,
            ttl,
            expect: Some(expect),
            lock,
            reply,
        })
        .await
    }

    async fn compare_and_delete(&self, key: &Key<'_>, index: u64) -> Result<Cas<()>> {
        let key = key.owned();
        let lock = self.lock_records;
        let outcome = self
            .submit(|reply| Write::Delete {
                key,
                expect: Some(index),
                lock,
                reply,
            })
            .await?;
        Ok(match outcome {
            Cas::Applied(_) => Cas::Applied(()),
            Cas::Conflict { current } => Cas::Conflict { current },
        })
    }

    async fn scan_below(&self, dir: &Dir) -> Result<Vec<KvPair>> {
        self.check_open()?;
        self.inner.read_tree(dir)
    }

    async fn list(&self, dir: &Dir) -> Result<Vec<KvPair>> {
        // redb ranges are sorted and `read_tree` is exact.
        self.scan_below(dir).await
    }

    async fn delete_below(&self, dir: &Dir) -> Result<()> {
        let dir = dir.clone();
        self.submit(|reply| Write::DeleteRange {
            dir,
            with_dir: false,
            reply,
        })
        .await
    }

    /// Native: `dir` and everything below it in one transaction.
    async fn delete_tree(&self, dir: &Dir) -> Result<()> {
        let dir = dir.clone();
        self.submit(|reply| Write::DeleteRange {
            dir,
            with_dir: true,
            reply,
        })
        .await
    }

    async fn watch(&self, key: &Key<'_>) -> Result<RedbWatch> {
        self.check_open()?;
        Ok(RedbWatch(LocalWatch::new(self.inner.clone(), key)))
    }

    async fn watch_tree(&self, dir: &Dir) -> Result<RedbWatchTree> {
        self.check_open()?;
        Ok(RedbWatchTree(LocalWatchTree::new(self.inner.clone(), dir)))
    }

    async fn lock(&self, key: &Key<'_>, options: &LockOptions) -> Result<CasLock<Redb>> {
        CasLock::lock(&self.locker(), key, options).await
    }

    async fn try_lock(
        &self,
        key: &Key<'_>,
        options: &LockOptions,
    ) -> Result<Option<CasLock<Redb>>> {
        CasLock::try_lock(&self.locker(), key, options).await
    }

    /// Finishes the queued writes, releases the locks held through this store (their
    /// guards see `lost()`), stops the writer thread and ends the watches. The file is
    /// released when the last handle is dropped.
    async fn close(&self) -> Result<()> {
        let sender = self
            .inner
            .writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.inner.closed.store(true, Ordering::Release);
        if let Some(sender) = sender {
            let (reply, released) = oneshot::channel();
            let queued = sender.send(Write::ReleaseLocks { reply }).is_ok();
            // Dropping the sender lets the writer drain what is queued and exit.
            drop(sender);
            if queued && let Ok(Err(err)) = released.await {
                tracing::warn!(%err, "redb: releasing the held locks on close failed; they are freed at the next open");
            }
        }
        self.inner.watchers.notify_all();
        Ok(())
    }
}
