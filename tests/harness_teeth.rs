//! The conformance suite and the model harness must catch broken backends: each
//! wrapper in `support` breaks one rule of a correct store (memory), one class of bug
//! each, and `check_backend` must fail on it; the model harness alone (its sequential
//! part) must fail on it in 100 of 100 seeded runs with the default config. The
//! unmodified wrapper passes. Everything runs on a paused tokio clock, so TTL steps
//! cost no real time.

mod support;

/// The bugs only concurrency exposes (non-atomic CAS, lost writes, locks ignoring
/// contention, watches skipping writes), caught by `check_backend`'s concurrent phase.
#[path = "teeth/concurrent.rs"]
mod concurrent;

use kvkit::Kv;
use kvkit::memory::Memory;
use kvkit::testing::{Phase, Rule, Seed, conformance, model};
use support::{Fault as Bug, Faulty};

fn broken(bug: Bug) -> Kv<Faulty> {
    Kv::new(Faulty::new(Memory::new(), bug))
}

fn seed(i: u8) -> [u8; 32] {
    let mut seed = [0x5e; 32];
    seed[0] = i;
    seed
}

/// `check_backend` fails naming the rule broken, and the model harness alone fails in
/// every one of 100 seeded runs, each failure naming its rule and seed.
async fn caught(bug: Bug) {
    let failure = kvkit::testing::check_backend(&broken(bug), model::ModelConfig::default())
        .await
        .expect_err(&format!("check_backend must fail on {bug:?}"));
    assert!(
        failure.rule.is_some(),
        "{bug:?}: no rule named in {failure}"
    );
    let mut rules = std::collections::BTreeMap::new();
    let started = std::time::Instant::now();
    for i in 0..100 {
        // Shrinking only shortens the report (the run has failed by then), so it runs
        // for the first seed only: the loop stays fast.
        let config = model::ModelConfig {
            seed: Some(seed(i)),
            max_shrink_runs: if i == 0 { 1024 } else { 0 },
            ..model::ModelConfig::default()
        };
        let failure = model::check_against_memory(&broken(bug), config)
            .await
            .expect_err(&format!(
                "the model harness must fail on {bug:?} with seed {i}"
            ));
        assert_eq!(failure.phase, Phase::Model, "{failure}");
        assert_eq!(failure.seed, Some(Seed::Model(seed(i))), "{failure}");
        let rule = failure
            .rule
            .unwrap_or_else(|| panic!("{bug:?}, seed {i}: no rule named in {failure}"));
        *rules.entry(rule).or_insert(0) += 1;
    }
    eprintln!(
        "{bug:?}: caught 100/100 in {:?} by {rules:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn the_wrapper_without_a_bug_passes() {
    let faithful = broken(Bug::None);
    conformance::run_all(&faithful).await;
    model::check_backend(&faithful, model::ModelConfig::default())
        .await
        .unwrap();
    for i in 0..10 {
        let config = model::ModelConfig {
            seed: Some(seed(i)),
            ..model::ModelConfig::default()
        };
        model::check_against_memory(&faithful, config)
            .await
            .unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_conformance_check_is_an_error_naming_it() {
    let failure = model::check_backend(
        &broken(Bug::ListMatchesSiblings),
        model::ModelConfig::default(),
    )
    .await
    .expect_err("list leaks siblings");
    assert_eq!(failure.phase, Phase::Conformance, "{failure}");
    assert_eq!(
        failure.rule,
        Some(Rule::Conformance("list_rules")),
        "{failure}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_backend_panicking_in_the_model_is_an_error() {
    let failure = model::check_backend(&broken(Bug::ListPanics), model::ModelConfig::default())
        .await
        .expect_err("the backend panics");
    assert_eq!(failure.phase, Phase::Model, "{failure}");
    assert_eq!(failure.rule, Some(Rule::Healthy), "{failure}");
    // The panic's own message is the detail.
    assert!(failure.detail.starts_with("list of "), "{failure}");
}

macro_rules! teeth {
    ($($name:ident => $bug:expr),* $(,)?) => {$(
        #[tokio::test(start_paused = true)]
        async fn $name() {
            caught($bug).await;
        }
    )*};
}

teeth! {
    list_matching_siblings_is_caught => Bug::ListMatchesSiblings,
    cas_ignoring_the_version_is_caught => Bug::CasIgnoresVersion,
    delete_taking_children_is_caught => Bug::DeleteTakesChildren,
    list_sorted_by_segments_is_caught => Bug::ListSortsBySegments,
    delete_tree_taking_siblings_is_caught => Bug::DeleteTreeTakesSiblings,
    atomic_put_dropping_the_ttl_is_caught => Bug::AtomicPutDropsTtl,
    watch_skipping_its_first_item_is_caught => Bug::WatchSkipsFirstItem,
    lock_shared_by_identical_options_is_caught => Bug::LockSameOptionsShared,
    stale_reads_from_a_per_handle_cache_are_caught => Bug::PerHandleCache,
    watch_repeating_items_is_caught => Bug::WatchRepeats,
    abandoned_lock_never_freed_is_caught => Bug::LockDropsTtl,
    version_restarting_on_create_is_caught => Bug::VersionRestartsOnCreate,
    implicit_parent_visible_is_caught => Bug::ImplicitParentVisible,
}
