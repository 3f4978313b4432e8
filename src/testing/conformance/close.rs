//! Conformance checks of `close`: it ends watches and lock waiters with `Closed`, and
//! frees the locks held through the handle at once, dropped guards included.
//!
//! Each check closes the handle it is given: give it one of its own, and a second
//! handle (`other`) on the same store.

use std::time::Duration;

use futures::StreamExt;

use super::PROMPTLY;
use super::support::{eventually, expect_kind, next_item, ok};
use crate::backend::{Backend, LockGuard, LockOptions, PutOptions};
use crate::error::{Error, ErrorKind};
use crate::kv::Kv;

/// How soon after `close` returns the guards of its locks see them lost.
const AT_ONCE: Duration = Duration::from_secs(1);

/// Where [`guard_dropped_just_before_close_is_free_when_close_returns`] lets a
/// backend's test check its own bookkeeping (sessions, leases) on the way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCheckpoint {
    /// The lock is held, its guard not yet dropped.
    Locked,
    /// `close` has just returned; nothing else ran since.
    Closed,
}

fn long_lock() -> LockOptions {
    LockOptions::default().ttl(Duration::from_secs(60))
}

/// A guard dropped right before `close()` is free once `close` returns: the lock's
/// key is gone and another handle takes it at once, not after the lock's TTL. Run it
/// on a current-thread runtime, so the drop's background release has not run when
/// `close` starts.
pub async fn guard_dropped_just_before_close_is_free_when_close_returns<B: Backend>(
    kv: &Kv<B>,
    other: &Kv<B>,
    checkpoint: impl Fn(CloseCheckpoint),
) {
    let guard = ok("lock", kv.lock("d/lock", long_lock().value("held")).await);
    checkpoint(CloseCheckpoint::Locked);
    drop(guard);
    ok("close", kv.close().await);
    checkpoint(CloseCheckpoint::Closed);
    assert!(
        !ok("exists", other.exists("d/lock").await),
        "the lock key is gone"
    );
    let taken = tokio::time::timeout(PROMPTLY, other.try_lock("d/lock", long_lock()))
        .await
        .expect("try_lock within PROMPTLY");
    let taken = ok("try_lock", taken).expect("the dropped guard's lock is free after close");
    ok("unlock", taken.unlock().await);
}

/// `close` fires `lost()` on the guards, frees their locks for other handles at once
/// (also a guard dropped only after the close), withdraws the handle's lock waiters
/// with `Closed`, ends watches with `Err(Closed)` then the end of the stream, and
/// refuses every later call with `Closed`.
pub async fn close_ends_watches_and_frees_locks<B: Backend>(kv: &Kv<B>, other: &Kv<B>) {
    let held = ok("lock", kv.lock("c/held", long_lock().value("a")).await);
    let dropped = ok("lock", kv.lock("c/dropped", long_lock()).await);
    let blocker = ok("lock", other.lock("c/awaited", long_lock()).await);
    let waiter = {
        let kv = kv.clone();
        tokio::spawn(async move { kv.lock("c/awaited", long_lock()).await.map(drop) })
    };
    let mut watch = ok("watch", kv.watch("c/watched").await);
    assert_eq!(
        ok("watch", next_item("initial state", &mut watch).await),
        None
    );
    let mut tree = ok("watch_tree", kv.watch_tree("c").await);
    let first = ok("watch_tree", next_item("initial subtree", &mut tree).await);
    assert_eq!(first.len(), 3, "the three lock keys: {first:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;

    ok("close", kv.close().await);

    tokio::time::timeout(AT_ONCE, held.lost())
        .await
        .expect("close fires lost() on the guards");
    let waited = tokio::time::timeout(PROMPTLY, waiter)
        .await
        .expect("the waiter ends")
        .expect("the waiter task");
    expect_kind("the closed handle's waiter", waited, ErrorKind::Closed);
    for key in ["c/held", "c/dropped"] {
        let taken = tokio::time::timeout(PROMPTLY, other.try_lock(key, long_lock()))
            .await
            .expect("try_lock within PROMPTLY");
        assert!(
            ok("try_lock", taken).is_some(),
            "{key} is free right after close"
        );
    }
    drop(dropped);
    expect_kind(
        "get after close",
        kv.get("c/watched").await,
        ErrorKind::Closed,
    );
    expect_kind(
        "put after close",
        kv.put("c/watched", "v", PutOptions::default()).await,
        ErrorKind::Closed,
    );
    expect_kind(
        "watch after close",
        kv.watch("c/watched").await.map(drop),
        ErrorKind::Closed,
    );
    expect_kind(
        "unlock after close",
        held.unlock().await,
        ErrorKind::LockLost,
    );
    // No contender of the closed handle is left queued before the next one.
    ok("unlock", blocker.unlock().await);
    let next_holder = tokio::time::timeout(PROMPTLY, other.lock("c/awaited", long_lock()))
        .await
        .expect("the closed waiter's contender is gone");
    drop(ok("lock", next_holder));
    // The tree may see the released locks go before the close ends it.
    let mut tail = Vec::new();
    let tree_end = loop {
        match tokio::time::timeout(PROMPTLY, tree.next())
            .await
            .expect("the tree ends")
        {
            Some(Ok(pairs)) => tail.push(pairs.len()),
            end => break end,
        }
    };
    assert!(
        matches!(tree_end, Some(Err(Error::Closed))),
        "{tree_end:?} after {tail:?}"
    );
    let watch_end = tokio::time::timeout(PROMPTLY, watch.next())
        .await
        .expect("the watch reports the close");
    assert!(
        matches!(watch_end, Some(Err(Error::Closed))),
        "{watch_end:?}"
    );
    for (what, end) in [
        (
            "watch",
            tokio::time::timeout(PROMPTLY, watch.next())
                .await
                .map(|i| i.is_none()),
        ),
        (
            "watch_tree",
            tokio::time::timeout(PROMPTLY, tree.next())
                .await
                .map(|i| i.is_none()),
        ),
    ] {
        assert_eq!(end, Ok(true), "the {what} ends after Err(Closed)");
    }
    // The locks the other handle took over are released in the background.
    let released = eventually(Duration::from_secs(5), || async {
        let held = other.exists("c/held").await.unwrap_or(true);
        let dropped = other.exists("c/dropped").await.unwrap_or(true);
        !held && !dropped
    })
    .await;
    assert!(released, "the taken-over locks are released");
}
