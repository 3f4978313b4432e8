//! A memory store with one bug that only concurrency exposes, and a fault switch, for
//! the concurrent checks' teeth and their fault path.

#![allow(dead_code)] // each test file uses some of it

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use kvkit::backend::LostSignal;
use kvkit::memory::Memory;
use kvkit::recipe::CasLock;
use kvkit::testing::fault::FaultInjector;
use kvkit::{
    Backend, Capabilities, Cas, Dir, Error, Expect, Key, KvPair, LockGuard, LockOptions,
    PutOptions, Result,
};
use tokio::sync::broadcast;

/// The bug a [`Racy`] store has.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bug {
    /// None: a faithful delegate (memory's own coalescing watches).
    None,
    /// None, with a watch that delivers every write and claims so.
    EveryWrite,
    /// Compare-and-swap/delete read, wait a little, then write unconditionally.
    NonAtomicCas,
    /// A put rewrites its siblings from a snapshot taken before it (a store that keeps
    /// a directory in one record and read-modify-writes it): a sibling written in
    /// between is lost.
    LostSiblingWrite,
    /// A lock that finds the key held claims it anyway (gives up waiting).
    LockIgnoresContention,
    /// `scan_below` reads the keys one at a time, so a list is not an atomic snapshot
    /// (each key's state is still one that existed during the call).
    ListKeyByKey,
    /// A watch that claims to see every write but drops an event when the next one
    /// for the same key follows within [`DEBOUNCE`].
    WatchCoalescesClaimingEveryWrite,
    /// A lock guard whose `lost()` never fires: it never notices that someone else
    /// deleted or overwrote its key.
    LockDeafToTakeover,
    /// A lock guard that notices its key deleted but not overwritten.
    LockDeafToOverwrite,
    /// `try_lock` reads the key, waits a little, then writes it: callers that ask at
    /// once all get a guard (the overwritten ones notice afterwards).
    TryLockReadsThenWrites,
    /// `try_lock` grants everyone and marks the losers lost just afterwards.
    TryLockGrantsAll,
    /// `try_lock` hands out a guard that reports itself lost just afterwards.
    TryLockLostAtBirth,
}

type Event = (String, Option<KvPair>);

/// How long a non-atomic compare-and-swap waits between its read and its write.
const CAS_WINDOW: Duration = Duration::from_millis(3);

/// How long the coalescing watch waits for a newer event that replaces one.
const DEBOUNCE: Duration = Duration::from_millis(10);

