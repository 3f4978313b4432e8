//! `close` on etcd: it revokes the leases of the locks held and awaited through the
//! handle, and ends its watches (the shared close checks).

use kvkit::testing::conformance;
use kvkit::testing::etcd_server::EtcdServer;

use crate::etcd_support::connect;

/// A guard dropped right before `close()` is free once `close` returns: its lease stays
/// registered with the handle until the background revoke is done, so `close` revokes
/// it too. (A current-thread runtime: the background task has not run when `close`
/// starts, so this fails if the drop forgot the lease first.)
#[tokio::test(flavor = "current_thread")]
async fn a_guard_dropped_just_before_close_is_free_when_close_returns() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config()).await;
    let other = connect(server.config()).await;
    conformance::guard_dropped_just_before_close_is_free_when_close_returns(&kv, &other, |_| {})
        .await;
}

/// `close` revokes the leases of the locks held (and awaited) through the handle: the
/// guards see `lost()`, another client takes the lock at once rather than after the
/// lease's TTL, also when the guard is dropped only after the close; watches yield
/// `Err(Closed)` and end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_releases_locks_at_once_and_ends_watches() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config()).await;
    let other = connect(server.config()).await;
    conformance::close_ends_watches_and_frees_locks(&kv, &other).await;
}
