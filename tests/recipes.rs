//! Leader election, service discovery and typed values on the in-process backends.

use kvkit::Kv;
use kvkit::memory::Memory;
use kvkit::testing::recipes;

mod support;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_reports_store_failures_and_retries() {
    use futures::StreamExt;
    use kvkit::election::Follower;
    use std::time::Duration;

    let memory = Memory::new();
    let flaky = Kv::new(support::Faulty::new(
        memory.clone(),
        support::Fault::WatchesFail(2),
    ));
    Kv::new(memory)
        .put("election/leader", "node-7", kvkit::PutOptions::default())
        .await
        .unwrap();
    let mut leaders = Follower::new(flaky, "election/leader")
        .retry_after(Duration::from_millis(20))
        .leaders();
    let mut errors = 0;
    let leader = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match leaders.next().await.expect("the follower keeps going") {
                Err(err) => {
                    assert!(err.is_retryable(), "{err}");
                    errors += 1;
                }
                Ok(leader) => return leader,
            }
        }
    })
    .await
    .expect("the follower recovers after the failures");
    assert_eq!(errors, 2, "each failed watch is reported on the stream");
    assert_eq!(leader.as_deref(), Some("node-7"));
}

/// Lock, unlock, register and deregister wait on no timer: on a paused clock (which
/// jumps to the next timer when every task is idle) no time passes. The lock holder
/// once awaited an interval's first tick before listening for `unlock`, which cost
/// every unlock about a millisecond (one timer tick).
#[tokio::test(start_paused = true)]
async fn lock_and_registration_cycles_wait_on_no_timer() {
    let kv = Kv::new(kvkit::memory::Memory::new());
    let registry = kvkit::discovery::Registry::new(kv.clone(), "services");
    // Off the millisecond grid, where a timer due "now" rounds up to the next tick.
    tokio::time::advance(std::time::Duration::from_micros(500)).await;
    let started = tokio::time::Instant::now();
    for round in 0..3 {
        let guard = kv
            .lock("locks/a", kvkit::LockOptions::default())
            .await
            .unwrap();
        kvkit::LockGuard::unlock(guard).await.unwrap();
        let registration = registry
            .register(
                "web",
                &format!("i{round}"),
                "127.0.0.1:80",
                std::time::Duration::from_secs(30),
            )
            .await
            .unwrap();
        registration.deregister().await;
    }
    assert_eq!(tokio::time::Instant::now(), started, "a timer was awaited");
}
