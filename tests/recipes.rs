//! Leader election, service discovery and typed values on the in-process backends.

use kvkit::Kv;
use kvkit::memory::Memory;
use kvkit::testing::recipes;

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

/// A memory store whose first `failures` watch calls fail as if the server were down.
#[derive(Clone)]
struct FlakyWatches {
    inner: Memory,
    failures: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

mod flaky {
    use super::FlakyWatches;
    use bytes::Bytes;
    use kvkit::memory::Memory;
    use kvkit::{
        Backend, Capabilities, Cas, Dir, Error, Expect, Key, KvPair, LockOptions, PutOptions,
        Result,
    };
    use std::sync::atomic::Ordering;

    impl Backend for FlakyWatches {
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
        async fn range(&self, dir: &Dir) -> Result<Vec<KvPair>> {
            self.inner.range(dir).await
        }
        async fn delete_range(&self, dir: &Dir) -> Result<()> {
            self.inner.delete_range(dir).await
        }
        async fn watch(&self, key: &Key<'_>) -> Result<Self::Watch> {
            let failing = self
                .failures
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                return Err(Error::unavailable("flaky", "the server is down"));
            }
            self.inner.watch(key).await
        }
        async fn watch_tree(&self, dir: &Dir) -> Result<Self::WatchTree> {
            self.inner.watch_tree(dir).await
        }
        async fn lock(&self, key: &Key<'_>, options: &LockOptions) -> Result<Self::Lock> {
            self.inner.lock(key, options).await
        }
        async fn try_lock(
            &self,
            key: &Key<'_>,
            options: &LockOptions,
        ) -> Result<Option<Self::Lock>> {
            self.inner.try_lock(key, options).await
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_reports_store_failures_and_retries() {
    use futures::StreamExt;
    use kvkit::election::Follower;
    use std::time::Duration;

    let memory = Memory::new();
    let flaky = Kv::new(FlakyWatches {
        inner: memory.clone(),
        failures: std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(2)),
    });
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
