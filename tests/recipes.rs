//! Leader election, service discovery and typed values on the in-process backends.

use kvkit::Kv;
use kvkit::memory::Memory;
use kvkit::testing::recipes;

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipes_work_on_memory() {
    recipes::run_all(&Kv::new(Memory::new())).await;
}

#[cfg(feature = "redb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipes_work_on_redb() {
    let dir = tempfile::tempdir().unwrap();
    let kv = Kv::new(kvkit::redb::Redb::open(dir.path().join("recipes.redb")).unwrap());
    recipes::run_all(&kv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_reports_store_failures_and_retries() {
    use futures::StreamExt;
    use kvkit::election::Follower;
    use std::time::Duration;

    let memory = Memory::new();
    let flaky = Kv::new(support::Faulty::new(
        memory.clone(),
        support::Fault::WatchesFail(2),
    ));
    Kv::new(memory)
        .put("election/leader", "node-7", kvkit::PutOptions::default())
        .await
        .unwrap();
    let mut leaders = Follower::new(flaky, "election/leader")
        .retry_after(Duration::from_millis(20))
        .leaders();
    let mut errors = 0;
    let leader = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match leaders.next().await.expect("the follower keeps going") {
                Err(err) => {
                    assert!(err.is_retryable(), "{err}");
                    errors += 1;
                }
                Ok(leader) => return leader,
            }
        }
    })
    .await
    .expect("the follower recovers after the failures");
    assert_eq!(errors, 2, "each failed watch is reported on the stream");
    assert_eq!(leader.as_deref(), Some("node-7"));
}

/// Lock, unlock, register and deregister wait on no timer: on a paused clock (which
/// jumps to the next timer when every task is idle) no time passes. The lock holder
/// once awaited an interval's first tick before listening for `unlock`, which cost
/// every unlock about a millisecond (one timer tick).
#[tokio::test(start_paused = true)]
async fn lock_and_registration_cycles_wait_on_no_timer() {
    let kv = Kv::new(kvkit::memory::Memory::new());
    let registry = kvkit::discovery::Registry::new(kv.clone(), "services");
    // Off the millisecond grid, where a timer due "now" rounds up to the next tick.
    tokio::time::advance(std::time::Duration::from_micros(500)).await;
    let started = tokio::time::Instant::now();
    for round in 0..3 {
        let guard = kv
            .lock("locks/a", kvkit::LockOptions::default())
            .await
            .unwrap();
        kvkit::LockGuard::unlock(guard).await.unwrap();
        let registration = registry
            .register(
                "web",
                &format!("i{round}"),
                "127.0.0.1:80",
                std::time::Duration::from_secs(30),
            )
            .await
            .unwrap();
        registration.deregister().await;
    }
    assert_eq!(tokio::time::Instant::now(), started, "a timer was awaited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_recipes_on_memory() {
    recipes::close_ends_recipes(&Kv::new(Memory::new())).await;
}

#[cfg(feature = "redb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_recipes_on_redb() {
    let dir = tempfile::tempdir().unwrap();
    let kv = Kv::new(kvkit::redb::Redb::open(dir.path().join("close.redb")).unwrap());
    recipes::close_ends_recipes(&kv).await;
}

/// A memory store whose watch streams report one failed read after their first item,
/// as a store whose read hit a transient I/O error would.
#[derive(Clone)]
struct GlitchyWatches(Memory);

type Glitchy<T> = std::pin::Pin<Box<dyn futures::Stream<Item = kvkit::Result<T>> + Send>>;

impl kvkit::Backend for GlitchyWatches {
    type Watch = Glitchy<Option<kvkit::KvPair>>;
    type WatchTree = <Memory as kvkit::Backend>::WatchTree;
    type Lock = kvkit::recipe::CasLock<GlitchyWatches>;

    fn capabilities(&self) -> kvkit::Capabilities {
        self.0.capabilities()
    }
    async fn get(&self, key: &kvkit::Key<'_>) -> kvkit::Result<Option<kvkit::KvPair>> {
        self.0.get(key).await
    }
    async fn put(
        &self,
        key: &kvkit::Key<'_>,
        value: bytes::Bytes,
        options: &kvkit::PutOptions,
    ) -> kvkit::Result<kvkit::KvPair> {
        self.0.put(key, value, options).await
    }
    async fn delete(&self, key: &kvkit::Key<'_>) -> kvkit::Result<bool> {
        self.0.delete(key).await
    }
    async fn compare_and_put(
        &self,
        key: &kvkit::Key<'_>,
        value: bytes::Bytes,
        expect: kvkit::Expect,
        options: &kvkit::PutOptions,
    ) -> kvkit::Result<kvkit::Cas<kvkit::KvPair>> {
        self.0.compare_and_put(key, value, expect, options).await
    }
    async fn compare_and_delete(
        &self,
        key: &kvkit::Key<'_>,
        index: u64,
    ) -> kvkit::Result<kvkit::Cas<()>> {
        self.0.compare_and_delete(key, index).await
    }
    async fn scan_below(&self, dir: &kvkit::Dir) -> kvkit::Result<Vec<kvkit::KvPair>> {
        self.0.scan_below(dir).await
    }
    async fn delete_below(&self, dir: &kvkit::Dir) -> kvkit::Result<()> {
        self.0.delete_below(dir).await
    }
    async fn watch(&self, key: &kvkit::Key<'_>) -> kvkit::Result<Self::Watch> {
        use futures::StreamExt;
        let mut inner = self.0.watch(key).await?;
        let first = inner
            .next()
            .await
            .expect("a watch yields the current state");
        let glitch = Err(kvkit::Error::backend("glitchy", "transient read error"));
        Ok(Box::pin(
            futures::stream::iter([first, glitch]).chain(inner),
        ))
    }
    async fn watch_tree(&self, dir: &kvkit::Dir) -> kvkit::Result<Self::WatchTree> {
        self.0.watch_tree(dir).await
    }
    async fn lock(
        &self,
        key: &kvkit::Key<'_>,
        options: &kvkit::LockOptions,
    ) -> kvkit::Result<Self::Lock> {
        kvkit::recipe::CasLock::lock(self, key, options).await
    }
    async fn try_lock(
        &self,
        key: &kvkit::Key<'_>,
        options: &kvkit::LockOptions,
    ) -> kvkit::Result<Option<Self::Lock>> {
        kvkit::recipe::CasLock::try_lock(self, key, options).await
    }
}

/// A failed read in the lock holder's watch says nothing about the key: the lock stays
/// held, and releasing it frees the key. (The holder once took any watch error for a
/// loss and then refused to delete the key, stranding a TTL-less lock forever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_watch_error_neither_loses_nor_strands_a_lock() {
    use kvkit::LockGuard;
    let memory = Memory::new();
    let glitchy = Kv::new(GlitchyWatches(memory.clone()));
    let plain = Kv::new(memory);
    let guard = glitchy
        .lock("locks/glitch", kvkit::LockOptions::default().value("me"))
        .await
        .unwrap();
    // Give the holder time to see the glitch.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!guard.is_lost(), "a failed read is not a lost lock");
    assert!(
        plain
            .try_lock("locks/glitch", kvkit::LockOptions::default())
            .await
            .unwrap()
            .is_none(),
        "the lock is still held"
    );
    guard
        .unlock()
        .await
        .expect("unlock after a transient error");
    let next = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        plain.lock("locks/glitch", kvkit::LockOptions::default()),
    )
    .await
    .expect("the released lock is free")
    .unwrap();
    drop(next);
}
