//! The in-memory store: the reference model every other backend is checked against.
//!
//! A sorted map behind a mutex, a global revision counter for `last_index`, TTLs on the
//! tokio clock (so tests can pause and advance time), coalescing watches, and the
//! generic [`CasLock`]. Everything lives in this process and is gone when the last
//! handle is dropped.

mod config;
pub use config::MemoryConfig;
mod expiry;
mod state;

use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backend::{Backend, Capabilities, Cas, Expect, KvPair, LockOptions, PutOptions};
use crate::error::{Error, Result};
use crate::key::{Dir, Key};
use crate::local_watch::{LocalStore, LocalWatch, LocalWatchTree, Watchers};
use crate::recipes::CasLock;

use state::{State, below};

/// Largest value the memory store accepts (the same as redb's, so that the model and
/// the embedded default agree).
pub const MAX_VALUE_SIZE: usize = 16 * 1024 * 1024;

/// The in-memory reference store. Cloning shares the store.
#[derive(Clone, Default)]
pub struct Memory {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    watchers: Watchers,
    /// Wakes the expiry task when an earlier deadline arrives or the store goes away.
    reaper: Arc<Notify>,
    reaper_started: AtomicBool,
    closed: AtomicBool,
}

impl Memory {
    /// A new, empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn state(&self) -> Result<MutexGuard<'_, State>> {
        self.check_open()?;
        Ok(self.inner.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn write(
        &self,
        key: &Key<'_>,
        value: Bytes,
        expect: Option<Expect>,
        ttl: Option<Duration>,
    ) -> Result<Cas<KvPair>> {
        let now = Instant::now();
        let pair = {
            let mut state = self.state()?;
            if let Some(expect) = expect {
                let current = state.live(key.as_str(), now).map(|e| e.last_index);
                let holds = match expect {
                    Expect::Absent => current.is_none(),
                    Expect::Index(index) => current == Some(index),
                };
                if !holds {
                    return Ok(Cas::Conflict { current });
                }
            }
            state.write(key.as_str(), value, ttl, now)
        };
        if ttl.is_some() {
            self.schedule_expiry();
        }
        self.inner.watchers.notify([key.as_str()]);
        Ok(Cas::Applied(pair))
    }
}

impl Memory {
    /// Removes every entry below `dir` (and `dir` itself when `with_dir`), expired
    /// ones included, in one critical section.
    fn remove_below(&self, dir: &Dir, with_dir: bool) -> Result<()> {
        let removed: Vec<String> = {
            let mut state = self.state()?;
            let now = Instant::now();
            let prefix = dir.child_prefix();
            let mut doomed: Vec<String> = state
                .entries
                .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, _)| k.clone())
                .collect();
            if let Some(key) = dir.as_key().filter(|_| with_dir) {
                doomed.push(key.into_string());
            }
            doomed.retain(|key| state.remove(key, now));
            doomed
        };
        self.inner
            .watchers
            .notify(removed.iter().map(String::as_str));
        Ok(())
    }
}

