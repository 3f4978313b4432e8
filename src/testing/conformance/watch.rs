//! Conformance checks of `watch` and `watch_tree`.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use super::support::{fresh_dir, keys_values, next_item, ok, siblings, until};
use crate::backend::{Backend, KvPair, PutOptions};
use crate::kv::Kv;

/// `watch(key)`: the current state first, then every later state in order, converging.
pub async fn watch_key<B: Backend>(kv: &Kv<B>) {
    let dir = fresh_dir(kv, "watch_key").await;
    let key = format!("{dir}/w");
    let first = ok("put", kv.put(&key, "v0", PutOptions::default()).await);
    let mut watch = ok("watch", kv.watch(&key).await);
    let initial = ok("initial", next_item("initial state", &mut watch).await);
    assert_eq!(initial, Some(first), "the current state comes first");
    let mut last = initial.map_or(0, |p| p.last_index);
    for i in 1..=5 {
        ok(
            "put",
            kv.put(&key, format!("v{i}"), PutOptions::default()).await,
        );
    }
    let target = ok("get", kv.get(&key).await);
    let seen = until("converge on v5", &mut watch, |s: &Option<KvPair>| {
        s.as_ref() == Some(&target)
    })
    .await;
    let every = kv.capabilities().watch_sees_every_write;
    if every {
        assert_eq!(
            seen.len(),
            5,
            "a backend that sees every write yields each: {seen:?}"
        );
    }
    for state in &seen {
        let pair = state.as_ref().expect("no deletion happened");
        assert!(pair.last_index > last, "versions go forward: {seen:?}");
        last = pair.last_index;
    }
    ok("delete", kv.delete(&key).await);
    until("see the delete", &mut watch, |s: &Option<KvPair>| {
        s.is_none()
    })
    .await;
    let recreated = ok("re-put", kv.put(&key, "again", PutOptions::default()).await);
    until("see the re-create", &mut watch, |s: &Option<KvPair>| {
        s.as_ref() == Some(&recreated)
    })
    .await;
    // Writes to other keys, even siblings and children, are not reported.
    ok(
        "put sibling",
        kv.put(format!("{key}2"), "x", PutOptions::default()).await,
    );
    ok(
        "put child",
        kv.put(format!("{key}/child"), "x", PutOptions::default())
            .await,
    );
    let quiet = tokio::time::timeout(Duration::from_millis(300), watch.next()).await;
    assert!(quiet.is_err(), "no item for other keys, got {quiet:?}");
}

/// Watching a missing key is allowed and yields `None` first.
pub async fn watch_missing_key<B: Backend>(kv: &Kv<B>) {
    let dir = fresh_dir(kv, "watch_missing").await;
    let key = format!("{dir}/later");
    let mut watch = ok("watch missing", kv.watch(&key).await);
    assert_eq!(
        ok("initial", next_item("initial state", &mut watch).await),
        None
    );
    let pair = ok("put", kv.put(&key, "now", PutOptions::default()).await);
    until("see the create", &mut watch, |s: &Option<KvPair>| {
        s.as_ref() == Some(&pair)
    })
    .await;
    drop(watch);
    // Dropping a watch stops it; the store keeps working.
    ok(
        "put after drop",
        kv.put(&key, "after", PutOptions::default()).await,
    );
}

/// `watch_tree(dir)`: the sorted subtree first, then after every change below.
pub async fn watch_tree<B: Backend>(kv: &Kv<B>) {
    let dir = fresh_dir(kv, "watch_tree").await;
    let tree = format!("{dir}/tree");
    let (outside, inside) = siblings(&tree);
    // Prefix-siblings written before the watch starts are not in its first item.
    for sibling in &outside {
        ok(
            "put sibling",
            kv.put(sibling, "s0", PutOptions::default()).await,
        );
    }
    let mut watch = ok("watch_tree of missing dir", kv.watch_tree(&tree).await);
    let initial = ok("initial", next_item("initial subtree", &mut watch).await);
    assert!(initial.is_empty(), "empty subtree first: {initial:?}");

    let a = format!("{tree}/a");
    let b = format!("{tree}/sub/b");
    ok("put a", kv.put(&a, "1", PutOptions::default()).await);
    ok("put b", kv.put(&b, "1", PutOptions::default()).await);
    let want = vec![(a.clone(), Bytes::from("1")), (b.clone(), Bytes::from("1"))];
    until("see both keys", &mut watch, |t: &Vec<KvPair>| {
        keys_values(t) == want
    })
    .await;

    ok("update a", kv.put(&a, "2", PutOptions::default()).await);
    let want = vec![(a.clone(), Bytes::from("2")), (b.clone(), Bytes::from("1"))];
    until("see a value change", &mut watch, |t: &Vec<KvPair>| {
        keys_values(t) == want
    })
    .await;

    ok("delete b", kv.delete(&b).await);
    let want = vec![(a.clone(), Bytes::from("2"))];
    until("see a deletion", &mut watch, |t: &Vec<KvPair>| {
        keys_values(t) == want
    })
    .await;

    // Prefix-siblings written after the watch started never show; a multi-byte child
    // does.
    for sibling in &outside {
        ok(
            "put sibling",
            kv.put(sibling, "s1", PutOptions::default()).await,
        );
    }
    ok("put é", kv.put(&inside, "1", PutOptions::default()).await);
    let want_with = vec![
        (a.clone(), Bytes::from("2")),
        (inside.clone(), Bytes::from("1")),
    ];
    let seen = until("see the multi-byte child", &mut watch, |t: &Vec<KvPair>| {
        keys_values(t) == want_with
    })
    .await;
    for item in &seen {
        assert!(
            item.iter().all(|p| !outside.contains(&p.key)),
            "watch_tree({tree:?}) yields no prefix-sibling: {item:?}"
        );
    }
    ok("delete é", kv.delete(&inside).await);
    until("see é deleted", &mut watch, |t: &Vec<KvPair>| {
        keys_values(t) == want
    })
    .await;

    // The dir itself and siblings are outside the subtree.
    ok(
        "put dir",
        kv.put(&tree, "self", PutOptions::default()).await,
    );
    ok(
        "put sibling",
        kv.put(format!("{tree}2/x"), "x", PutOptions::default())
            .await,
    );
    match tokio::time::timeout(Duration::from_millis(300), watch.next()).await {
        Err(_) => {}
        Ok(Some(Ok(t))) => assert_eq!(
            keys_values(&t),
            want,
            "dir and siblings are not in the subtree"
        ),
        Ok(other) => panic!("unexpected watch_tree item {other:?}"),
    }
    ok("delete_tree", kv.delete_tree(&tree).await);
    until("see the tree emptied", &mut watch, |t: &Vec<KvPair>| {
        t.is_empty()
    })
    .await;
}
