//! `kvkit::poll`, the polling watch adapter, on a storage-only wrapper around `Memory`
//! whose reads can be made to fail (or to return a stale answer) on demand.
//!
//! Time is tokio's paused clock: intervals and backoff run instantly and exactly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kvkit::memory::Memory;
use kvkit::poll::{PollWatch, PollWatchTree};
use kvkit::recipe::CasLock;
use kvkit::testing::conformance;
use kvkit::{
    Backend, Capabilities, Cas, Dir, Error, ErrorKind, Expect, Key, Kv, KvPair, LockGuard,
    LockOptions, PutOptions, Result,
};

#[path = "support/streams.rs"]
mod streams;

use streams::{ended, next, next_within};

const EVERY: Duration = Duration::from_millis(10);

/// What the wrapper's reads do.
#[derive(Clone, Debug)]
enum Reads {
    Normal,
    Unavailable,
    Closed,
    Denied,
    /// The next read of a key returns this (older) pair instead, once.
    StaleOnce(KvPair),
}

/// A storage-only backend: the primitives delegate to `Memory`; watches come from
/// `kvkit::poll` and locks from `CasLock`.
#[derive(Clone)]
struct StorageOnly {
    inner: Memory,
    reads: Arc<Mutex<Reads>>,
    read_count: Arc<AtomicU64>,
}

impl StorageOnly {
    fn new() -> Self {
        StorageOnly {
            inner: Memory::new(),
            reads: Arc::new(Mutex::new(Reads::Normal)),
            read_count: Arc::new(AtomicU64::new(0)),
        }
    }

    fn set(&self, reads: Reads) {
        *self.reads.lock().unwrap() = reads;
    }

    fn reads(&self) -> u64 {
        self.read_count.load(Ordering::SeqCst)
    }

    /// Counts a read and fails it when the mode says so.
    fn before_read(&self) -> Result<Option<KvPair>> {
        self.read_count.fetch_add(1, Ordering::SeqCst);
        let mut reads = self.reads.lock().unwrap();
        match &*reads {
            Reads::Normal => Ok(None),
            Reads::Unavailable => Err(Error::unavailable("storage-only", "test outage")),
            Reads::Closed => Err(Error::Closed),
            Reads::Denied => Err(Error::PermissionDenied {
                backend: "storage-only",
                source: "test refusal".into(),
            }),
            Reads::StaleOnce(pair) => {
                let pair = pair.clone();
                *reads = Reads::Normal;
                Ok(Some(pair))
            }
        }
    }
}

impl Backend for StorageOnly {
    type Watch = PollWatch<Self>;
    type WatchTree = PollWatchTree<Self>;
    type Lock = CasLock<Self>;

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: "storage-only",
            watch_sees_every_write: false,
            ..self.inner.capabilities()
        }
    }

    async fn get(&self, key: &Key<'_>) -> Result<Option<KvPair>> {
        if let Some(stale) = self.before_read()? {
            return Ok(Some(stale));
        }
        self.inner.get(key).await
    }

    async fn put(&self, key: &Key<'_>, value: Bytes, options: &PutOptions) -> Result<KvPair> {
        self.inner.put(key, value, options).await
    }

    async fn delete(&self, key: &Key<'_>) -> Result<bool> {
        self.inner.delete(key).await
    }

    async fn compare_and_put(
        &self,
        key: &Key<'_>,
        value: Bytes,
        expect: Expect,
        options: &PutOptions,
    ) -> Result<Cas<KvPair>> {
        self.inner
            .compare_and_put(key, value, expect, options)
            .await
    }

    async fn compare_and_delete(&self, key: &Key<'_>, index: u64) -> Result<Cas<()>> {
        self.inner.compare_and_delete(key, index).await
    }

    async fn scan_below(&self, dir: &Dir) -> Result<Vec<KvPair>> {
        self.before_read()?;
        self.inner.scan_below(dir).await
    }

    async fn delete_below(&self, dir: &Dir) -> Result<()> {
        self.inner.delete_below(dir).await
    }

    async fn watch(&self, key: &Key<'_>) -> Result<Self::Watch> {
        kvkit::poll::watch(self, key, EVERY).await
    }

    async fn watch_tree(&self, dir: &Dir) -> Result<Self::WatchTree> {
        kvkit::poll::watch_tree(self, dir, EVERY).await
    }

    async fn lock(&self, key: &Key<'_>, options: &LockOptions) -> Result<Self::Lock> {
        CasLock::lock(self, key, options).await
    }

    async fn try_lock(&self, key: &Key<'_>, options: &LockOptions) -> Result<Option<Self::Lock>> {
        CasLock::try_lock(self, key, options).await
    }
}