impl LocalStore for Inner {
    fn read_key(&self, key: &str) -> Result<Option<KvPair>> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Ok(state.live_now(key).map(|e| e.pair(key)))
    }

    fn read_tree(&self, dir: &Dir) -> Result<Vec<KvPair>> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Ok(below(&state, dir, Instant::now()))
    }

    fn watchers(&self) -> &Watchers {
        &self.watchers
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

crate::local_watch::local_watch_streams!(Inner, "Memory", MemoryWatch, MemoryWatchTree);

impl Backend for Memory {
    type Watch = MemoryWatch;
    type WatchTree = MemoryWatchTree;
    type Lock = CasLock<Memory>;

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: "memory",
            ttl_granularity: Duration::from_millis(1),
            min_ttl: Duration::from_millis(1),
            ttl_expiry_factor: 1,
            default_lock_ttl: None,
            cross_process_locks: false,
            watch_sees_every_write: false,
            max_value_size: MAX_VALUE_SIZE,
            persistent: false,
        }
    }

    // Answered when called, as a ready future: nothing to wait for, and a caller's
    // `.await` then costs no separate poll function.
    fn get(&self, key: &Key<'_>) -> impl Future<Output = Result<Option<KvPair>>> + Send {
        let found = self
            .state()
            .map(|state| state.live_now(key.as_str()).map(|e| e.pair(key.as_str())));
        std::future::ready(found)
    }

    async fn put(&self, key: &Key<'_>, value: Bytes, options: &PutOptions) -> Result<KvPair> {
        match self.write(key, value, None, options.ttl)? {
            Cas::Applied(pair) => Ok(pair),
            Cas::Conflict { .. } => unreachable!("an unconditional write cannot conflict"),
        }
    }

    async fn delete(&self, key: &Key<'_>) -> Result<bool> {
        let existed = self.state()?.remove(key.as_str(), Instant::now());
        self.inner.watchers.notify([key.as_str()]);
        Ok(existed)
    }

    async fn compare_and_put(
        &self,
        key: &Key<'_>,
        value: Bytes,
        expect: Expect,
        options: &PutOptions,
    ) -> Result<Cas<KvPair>> {
        self.write(key, value, Some(expect), options.ttl)
    }

    async fn compare_and_delete(&self, key: &Key<'_>, index: u64) -> Result<Cas<()>> {
        let now = Instant::now();
        {
            let mut state = self.state()?;
            let current = state.live(key.as_str(), now).map(|e| e.last_index);
            if current != Some(index) {
                return Ok(Cas::Conflict { current });
            }
            state.remove(key.as_str(), now);
        }
        self.inner.watchers.notify([key.as_str()]);
        Ok(Cas::Applied(()))
    }

    async fn scan_below(&self, dir: &Dir) -> Result<Vec<KvPair>> {
        Ok(below(&*self.state()?, dir, Instant::now()))
    }

    async fn list(&self, dir: &Dir) -> Result<Vec<KvPair>> {
        // `scan_below` is already sorted and exact.
        self.scan_below(dir).await
    }

    async fn delete_below(&self, dir: &Dir) -> Result<()> {
        self.remove_below(dir, false)
    }

    /// Native: `dir` and everything below it under one lock.
    async fn delete_tree(&self, dir: &Dir) -> Result<()> {
        self.remove_below(dir, true)
    }

    async fn watch(&self, key: &Key<'_>) -> Result<MemoryWatch> {
        self.check_open()?;
        self.ensure_expiry();
        Ok(MemoryWatch(LocalWatch::new(self.inner.clone(), key)))
    }

    async fn watch_tree(&self, dir: &Dir) -> Result<MemoryWatchTree> {
        self.check_open()?;
        self.ensure_expiry();
        Ok(MemoryWatchTree(LocalWatchTree::new(
            self.inner.clone(),
            dir,
        )))
    }

    async fn lock(&self, key: &Key<'_>, options: &LockOptions) -> Result<CasLock<Memory>> {
        CasLock::lock(self, key, options).await
    }

    async fn try_lock(
        &self,
        key: &Key<'_>,
        options: &LockOptions,
    ) -> Result<Option<CasLock<Memory>>> {
        CasLock::try_lock(self, key, options).await
    }

    async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.watchers.notify_all();
        self.inner.reaper.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Kv;
    use futures::StreamExt;

    #[tokio::test(start_paused = true)]
    async fn ttl_expires_on_the_tokio_clock_and_watchers_see_it() {
        let kv = Kv::new(Memory::new());
        let mut watch = kv.watch("t").await.unwrap();
        assert_eq!(watch.next().await.unwrap().unwrap(), None);
        kv.put("t", "v", PutOptions::with_ttl(Duration::from_secs(10)))
            .await
            .unwrap();
        assert!(watch.next().await.unwrap().unwrap().is_some());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(kv.exists("t").await.unwrap());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!kv.exists("t").await.unwrap());
        assert_eq!(watch.next().await.unwrap().unwrap(), None);
    }

    #[test]
    fn ttl_expiry_reaches_watchers_after_the_first_runtime_ended() {
        let memory = Memory::new();
        let first = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        first.block_on(async {
            Kv::new(memory.clone())
                .put("t", "v", PutOptions::with_ttl(Duration::from_millis(300)))
                .await
                .unwrap();
        });
        // The runtime that ran the expiry task is gone, and the task with it.
        drop(first);
        let second = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        second.block_on(async {
            let kv = Kv::new(memory.clone());
            let mut watch = kv.watch("t").await.unwrap();
            assert!(watch.next().await.unwrap().unwrap().is_some());
            let expired = tokio::time::timeout(Duration::from_secs(10), watch.next()).await;
            assert_eq!(
                expired
                    .expect("the expiry reached the watcher")
                    .unwrap()
                    .unwrap(),
                None
            );
        });
    }

    #[tokio::test]
    async fn dropped_watchers_are_forgotten() {
        let memory = Memory::new();
        let kv = Kv::new(memory.clone());
        let watch = kv.watch("k").await.unwrap();
        let tree = kv.watch_tree("d").await.unwrap();
        assert_eq!(memory.inner.watchers.live(), 2);
        drop((watch, tree));
        kv.put("k", "v", PutOptions::default()).await.unwrap();
        assert_eq!(memory.inner.watchers.live(), 0);
    }

    #[tokio::test]
    async fn closed_store_refuses_calls_and_ends_watches() {
        let kv = Kv::new(Memory::new());
        let mut watch = kv.watch("k").await.unwrap();
        assert_eq!(watch.next().await.unwrap().unwrap(), None);
        kv.close().await.unwrap();
        assert!(matches!(watch.next().await, Some(Err(Error::Closed))));
        assert!(watch.next().await.is_none());
        assert!(matches!(kv.get("k").await, Err(Error::Closed)));
    }
}
