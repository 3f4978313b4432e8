//! The concurrent checks must catch bugs that only concurrency exposes: each store
//! here is memory with one such bug (see `support/racy.rs`), and
//! `check_concurrent` must fail on it in every one of 100 seeded runs, while the
//! faithful wrapper passes all 100. The lock-probe bugs run on a paused clock: a
//! guard that never notices its key taken costs the probe's whole bound per run.

#[path = "../support/racy.rs"]
mod racy;

use kvkit::Kv;
use kvkit::testing::concurrent::{ConcurrentConfig, ConcurrentReport, check_concurrent};
use kvkit::testing::fault::SharedFault;
use kvkit::testing::{CheckFailure, Phase, Rule, Seed};
use racy::{Bug, Racy};

const RUNS: u64 = 100;

/// The rules the concurrent phase checks of each watch.
const WATCH_RULES: &[Rule] = &[
    Rule::WatchFilter,
    Rule::WatchOrder,
    Rule::WatchUnknown,
    Rule::WatchInWindow,
    Rule::WatchRepeat,
    Rule::WatchEvery,
    Rule::WatchConverges,
];

async fn run(bug: Bug, seed: u64, fault: bool) -> Result<ConcurrentReport, CheckFailure> {
    let store = Racy::new(bug);
    let fault = fault.then(|| SharedFault::new(store.fault_switch()));
    // Two handles: clients alternate between them for the whole run.
    let handles = vec![Kv::new(store.clone()), Kv::new(store)];
    let config = ConcurrentConfig {
        seed,
        ops_per_client: 80,
        lock_rounds: 4,
        ..ConcurrentConfig::default()
    };
    check_concurrent(handles, config, fault).await
}

/// Every seeded run fails in the concurrent phase, naming one of `rules` and its seed.
async fn caught_every_time(bug: Bug, rules: &[Rule]) {
    let mut example = None;
    for seed in 0..RUNS {
        match run(bug, seed, false).await {
            Ok(report) => panic!("{bug:?} passed with seed {seed}: {report:?}"),
            Err(failure) => {
                assert!(
                    failure.phase == Phase::Concurrent
                        && failure.rule.is_some_and(|rule| rules.contains(&rule))
                        && failure.seed == Some(Seed::Concurrent(seed)),
                    "{bug:?}, seed {seed}: expected a failure of {rules:?}, got:\n{failure}"
                );
                example.get_or_insert(failure);
            }
        }
    }
    if let Some(failure) = example {
        eprintln!("{bug:?}, first report:\n{failure}");
    }
}

async fn passes_every_time(bug: Bug, fault: bool) {
    for seed in 0..RUNS {
        let report = run(bug, seed, fault)
            .await
            .unwrap_or_else(|f| panic!("{bug:?} (fault: {fault}) failed:\n{f}"));
        assert!(report.operations >= 320, "{report:?}");
        if fault {
            assert!(report.indeterminate > 0, "the fault never bit: {report:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_faithful_wrapper_passes() {
    passes_every_time(Bug::None, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_faithful_every_write_watch_passes() {
    passes_every_time(Bug::EveryWrite, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_faithful_wrapper_passes_under_an_ack_losing_fault() {
    passes_every_time(Bug::EveryWrite, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_atomic_cas_is_caught() {
    caught_every_time(Bug::NonAtomicCas, &[Rule::Linearizable]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_write_under_concurrency_is_caught() {
    caught_every_time(Bug::LostSiblingWrite, &[Rule::Linearizable]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_ignoring_contention_is_caught() {
    caught_every_time(Bug::LockIgnoresContention, &[Rule::LockExclusion]).await;
}

/// The lock-probe bugs, each caught by the one rule named, on a paused clock.
macro_rules! lock_teeth {
    ($($name:ident => $bug:expr, $rule:expr);* $(;)?) => {$(
        #[tokio::test(start_paused = true)]
        async fn $name() {
            caught_every_time($bug, &[$rule]).await;
        }
    )*};
}

lock_teeth! {
    guard_deaf_to_its_key_taken_is_caught => Bug::LockDeafToTakeover, Rule::LockLossUnnoticed;
    guard_deaf_to_its_key_overwritten_is_caught => Bug::LockDeafToOverwrite, Rule::LockLossUnnoticed;
    try_lock_reading_then_writing_is_caught => Bug::TryLockReadsThenWrites, Rule::TryLockNotExclusive;
    try_lock_granting_everyone_is_caught => Bug::TryLockGrantsAll, Rule::TryLockNotExclusive;
    try_lock_handing_out_a_lost_guard_is_caught => Bug::TryLockLostAtBirth, Rule::LockLostAtBirth;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_skipping_writes_is_caught() {
    caught_every_time(Bug::WatchCoalescesClaimingEveryWrite, WATCH_RULES).await;
}

/// The snapshot check only proves what the history pins down (see
/// `linearizability::check_snapshots`), so a list read key by key is caught in most
/// runs rather than all: the bar here is a clear majority, and every report must
/// name the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_that_is_not_a_snapshot_is_caught_in_most_runs() {
    let mut caught = 0;
    for seed in 0..RUNS {
        if let Err(failure) = run(Bug::ListKeyByKey, seed, false).await {
            assert_eq!(
                failure.rule,
                Some(Rule::ListSnapshot),
                "seed {seed}: {failure}"
            );
            caught += 1;
        }
    }
    eprintln!("ListKeyByKey caught in {caught} of {RUNS} runs");
    assert!(
        caught >= RUNS * 3 / 4,
        "caught in only {caught} of {RUNS} runs"
    );
}
