//! Sessions: an unreachable server, restarts and session expiry, and close().

use std::time::Duration;

use kvkit::testing::zookeeper_server::{ProxyMode, TcpProxy, ZkServer};
use kvkit::zookeeper::{Zookeeper, ZookeeperConfig};
use kvkit::{ErrorKind, Kv, LockGuard, LockOptions, PutOptions};

use crate::streams::{ends_with_closed, next, values, watch_until};
use crate::{WAIT, behind, connect, counted, kind, shared_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_unavailable() {
    // Nothing listens on this port: connect fails as retryable Unavailable, in time.
    let port = kvkit::testing::server::free_port();
    let config = ZookeeperConfig::new(format!("127.0.0.1:{port}"))
        .request_timeout(Duration::from_millis(500));
    let started = std::time::Instant::now();
    let err = Zookeeper::connect(config)
        .await
        .expect_err("no server there");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(5));
    let bad = Zookeeper::connect(ZookeeperConfig::new("127.0.0.1:1").prefix("/"))
        .await
        .expect_err("the root must name a znode");
    assert_eq!(bad.kind(), ErrorKind::InvalidKey);
}

/// A server stopped and started again: lists fail as retryable while it is down, then
/// the watches are re-armed on the new connection and the bulk reader comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_re_arms_watches_and_brings_the_bulk_reader_back() {
    let Some(mut server) = ZkServer::start() else {
        return;
    };
    let addr = server.connect_string();
    let kv = connect(&addr, "/kvkit-restart").await;
    kv.put("r/k", "before", PutOptions::default())
        .await
        .unwrap();
    let mut w = kv.watch("r/k").await.unwrap();
    let mut tree = kv.watch_tree("r").await.unwrap();
    assert_eq!(
        next(&mut w, "initial").await.unwrap().unwrap().value,
        "before"
    );
    next(&mut tree, "initial tree").await.unwrap();
    // A handle that only lists: its lists go through the bulk reader's session.
    let lister = Kv::new(
        Zookeeper::connect(
            ZookeeperConfig::new(&addr)
                .prefix("/kvkit-restart")
                .request_timeout(Duration::from_secs(1)),
        )
        .await
        .unwrap(),
    );
    let (listed, req, _) = counted(&lister, lister.list("r")).await;
    assert_eq!(listed.unwrap().len(), 1);
    // A snapshot: a marker behind the getData wave shows that nothing was written
    // meanwhile (docs/zookeeper.md).
    assert_eq!(
        req, 4,
        "sync + 3 multiReads (getChildren, getData, the marker)"
    );

    // Down: a list fails as retryable (the reader's and the main session are gone).
    server.stop();
    let down = lister.list("r").await.expect_err("no server");
    assert!(down.is_retryable(), "{down}");

    // Restart: the watches are re-armed on the new connection and converge.
    server.restart();
    let writer = connect(&addr, "/kvkit-restart").await;
    writer
        .put("r/k", "after", PutOptions::default())
        .await
        .unwrap();
    writer
        .put("r/new", "n", PutOptions::default())
        .await
        .unwrap();
    watch_until(
        &mut w,
        "the write after the restart",
        |s: &Option<kvkit::KvPair>| s.as_ref().is_some_and(|p| p.value == "after"),
    )
    .await;
    watch_until(
        &mut tree,
        "the tree after the restart",
        |t: &Vec<kvkit::KvPair>| {
            values(t) == [("r/k".into(), "after".into()), ("r/new".into(), "n".into())]
        },
    )
    .await;
    assert_eq!(kv.get("r/new").await.unwrap().value, "n");
    // The bulk reader opens a new session (after its backoff) and lists through it again.
    let mut through_reader = false;
    for _ in 0..100 {
        let (listed, req, _) = counted(&lister, lister.list("r")).await;
        if let Ok(listed) = listed {
            assert_eq!(
                values(&listed),
                [("r/k".into(), "after".into()), ("r/new".into(), "n".into())]
            );
            // sync + 3 multiReads: getChildren, getData and its marker (the validated
            // collect of single requests on the main session would be 7).
            if req == 4 {
                through_reader = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        through_reader,
        "the bulk reader never came back after the restart"
    );
    lister.close().await.unwrap();
    writer.close().await.unwrap();
    kv.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_holder_loses_its_lock_when_its_session_expires() {
    let Some(turn) = shared_server().await else {
        return;
    };
    let server = turn.server();
    let addr = turn.addr();
    let writer = writer_of_r_k(addr, "/kvkit-expiry").await;
    // Session expiry: a holder cut off (through a proxy) loses its lock; another client
    // then acquires it; the cut-off client gets a new session and keeps working.
    let proxy = TcpProxy::start(server.addr()).await.unwrap();
    let holder = behind(
        &proxy,
        "/kvkit-expiry",
        Duration::from_secs(2),
        Duration::from_secs(3),
    )
    .await;
    let guard = holder
        .lock("r/lock", LockOptions::default().value("h"))
        .await
        .unwrap();
    let mut holder_watch = holder.watch("r/k").await.unwrap();
    next(&mut holder_watch, "holder's initial").await.unwrap();
    assert!(
        writer
            .try_lock("r/lock", LockOptions::default())
            .await
            .unwrap()
            .is_none()
    );
    proxy.set_blocked(true);
    tokio::time::timeout(Duration::from_secs(20), guard.lost())
        .await
        .expect("the holder sees lock-lost after its session expired");
    assert!(guard.is_lost());
    let taken = tokio::time::timeout(
        Duration::from_secs(20),
        writer.lock("r/lock", LockOptions::default().value("w")),
    )
    .await
    .expect("another client acquires the lock after the expiry")
    .unwrap();
    assert_eq!(writer.get("r/lock").await.unwrap().value, "w");
    proxy.set_blocked(false);
    // Losing a lock by someone else taking the key frees it for others even while the
    // lost guard lives.
    let victim = writer
        .lock("r/taken", LockOptions::default().value("v"))
        .await
        .unwrap();
    writer
        .put("r/taken", "overwritten", PutOptions::default())
        .await
        .unwrap();
    tokio::time::timeout(WAIT, victim.lost())
        .await
        .expect("lost on overwrite");
    let mut free = None;
    for _ in 0..50 {
        free = writer
            .try_lock("r/taken", LockOptions::default())
            .await
            .unwrap();
        if free.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(free.is_some(), "a lost lock kept blocking others");
    drop(victim);
    assert_eq!(kind(guard.unlock().await), ErrorKind::LockLost);
    // The holder's client works again on a new session, and its watch resumes.
    let mut ok = false;
    for _ in 0..100 {
        if holder
            .put("r/k", "from-holder", PutOptions::default())
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ok, "the cut-off client never recovered");
    assert_eq!(writer.get("r/k").await.unwrap().value, "from-holder");
    writer
        .put("r/k", "seen", PutOptions::default())
        .await
        .unwrap();
    watch_until(
        &mut holder_watch,
        "a write after the new session",
        |s: &Option<kvkit::KvPair>| s.as_ref().is_some_and(|p| p.value == "seen"),
    )
    .await;
    taken.unlock().await.unwrap();
    holder.close().await.unwrap();
    writer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_cut_off_holder_knows_of_its_loss_before_another_acquires() {
    let Some(turn) = shared_server().await else {
        return;
    };
    let server = turn.server();
    let addr = turn.addr();
    let writer = writer_of_r_k(addr, "/kvkit-silent").await;
    // A silent partition (connections stay open, nothing gets through): the holder
    // reports lock-lost before the server can expire its session and hand the lock to
    // someone else.
    let silent = TcpProxy::start(server.addr()).await.unwrap();
    let holder2 = behind(
        &silent,
        "/kvkit-silent",
        Duration::from_secs(4),
        Duration::from_secs(3),
    )
    .await;
    let guard2 = holder2
        .lock("r/silent", LockOptions::default().value("h2"))
        .await
        .unwrap();
    let contender = tokio::spawn({
        let writer = writer.clone();
        async move {
            writer
                .lock("r/silent", LockOptions::default().value("w2"))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!contender.is_finished());
    silent.set_mode(ProxyMode::Silent);
    tokio::time::timeout(Duration::from_secs(20), guard2.lost())
        .await
        .expect("the silently cut-off holder sees lock-lost");
    assert!(
        !contender.is_finished(),
        "another client got the lock before the holder knew it had lost it"
    );
    let taken2 = tokio::time::timeout(Duration::from_secs(20), contender)
        .await
        .expect("the other client acquires after the session expired")
        .unwrap()
        .unwrap();
    assert_eq!(writer.get("r/silent").await.unwrap().value, "w2");
    silent.set_mode(ProxyMode::Open);
    taken2.unlock().await.unwrap();
    let mut recovered = false;
    for _ in 0..100 {
        if holder2.get("r/k").await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(recovered, "the silently cut-off client never recovered");
    holder2.close().await.unwrap();
    writer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_fails_calls_ends_watches_and_loses_locks() {
    let Some(turn) = shared_server().await else {
        return;
    };
    let kv = &connect(turn.addr(), "/kvkit-close-shared").await;
    kv.put("a2/x", "sibling", PutOptions::default())
        .await
        .unwrap();
    let mut w = kv.watch("a2/x").await.unwrap();
    next(&mut w, "initial").await.unwrap();
    let guard = kv.lock("closing", LockOptions::default()).await.unwrap();
    kv.close().await.unwrap();
    assert_eq!(kind(kv.get("a2/x").await), ErrorKind::Closed);
    // Closing ends watch streams (one Err(Closed), then the end) and the session's
    // locks.
    ends_with_closed(&mut w, "the watch on close").await;
    tokio::time::timeout(WAIT, guard.lost())
        .await
        .expect("locks are lost on close");
}

/// A handle under `root` that has written `r/k` (the key the cut-off holders use).
async fn writer_of_r_k(addr: &str, root: &str) -> Kv<Zookeeper> {
    let writer = connect(addr, root).await;
    writer
        .put("r/k", "after", PutOptions::default())
        .await
        .unwrap();
    writer
}
