//! A memory store with one deliberate fault, shared by the tests that prove a check
//! catches (or survives) it. Each fault is one class of bug a real backend could have.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub mod streams;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use kvkit::backend::derived;
use kvkit::memory::Memory;
use kvkit::recipe::CasLock;
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
    /// `list` sorts by path segments (`a/b` before `a-`) instead of by bytes.
    ListSortsBySegments,
    /// `delete_tree("dir")` deletes every key starting with `dir`, siblings such as
    /// `dir-x` or `dir~` included.
    DeleteTreeTakesSiblings,
    /// `atomic_put` drops the TTL: the key never expires.
    AtomicPutDropsTtl,
    /// `watch` skips the current state it must yield first.
    WatchSkipsFirstItem,
    /// A contender with exactly the holder's options is let in (the lock tells owners
    /// apart by their value).
    LockSameOptionsShared,
    /// Each handle (each clone) caches the values it read or wrote and serves `get`
    /// from that cache: stale after another handle's write.
    PerHandleCache,
    /// `watch` yields every item twice.
    WatchRepeats,
    /// Locks ignore their TTL: a holder that stops renewing keeps the lock forever.
    LockDropsTtl,
    /// `last_index` restarts at 1 when a key is created again after a delete.
    VersionRestartsOnCreate,
    /// `get` of an implicit parent (a key with keys below it) returns an empty value.
    ImplicitParentVisible,
    /// `list` of a dir ending in `a~` panics (a bug only the model's key space meets).
    ListPanics,
}

/// A [`Memory`] store with one [`Fault`].
pub struct Faulty {
    pub inner: Memory,
    fault: Fault,
    failed_watches: Arc<AtomicUsize>,
    /// `PerHandleCache`: this handle's cache (a clone starts with an empty one).
    cache: Mutex<HashMap<String, KvPair>>,
    /// `VersionRestartsOnCreate`: per key, the index subtracted from memory's.
    offsets: Arc<Mutex<HashMap<String, u64>>>,
    /// `LockSameOptionsShared`: the options each held lock was taken with.
    holders: Arc<Mutex<HashMap<String, LockOptions>>>,
}

impl Clone for Faulty {
    fn clone(&self) -> Self {
        Faulty {
            inner: self.inner.clone(),
            fault: self.fault,
            failed_watches: self.failed_watches.clone(),
            cache: Mutex::new(HashMap::new()),
            offsets: self.offsets.clone(),
            holders: self.holders.clone(),
        }
    }
}