fn store() -> (StorageOnly, Kv<StorageOnly>) {
    let backend = StorageOnly::new();
    (backend.clone(), Kv::new(backend))
}

fn put() -> PutOptions {
    PutOptions::default()
}

#[tokio::test(start_paused = true)]
async fn the_whole_conformance_suite_passes_with_polled_watches_and_cas_locks() {
    let (_, kv) = store();
    conformance::run_all(&kv).await;
}

#[tokio::test(start_paused = true)]
async fn current_state_first_then_each_change_in_order_coalescing_and_converging() {
    let (_, kv) = store();
    let mut watch = kv.watch("k").await.unwrap();
    assert_eq!(
        next(&mut watch, "a watch state").await.unwrap(),
        None,
        "absent first"
    );
    let first = kv.put("k", "1", put()).await.unwrap();
    assert_eq!(
        next(&mut watch, "a watch state").await.unwrap(),
        Some(first)
    );

    // Three writes within one interval are one change: the last one.
    kv.put("k", "2", put()).await.unwrap();
    kv.put("k", "3", put()).await.unwrap();
    let last = kv.put("k", "4", put()).await.unwrap();
    assert_eq!(next(&mut watch, "a watch state").await.unwrap(), Some(last));
    assert!(
        next_within(&mut watch, EVERY * 20).await.is_none(),
        "nothing is repeated while nothing changes"
    );
    kv.delete("k").await.unwrap();
    assert_eq!(next(&mut watch, "a watch state").await.unwrap(), None);
    let again = kv.put("k", "again", put()).await.unwrap();
    assert_eq!(
        next(&mut watch, "a watch state").await.unwrap(),
        Some(again)
    );

    let mut tree = kv.watch_tree("d").await.unwrap();
    assert!(
        next(&mut tree, "a tree state").await.unwrap().is_empty(),
        "empty first"
    );
    kv.put("d", "self", put()).await.unwrap();
    kv.put("d2/x", "sibling", put()).await.unwrap();
    assert!(
        next_within(&mut tree, EVERY * 20).await.is_none(),
        "the dir itself and siblings are not below it"
    );
    let a = kv.put("d/a", "1", put()).await.unwrap();
    assert_eq!(
        next(&mut tree, "a tree state").await.unwrap(),
        vec![a.clone()]
    );
    let b = kv.put("d/b/c", "1", put()).await.unwrap();
    assert_eq!(
        next(&mut tree, "a tree state").await.unwrap(),
        vec![a, b.clone()]
    );
    kv.delete("d/a").await.unwrap();
    assert_eq!(next(&mut tree, "a tree state").await.unwrap(), vec![b]);
}

#[tokio::test(start_paused = true)]
async fn the_first_state_is_read_by_the_watch_call_itself() {
    let (_, kv) = store();
    let before = kv.put("k", "before", put()).await.unwrap();
    let mut watch = kv.watch("k").await.unwrap();
    // Written after the call returned but before the first item was taken.
    kv.put("k", "after", put()).await.unwrap();
    assert_eq!(
        next(&mut watch, "a watch state").await.unwrap(),
        Some(before)
    );
    assert_eq!(
        next(&mut watch, "a watch state")
            .await
            .unwrap()
            .unwrap()
            .value,
        "after"
    );
}

