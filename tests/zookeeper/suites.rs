//! The crate's shared suites on ZooKeeper: conformance, the model harness, recipes.

use crate::{connect, shared_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_conformance_suite() {
    let Some(turn) = shared_server().await else {
        return;
    };
    let kv = &connect(turn.addr(), "/kvkit-conformance").await;
    kvkit::testing::conformance::run_all(kv).await;
    kv.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behaves_like_the_memory_model() {
    let Some(turn) = shared_server().await else {
        return;
    };
    let kv = &connect(turn.addr(), "/kvkit-model").await;
    let started = std::time::Instant::now();
    // KVKIT_MODEL_CASES raises the number of random sequences for a longer soak.
    let mut config = kvkit::testing::model::ModelConfig::default();
    if let Some(cases) = std::env::var("KVKIT_MODEL_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
    {
        config.cases = cases;
    }
    kvkit::testing::model::check_against_memory(kv, config)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("model harness passed in {:?}", started.elapsed());
    kv.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_recipe_suite() {
    let Some(turn) = shared_server().await else {
        return;
    };
    let kv = &connect(turn.addr(), "/kvkit-recipes").await;
    kvkit::testing::recipes::run_all(kv).await;
    kv.close().await.unwrap();
}

/// The model harness once failed ZooKeeper with this seed: a `watch_tree` yielded the
/// tree part-deleted during a `delete_tree` (ZooKeeper deletes znode by znode), which
/// the harness took for a stale state. `delete_tree` is not promised atomic, so the
/// harness now accepts part-deleted states; this replays the seed that found it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_accepts_a_tree_seen_part_deleted() {
    let Some(turn) = shared_server().await else {
        return;
    };
    let kv = connect(turn.addr(), "/kvkit-replay").await;
    let hex = "758d75d6d1ad842134e8d3c33bb8e151f4e00c3df004bdf6eabe095ba40bac06";
    let mut seed = [0u8; 32];
    for (i, byte) in seed.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    let config = kvkit::testing::model::ModelConfig {
        seed: Some(seed),
        concurrent: None,
        ..Default::default()
    };
    kvkit::testing::model::check_against_memory(&kv, config)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    kv.close().await.unwrap();
}
