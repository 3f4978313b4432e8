//! The conformance suite on the in-process backends.

use kvkit::Kv;
use kvkit::memory::Memory;
use kvkit::testing::conformance;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_passes_the_conformance_suite() {
    conformance::run_all(&Kv::new(Memory::new())).await;
}

#[cfg(feature = "redb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let kv = Kv::new(kvkit::redb::Redb::open(dir.path().join("conformance.redb")).unwrap());
    conformance::run_all(&kv).await;
}
