//! Request counts: every operation costs the requests and waves docs/zookeeper.md
//! states, with `multi_read` on and off. Counted on a quiet server only.

use std::time::Duration;

use futures::StreamExt;
use kvkit::zookeeper::{Zookeeper, ZookeeperConfig};
use kvkit::{ErrorKind, Kv, LockGuard, LockOptions, PutOptions};

use crate::keys::basics;
use crate::streams::next;
use crate::streams::watch_until;
use crate::{connect, counted, kind, quiet_shared_server, settle};

/// Puts 100 and 1,000 flat keys, pins the requests and waves of listing each
/// (`list(n)`) and of `delete_tree` of the 1,000 (`delete_tree`).
async fn list_round_trips(
    kv: &Kv<Zookeeper>,
    list: impl Fn(u64) -> (u64, u64),
    delete_tree: (u64, u64),
) {
    for n in [100usize, 1_000] {
        let dir = format!("l{n}");
        let puts = futures::stream::iter(0..n)
            .map(|i| kv.put(format!("{dir}/k{i:04}"), "v", PutOptions::default()))
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await;
        assert!(puts.iter().all(Result::is_ok));
        // Quiet: nothing else writes to the ensemble during the counted list.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (r, req, waves) = counted(kv, kv.list(&dir)).await;
        assert_eq!(r.unwrap().len(), n);
        assert_eq!((req, waves), list(n as u64), "list of {n} flat keys");
    }
    let (r, req, waves) = counted(kv, kv.delete_tree("l1000")).await;
    r.unwrap();
    assert_eq!((req, waves), delete_tree, "delete_tree of 1,000 flat keys");
    assert!(kv.list("l1000").await.unwrap().is_empty());
}

