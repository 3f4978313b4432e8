//! A lock waiter cut off from the server for longer than its session, calling `lock()`
//! under a timeout and retrying: nothing it registered may block the lock afterwards
//! (both kinds of cut).

use std::sync::Arc;
use std::time::Duration;

use kvkit::testing::fault::ProxyPartition;
use kvkit::testing::zookeeper_server::{TcpProxy, ZkServer};

use crate::cut_waiter::cut_waiter_leaves_the_lock_free;
use crate::{behind, connect};

/// The scenario against a server of its own, the waiter (2 s session) behind a proxy
/// that `cut` cuts.
async fn cut_waiter(cut: impl FnOnce(Arc<TcpProxy>) -> ProxyPartition) {
    let root = "/kvkit-cut-waiter";
    let Some(server) = ZkServer::start() else {
        return;
    };
    let addr = server.connect_string();
    let proxy = Arc::new(TcpProxy::start(server.addr()).await.unwrap());
    let holder = connect(&addr, root).await;
    let fresh = connect(&addr, root).await;
    let waiter = behind(&proxy, root, Duration::from_secs(2), Duration::from_secs(1)).await;
    cut_waiter_leaves_the_lock_free(holder, waiter, fresh, cut(proxy)).await;
}

crate::cut_waiter_tests!(cut_waiter);
