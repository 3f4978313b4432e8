//! A lock waiter cut off from the server for longer than its lease, calling `lock()`
//! under a timeout and retrying: nothing it registered (contender key, lease) may block
//! the lock afterwards (both kinds of cut).

use std::sync::Arc;
use std::time::Duration;

use kvkit::testing::etcd_server::EtcdServer;
use kvkit::testing::fault::ProxyPartition;
use kvkit::testing::zookeeper_server::TcpProxy;

use crate::cut_waiter::cut_waiter_leaves_the_lock_free;
use crate::etcd_support::connect;

/// The scenario against a server of its own, the waiter (2 s lock lease) behind a
/// proxy that `cut` cuts.
async fn cut_waiter(cut: impl FnOnce(Arc<TcpProxy>) -> ProxyPartition) {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let endpoint = server.endpoint();
    let addr = endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("the server's address");
    let proxy = Arc::new(TcpProxy::start(addr).await.unwrap());
    let holder = connect(server.config()).await;
    let fresh = connect(server.config()).await;
    let mut config = server.config();
    config.endpoints = vec![format!("http://{}", proxy.connect_string())];
    config.lock_ttl = Duration::from_secs(2);
    config.request_timeout = Duration::from_secs(1);
    let waiter = connect(config).await;
    cut_waiter_leaves_the_lock_free(holder, waiter, fresh, cut(proxy)).await;
}

crate::cut_waiter_tests!(cut_waiter);
