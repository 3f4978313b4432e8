//! The shared suites on Consul: conformance and the model harness (against the emulator and, when configured, a real Consul), the recipes.

use std::time::Duration;

use kvkit::testing::{conformance, model};

use crate::consul_support::{real_consul, setup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_against_the_emulator() {
    let (emu, kv) = setup().await;
    conformance::run_all(&kv).await;
    kv.close().await.unwrap();
    // Every lock session was destroyed; only TTL sessions (ending by themselves) may remain.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        emu.session_ids().len() <= 2,
        "sessions left: {:?}",
        emu.session_ids()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_harness_against_the_emulator() {
    let (_emu, kv) = setup().await;
    model::check_against_memory(&kv, model::ModelConfig::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_and_model_against_a_real_consul() {
    let Some(kv) = real_consul().await else {
        eprintln!("NOTICE: KVKIT_CONSUL_ADDR is not set; the real-Consul run is skipped");
        return;
    };
    conformance::run_all(&kv).await;
    model::check_against_memory(
        &kv,
        model::ModelConfig {
            cases: 16,
            ..Default::default()
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipes_work_against_the_emulator() {
    let (_emu, kv) = setup().await;
    kvkit::testing::recipes::run_all(&kv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_recipes_against_the_emulator() {
    let (_emu, kv) = setup().await;
    kvkit::testing::recipes::close_ends_recipes(&kv).await;
}
