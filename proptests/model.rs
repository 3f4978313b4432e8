//! The model harness: the backends against the memory model.

use kvkit::Kv;
use kvkit::memory::Memory;
use kvkit::testing::model::{ModelConfig, check_against_memory};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_agrees_with_itself() {
    // A sanity check of the harness: the model against a second model.
    check_against_memory(&Kv::new(Memory::new()), ModelConfig::default())
        .await
        .unwrap();
}

#[cfg(feature = "redb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_agrees_with_the_memory_model() {
    let dir = tempfile::tempdir().unwrap();
    let kv = Kv::new(kvkit::redb::Redb::open(dir.path().join("model.redb")).unwrap());
    let config = ModelConfig {
        cases: 128,
        ..ModelConfig::default()
    };
    check_against_memory(&kv, config).await.unwrap();
}
