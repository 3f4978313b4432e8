//! The conformance suite and the model harness must catch broken backends: each
//! wrapper here breaks one rule of a correct store (memory), and both checks must fail.

use bytes::Bytes;
use kvkit::backend::derived;
use kvkit::memory::Memory;
use kvkit::testing::{conformance, model};
use kvkit::{
    Backend, Capabilities, Cas, Dir, Expect, Key, Kv, KvPair, LockOptions, PutOptions, Result,
};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Bug {
    /// No bug: a faithful delegate, to show the failures below come from the bugs.
    None,
    /// `list("dir")` matches the raw prefix `dir`, leaking siblings such as `dir2/x`.
    ListMatchesSiblings,
    /// A compare-and-swap writes whatever the version.
    CasIgnoresVersion,
    /// `delete` of a key also deletes the keys below it.
    DeleteTakesChildren,
}

#[derive(Clone)]
struct Broken {
    inner: Memory,
    bug: Bug,
}

impl Backend for Broken {
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
        if self.bug == Bug::DeleteTakesChildren {
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
        match (self.bug, expect) {
            (Bug::CasIgnoresVersion, Expect::Index(_)) => {
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
        if self.bug == Bug::ListMatchesSiblings {
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

fn broken(bug: Bug) -> Kv<Broken> {
    Kv::new(Broken {
        inner: Memory::new(),
        bug,
    })
}

async fn conformance_catches(bug: Bug) {
    let kv = broken(bug);
    let outcome = tokio::spawn(async move { conformance::run_all(&kv).await }).await;
    let err = outcome.expect_err(&format!("the conformance suite must fail on {bug:?}"));
    assert!(
        err.is_panic(),
        "{bug:?}: expected a failed check, got {err:?}"
    );
}

async fn model_catches(bug: Bug) {
    let config = model::ModelConfig {
        cases: 256,
        ..model::ModelConfig::default()
    };
    let outcome = model::check_against_memory(&broken(bug), config).await;
    let failure = outcome.expect_err(&format!("the model harness must fail on {bug:?}"));
    assert!(failure.0.contains("minimal sequence"), "{failure}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrapper_without_a_bug_passes_both() {
    let faithful = broken(Bug::None);
    conformance::run_all(&faithful).await;
    model::check_against_memory(&faithful, model::ModelConfig::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_matching_siblings_is_caught() {
    conformance_catches(Bug::ListMatchesSiblings).await;
    model_catches(Bug::ListMatchesSiblings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_ignoring_the_version_is_caught() {
    conformance_catches(Bug::CasIgnoresVersion).await;
    model_catches(Bug::CasIgnoresVersion).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_taking_children_is_caught() {
    conformance_catches(Bug::DeleteTakesChildren).await;
    model_catches(Bug::DeleteTakesChildren).await;
}
