//! The cut-off waiter scenario of every network backend's lock tests: a waiter whose
//! connection is cut while it waits, calling `lock()` the way ordinary code does
//! (inside a timeout, retried after any error), must leave nothing behind that blocks
//! the lock once its holder releases it.
#![allow(dead_code)] // each test crate uses some of it

use std::time::Duration;

use kvkit::backend::Backend;
use kvkit::testing::fault::FaultInjector;
use kvkit::{Kv, LockGuard, LockOptions};
use tokio::time::Instant;

/// The waiter's timeout around each `lock()` call.
const CALL_TIMEOUT: Duration = Duration::from_secs(12);
/// The waiter's pause after a failed or timed-out call.
const RETRY_AFTER: Duration = Duration::from_millis(200);
/// The waiter's attempts at most (and [`WAITER_GIVES_UP`] in all).
const MAX_ATTEMPTS: usize = 4;
const WAITER_GIVES_UP: Duration = Duration::from_secs(28);
/// When the cut starts after the waiter started, and how long it lasts.
const CUT_AFTER: Duration = Duration::from_millis(500);
const CUT_FOR: Duration = Duration::from_secs(4);
/// When the holder releases after the cut healed.
const RELEASE_AFTER_HEAL: Duration = Duration::from_secs(4);
/// How soon after the release a fresh client must get the lock.
const FRESH_WITHIN: Duration = Duration::from_secs(5);

/// The scenario's two tests, one per kind of cut: `$run` is an async fn taking
/// `fn(Arc<TcpProxy>) -> ProxyPartition` (the cut of the waiter's proxy).
#[macro_export]
macro_rules! cut_waiter_tests {
    ($run:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn waiter_cut_off_silently_leaves_the_lock_free() {
            $run(kvkit::testing::fault::ProxyPartition::silent).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn waiter_whose_connections_are_refused_leaves_the_lock_free() {
            $run(kvkit::testing::fault::ProxyPartition::blocked).await;
        }
    };
}

/// Runs the scenario: `holder` holds the lock; `waiter` (whose connection `cut` cuts)
/// retries `lock()` under a timeout; 0.5 s in, the waiter is cut off for 4 s; the
/// holder releases 4 s after the cut healed; then `fresh` must get the lock within a
/// few seconds (the waiter, if it got it first, holds it briefly and lets go). Closes
/// the three handles.
pub async fn cut_waiter_leaves_the_lock_free<B>(
    holder: Kv<B>,
    waiter: Kv<B>,
    fresh: Kv<B>,
    cut: impl FaultInjector,
) where
    B: Backend + Clone + Send + Sync + 'static,
    B::Lock: Send + 'static,
{
    let key = "cut";
    let held = holder
        .lock(key, LockOptions::default().value("holder"))
        .await
        .expect("the holder takes the lock");
    let waiting = tokio::spawn(wait_like_a_caller(waiter.clone(), key.to_owned()));
    tokio::time::sleep(CUT_AFTER).await;
    cut.inject().await;
    tokio::time::sleep(CUT_FOR).await;
    cut.heal().await;
    tokio::time::sleep(RELEASE_AFTER_HEAL).await;
    held.unlock().await.expect("the holder releases");
    let released = Instant::now();
    let mut tries = 0;
    let taken = loop {
        tries += 1;
        let attempt = tokio::time::timeout(
            Duration::from_secs(2),
            fresh.try_lock(key, LockOptions::default().value("fresh")),
        )
        .await;
        let last = match attempt {
            Ok(Ok(Some(taken))) => break taken,
            Ok(Ok(None)) => "held".to_owned(),
            Ok(Err(err)) => err.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        assert!(
            released.elapsed() < FRESH_WITHIN && tries < 100,
            "a fresh client could not take the lock {:?} after its holder released it \
             ({tries} tries, last: {last}): something the cut-off waiter registered \
             still blocks it",
            released.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    taken.unlock().await.expect("the fresh client releases");
    waiting.abort();
    let _ = waiting.await;
    for kv in [holder, waiter, fresh] {
        let _ = kv.close().await;
    }
}

/// The waiter's code: `lock()` inside a 12 s timeout, retried 200 ms after any error
/// (bounded in attempts and time); a lock it gets is held briefly and released.
/// The outcome of each attempt is printed (seen with `--nocapture`).
async fn wait_like_a_caller<B>(waiter: Kv<B>, key: String)
where
    B: Backend,
{
    let start = Instant::now();
    for _ in 0..MAX_ATTEMPTS {
        if start.elapsed() > WAITER_GIVES_UP {
            return;
        }
        let attempt =
            tokio::time::timeout(CALL_TIMEOUT, waiter.lock(&key, LockOptions::default())).await;
        let outcome = match &attempt {
            Ok(Ok(_)) => "locked".to_owned(),
            Ok(Err(err)) => format!("{:?}", err.kind()),
            Err(_) => "timed out".to_owned(),
        };
        eprintln!("waiter: {outcome} at {:?}", start.elapsed());
        if let Ok(Ok(guard)) = attempt {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = guard.unlock().await;
            return;
        }
        tokio::time::sleep(RETRY_AFTER).await;
    }
}