/// A [`Memory`] store with one [`Bug`] and a fault switch.
#[derive(Clone)]
pub struct Racy {
    pub inner: Memory,
    bug: Bug,
    faulted: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    events: broadcast::Sender<Event>,
    /// Orders writes with their events (every-write modes only).
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl Racy {
    pub fn new(bug: Bug) -> Self {
        Racy {
            inner: Memory::new(),
            bug,
            faulted: Arc::default(),
            calls: Arc::default(),
            events: broadcast::channel(1 << 16).0,
            gate: Arc::default(),
        }
    }

    /// A switch that makes this store (and its clones) fail while on.
    pub fn fault_switch(&self) -> FaultSwitch {
        FaultSwitch(self.faulted.clone())
    }

    fn every_write(&self) -> bool {
        matches!(
            self.bug,
            Bug::EveryWrite | Bug::WatchCoalescesClaimingEveryWrite
        )
    }

    fn unavailable() -> Error {
        Error::Unavailable {
            backend: "racy",
            source: "injected fault".into(),
        }
    }

    /// While faulted: fail before the operation, or (every other write) apply it and
    /// lose the acknowledgement.
    fn before(&self, write: bool) -> Result<bool> {
        if !self.faulted.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if write && n.is_multiple_of(2) {
            Ok(true) // apply, then report Unavailable
        } else {
            Err(Self::unavailable())
        }
    }

    fn after<T>(lose_ack: bool, r: Result<T>) -> Result<T> {
        if lose_ack {
            r.and(Err(Self::unavailable()))
        } else {
            r
        }
    }

    async fn gate(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        if self.every_write() {
            Some(self.gate.lock().await)
        } else {
            None
        }
    }

    fn emit(&self, key: &str, state: Option<KvPair>) {
        if self.every_write() {
            let _ = self.events.send((key.to_owned(), state));
        }
    }

    async fn put_inner(&self, key: &Key<'_>, value: Bytes, options: &PutOptions) -> Result<KvPair> {
        if self.bug != Bug::LostSiblingWrite {
            let _g = self.gate().await;
            let pair = self.inner.put(key, value, options).await?;
            self.emit(key.as_str(), Some(pair.clone()));
            return Ok(pair);
        }
        let parent = match key.as_str().rsplit_once('/') {
            Some((p, _)) => Dir::new(p)?,
            None => Dir::root(),
        };
        let snapshot = self.inner.scan_below(&parent).await?;
        tokio::time::sleep(Duration::from_millis(1)).await;
        let pair = self.inner.put(key, value, options).await?;
        for old in snapshot.iter().filter(|p| p.key != key.as_str()) {
            let sibling = Key::new(&old.key)?;
            if let Some(now) = self.inner.get(&sibling).await?
                && now.last_index != old.last_index
            {
                self.inner
                    .put(&sibling, old.value.clone(), &PutOptions::default())
                    .await?;
            }
        }
        Ok(pair)
    }
}

impl Backend for Racy {
    type Watch = BoxStream<'static, Result<Option<KvPair>>>;
    type WatchTree = BoxStream<'static, Result<Vec<KvPair>>>;
    type Lock = RacyGuard;

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            watch_sees_every_write: self.every_write(),
            ..self.inner.capabilities()
        }
    }

    async fn get(&self, key: &Key<'_>) -> Result<Option<KvPair>> {
        self.before(false)?;
        self.inner.get(key).await
    }

    async fn put(&self, key: &Key<'_>, value: Bytes, options: &PutOptions) -> Result<KvPair> {
        let lose = self.before(true)?;
        Self::after(lose, self.put_inner(key, value, options).await)
    }

    async fn delete(&self, key: &Key<'_>) -> Result<bool> {
        let lose = self.before(true)?;
        let _g = self.gate().await;
        let existed = self.inner.delete(key).await;
        if matches!(existed, Ok(true)) {
            self.emit(key.as_str(), None);
        }
        Self::after(lose, existed)
    }

    async fn compare_and_put(
        &self,
        key: &Key<'_>,
        value: Bytes,
        expect: Expect,
        options: &PutOptions,
    ) -> Result<Cas<KvPair>> {
        let lose = self.before(true)?;
        if self.bug == Bug::NonAtomicCas {
            let current = self.inner.get(key).await?;
            tokio::time::sleep(CAS_WINDOW).await;
            let holds = match (expect, &current) {
                (Expect::Absent, None) => true,
                (Expect::Index(i), Some(p)) => p.last_index == i,
                _ => false,
            };
            if !holds {
                return Ok(Cas::Conflict {
                    current: current.map(|p| p.last_index),
                });
            }
            return Ok(Cas::Applied(self.inner.put(key, value, options).await?));
        }
        let _g = self.gate().await;
        let r = self
            .inner
            .compare_and_put(key, value, expect, options)
            .await;
        if let Ok(Cas::Applied(pair)) = &r {
            self.emit(key.as_str(), Some(pair.clone()));
        }
        Self::after(lose, r)
    }

    async fn compare_and_delete(&self, key: &Key<'_>, index: u64) -> Result<Cas<()>> {
        let lose = self.before(true)?;
        if self.bug == Bug::NonAtomicCas {
            let current = self.inner.get(key).await?;
            tokio::time::sleep(CAS_WINDOW).await;
            if current.as_ref().map(|p| p.last_index) != Some(index) {
                return Ok(Cas::Conflict {
                    current: current.map(|p| p.last_index),
                });
            }
            self.inner.delete(key).await?;
            return Ok(Cas::Applied(()));
        }
        let _g = self.gate().await;
        let r = self.inner.compare_and_delete(key, index).await;
        if let Ok(Cas::Applied(())) = &r {
            self.emit(key.as_str(), None);
        }
        Self::after(lose, r)
    }

    async fn scan_below(&self, dir: &Dir) -> Result<Vec<KvPair>> {
        self.before(false)?;
        if self.bug != Bug::ListKeyByKey {
            return self.inner.scan_below(dir).await;
        }
        let mut keys: Vec<String> = self
            .inner
            .scan_below(dir)
            .await?
            .into_iter()
            .map(|p| p.key)
            .collect();
        keys.sort();
        let mut pairs = Vec::new();
        for key in keys {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if let Some(pair) = self.inner.get(&Key::new(&key)?).await? {
                pairs.push(pair);
            }
        }
        Ok(pairs)
    }

    async fn delete_below(&self, dir: &Dir) -> Result<()> {
        let lose = self.before(true)?;
        let _g = self.gate().await;
        let gone = if self.every_write() {
            self.inner.scan_below(dir).await?
        } else {
            Vec::new()
        };
        let r = self.inner.delete_below(dir).await;
        for pair in gone {
            self.emit(&pair.key, None);
        }
        Self::after(lose, r)
    }

    async fn watch(&self, key: &Key<'_>) -> Result<Self::Watch> {
        self.before(false)?;
        if !self.every_write() {
            return Ok(self.inner.watch(key).await?.boxed());
        }
        let (first, rx) = {
            let _g = self.gate.lock().await;
            (self.inner.get(key).await?, self.events.subscribe())
        };
        let wanted = key.as_str().to_owned();
        let coalesce = self.bug == Bug::WatchCoalescesClaimingEveryWrite;
        let later = futures::stream::unfold((rx, None::<Event>), move |(mut rx, mut held)| {
            let wanted = wanted.clone();
            async move {
                loop {
                    let next = match held.take() {
                        Some(e) => e,
                        None => match rx.recv().await {
                            Ok(e) => e,
                            Err(broadcast::error::RecvError::Lagged(_)) => {
                                return Some((Err(Racy::unavailable()), (rx, None)));
                            }
                            Err(broadcast::error::RecvError::Closed) => return None,
                        },
                    };
                    if next.0 != wanted {
                        continue;
                    }
                    if coalesce {
                        // Debounce: a newer event of the key within DEBOUNCE replaces it.
                        let deadline = tokio::time::Instant::now() + DEBOUNCE;
                        let mut replaced = None;
                        while let Ok(Ok(e)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                            if e.0 == wanted {
                                replaced = Some(e);
                                break;
                            }
                        }
                        if let Some(newer) = replaced {
                            held = Some(newer);
                            continue;
                        }
                    }
                    return Some((Ok(next.1), (rx, held)));
                }
            }
        });
        Ok(futures::stream::once(async move { Ok(first) })
            .chain(later)
            .boxed())
    }

    async fn watch_tree(&self, dir: &Dir) -> Result<Self::WatchTree> {
        self.before(false)?;
        Ok(self.inner.watch_tree(dir).await?.boxed())
    }

    async fn lock(&self, key: &Key<'_>, options: &LockOptions) -> Result<RacyGuard> {
        self.before(false)?;
        if matches!(self.bug, Bug::LockDeafToTakeover | Bug::LockDeafToOverwrite) {
            let guard = self.inner.lock(key, options).await?;
            return self.deaf(key, guard).await;
        }
        if self.bug == Bug::LockIgnoresContention {
            return Ok(match self.inner.try_lock(key, options).await? {
                Some(g) => RacyGuard::Real(g),
                None => RacyGuard::Fake {
                    key: key.as_str().to_owned(),
                    lost: LostSignal::new(),
                },
            });
        }
        Ok(RacyGuard::Real(self.inner.lock(key, options).await?))
    }

    async fn try_lock(&self, key: &Key<'_>, options: &LockOptions) -> Result<Option<RacyGuard>> {
        self.before(false)?;
        if self.bug == Bug::TryLockReadsThenWrites {
            // The lock recipe over a store whose create-if-absent reads, then writes.
            let store = Racy {
                bug: Bug::NonAtomicCas,
                ..self.clone()
            };
            let guard = CasLock::try_lock(&store, key, options).await?;
            return Ok(guard.map(|g| RacyGuard::NonAtomic(Box::new(g))));
        }
        let guard = self.inner.try_lock(key, options).await?;
        match (self.bug, guard) {
            (Bug::LockDeafToTakeover | Bug::LockDeafToOverwrite, Some(g)) => {
                Ok(Some(self.deaf(key, g).await?))
            }
            (Bug::TryLockGrantsAll, None) => Ok(Some(RacyGuard::Fake {
                key: key.as_str().to_owned(),
                lost: lost_soon(),
            })),
            (Bug::TryLockLostAtBirth, Some(g)) => Ok(Some(RacyGuard::Deaf {
                inner: g,
                lost: lost_soon(),
                watcher: None,
            })),
            (_, g) => Ok(g.map(RacyGuard::Real)),
        }
    }
}

