//! The conformance suite and the model harness must catch broken backends: each
//! wrapper here breaks one rule of a correct store (memory), and both checks must fail.

mod support;

use kvkit::Kv;
use kvkit::memory::Memory;
use kvkit::testing::{conformance, model};
use support::{Fault as Bug, Faulty};

fn broken(bug: Bug) -> Kv<Faulty> {
    Kv::new(Faulty::new(Memory::new(), bug))
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
