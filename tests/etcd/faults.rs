//! etcd going down and coming back: watches resume, locks are lost, calls fail typed.

use std::time::{Duration, Instant};

use kvkit::testing::etcd_server::EtcdServer;
use kvkit::{ErrorKind, LockGuard, LockOptions, PutOptions};

use crate::etcd_support::{STEP, connect};
use crate::streams::{assert_quiet, next_ok, next_through_outage, value, values};

#[tokio::test]
async fn restart_watches_resume_without_loss_or_duplicates_and_locks_are_lost() {
    let Some(mut server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config()).await;
    let contender = connect(server.config()).await;

    kv.put("w", "0", PutOptions::default()).await.unwrap();
    kv.put("t/a", "0", PutOptions::default()).await.unwrap();
    let mut watch = kv.watch("w").await.unwrap();
    let mut tree = kv.watch_tree("t").await.unwrap();
    assert_eq!(value(&next_ok(&mut watch).await), Some("0".into()));
    assert_eq!(
        values(&next_ok(&mut tree).await),
        [("t/a".into(), "0".into())]
    );
    let guard = kv
        .lock(
            "lock",
            LockOptions::default()
                .value("holder")
                .ttl(Duration::from_secs(2)),
        )
        .await
        .unwrap();

    // A change made just before the restart is seen too.
    kv.put("w", "1", PutOptions::default()).await.unwrap();

    server.stop();
    // While the server is down, requests fail fast and retryably.
    let err = kv.get("w").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable());
    // The lock's lease (2 s) cannot be renewed: its lost-future fires.
    tokio::time::timeout(Duration::from_secs(6), guard.lost())
        .await
        .expect("the lock's lost-future must fire while the server is down");
    assert!(guard.is_lost());
    server.restart().await;

    // Writes made after the restart (retry: the client reconnects).
    let deadline = Instant::now() + STEP;
    while kv.put("w", "2", PutOptions::default()).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "no write succeeded after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kv.put("w", "3", PutOptions::default()).await.unwrap();
    kv.put("t/b", "1", PutOptions::default()).await.unwrap();
    kv.delete("t/a").await.unwrap();
    kv.put("t/b", "2", PutOptions::default()).await.unwrap();

    let mut watch_outages = 0;
    for want in ["1", "2", "3"] {
        let item = next_through_outage(&mut watch, &mut watch_outages).await;
        assert_eq!(value(&item), Some(want.into()));
    }
    assert_eq!(watch_outages, 1, "the watch reports the outage once");
    assert_quiet(&mut watch, Duration::from_millis(500)).await;
    let mut tree_outages = 0;
    let expected: [&[(&str, &str)]; 3] = [
        &[("t/a", "0"), ("t/b", "1")],
        &[("t/b", "1")],
        &[("t/b", "2")],
    ];
    for want in expected {
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let item = next_through_outage(&mut tree, &mut tree_outages).await;
        assert_eq!(values(&item), want);
    }
    assert_eq!(tree_outages, 1, "the tree watch reports the outage once");
    assert_quiet(&mut tree, Duration::from_millis(500)).await;

    // The lost lock reports it; another client gets the lock once the lease is gone.
    assert_eq!(
        guard.unlock().await.unwrap_err().kind(),
        ErrorKind::LockLost
    );
    let taken = tokio::time::timeout(
        Duration::from_secs(15),
        contender.lock("lock", LockOptions::default().value("next")),
    )
    .await
    .expect("the lock must be free again after the lost lease expired")
    .unwrap();
    assert_eq!(kv.get("lock").await.unwrap().value, "next");
    taken.unlock().await.unwrap();
}

/// With the server down, every one of many concurrent gets fails with a typed
/// `Unavailable` within its timeout (nothing hangs); back up, they all succeed.
#[tokio::test]
async fn concurrent_gets_fail_typed_while_the_server_is_down() {
    let Some(mut server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config().request_timeout(Duration::from_secs(1))).await;
    kv.put("k", "v", PutOptions::default()).await.unwrap();
    server.stop();
    let gets = futures::future::join_all((0..16).map(|_| kv.get("k")));
    for got in tokio::time::timeout(STEP, gets).await.expect("no hang") {
        let err = got.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    }
    server.restart().await;
    let gets = futures::future::join_all((0..16).map(|_| kv.get("k")));
    for got in tokio::time::timeout(STEP, gets).await.expect("no hang") {
        assert_eq!(got.unwrap().value, "v");
    }
}