impl Racy {
    /// Wraps memory's guard in one that hears nothing (`LockDeafToTakeover`), or only
    /// its key's deletion (`LockDeafToOverwrite`).
    async fn deaf(&self, key: &Key<'_>, inner: <Memory as Backend>::Lock) -> Result<RacyGuard> {
        let lost = LostSignal::new();
        let watcher = if self.bug == Bug::LockDeafToOverwrite {
            let mut watch = self.inner.watch(key).await?;
            let lost = lost.clone();
            let task = tokio::spawn(async move {
                while let Some(Ok(state)) = watch.next().await {
                    if state.is_none() {
                        lost.fire();
                        return;
                    }
                }
            });
            Some(Watcher(task.abort_handle()))
        } else {
            None
        };
        Ok(RacyGuard::Deaf {
            inner,
            lost,
            watcher,
        })
    }
}

/// A lost signal that fires a moment from now.
fn lost_soon() -> LostSignal {
    let lost = LostSignal::new();
    let fire = lost.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1)).await;
        fire.fire();
    });
    lost
}

/// Stops a deaf guard's watch task when the guard goes.
pub struct Watcher(tokio::task::AbortHandle);

impl Drop for Watcher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A lock guard of [`Racy`]: memory's, a claimed lock that is not held, memory's
/// with a loss signal of its own, or the lock recipe over a non-atomic store.
pub enum RacyGuard {
    Real(<Memory as Backend>::Lock),
    Fake {
        key: String,
        lost: LostSignal,
    },
    Deaf {
        inner: <Memory as Backend>::Lock,
        lost: LostSignal,
        watcher: Option<Watcher>,
    },
    NonAtomic(Box<CasLock<Racy>>),
}