impl Faulty {
    pub fn new(inner: Memory, fault: Fault) -> Self {
        Faulty {
            inner,
            fault,
            failed_watches: Arc::new(AtomicUsize::new(0)),
            cache: Mutex::new(HashMap::new()),
            offsets: Arc::new(Mutex::new(HashMap::new())),
            holders: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn cached(&self, pair: &KvPair) {
        if self.fault == Fault::PerHandleCache {
            let mut cache = self.cache.lock().unwrap();
            cache.insert(pair.key.clone(), pair.clone());
        }
    }

    fn uncache(&self, key: &str) {
        if self.fault == Fault::PerHandleCache {
            self.cache.lock().unwrap().remove(key);
        }
    }

    /// `VersionRestartsOnCreate`: memory's index as this store reports it.
    fn shown(&self, mut pair: KvPair) -> KvPair {
        if self.fault == Fault::VersionRestartsOnCreate {
            let offset = self.offsets.lock().unwrap().get(&pair.key).copied();
            pair.last_index -= offset.unwrap_or(0);
        }
        pair
    }

    fn shown_index(&self, key: &str, index: u64) -> u64 {
        if self.fault == Fault::VersionRestartsOnCreate {
            let offset = self.offsets.lock().unwrap().get(key).copied();
            return index - offset.unwrap_or(0);
        }
        index
    }

    /// `VersionRestartsOnCreate`: a reported index as memory's.
    fn real_index(&self, key: &str, index: u64) -> u64 {
        if self.fault == Fault::VersionRestartsOnCreate {
            let offset = self.offsets.lock().unwrap().get(key).copied();
            return index + offset.unwrap_or(0);
        }
        index
    }

    /// `VersionRestartsOnCreate`: a write created `pair` (the key was absent), so the
    /// key's reported index starts again at 1.
    fn created(&self, pair: &KvPair) {
        if self.fault == Fault::VersionRestartsOnCreate {
            self.offsets
                .lock()
                .unwrap()
                .insert(pair.key.clone(), pair.last_index - 1);
        }
    }

    async fn absent(&self, key: &Key<'_>) -> Result<bool> {
        Ok(self.inner.get(key).await?.is_none())
    }
}

impl Backend for Faulty {
    type Watch = BoxStream<'static, Result<Option<KvPair>>>;
    type WatchTree = BoxStream<'static, Result<Vec<KvPair>>>;
    type Lock = CasLock<Memory>;

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn get(&self, key: &Key<'_>) -> Result<Option<KvPair>> {
        if self.fault == Fault::PerHandleCache {
            let cached = self.cache.lock().unwrap().get(key.as_str()).cloned();
            if let Some(pair) = cached {
                return Ok(Some(pair));
            }
        }
        let found = self.inner.get(key).await?.map(|p| self.shown(p));
        if let Some(pair) = &found {
            self.cached(pair);
        } else if self.fault == Fault::ImplicitParentVisible
            && !self.inner.scan_below(&key.as_dir()).await?.is_empty()
        {
            return Ok(Some(KvPair {
                key: key.as_str().to_owned(),
                value: Bytes::new(),
                last_index: 1,
            }));
        }
        Ok(found)
    }

    async fn put(&self, key: &Key<'_>, value: Bytes, options: &PutOptions) -> Result<KvPair> {
        let created = self.absent(key).await?;
        let pair = self.inner.put(key, value, options).await?;
        if created {
            self.created(&pair);
        }
        let pair = self.shown(pair);
        self.cached(&pair);
        Ok(pair)
    }

    async fn delete(&self, key: &Key<'_>) -> Result<bool> {
        if self.fault == Fault::DeleteTakesChildren {
            self.inner.delete_below(&key.as_dir()).await?;
        }
        self.uncache(key.as_str());
        self.inner.delete(key).await
    }

    async fn compare_and_put(
        &self,
        key: &Key<'_>,
        value: Bytes,
        expect: Expect,
        options: &PutOptions,
    ) -> Result<Cas<KvPair>> {
        let mut options = options.clone();
        if self.fault == Fault::AtomicPutDropsTtl {
            options.ttl = None;
        }
        let outcome = match (self.fault, expect) {
            (Fault::CasIgnoresVersion, Expect::Index(_)) => {
                Cas::Applied(self.inner.put(key, value, &options).await?)
            }
            (_, Expect::Index(index)) => {
                let expect = Expect::Index(self.real_index(key.as_str(), index));
                self.inner
                    .compare_and_put(key, value, expect, &options)
                    .await?
            }
            (_, Expect::Absent) => {
                let outcome = self
                    .inner
                    .compare_and_put(key, value, expect, &options)
                    .await?;
                if let Cas::Applied(pair) = &outcome {
                    self.created(pair);
                }
                outcome
            }
        };
        Ok(match outcome {
            Cas::Applied(pair) => {
                let pair = self.shown(pair);
                self.cached(&pair);
                Cas::Applied(pair)
            }
            Cas::Conflict { current } => Cas::Conflict {
                current: current.map(|i| self.shown_index(key.as_str(), i)),
            },
        })
    }

    async fn compare_and_delete(&self, key: &Key<'_>, index: u64) -> Result<Cas<()>> {
        self.uncache(key.as_str());
        let real = self.real_index(key.as_str(), index);
        Ok(match self.inner.compare_and_delete(key, real).await? {
            Cas::Applied(()) => Cas::Applied(()),
            Cas::Conflict { current } => Cas::Conflict {
                current: current.map(|i| self.shown_index(key.as_str(), i)),
            },
        })
    }

    async fn scan_below(&self, dir: &Dir) -> Result<Vec<KvPair>> {
        let pairs = self.inner.scan_below(dir).await?;
        Ok(pairs.into_iter().map(|p| self.shown(p)).collect())
    }

    async fn list(&self, dir: &Dir) -> Result<Vec<KvPair>> {
        if self.fault == Fault::ListPanics && dir.as_str().ends_with("a~") {
            panic!("list of {:?} panicked", dir.as_str());
        }
        if self.fault == Fault::ListMatchesSiblings {
            let all = self.inner.list(&Dir::root()).await?;
            return Ok(all
                .into_iter()
                .filter(|p| p.key.starts_with(dir.as_str()) && p.key != dir.as_str())
                .collect());
        }
        let mut pairs = derived::list(self, dir).await?;
        if self.fault == Fault::ListSortsBySegments {
            pairs.sort_by(|a, b| a.key.split('/').cmp(b.key.split('/')));
        }
        Ok(pairs)
    }

    async fn delete_below(&self, dir: &Dir) -> Result<()> {
        self.cache.lock().unwrap().clear();
        self.inner.delete_below(dir).await
    }

    async fn delete_tree(&self, dir: &Dir) -> Result<()> {
        if self.fault == Fault::DeleteTreeTakesSiblings && !dir.as_str().is_empty() {
            for pair in self.inner.list(&Dir::root()).await? {
                if pair.key.starts_with(dir.as_str()) {
                    let key = Key::new(&pair.key)?;
                    self.inner.delete(&key).await?;
                }
            }
            return Ok(());
        }
        self.cache.lock().unwrap().clear();
        derived::delete_tree(self, dir).await
    }

    async fn watch(&self, key: &Key<'_>) -> Result<Self::Watch> {
        if let Fault::WatchesFail(n) = self.fault
            && self.failed_watches.fetch_add(1, Ordering::AcqRel) < n
        {
            return Err(Error::unavailable("faulty", "the server is down"));
        }
        let shown = self.clone();
        let watch = self
            .inner
            .watch(key)
            .await?
            .map(move |item| item.map(|state| state.map(|p| shown.shown(p))));
        Ok(match self.fault {
            Fault::WatchSkipsFirstItem => watch.skip(1).boxed(),
            Fault::WatchRepeats => watch
                .flat_map(|item| match item {
                    Ok(state) => stream::iter(vec![Ok(state.clone()), Ok(state)]),
                    Err(e) => stream::iter(vec![Err(e)]),
                })
                .boxed(),
            _ => watch.boxed(),
        })
    }

    async fn watch_tree(&self, dir: &Dir) -> Result<Self::WatchTree> {
        let shown = self.clone();
        let watch =
            self.inner.watch_tree(dir).await?.map(move |item| {
                item.map(|pairs| pairs.into_iter().map(|p| shown.shown(p)).collect())
            });
        Ok(watch.boxed())
    }

    async fn lock(&self, key: &Key<'_>, options: &LockOptions) -> Result<Self::Lock> {
        let mut options = options.clone();
        if self.fault == Fault::LockDropsTtl {
            options.ttl = None;
        }
        let guard = self.inner.lock(key, &options).await?;
        self.holders
            .lock()
            .unwrap()
            .insert(key.as_str().to_owned(), options);
        Ok(guard)
    }

    async fn try_lock(&self, key: &Key<'_>, options: &LockOptions) -> Result<Option<Self::Lock>> {
        let mut options = options.clone();
        if self.fault == Fault::LockDropsTtl {
            options.ttl = None;
        }
        if self.fault == Fault::LockSameOptionsShared {
            let holder = self.holders.lock().unwrap().get(key.as_str()).cloned();
            let held = self.inner.get(key).await?;
            if held.is_some() && holder.as_ref() == Some(&options) {
                // "The same owner": take the key over.
                self.inner.delete(key).await?;
            }
        }
        let guard = self.inner.try_lock(key, &options).await?;
        if guard.is_some() {
            self.holders
                .lock()
                .unwrap()
                .insert(key.as_str().to_owned(), options);
        }
        Ok(guard)
    }
}
