//! Keys, values, versions, TTLs and the znode encoding: what a single key does, and
//! what kvkit does with znodes it did not write.

use std::time::Duration;

use kvkit::testing::zookeeper_server::{ProxyMode, TcpProxy, ZkServer};
use kvkit::zookeeper::{MAX_VALUE_SIZE, Zookeeper};
use kvkit::{Error, ErrorKind, Kv, LockGuard, LockOptions, PutOptions};

use crate::streams::{next, values};
use crate::zookeeper_support::raw_client;
use crate::{WAIT, connect, kind, shared_server};

/// Keys, implicit parents, versions, delete_tree, bad input, value limits and odd keys
/// (with `multi_read` on or off: the pipelined round trips run it too).
pub(crate) async fn basics(kv: &Kv<Zookeeper>) {
    let a = kv.put("a/b/c", "v1", PutOptions::default()).await.unwrap();
    assert!(a.last_index > 0);
    assert_eq!(kv.get("/a/b/c/").await.unwrap().value, "v1");
    // Implicit parents read as NotFound and are not listed.
    assert_eq!(kind(kv.get("a").await), ErrorKind::NotFound);
    assert_eq!(kind(kv.get("a/b").await), ErrorKind::NotFound);
    assert!(!kv.exists("a/b").await.unwrap());
    assert_eq!(
        values(&kv.list("a").await.unwrap()),
        [("a/b/c".into(), "v1".into())]
    );
    // A key may hold a value and have children.
    kv.put("a/b", "parent", PutOptions::default())
        .await
        .unwrap();
    kv.put("a2/x", "sibling", PutOptions::default())
        .await
        .unwrap();
    assert_eq!(
        values(&kv.list("a").await.unwrap()),
        [
            ("a/b".into(), "parent".into()),
            ("a/b/c".into(), "v1".into())
        ]
    );
    assert!(kv.list("nothing/here").await.unwrap().is_empty());
    // Deleting a key keeps its children; it becomes an implicit parent again.
    kv.delete("a/b").await.unwrap();
    assert_eq!(kind(kv.get("a/b").await), ErrorKind::NotFound);
    assert_eq!(kind(kv.delete("a/b").await), ErrorKind::NotFound);
    assert_eq!(
        values(&kv.list("a").await.unwrap()),
        [("a/b/c".into(), "v1".into())]
    );
    // last_index changes on every write and never goes back, across delete + re-create.
    let b = kv.put("a/b/c", "v2", PutOptions::default()).await.unwrap();
    assert!(b.last_index > a.last_index);
    kv.delete("a/b/c").await.unwrap();
    let c = kv.put("a/b/c", "v3", PutOptions::default()).await.unwrap();
    assert!(c.last_index > b.last_index);
    assert_eq!(kv.get("a/b/c").await.unwrap().last_index, c.last_index);
    // delete_tree removes the dir and below, not siblings.
    kv.put("a", "top", PutOptions::default()).await.unwrap();
    kv.delete_tree("a").await.unwrap();
    assert_eq!(kind(kv.get("a").await), ErrorKind::NotFound);
    assert!(kv.list("a").await.unwrap().is_empty());
    assert_eq!(kv.get("a2/x").await.unwrap().value, "sibling");
    // Bad input never reaches the server and never panics.
    assert_eq!(kind(kv.get("a/../b").await), ErrorKind::InvalidKey);
    assert_eq!(
        kind(kv.put("x\u{1}y", "v", PutOptions::default()).await),
        ErrorKind::InvalidKey
    );
    // Values: the limit, and one byte over it.
    let big = vec![7u8; MAX_VALUE_SIZE];
    kv.put("big", big.clone(), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(kv.get("big").await.unwrap().value.len(), MAX_VALUE_SIZE);
    // The limit holds with the longest key too.
    let long_key = format!("long/{}", "k".repeat(kvkit::key::MAX_KEY_LEN - 5));
    kv.put(&long_key, big.clone(), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(kv.get(&long_key).await.unwrap().value.len(), MAX_VALUE_SIZE);
    kv.delete_tree("long").await.unwrap();
    let over = vec![7u8; 2 * 1024 * 1024];
    assert!(matches!(
        kv.put("big", over, PutOptions::default()).await,
        Err(Error::ValueTooLarge { .. })
    ));
    // Any valid key maps to a valid znode path, and lists back as written.
    for key in [
        "ü/日本 語",
        "pct%2F/x y",
        "c-0000000001",
        "zookeeper",
        "kv/locks",
    ] {
        kv.put(format!("odd/{key}"), key, PutOptions::default())
            .await
            .unwrap();
        assert_eq!(kv.get(format!("odd/{key}")).await.unwrap().value, key);
    }
    assert_eq!(kv.list("odd").await.unwrap().len(), 5);
    kv.delete_tree("odd").await.unwrap();
    let empty = kv.put("empty", "", PutOptions::default()).await.unwrap();
    assert_eq!(kv.get("empty").await.unwrap(), empty);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_values_versions_and_implicit_parents_behave_as_documented() {
    let Some(turn) = shared_server().await else {
        return;
    };
    let kv = &connect(turn.addr(), "/kvkit-basics").await;
    basics(kv).await;
    kv.close().await.unwrap();
}

/// The documented znode encoding, seen with a raw ZooKeeper client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn znodes_use_the_documented_encoding() {
    let Some(turn) = shared_server().await else {
        return;
    };
    let server = turn.addr();
    let suite = "/kvkit-encoding";
    let kv = &connect(server, suite).await;
    use zookeeper_async::{Acl, CreateMode};
    let raw = raw_client(server).await;
    let root = format!("{suite}/kv");
    kv.put("enc/a/k", "v", PutOptions::default()).await.unwrap();
    let (data, stat) = raw
        .get_data(&format!("{root}/enc/a/k"), false)
        .await
        .unwrap();
    assert_eq!(data, b"\x01v");
    assert_eq!(
        kv.get("enc/a/k").await.unwrap().last_index,
        stat.mzxid as u64
    );
    let (parent, _) = raw.get_data(&format!("{root}/enc/a"), false).await.unwrap();
    assert!(parent.is_empty(), "an implicit parent has no value");
    kv.put("enc/t", "x", PutOptions::with_ttl(Duration::from_secs(60)))
        .await
        .unwrap();
    let (data, _) = raw.get_data(&format!("{root}/enc/t"), false).await.unwrap();
    assert_eq!(data[0], 2);
    assert_eq!(u64::from_be_bytes(data[1..9].try_into().unwrap()), 60_000);
    assert_eq!(&data[9..], b"x");
    // Data written by others: with the header it is a value, without it is not.
    raw.create(
        &format!("{root}/enc/foreign"),
        b"hello".to_vec(),
        Acl::open_unsafe().clone(),
        CreateMode::Persistent,
    )
    .await
    .unwrap();
    assert_eq!(kind(kv.get("enc/foreign").await), ErrorKind::NotFound);
    raw.set_data(&format!("{root}/enc/foreign"), b"\x01hi".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(kv.get("enc/foreign").await.unwrap().value, "hi");
    // Deleting the last key below implicit parents prunes them.
    kv.delete("enc/a/k").await.unwrap();
    assert!(
        raw.exists(&format!("{root}/enc/a"), false)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        raw.exists(&format!("{root}/enc"), false)
            .await
            .unwrap()
            .is_some()
    );
    // Lock contenders live outside the key space and go with the lock.
    let guard = kv
        .lock("enc/lock", LockOptions::default().value("l"))
        .await
        .unwrap();
    let contenders = raw
        .get_children(&format!("{suite}/locks/enc%2Flock"), false)
        .await
        .unwrap();
    assert_eq!(contenders.len(), 1);
    assert!(contenders[0].starts_with("c-"));
    let (_, lock_stat) = raw
        .get_data(&format!("{root}/enc/lock"), false)
        .await
        .unwrap();
    assert_eq!(
        lock_stat.ephemeral_owner, 0,
        "a lock key is an ordinary znode (keys may live below it)"
    );
    let (_, contender_stat) = raw
        .get_data(
            &format!("{suite}/locks/enc%2Flock/{}", contenders[0]),
            false,
        )
        .await
        .unwrap();
    assert_ne!(
        contender_stat.ephemeral_owner, 0,
        "the contender goes with the session"
    );
    guard.unlock().await.unwrap();
    assert!(
        raw.exists(&format!("{suite}/locks/enc%2Flock"), false)
            .await
            .unwrap()
            .is_none()
    );
    kv.delete_tree("enc").await.unwrap();
    assert!(
        raw.exists(&format!("{root}/enc"), false)
            .await
            .unwrap()
            .is_none()
    );
    raw.close().await.unwrap();
    kv.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_writes_compare_versions_and_count_exactly_under_contention() {
    let Some(turn) = shared_server().await else {
        return;
    };
    let server = turn.addr();
    let kv = &connect(turn.addr(), "/kvkit-cas").await;
    let created = kv
        .atomic_put("c/k", "1", None, PutOptions::default())
        .await
        .unwrap();
    assert_eq!(
        kind(kv.atomic_put("c/k", "x", None, PutOptions::default()).await),
        ErrorKind::KeyExists
    );
    let second = kv
        .atomic_put("c/k", "2", Some(&created), PutOptions::default())
        .await
        .unwrap();
    assert!(second.last_index > created.last_index);
    assert_eq!(
        kind(
            kv.atomic_put("c/k", "3", Some(&created), PutOptions::default())
                .await
        ),
        ErrorKind::KeyModified
    );
    assert_eq!(
        kind(kv.atomic_delete("c/k", &created).await),
        ErrorKind::KeyModified
    );
    kv.atomic_delete("c/k", &second).await.unwrap();
    assert_eq!(
        kind(kv.atomic_delete("c/k", &second).await),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(
            kv.atomic_put("c/k", "4", Some(&second), PutOptions::default())
                .await
        ),
        ErrorKind::NotFound
    );
    // Create-only on an implicit parent succeeds (it holds no value).
    kv.put("c/p/child", "x", PutOptions::default())
        .await
        .unwrap();
    kv.atomic_put("c/p", "now", None, PutOptions::default())
        .await
        .unwrap();
    assert_eq!(kv.get("c/p").await.unwrap().value, "now");

    // Atomicity under contention: 2 sessions x 2 tasks x 10 increments of one counter.
    kv.put("c/counter", "0", PutOptions::default())
        .await
        .unwrap();
    let other = connect(server, "/kvkit-cas").await;
    let mut tasks = Vec::new();
    for client in [kv, kv, &other, &other] {
        let kv = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            let mut attempts = 0;
            while done < 10 {
                attempts += 1;
                assert!(attempts < 2_000, "too many CAS retries");
                let cur = kv.get("c/counter").await.unwrap();
                let n: u64 = std::str::from_utf8(&cur.value).unwrap().parse().unwrap();
                match kv
                    .atomic_put(
                        "c/counter",
                        (n + 1).to_string(),
                        Some(&cur),
                        PutOptions::default(),
                    )
                    .await
                {
                    Ok(_) => done += 1,
                    Err(Error::KeyModified { .. }) => {}
                    Err(e) => panic!("unexpected CAS error {e}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(kv.get("c/counter").await.unwrap().value, "40");
    other.close().await.unwrap();
    kv.close().await.unwrap();
}

/// Written by a client that then disconnects, a key lives until its TTL passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_outlives_its_writer_and_watches_see_the_expiry() {
    let Some(turn) = shared_server().await else {
        return;
    };
    let server = turn.addr();
    // Written by a client that then disconnects: still there until the TTL passes.
    let writer = connect(server, "/kvkit-ttl").await;
    writer
        .put(
            "t/k",
            "short",
            PutOptions::with_ttl(Duration::from_millis(1_500)),
        )
        .await
        .unwrap();
    writer
        .put(
            "t/keep",
            "forever",
            PutOptions::with_ttl(Duration::from_millis(1_500)),
        )
        .await
        .unwrap();
    writer
        .put("t/keep", "forever", PutOptions::default())
        .await
        .unwrap();
    writer.close().await.unwrap();
    let reader = connect(server, "/kvkit-ttl").await;
    let mut watch = reader.watch("t/k").await.unwrap();
    assert_eq!(
        next(&mut watch, "first state")
            .await
            .unwrap()
            .unwrap()
            .value,
        "short"
    );
    assert_eq!(reader.get("t/k").await.unwrap().value, "short");
    assert_eq!(reader.list("t").await.unwrap().len(), 2);
    // The watch sees the expiry without any write.
    assert_eq!(next(&mut watch, "expiry").await.unwrap(), None);
    assert_eq!(kind(reader.get("t/k").await), ErrorKind::NotFound);
    assert_eq!(
        values(&reader.list("t").await.unwrap()),
        [("t/keep".into(), "forever".into())]
    );
    // A create-only write succeeds on an expired key.
    reader
        .atomic_put("t/k", "again", None, PutOptions::default())
        .await
        .unwrap();
    reader.delete_tree("t").await.unwrap();
    reader.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_collection_never_deletes_a_fresh_write() {
    let Some(server) = ZkServer::start() else {
        return;
    };
    let addr = server.connect_string();
    let root = "/kvkit-ttl-gc";
    let raw = raw_client(&addr).await;
    let writer = connect(&addr, root).await;
    let ttl = Duration::from_millis(500);

    // A watcher whose cached TTL deadline passes while it is cut off: its collection
    // of the expired write reaches the server only after another reader collected it
    // and the writer wrote the key afresh.
    let proxy = TcpProxy::start(server.addr()).await.unwrap();
    let watcher = connect(&proxy.connect_string(), root).await;
    let reader = connect(&addr, root).await;
    writer
        .put("t/cut", "old", PutOptions::with_ttl(ttl))
        .await
        .unwrap();
    let mut tree = watcher.watch_tree("t").await.unwrap();
    assert_eq!(next(&mut tree, "tree").await.unwrap().len(), 1);
    proxy.set_mode(ProxyMode::Silent);
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    assert_eq!(kind(reader.get("t/cut").await), ErrorKind::NotFound);
    let path = format!("{root}/kv/t/cut");
    let deadline = tokio::time::Instant::now() + WAIT;
    while raw.exists(&path, false).await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "never collected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writer
        .put("t/cut", "fresh", PutOptions::default())
        .await
        .unwrap();
    proxy.set_mode(ProxyMode::Open);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        writer.get("t/cut").await.unwrap().value,
        "fresh",
        "a late collection deleted the fresh write"
    );
    drop(tree);

    // Many readers on several handles at the expiry while the writer re-creates it.
    let readers: Vec<Kv<Zookeeper>> = {
        let mut out = Vec::new();
        for _ in 0..3 {
            out.push(connect(&addr, root).await);
        }
        out
    };
    for round in 0..6 {
        let key = format!("t/k{round}");
        let path = format!("{root}/kv/{key}");
        writer
            .put(&key, "old", PutOptions::with_ttl(ttl))
            .await
            .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for kv in &readers {
            for _ in 0..8 {
                let (kv, key, stop) = (kv.clone(), key.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let _ = kv.get(&key).await;
                        let _ = kv.list("t").await;
                    }
                }));
            }
        }
        tokio::time::sleep(ttl).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while raw.exists(&path, false).await.unwrap().is_some() {
            assert!(tokio::time::Instant::now() < deadline, "never collected");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        writer
            .put(&key, "fresh", PutOptions::default())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in tasks {
            task.await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = writer
            .get(&key)
            .await
            .unwrap_or_else(|e| panic!("round {round}: the fresh write was deleted: {e}"));
        assert_eq!(now.value, "fresh", "round {round}");
    }
    for kv in readers.iter().chain([&writer, &watcher, &reader]) {
        kv.close().await.unwrap();
    }
}