#[tokio::test(start_paused = true)]
async fn each_idle_interval_costs_one_read() {
    let (backend, kv) = store();
    let mut watch = kv.watch("k").await.unwrap();
    assert_eq!(next(&mut watch, "a watch state").await.unwrap(), None);
    let start = backend.reads();
    tokio::time::sleep(EVERY * 100 + EVERY / 2).await;
    let reads = backend.reads() - start;
    assert!(
        (99..=101).contains(&reads),
        "{reads} reads in 100 intervals"
    );
}

#[tokio::test(start_paused = true)]
async fn a_consumer_that_does_not_read_stops_the_polling() {
    let (backend, kv) = store();
    let mut watch = kv.watch("k").await.unwrap();
    let start = backend.reads();
    kv.put("k", "1", put()).await.unwrap();
    // The first item fills the channel: no read happens until it is taken.
    tokio::time::sleep(EVERY * 100).await;
    assert_eq!(backend.reads(), start, "no read while the item waits");
    kv.put("k", "2", put()).await.unwrap();
    assert_eq!(next(&mut watch, "a watch state").await.unwrap(), None);
    // Then the latest state is read, not a queue of old ones: "1" is never seen.
    assert_eq!(
        next(&mut watch, "a watch state")
            .await
            .unwrap()
            .unwrap()
            .value,
        "2"
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_stream_stops_its_reads() {
    let (backend, kv) = store();
    let mut watch = kv.watch("k").await.unwrap();
    let mut tree = kv.watch_tree("d").await.unwrap();
    next(&mut watch, "a watch state").await.unwrap();
    next(&mut tree, "a tree state").await.unwrap();
    tokio::time::sleep(EVERY * 10).await;
    assert!(backend.reads() >= 10);
    drop(watch);
    drop(tree);
    tokio::task::yield_now().await;
    let after_drop = backend.reads();
    tokio::time::sleep(EVERY * 100).await;
    assert_eq!(backend.reads(), after_drop, "no read after the drop");
}

#[tokio::test(start_paused = true)]
async fn an_outage_is_reported_once_retried_with_backoff_and_recovered() {
    let (backend, kv) = store();
    let mut watch = kv.watch("k").await.unwrap();
    assert_eq!(next(&mut watch, "a watch state").await.unwrap(), None);
    backend.set(Reads::Unavailable);
    let err = next(&mut watch, "a watch state").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    let failing_from = backend.reads();
    // A long outage: no second error, and backoff keeps the reads few (without it a
    // 10 ms interval would read 3,000 times in 30 s).
    assert!(
        next_within(&mut watch, Duration::from_secs(30))
            .await
            .is_none()
    );
    let reads = backend.reads() - failing_from;
    assert!(
        (5..=30).contains(&reads),
        "{reads} reads in a 30 s outage: retried, with backoff"
    );
    // Written during the outage; seen once the store answers again.
    let written = kv.put("k", "during", put()).await.unwrap();
    backend.set(Reads::Normal);
    let item = next_within(&mut watch, kvkit::poll::MAX_BACKOFF * 2)
        .await
        .expect("recovered within the longest backoff");
    assert_eq!(item.unwrap(), Some(written));
    // A second outage is reported again, once.
    backend.set(Reads::Unavailable);
    let err = next(&mut watch, "a watch state").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(
        next_within(&mut watch, Duration::from_secs(5))
            .await
            .is_none()
    );
    backend.set(Reads::Normal);
    let last = kv.put("k", "after", put()).await.unwrap();
    let item = next_within(&mut watch, kvkit::poll::MAX_BACKOFF * 2).await;
    assert_eq!(item.expect("recovered").unwrap(), Some(last));
}

#[tokio::test(start_paused = true)]
async fn tree_watches_follow_the_same_error_rules() {
    let (backend, kv) = store();
    let mut tree = kv.watch_tree("d").await.unwrap();
    assert!(next(&mut tree, "a tree state").await.unwrap().is_empty());
    backend.set(Reads::Unavailable);
    assert_eq!(
        next(&mut tree, "a tree state").await.unwrap_err().kind(),
        ErrorKind::Unavailable
    );
    assert!(
        next_within(&mut tree, Duration::from_secs(10))
            .await
            .is_none()
    );
    let a = kv.put("d/a", "1", put()).await.unwrap();
    backend.set(Reads::Normal);
    assert_eq!(next(&mut tree, "a tree state").await.unwrap(), vec![a]);
    backend.set(Reads::Closed);
    assert_eq!(
        next(&mut tree, "a tree state").await.unwrap_err().kind(),
        ErrorKind::Closed
    );
    assert!(ended(&mut tree).await, "Closed ends the tree watch");
}

#[tokio::test(start_paused = true)]
async fn closed_and_permission_denied_end_the_stream_after_one_error() {
    for (reads, kind) in [
        (Reads::Closed, ErrorKind::Closed),
        (Reads::Denied, ErrorKind::PermissionDenied),
    ] {
        let (backend, kv) = store();
        let mut watch = kv.watch("k").await.unwrap();
        assert_eq!(next(&mut watch, "a watch state").await.unwrap(), None);
        backend.set(reads);
        assert_eq!(
            next(&mut watch, "a watch state").await.unwrap_err().kind(),
            kind
        );
        assert!(ended(&mut watch).await, "{kind:?} ends the stream");
        let count = backend.reads();
        tokio::time::sleep(EVERY * 50).await;
        assert_eq!(backend.reads(), count, "no reads after the end");
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_first_read_fails_the_watch_call() {
    let (backend, kv) = store();
    backend.set(Reads::Unavailable);
    assert_eq!(
        kv.watch("k").await.unwrap_err().kind(),
        ErrorKind::Unavailable
    );
    assert_eq!(
        kv.watch_tree("d").await.unwrap_err().kind(),
        ErrorKind::Unavailable
    );
}

#[tokio::test(start_paused = true)]
async fn a_stale_read_never_follows_a_newer_state() {
    let (backend, kv) = store();
    let old = kv.put("k", "old", put()).await.unwrap();
    let mut watch = kv.watch("k").await.unwrap();
    assert_eq!(
        next(&mut watch, "a watch state").await.unwrap(),
        Some(old.clone())
    );
    let new = kv.put("k", "new", put()).await.unwrap();
    assert_eq!(
        next(&mut watch, "a watch state").await.unwrap(),
        Some(new.clone())
    );
    // A lagging read hands back the old version: it is skipped, not yielded.
    backend.set(Reads::StaleOnce(old));
    assert!(next_within(&mut watch, EVERY * 20).await.is_none());
    let newest = kv.put("k", "newest", put()).await.unwrap();
    assert_eq!(
        next(&mut watch, "a watch state").await.unwrap(),
        Some(newest)
    );
}

#[tokio::test(start_paused = true)]
async fn cas_locks_exclude_and_wake_waiters_on_a_storage_only_backend() {
    let (_, kv) = store();
    let holder = kv
        .lock("l", LockOptions::default().value("a"))
        .await
        .unwrap();
    assert!(
        kv.try_lock("l", LockOptions::default())
            .await
            .unwrap()
            .is_none()
    );
    let waiter = {
        let kv = kv.clone();
        tokio::spawn(async move { kv.lock("l", LockOptions::default().value("b")).await })
    };
    tokio::time::sleep(EVERY * 50).await;
    assert!(
        !waiter.is_finished(),
        "the waiter waits while the lock is held"
    );
    holder.unlock().await.unwrap();
    let taken = tokio::time::timeout(EVERY * 5, waiter)
        .await
        .expect("woken within a few polling intervals")
        .unwrap()
        .unwrap();
    assert_eq!(kv.get("l").await.unwrap().value, "b");
    // Someone else deletes the key: the holder notices within an interval or two.
    kv.delete("l").await.unwrap();
    tokio::time::timeout(EVERY * 5, taken.lost())
        .await
        .expect("the loss is seen by polling");
    assert_eq!(
        taken.unlock().await.unwrap_err().kind(),
        ErrorKind::LockLost
    );
}