/// Pins the request counts of docs/zookeeper.md ("Operations and round trips"),
/// counted by the backend's own request counter on a fresh handle (no watches, no
/// locks: nothing runs in the background while counting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_counts_match_the_docs() {
    let Some(turn) = quiet_shared_server().await else {
        return;
    };
    let addr = turn.addr();
    let kv = connect(addr, "/kvkit-round-trips").await;
    let opts = PutOptions::default;
    kv.put("d/seed", "x", opts()).await.unwrap();

    let (r, req, _) = counted(&kv, kv.put("d/k", "v1", opts())).await;
    let first = r.unwrap();
    assert_eq!(req, 2, "put of a new key: setData (NoNode), create2");
    let (r, req, _) = counted(&kv, kv.put("d/k", "v2", opts())).await;
    let second = r.unwrap();
    assert_eq!(req, 1, "put of an existing key: setData");
    let (r, req, _) = counted(&kv, kv.put("d/x/y/z", "v", opts())).await;
    r.unwrap();
    // Every ancestor of {root}/kv/d/x/y/z from the top (existing ones answer
    // NodeExists): /kvkit-round-trips, .../kv, .../kv/d, .../d/x, .../d/x/y, and the key.
    assert_eq!(
        req,
        2 + 6,
        "put with missing parents: setData, create2, then one wave of 6 creates"
    );
    let (r, req, _) = counted(&kv, kv.get("d/k")).await;
    assert_eq!(r.unwrap().value, "v2");
    assert_eq!(req, 1, "get: getData");
    let (r, req, _) = counted(&kv, kv.exists("d/k")).await;
    assert!(r.unwrap());
    assert_eq!(req, 1, "exists");

    let (r, req, _) = counted(&kv, kv.atomic_put("d/new", "v", None, opts())).await;
    r.unwrap();
    assert_eq!(req, 1, "atomic_put(None) of a new key: create2");
    let (r, req, _) = counted(&kv, kv.atomic_put("d/x", "v", None, opts())).await;
    r.unwrap();
    assert_eq!(
        req, 3,
        "atomic_put(None) on an implicit parent: create2, getData, setData"
    );
    let (r, req, _) = counted(&kv, kv.atomic_put("d/k", "v3", Some(&second), opts())).await;
    let third = r.unwrap();
    assert_eq!(req, 2, "atomic_put(Some): getData, setData");
    let (r, req, _) = counted(&kv, kv.atomic_put("d/k", "v4", Some(&first), opts())).await;
    assert_eq!(kind(r), ErrorKind::KeyModified);
    assert_eq!(req, 1, "a stale atomic_put is refused after the read");
    // A delete then reads the parent (getData) to see whether it was left without
    // children and value: pruned (versioned delete) and the next one up read, until one
    // has either. A top-level key's parent is the key space's root: no read.
    let (r, req, _) = counted(&kv, kv.atomic_delete("d/k", &third)).await;
    r.unwrap();
    assert_eq!(req, 2 + 1, "atomic_delete: getData, delete, parent d kept");
    let (r, req, _) = counted(&kv, kv.delete("d/new")).await;
    r.unwrap();
    assert_eq!(req, 2 + 1, "delete: getData, delete, parent d kept");
    let (r, req, _) = counted(&kv, kv.delete("d/x/y/z")).await;
    r.unwrap();
    assert_eq!(
        req,
        2 + 2 + 1,
        "delete pruning d/x/y (getData, delete), d/x kept (it has a value)"
    );
    kv.put("top", "v", opts()).await.unwrap();
    let (r, req, _) = counted(&kv, kv.delete("top")).await;
    r.unwrap();
    assert_eq!(req, 2, "delete of a top-level key: getData, delete");

    // list and delete_tree: sync + one multiRead per level and kind of read. A list's
    // getData waves each carry a marker read behind them: on a quiet ensemble the
    // zxids of the first read and the last marker agree and the list is a snapshot as
    // read (the validated collect is pinned by the pipelined case below).
    list_round_trips(&kv, |_| (4, 2), (1_004, 3)).await;

    // watch_tree: a value change costs one getData besides the put itself.
    let mut tree = kv.watch_tree("l100").await.unwrap();
    assert_eq!(next(&mut tree, "initial tree").await.unwrap().len(), 100);
    let before = kv.backend().stats();
    kv.put("l100/k0042", "changed", opts()).await.unwrap();
    watch_until(&mut tree, "the change", |t: &Vec<kvkit::KvPair>| {
        t.iter()
            .any(|p| p.key == "l100/k0042" && p.value == "changed")
    })
    .await;
    let cost = kv.backend().stats().requests - before.requests;
    assert_eq!(
        cost,
        2 + 4,
        "a watched value change: setData + one getData, then the snapshot read of the \
         state (sync, getChildren, getData and its marker)"
    );
    drop(tree);

    // Locks. The first heartbeat is sent at once, the next after a quarter of the 8 s
    // session timeout: none of the waits below lasts that long.
    let before = kv.backend().stats().requests;
    let guard = kv
        .lock("lk", LockOptions::default().value("x"))
        .await
        .unwrap();
    // On the caller's path: create (NoNode: unlock removed the lock's directory),
    // create the directory, create the contender, getChildren, then the value as a
    // put of a new key (setData NoNode, create2) = 6; the guard's monitor then sends a
    // heartbeat `exists` and arms its watches (`exists` + `getData`) = 3.
    let settled = settle(&kv, before + 6 + 3).await;
    assert_eq!(settled - before, 6 + 3, "uncontended lock of a new key");
    let before = kv.backend().stats().requests;
    guard.unlock().await.unwrap();
    let settled = settle(&kv, before + 4).await;
    assert_eq!(
        settled - before,
        4,
        "unlock: getData + delete of the value, delete contender, delete directory"
    );

    kv.delete_tree("").await.unwrap();
    kv.close().await.unwrap();
}

/// With `multi_read` off, list and delete_tree read with pipelined single requests on
/// the main session: per level a wave of getChildren, then one of getData; a list
/// reads the directory's stat first and validates every getData again last (so that
/// it is a snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_multi_read_lists_pipeline_single_requests() {
    let Some(turn) = quiet_shared_server().await else {
        return;
    };
    let addr = turn.addr();
    let config = ZookeeperConfig::new(addr)
        .prefix("/kvkit-round-trips-pipelined")
        .multi_read(false);
    let kv = Kv::new(Zookeeper::connect(config).await.unwrap());
    list_round_trips(&kv, |n| (2 * n + 3, 4), (2_002, 3)).await;
    basics(&kv).await;
    kv.delete_tree("").await.unwrap();
    kv.close().await.unwrap();
}
