//! Watches: changes in order, tree watches kept current incrementally, and watch
//! registrations across reconnects.

use std::time::Duration;

use futures::StreamExt;
use kvkit::testing::zookeeper_server::{TcpProxy, ZkServer};
use kvkit::zookeeper::ZookeeperConfig;
use kvkit::{LockGuard, LockOptions, PutOptions};

use crate::streams::watch_until;
use crate::streams::{next, values};
use crate::{WAIT, connect, connect_with, quiet_shared_server, shared_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_see_every_change_in_order_and_no_lock_contenders() {
    let Some(turn) = shared_server().await else {
        return;
    };
    let kv = &connect(turn.addr(), "/kvkit-watches").await;
    let mut w = kv.watch("w/key").await.unwrap();
    assert_eq!(next(&mut w, "initial None").await.unwrap(), None);
    let mut tree = kv.watch_tree("w").await.unwrap();
    assert!(next(&mut tree, "initial tree").await.unwrap().is_empty());

    kv.put("w/key", "v1", PutOptions::default()).await.unwrap();
    let got = watch_until(&mut w, "v1", |s: &Option<kvkit::KvPair>| s.is_some()).await;
    assert_eq!(got.unwrap().value, "v1");
    watch_until(&mut tree, "tree with v1", |t: &Vec<kvkit::KvPair>| {
        values(t) == [("w/key".into(), "v1".into())]
    })
    .await;

    // A value change of an existing child is seen by the tree watch.
    kv.put("w/key", "v2", PutOptions::default()).await.unwrap();
    watch_until(&mut w, "v2", |s: &Option<kvkit::KvPair>| {
        s.as_ref().is_some_and(|p| p.value == "v2")
    })
    .await;
    watch_until(&mut tree, "tree with v2", |t: &Vec<kvkit::KvPair>| {
        values(t) == [("w/key".into(), "v2".into())]
    })
    .await;

    // Deep keys, created below new implicit parents.
    kv.put("w/deep/er/x", "d", PutOptions::default())
        .await
        .unwrap();
    watch_until(&mut tree, "deep key", |t: &Vec<kvkit::KvPair>| t.len() == 2).await;

    // Lock contenders never show up in the tree.
    let guard = kv
        .lock("w/lock", LockOptions::default().value("holder"))
        .await
        .unwrap();
    let t = watch_until(&mut tree, "lock value", |t: &Vec<kvkit::KvPair>| {
        t.len() == 3
    })
    .await;
    assert_eq!(values(&t)[2], ("w/lock".into(), "holder".into()));
    guard.unlock().await.unwrap();
    watch_until(&mut tree, "lock gone", |t: &Vec<kvkit::KvPair>| {
        t.len() == 2
    })
    .await;

    kv.delete("w/key").await.unwrap();
    watch_until(&mut w, "deletion", |s: &Option<kvkit::KvPair>| s.is_none()).await;
    kv.delete_tree("w").await.unwrap();
    watch_until(&mut tree, "empty tree", |t: &Vec<kvkit::KvPair>| {
        t.is_empty()
    })
    .await;

    // Versions never go back in a watch.
    let mut w = kv.watch("w/fast").await.unwrap();
    assert_eq!(next(&mut w, "initial").await.unwrap(), None);
    for i in 0..50 {
        kv.put("w/fast", format!("{i}"), PutOptions::default())
            .await
            .unwrap();
    }
    let mut last = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let item = tokio::time::timeout_at(deadline, w.next())
            .await
            .expect("converge")
            .unwrap();
        let pair = item.unwrap().expect("present");
        assert!(pair.last_index > last, "version went back");
        last = pair.last_index;
        if pair.value == "49" {
            break;
        }
    }
    kv.close().await.unwrap();
}