impl LockGuard for RacyGuard {
    fn key(&self) -> &str {
        match self {
            RacyGuard::Real(g) => g.key(),
            RacyGuard::Fake { key, .. } => key,
            RacyGuard::Deaf { inner, .. } => inner.key(),
            RacyGuard::NonAtomic(g) => g.key(),
        }
    }

    fn lost(&self) -> kvkit::backend::LockLost {
        match self {
            RacyGuard::Real(g) => g.lost(),
            RacyGuard::Fake { lost, .. } | RacyGuard::Deaf { lost, .. } => lost.wait(),
            RacyGuard::NonAtomic(g) => g.lost(),
        }
    }

    fn is_lost(&self) -> bool {
        match self {
            RacyGuard::Real(g) => g.is_lost(),
            RacyGuard::Fake { lost, .. } | RacyGuard::Deaf { lost, .. } => lost.is_fired(),
            RacyGuard::NonAtomic(g) => g.is_lost(),
        }
    }

    async fn unlock(self) -> Result<()> {
        match self {
            RacyGuard::Real(g) => g.unlock().await,
            RacyGuard::Fake { .. } => Ok(()),
            RacyGuard::Deaf { inner, .. } => inner.unlock().await,
            RacyGuard::NonAtomic(g) => g.unlock().await,
        }
    }
}

/// Turns a [`Racy`] store's fault on (inject) and off (heal).
#[derive(Clone)]
pub struct FaultSwitch(Arc<AtomicBool>);

impl FaultInjector for FaultSwitch {
    fn name(&self) -> String {
        "racy store returns Unavailable, half its writes applied (ack lost)".into()
    }

    fn inject(&self) -> BoxFuture<'_, ()> {
        self.0.store(true, Ordering::SeqCst);
        async {}.boxed()
    }

    fn heal(&self) -> BoxFuture<'_, ()> {
        self.0.store(false, Ordering::SeqCst);
        async {}.boxed()
    }
}
