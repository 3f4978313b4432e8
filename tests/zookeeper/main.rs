//! The ZooKeeper backend against real ZooKeeper servers (Debian's `zookeeper` package).
//!
//! Servers are slow to start (a JVM each), so the tests that need only a running server
//! share one ([`shared_server`]), each under a root znode of its own; those that count
//! requests use it alone ([`quiet_shared_server`]). Tests that restart a server, change
//! its settings, read its watch count, load it heavily or cut clients off on a tight
//! clock start servers of their own, as does the ensemble.

use std::time::Duration;

use kvkit::testing::zookeeper_server::{TcpProxy, ZkServer};
use kvkit::zookeeper::{Zookeeper, ZookeeperConfig};
use kvkit::{ErrorKind, Kv};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

#[path = "../support/cut_waiter.rs"]
mod cut_waiter;
#[path = "../support/streams.rs"]
mod streams;
#[path = "../support/zookeeper.rs"]
mod zookeeper_support;

mod auth;
mod close;
mod ensemble;
mod foreign_keys;
mod keys;
mod lists;
mod lock;
mod partition;
mod round_trips;
mod sessions;
mod suites;
mod watch;

/// How long a test waits for a lock to be lost or a state to settle.
const WAIT: Duration = Duration::from_secs(15);

/// Who uses the shared server now: tests that count requests use it alone, the others
/// side by side.
static SHARED_SERVER_USE: RwLock<()> = RwLock::const_new(());

/// A test's turn on the shared server; the turn ends when this is dropped.
struct SharedTurn {
    server: &'static ZkServer,
    addr: String,
    _alone: Option<RwLockWriteGuard<'static, ()>>,
    _side_by_side: Option<RwLockReadGuard<'static, ()>>,
}

impl SharedTurn {
    /// `127.0.0.1:port` of the shared server.
    fn addr(&self) -> &str {
        &self.addr
    }

    /// The shared server (for its socket address, e.g. behind a proxy).
    fn server(&self) -> &'static ZkServer {
        self.server
    }
}

/// A turn on the shared server, side by side with other tests: for a test whose checks
/// hold whatever other clients do (it works under its own root). `None` when ZooKeeper
/// is not installed and servers are not required.
async fn shared_server() -> Option<SharedTurn> {
    let server = ZkServer::shared()?;
    Some(SharedTurn {
        server,
        addr: server.connect_string(),
        _alone: None,
        _side_by_side: Some(SHARED_SERVER_USE.read().await),
    })
}

/// A turn on the shared server alone: for a test that counts requests. Any write to the
/// server, another test's included, moves its zxid, and a list that sees the zxid move
/// reads again to stay a snapshot, so counts hold only on a quiet server.
async fn quiet_shared_server() -> Option<SharedTurn> {
    let server = ZkServer::shared()?;
    Some(SharedTurn {
        server,
        addr: server.connect_string(),
        _alone: Some(SHARED_SERVER_USE.write().await),
        _side_by_side: None,
    })
}

/// A handle on `connect` under `root` (8 s sessions, 5 s requests).
async fn connect(connect: &str, root: &str) -> Kv<Zookeeper> {
    let config = ZookeeperConfig::new(connect)
        .prefix(root)
        .session_timeout(Duration::from_secs(8))
        .request_timeout(Duration::from_secs(5));
    Kv::new(
        Zookeeper::connect(config)
            .await
            .expect("connect to ZooKeeper"),
    )
}

/// A handle with `config`.
async fn connect_with(config: ZookeeperConfig) -> Kv<Zookeeper> {
    Kv::new(Zookeeper::connect(config).await.expect("connect"))
}

/// A handle under `root` that reaches the server through `proxy` (so a test can cut
/// it off), with the given session and request timeouts.
async fn behind(
    proxy: &TcpProxy,
    root: &str,
    session: Duration,
    request: Duration,
) -> Kv<Zookeeper> {
    connect_with(
        ZookeeperConfig::new(proxy.connect_string())
            .prefix(root)
            .session_timeout(session)
            .request_timeout(request),
    )
    .await
}

/// The kind of the error `result` must be.
fn kind<T: std::fmt::Debug>(result: kvkit::Result<T>) -> ErrorKind {
    result.expect_err("expected an error").kind()
}

/// Requests (and sequential waves) one call costs, read from `Zookeeper::stats()` of a
/// handle nothing else uses.
async fn counted<T, F: std::future::Future<Output = T>>(
    kv: &Kv<Zookeeper>,
    op: F,
) -> (T, u64, u64) {
    let before = kv.backend().stats();
    let out = op.await;
    let after = kv.backend().stats();
    (
        out,
        after.requests - before.requests,
        after.waves - before.waves,
    )
}

/// Waits (at most 5 s) until the handle has sent `at_least` requests in all, then
/// 300 ms more for stragglers; returns the count then.
async fn settle(kv: &Kv<Zookeeper>, at_least: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while kv.backend().stats().requests < at_least && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    kv.backend().stats().requests
}