/// watch_tree keeps a cache current from the watches that fired: one change costs a
/// few requests, not a re-read of the subtree; and random changes converge to `list`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_tree_follows_changes_incrementally_and_converges_to_list() {
    let Some(turn) = quiet_shared_server().await else {
        return;
    };
    let kv = &connect(turn.addr(), "/kvkit-watch-tree").await;
    for i in 0..200 {
        kv.put(format!("inc/k{i:03}"), "v", PutOptions::default())
            .await
            .unwrap();
    }
    let mut tree = kv.watch_tree("inc").await.unwrap();
    assert_eq!(next(&mut tree, "initial").await.unwrap().len(), 200);
    let before = kv.backend().stats();
    kv.put("inc/k100", "changed", PutOptions::default())
        .await
        .unwrap();
    watch_until(&mut tree, "the change", |t: &Vec<kvkit::KvPair>| {
        t.iter()
            .any(|p| p.key == "inc/k100" && p.value == "changed")
    })
    .await;
    let cost = kv.backend().stats().requests - before.requests;
    eprintln!("one change in a watched tree of 200 keys: {cost} requests (put included)");
    // The put, the getData that re-arms the watch, and the snapshot read of the state
    // (5 multiRead requests: sync + getData of the directory, getChildren, getData of
    // the 200, their validation).
    assert!(cost <= 7, "{cost} requests for one change");
    kv.delete_tree("inc").await.unwrap();
    watch_until(&mut tree, "the empty tree", |t: &Vec<kvkit::KvPair>| {
        t.is_empty()
    })
    .await;

    // Random changes over a small nested key space converge to `list`.
    let keys = [
        "a", "a/b", "a/b/c", "a/c", "b", "b/a", "b/a/x", "ab", "ab/c",
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut random = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for round in 0..12 {
        for _ in 0..8 {
            let key = format!("inc/{}", keys[random(keys.len())]);
            match random(6) {
                0..=2 => {
                    kv.put(&key, format!("r{round}"), PutOptions::default())
                        .await
                        .unwrap();
                }
                3 | 4 => {
                    let _ = kv.delete(&key).await;
                }
                _ => kv.delete_tree(&key).await.unwrap(),
            }
        }
        let expected: Vec<(String, u64)> = kv
            .list("inc")
            .await
            .unwrap()
            .into_iter()
            .map(|p| (p.key, p.last_index))
            .collect();
        watch_until(&mut tree, "the listed state", |t: &Vec<kvkit::KvPair>| {
            t.iter()
                .map(|p| (p.key.clone(), p.last_index))
                .collect::<Vec<_>>()
                == expected
        })
        .await;
    }
    kv.delete_tree("inc").await.unwrap();
    kv.close().await.unwrap();
}

/// The `Total watches:` of the server's `wchs` answer.
fn server_watches(server: &ZkServer) -> Option<usize> {
    let answer = kvkit::testing::zookeeper_server::four_letter(server.addr(), "wchs");
    answer
        .lines()
        .find_map(|line| line.strip_prefix("Total watches:"))
        .and_then(|n| n.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_registrations_stay_flat_across_reconnects() {
    let Some(server) = ZkServer::start() else {
        return;
    };
    let addr = server.connect_string();
    let root = "/kvkit-rearm";
    let proxy = TcpProxy::start(server.addr()).await.unwrap();
    let kv = connect_with(
        ZookeeperConfig::new(proxy.connect_string())
            .prefix(root)
            .session_timeout(Duration::from_secs(10))
            .request_timeout(Duration::from_secs(3))
            .multi_read(false),
    )
    .await;
    let writer = connect(&addr, root).await;
    const KEYS: usize = 100;
    for i in 0..KEYS {
        writer
            .put(format!("w/k{i:03}"), "0", PutOptions::default())
            .await
            .unwrap();
    }
    let mut watches = Vec::new();
    for i in 0..KEYS {
        let mut w = kv.watch(format!("w/k{i:03}")).await.unwrap();
        next(&mut w, "initial").await.unwrap();
        watches.push(w);
    }
    assert_eq!(kv.backend().watch_registrations(), KEYS);
    assert_eq!(server_watches(&server), Some(KEYS), "wchs is allowed");
    let before = kv.backend().stats().requests;
    for round in 0..50 {
        // Drop the connection: the client reconnects (same session) and re-arms.
        proxy.set_blocked(true);
        tokio::time::sleep(Duration::from_millis(30)).await;
        proxy.set_blocked(false);
        let i = (round * 7) % KEYS;
        let value = format!("r{round}");
        writer
            .put(format!("w/k{i:03}"), value.clone(), PutOptions::default())
            .await
            .unwrap();
        watch_until(&mut watches[i], "the write after a reconnect", |p| {
            p.as_ref().is_some_and(|p| p.value == value)
        })
        .await;
        let registered = kv.backend().watch_registrations();
        assert!(
            registered <= KEYS,
            "round {round}: {registered} watch registrations for {KEYS} keys"
        );
    }
    // Every reconnect re-armed the 100 watches (one getData each).
    let rearmed = kv.backend().stats().requests - before;
    eprintln!("requests during the reconnects: {rearmed}");
    assert!(
        rearmed >= 40 * KEYS as u64,
        "only {rearmed} requests: the reconnects did not happen"
    );
    // Settled: one registration per watched key, and as many watches on the server.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (client, on_server) = (kv.backend().watch_registrations(), server_watches(&server));
        if client == KEYS && on_server == Some(KEYS) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not re-armed: {client} registrations, {on_server:?} on the server"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(watches);
    // The streams' tasks end in the background.
    let deadline = tokio::time::Instant::now() + WAIT;
    while kv.backend().watch_registrations() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dropped streams left {} registrations behind",
            kv.backend().watch_registrations()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kv.close().await.unwrap();
    writer.close().await.unwrap();
}
