//! The gRPC requests each operation makes, as docs/etcd.md promises, counted by the server.

use std::time::{Duration, Instant};

use futures::StreamExt;
use kvkit::testing::etcd_server::EtcdServer;
use kvkit::{ErrorKind, LockGuard, LockOptions, PutOptions};

use crate::etcd_support::{EtcdRaw, calls, connect, round_trips};
use crate::streams::next_ok;
use kvkit::testing::conformance::{self, RawStore};

/// Each operation takes the round trips `docs/etcd.md` promises, counted by the
/// server itself; also prints the median latency of the common operations.
#[tokio::test]
async fn round_trips_per_operation_match_the_docs() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config().prefix("rt")).await;
    let opts = PutOptions::default;

    let (pair, rt) = round_trips(&server, || kv.put("d/k", "v", opts())).await;
    let pair = pair.unwrap();
    assert_eq!(rt, calls(&[("Put", 1)]), "put");
    let (_, rt) = round_trips(&server, || kv.get("d/k")).await;
    assert_eq!(rt, calls(&[("Range", 1)]), "get");
    let (_, rt) = round_trips(&server, || kv.exists("d/k")).await;
    assert_eq!(rt, calls(&[("Range", 1)]), "exists");
    // Concurrent point reads coalesce: the first two go out as Ranges, the 14 that
    // queue behind them as one read-only Txn (this runtime polls all 16 before any
    // answer arrives).
    let (r, rt) = round_trips(&server, || {
        futures::future::join_all((0..16).map(|i| kv.exists(format!("d/{i}"))))
    })
    .await;
    assert!(r.iter().all(|r| matches!(r, Ok(false))));
    assert_eq!(
        rt,
        calls(&[("Range", 2), ("Txn", 1)]),
        "16 concurrent exists"
    );
    let (_, rt) = round_trips(&server, || kv.list("d")).await;
    assert_eq!(rt, calls(&[("Range", 1)]), "list");
    let (r, rt) = round_trips(&server, || kv.atomic_put("d/k", "w", Some(&pair), opts())).await;
    let pair = r.unwrap();
    assert_eq!(rt, calls(&[("Txn", 1)]), "atomic_put applied");
    let (r, rt) = round_trips(&server, || kv.atomic_put("d/k", "w", None, opts())).await;
    assert_eq!(r.unwrap_err().kind(), ErrorKind::KeyExists);
    assert_eq!(rt, calls(&[("Txn", 1)]), "atomic_put conflict");
    let (r, rt) = round_trips(&server, || kv.atomic_delete("d/gone", &pair)).await;
    assert_eq!(r.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(rt, calls(&[("Txn", 1)]), "atomic_delete conflict");
    let (r, rt) = round_trips(&server, || kv.atomic_delete("d/k", &pair)).await;
    r.unwrap();
    assert_eq!(rt, calls(&[("Txn", 1)]), "atomic_delete applied");
    let (_, rt) = round_trips(&server, || kv.delete("d/k")).await;
    assert_eq!(rt, calls(&[("DeleteRange", 1)]), "delete");
    // delete_tree: a keys-only Range (to spare keys other tools wrote), then one Txn
    // guarded by that Range's revision.
    let (_, rt) = round_trips(&server, || kv.delete_tree("d")).await;
    assert_eq!(rt, calls(&[("Range", 1), ("Txn", 1)]), "delete_tree");

    let ttl = || PutOptions::with_ttl(Duration::from_secs(30));
    let (_, rt) = round_trips(&server, || kv.put("d/t1", "v", ttl())).await;
    assert_eq!(rt, calls(&[("LeaseGrant", 1), ("Put", 1)]), "first TTL put");
    let (_, rt) = round_trips(&server, || kv.put("d/t2", "v", ttl())).await;
    assert_eq!(rt, calls(&[("Put", 1)]), "TTL put reusing the lease");

    // Lock: one LeaseGrant and one Txn, then the guard's two background streams
    // (keep-alive, watch of the lock key).
    let (guard, rt) = round_trips(&server, || async {
        let guard = kv.lock("l", LockOptions::default().value("x")).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        guard
    })
    .await;
    let guard = guard.unwrap();
    assert_eq!(
        rt,
        calls(&[
            ("LeaseGrant", 1),
            ("LeaseKeepAlive", 1),
            ("Txn", 1),
            ("Watch", 1)
        ]),
        "uncontended lock"
    );
    let (r, rt) = round_trips(&server, || kv.try_lock("l", LockOptions::default())).await;
    assert!(r.unwrap().is_none());
    assert_eq!(
        rt,
        calls(&[("LeaseGrant", 1), ("LeaseRevoke", 1), ("Txn", 1)]),
        "try_lock on a held lock"
    );
    let (r, rt) = round_trips(&server, || guard.unlock()).await;
    r.unwrap();
    assert_eq!(rt, calls(&[("LeaseRevoke", 1)]), "unlock");

    let (w, rt) = round_trips(&server, || async {
        let mut w = kv.watch("d/w").await.unwrap();
        assert_eq!(next_ok(&mut w).await, None);
        // The etcd watch is opened by the background task.
        tokio::time::sleep(Duration::from_millis(300)).await;
        w
    })
    .await;
    assert_eq!(rt, calls(&[("Range", 1), ("Watch", 1)]), "watch");
    drop(w);

    // watch_tree: one Range and one Watch stream to start; then an event is applied to
    // the cached subtree: no extra read per event (the Put is the write itself).
    kv.put("wt/a", "1", opts()).await.unwrap();
    let (tree, rt) = round_trips(&server, || async {
        let mut tree = kv.watch_tree("wt").await.unwrap();
        assert_eq!(next_ok(&mut tree).await.len(), 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        tree
    })
    .await;
    assert_eq!(rt, calls(&[("Range", 1), ("Watch", 1)]), "watch_tree");
    let mut tree = tree;
    for i in 0..3 {
        let (snapshot, rt) = round_trips(&server, || async {
            kv.put(format!("wt/k{i}"), "v", opts()).await.unwrap();
            let snapshot = next_ok(&mut tree).await;
            // Give a (wrong) re-read after the event the time to show up.
            tokio::time::sleep(Duration::from_millis(200)).await;
            snapshot
        })
        .await;
        assert_eq!(snapshot.len(), 2 + i);
        assert_eq!(rt, calls(&[("Put", 1)]), "a watch_tree event costs 0 reads");
    }
    drop(tree);
    let (r, rt) = round_trips(&server, || kv.delete_tree("wt")).await;
    r.unwrap();
    assert_eq!(
        rt,
        calls(&[("Range", 1), ("Txn", 1)]),
        "delete_tree of a populated dir"
    );

    // list of 1,000 keys is still one Range.
    let puts = futures::stream::iter(0..1_000)
        .map(|i| kv.put(format!("big/{i:04}"), "v", opts()))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    assert!(puts.iter().all(Result::is_ok));
    let (r, rt) = round_trips(&server, || kv.list("big")).await;
    assert_eq!(r.unwrap().len(), 1_000);
    assert_eq!(rt, calls(&[("Range", 1)]), "list of 1,000 keys");

    // Latency on this machine (loopback, one member, fsync on): printed, not asserted.
    for (name, runs) in [("put", 100), ("get", 100), ("atomic_put", 100)] {
        let mut times = Vec::with_capacity(runs);
        let mut last = kv.put("bench", "0", opts()).await.unwrap();
        for i in 0..runs {
            let started = Instant::now();
            match name {
                "put" => {
                    kv.put("bench", i.to_string(), opts()).await.unwrap();
                }
                "get" => {
                    kv.get("bench").await.unwrap();
                }
                _ => {
                    last = kv
                        .atomic_put("bench", i.to_string(), Some(&last), opts())
                        .await
                        .unwrap();
                }
            }
            times.push(started.elapsed());
        }
        times.sort();
        eprintln!(
            "etcd {name}: median {:?}, p90 {:?} over {runs}",
            times[runs / 2],
            times[runs * 9 / 10]
        );
    }
}

/// `delete_tree` of a dir whose foreign keys (written by other tools) sit before,
/// between and after its kvkit keys in etcd's key order is still one keys-only Range
/// and one Txn.
#[tokio::test]
async fn delete_tree_among_foreign_keys_is_one_range_and_one_txn() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config()).await;
    let raw = EtcdRaw::new(&kv, "");
    for key in conformance::foreign_keys("f") {
        raw.put_raw(&key, b"foreign").await;
    }
    for key in ["f", "f/a", "f/b/c", "f/d", "f/y", "f/zzz"] {
        kv.put(key, "mine", PutOptions::default()).await.unwrap();
    }
    let (r, rt) = round_trips(&server, || kv.delete_tree("f")).await;
    r.unwrap();
    assert_eq!(rt, calls(&[("Range", 1), ("Txn", 1)]), "delete_tree");
    assert!(kv.list("f").await.unwrap().is_empty());
}
