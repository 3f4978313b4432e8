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
