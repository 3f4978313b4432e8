//! Watches on etcd: following every change, compacted revisions, long-lived streams.

use std::time::{Duration, Instant};

use kvkit::testing::etcd_server::EtcdServer;
use kvkit::{LockGuard, LockOptions, PutOptions};

use crate::etcd_support::{STEP, calls, connect, round_trips, write_and_compact_elsewhere};
use crate::streams::{assert_quiet, next_ok, values};

#[tokio::test]
async fn watches_start_on_missing_keys_and_follow_every_change() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config()).await;

    kv.put("dir/old", "o", PutOptions::default()).await.unwrap();
    let mut watch = kv.watch("dir/k").await.unwrap();
    let mut tree = kv.watch_tree("dir").await.unwrap();
    assert_eq!(next_ok(&mut watch).await, None);
    assert_eq!(
        values(&next_ok(&mut tree).await),
        [("dir/old".into(), "o".into())]
    );

    let p1 = kv.put("dir/k", "1", PutOptions::default()).await.unwrap();
    let p2 = kv.put("dir/k", "2", PutOptions::default()).await.unwrap();
    kv.put("dirty/x", "sibling", PutOptions::default())
        .await
        .unwrap();
    kv.put("dir", "the dir itself", PutOptions::default())
        .await
        .unwrap();
    kv.delete("dir/k").await.unwrap();
    kv.delete_tree("dir").await.unwrap();

    assert_eq!(next_ok(&mut watch).await, Some(p1));
    assert_eq!(next_ok(&mut watch).await, Some(p2));
    assert_eq!(next_ok(&mut watch).await, None);
    assert_quiet(&mut watch, Duration::from_millis(300)).await;

    let expected: [&[(&str, &str)]; 4] = [
        &[("dir/k", "1"), ("dir/old", "o")],
        &[("dir/k", "2"), ("dir/old", "o")],
        &[("dir/old", "o")],
        &[], // delete_tree is one transaction: one snapshot
    ];
    for want in expected {
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(values(&next_ok(&mut tree).await), want);
    }
    assert_quiet(&mut tree, Duration::from_millis(300)).await;

    // Dropping the streams cancels their etcd watches: the server's count of open
    // watchers falls back to zero.
    assert_eq!(server.metric("etcd_debugging_mvcc_watcher_total"), 2.0);
    drop(watch);
    drop(tree);
    let deadline = Instant::now() + STEP;
    while server.metric("etcd_debugging_mvcc_watcher_total") != 0.0 {
        assert!(
            Instant::now() < deadline,
            "dropped watches must be cancelled on the server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn watches_starting_at_a_compacted_revision_reread_and_continue() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config()).await;

    // watch_tree: created last, so its task has not run before the compaction.
    let mut tree = kv.watch_tree("c").await.unwrap();
    write_and_compact_elsewhere(server.config());
    assert_eq!(values(&next_ok(&mut tree).await), []);
    // "c/k" = "1" was compacted away: the fresh state comes next, then live changes.
    assert_eq!(
        values(&next_ok(&mut tree).await),
        [("c/k".into(), "2".into()), ("c/other".into(), "x".into())]
    );
    kv.put("c/k", "3", PutOptions::default()).await.unwrap();
    assert_eq!(
        values(&next_ok(&mut tree).await),
        [("c/k".into(), "3".into()), ("c/other".into(), "x".into())]
    );
    assert_quiet(&mut tree, Duration::from_millis(300)).await;

    // watch: the same, on a key that exists.
    let mut watch = kv.watch("c/k").await.unwrap();
    write_and_compact_elsewhere(server.config());
    let initial = next_ok(&mut watch).await.expect("c/k exists");
    assert_eq!(initial.value, "3");
    let fresh = next_ok(&mut watch).await.expect("c/k exists");
    assert_eq!(fresh.value, "2");
    assert!(fresh.last_index > initial.last_index);
    kv.delete("c/k").await.unwrap();
    assert_eq!(next_ok(&mut watch).await, None);
    assert_quiet(&mut watch, Duration::from_millis(300)).await;
}

/// Long-lived streams (watches, lock keep-alives) are not cut by the per-request
/// timeout: an idle watch and a held lock keep one stream each for several timeouts.
#[tokio::test]
async fn streams_outlive_the_request_timeout() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config().request_timeout(Duration::from_millis(500))).await;
    let (streams, rt) = round_trips(&server, || async {
        let mut watch = kv.watch("idle").await.unwrap();
        assert_eq!(next_ok(&mut watch).await, None);
        let guard = kv
            .lock("held", LockOptions::default().ttl(Duration::from_secs(2)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        (watch, guard)
    })
    .await;
    let (mut watch, guard) = streams;
    let streams: Vec<_> = rt
        .into_iter()
        .filter(|(m, _)| m == "Watch" || m == "LeaseKeepAlive")
        .collect();
    assert_eq!(
        streams,
        calls(&[("LeaseKeepAlive", 1), ("Watch", 2)]),
        "one watch stream each for the watch and the lock key, one keep-alive stream"
    );
    assert!(!guard.is_lost());
    let pair = kv.put("idle", "now", PutOptions::default()).await.unwrap();
    assert_eq!(next_ok(&mut watch).await, Some(pair));
    guard.unlock().await.unwrap();
}
