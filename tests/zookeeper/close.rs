//! `close` on ZooKeeper: it deletes the lock znodes held and awaited through the
//! handle, and ends its watches (the shared close checks), at once.

use kvkit::testing::conformance;
use kvkit::{ErrorKind, LockGuard, LockOptions, PutOptions};

use crate::streams::{ends_with_closed, next};
use crate::{WAIT, connect, kind, shared_server};

/// A guard dropped right before `close()` is free once `close` returns. (A
/// current-thread runtime: the drop's background release has not run when `close`
/// starts.)
#[tokio::test(flavor = "current_thread")]
async fn a_guard_dropped_just_before_close_is_free_when_close_returns() {
    let Some(turn) = shared_server().await else {
        return;
    };
    let kv = connect(turn.addr(), "/kvkit-close-dropped").await;
    let other = connect(turn.addr(), "/kvkit-close-dropped").await;
    conformance::guard_dropped_just_before_close_is_free_when_close_returns(&kv, &other, |_| {})
        .await;
    other.close().await.unwrap();
}

/// The guards see `lost()`, another client takes the locks at once, also when a guard
/// is dropped only after the close; waiters and watches end with `Closed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_releases_locks_at_once_and_ends_watches() {
    let Some(turn) = shared_server().await else {
        return;
    };
    let kv = connect(turn.addr(), "/kvkit-close-shared-check").await;
    let other = connect(turn.addr(), "/kvkit-close-shared-check").await;
    conformance::close_ends_watches_and_frees_locks(&kv, &other).await;
    other.close().await.unwrap();
}

/// `lost()` has fired when `close` returns, and a lock on a key that held a value
/// before is free for the next holder's value, while the value of a lock on a new
/// key is taken away with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_fires_lost_before_it_returns_and_frees_locks_with_their_values() {
    let Some(turn) = shared_server().await else {
        return;
    };
    let addr = turn.addr().to_owned();
    let root = "/kvkit-close";
    let kv = connect(&addr, root).await;
    let other = connect(&addr, root).await;
    kv.put("c/k", "v", PutOptions::default()).await.unwrap();
    kv.put("c/lock", "before", PutOptions::default())
        .await
        .unwrap();
    let guard = kv
        .lock("c/lock", LockOptions::default().value("held"))
        .await
        .unwrap();
    let new_key_guard = kv
        .lock("c/new", LockOptions::default().value("held"))
        .await
        .unwrap();
    let mut watch = kv.watch("c/k").await.unwrap();
    let mut tree = kv.watch_tree("c").await.unwrap();
    next(&mut watch, "initial").await.unwrap();
    next(&mut tree, "initial tree").await.unwrap();

    kv.close().await.unwrap();
    // Every guard knows at once, and the locks are free for others right away.
    assert!(guard.is_lost(), "close() fires lost() before it returns");
    assert!(new_key_guard.is_lost());
    tokio::time::timeout(WAIT, guard.lost())
        .await
        .expect("lost() resolves");
    let taken = other
        .try_lock("c/lock", LockOptions::default().value("next"))
        .await
        .unwrap()
        .expect("the lock is free after close()");
    assert_eq!(other.get("c/lock").await.unwrap().value, "next");
    assert_eq!(
        kind(other.get("c/new").await),
        ErrorKind::NotFound,
        "close() took the value of the lock it held away"
    );
    assert_eq!(
        kind(guard.unlock().await),
        ErrorKind::LockLost,
        "unlock after close"
    );
    drop(new_key_guard);
    // Every watch yields one Err(Closed) and ends.
    ends_with_closed(&mut watch, "watch after close").await;
    ends_with_closed(&mut tree, "watch_tree after close").await;
    assert_eq!(kind(kv.watch("c/k").await), ErrorKind::Closed);
    taken.unlock().await.unwrap();
    other.close().await.unwrap();
}
