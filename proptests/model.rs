//! The model harness against the in-process backends: memory on a paused tokio clock
//! (TTL steps cost no real time), redb on the real clock (its TTLs are wall-clock).

use std::time::Duration;

use kvkit::Kv;
use kvkit::memory::Memory;
use kvkit::testing::model::{ModelConfig, check_against_memory, check_backend};

#[tokio::test(start_paused = true)]
async fn memory_passes_the_model_on_a_paused_clock() {
    // A check of the harness itself: the reference store must pass every rule.
    let real = std::time::Instant::now();
    let config = ModelConfig {
        cases: 256,
        ..ModelConfig::default()
    };
    check_against_memory(&Kv::new(Memory::new()), config)
        .await
        .unwrap();
    eprintln!("memory: 256 cases in {:?}", real.elapsed());
}

#[tokio::test(start_paused = true)]
async fn memory_passes_check_backend_on_a_paused_clock() {
    check_backend(&Kv::new(Memory::new()), ModelConfig::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_passes_the_model_on_the_real_clock() {
    // Few cases: TTL steps sleep for real here.
    let config = ModelConfig {
        cases: 16,
        max_sleep: Duration::from_secs(5),
        ..ModelConfig::default()
    };
    check_against_memory(&Kv::new(Memory::new()), config)
        .await
        .unwrap();
}

#[cfg(feature = "redb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_agrees_with_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let kv = Kv::new(kvkit::redb::Redb::open(dir.path().join("model.redb")).unwrap());
    let config = ModelConfig {
        cases: 128,
        max_sleep: Duration::from_secs(10),
        ..ModelConfig::default()
    };
    check_against_memory(&kv, config).await.unwrap();
}
