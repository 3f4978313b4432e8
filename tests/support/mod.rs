//! A memory store with one deliberate fault, shared by the tests that prove a check
//! catches (or survives) it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use kvkit::backend::derived;
use kvkit::memory::Memory;
use kvkit::{
    Backend, Capabilities, Cas, Dir, Error, Expect, Key, KvPair, LockOptions, PutOptions, Result,
};

/// The fault a [`Faulty`] store has.
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(dead_code)] // each test file uses some of them
pub enum Fault {
    /// None: a faithful delegate, to show that failures come from the faults.
    None,
    /// `list("dir")` matches the raw prefix `dir`, leaking siblings such as `dir2/x`.
    ListMatchesSiblings,
    /// A compare-and-swap writes whatever the version.
    CasIgnoresVersion,
    /// `delete` of a key also deletes the keys below it.
    DeleteTakesChildren,
    /// The first `n` calls of `watch` fail as if the server were down.
    WatchesFail(usize),
}

/// A [`Memory`] store with one [`Fault`].
#[derive(Clone)]
pub struct Faulty {
    pub inner: Memory,
    fault: Fault,
    failed_watches: Arc<AtomicUsize>,
}

impl Faulty {
    pub fn new(inner: Memory, fault: Fault) -> Self {
        Faulty {
            inner,
            fault,
            failed_watches: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Backend for Faulty {
    type Watch = <Memory as Backend>::Watch;
    type WatchTree = <Memory as Backend>::WatchTree;
    type Lock = <Memory as Backend>::Lock;

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn get(&self, key: &Key<'_>) -> Result<Option<KvPair>> {
        self.inner.get(key).await
    }

    async fn put(&self, key: &Key<'_>, value: Bytes, options: &PutOptions) -> Result<KvPair> {
        self.inner.put(key, value, options).await
    }

    async fn delete(&self, key: &Key<'_>) -> Result<bool> {
        if self.fault == Fault::DeleteTakesChildren {
            self.inner.delete_range(&key.as_dir()).await?;
        }
        self.inner.delete(key).await
    }

    async fn compare_and_put(
        &self,
        key: &Key<'_>,
        value: Bytes,
        expect: Expect,
        options: &PutOptions,
    ) -> Result<Cas<KvPair>> {
        match (self.fault, expect) {
            (Fault::CasIgnoresVersion, Expect::Index(_)) => {
                Ok(Cas::Applied(self.inner.put(key, value, options).await?))
            }
            _ => {
                self.inner
                    .compare_and_put(key, value, expect, options)
                    .await
            }
        }
    }

    async fn compare_and_delete(&self, key: &Key<'_>, index: u64) -> Result<Cas<()>> {
        self.inner.compare_and_delete(key, index).await
    }

    async fn range(&self, dir: &Dir) -> Result<Vec<KvPair>> {
        self.inner.range(dir).await
    }

    async fn list(&self, dir: &Dir) -> Result<Vec<KvPair>> {
        if self.fault == Fault::ListMatchesSiblings {
            let all = self.inner.list(&Dir::root()).await?;
            return Ok(all
                .into_iter()
                .filter(|p| p.key.starts_with(dir.as_str()) && p.key != dir.as_str())
                .collect());
        }
        derived::list(self, dir).await
    }

    async fn delete_range(&self, dir: &Dir) -> Result<()> {
        self.inner.delete_range(dir).await
    }

    async fn watch(&self, key: &Key<'_>) -> Result<Self::Watch> {
        if let Fault::WatchesFail(n) = self.fault
            && self.failed_watches.fetch_add(1, Ordering::AcqRel) < n
        {
            return Err(Error::unavailable("faulty", "the server is down"));
        }
        self.inner.watch(key).await
    }

    async fn watch_tree(&self, dir: &Dir) -> Result<Self::WatchTree> {
        self.inner.watch_tree(dir).await
    }

    async fn lock(&self, key: &Key<'_>, options: &LockOptions) -> Result<Self::Lock> {
        self.inner.lock(key, options).await
    }

    async fn try_lock(&self, key: &Key<'_>, options: &LockOptions) -> Result<Option<Self::Lock>> {
        self.inner.try_lock(key, options).await
    }
}
