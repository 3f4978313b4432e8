//! The conformance suite: generic async checks of every rule in `docs/design.md`.
//!
//! Each check owns a directory below [`ROOT`] and wipes it first, so the suite can run
//! against a shared server. A failed check panics with a message naming the rule.
//! [`run_all`] runs every check; a backend's tests may also call them one by one.
//!
//! The cases docker/libkv's own suite checks are here too: put/get/delete/exists on
//! keys with trailing slashes, list and delete_tree, atomic put/create/delete, watch
//! and watch_tree, lock/unlock/relock, lock TTL with renewal, and put TTL.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};

use crate::backend::{Backend, KvPair, LockGuard, LockOptions, PutOptions};
use crate::error::{Error, ErrorKind, Result};
use crate::kv::Kv;

/// Every check works below this directory.
pub const ROOT: &str = "kvkit-conformance";

/// How long a check waits for something that must happen "promptly" (a watch event,
/// a woken lock waiter).
pub const PROMPTLY: Duration = Duration::from_secs(10);

/// One conformance check, as [`checks`] lists it: takes a handle, panics on a broken
/// rule.
pub type Check<B> = fn(Kv<B>) -> BoxFuture<'static, ()>;

macro_rules! named_checks {
    ($($name:ident),* $(,)?) => {
        vec![$((
            stringify!($name),
            (|kv: Kv<B>| async move { $name(&kv).await }.boxed()) as Check<B>,
        )),*]
    };
}

/// Every check with its name, in the order [`run_all`] runs them.
pub fn checks<B: Backend>() -> Vec<(&'static str, Check<B>)> {
    named_checks![
        put_get_delete,
        normalised_keys,
        missing_keys_and_implicit_parents,
        key_with_children,
        last_index_rules,
        list_rules,
        delete_tree_rules,
        atomic_put_rules,
        atomic_delete_rules,
        invalid_input,
        put_ttl,
        watch_key,
        watch_missing_key,
        watch_tree,
        lock_unlock_relock,
        lock_wakes_waiter,
        lock_lost_when_key_taken,
        lock_ttl_renewal,
        lock_bookkeeping_hidden,
    ]
}

/// Runs every check in turn.
pub async fn run_all<B: Backend>(kv: &Kv<B>) {
    for (_, check) in checks::<B>() {
        check(kv.clone()).await;
    }
}

/// Prefix-siblings of `dir` (sorting before and after `/`) and a multi-byte child:
/// `dir-x`, `dir.x`, `dir x`, `dir~` are outside `dir`, `dir/é` is inside.
pub fn siblings(dir: &str) -> ([String; 4], String) {
    (
        [
            format!("{dir}-x"),
            format!("{dir}.x"),
            format!("{dir} x"),
            format!("{dir}~"),
        ],
        format!("{dir}/é"),
    )
}

/// A fresh directory for one check: `ROOT/name`, emptied.
pub async fn fresh_dir<B: Backend>(kv: &Kv<B>, name: &str) -> String {
    let dir = format!("{ROOT}/{name}");
    kv.delete_tree(&dir)
        .await
        .unwrap_or_else(|e| panic!("delete_tree({dir}) before a check failed: {e}"));
    dir
}

fn ok<T>(what: &str, result: Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{what}: unexpected error: {e:?}"))
}

fn expect_kind<T: std::fmt::Debug>(what: &str, result: Result<T>, kind: ErrorKind) {
    match result {
        Err(e) => assert_eq!(e.kind(), kind, "{what}: wrong error {e:?}"),
        Ok(v) => panic!("{what}: expected {kind:?}, got Ok({v:?})"),
    }
}

fn keys_values(pairs: &[KvPair]) -> Vec<(String, Bytes)> {
    pairs
        .iter()
        .map(|p| (p.key.clone(), p.value.clone()))
        .collect()
}

/// The next item of a stream within [`PROMPTLY`].
pub async fn next_item<S: Stream + Unpin>(what: &str, stream: &mut S) -> S::Item {
    match tokio::time::timeout(PROMPTLY, stream.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("{what}: stream ended"),
        Err(_) => panic!("{what}: nothing within {PROMPTLY:?}"),
    }
}

/// Reads a stream until `done` holds for an item (bounded by [`PROMPTLY`]); returns all
/// items read. Watches may coalesce, so checks wait for the state they expect.
async fn until<S, T>(what: &str, stream: &mut S, done: impl Fn(&T) -> bool) -> Vec<T>
where
    S: Stream<Item = Result<T>> + Unpin,
    T: std::fmt::Debug,
{
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        let item = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(item)) => ok(what, item),
            Ok(None) => panic!("{what}: stream ended; saw {seen:?}"),
            Err(_) => {
                panic!("{what}: expected state not reached within {PROMPTLY:?}; saw {seen:?}")
            }
        };
        let finished = done(&item);
        seen.push(item);
        if finished {
            return seen;
        }
    }
}

/// Polls `check` until it holds or `limit` passes (a bounded loop).
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Put, get, exists and delete of plain keys.
pub async fn put_get_delete<B: Backend>(kv: &Kv<B>) {
    let dir = fresh_dir(kv, "put_get_delete").await;
    let key = format!("{dir}/foo");
    let put = ok("put", kv.put(&key, "bar", PutOptions::default()).await);
    assert_eq!(put.key, key, "put returns the normalised key");
    assert_eq!(put.value, "bar");
    assert_ne!(put.last_index, 0, "last_index is nonzero");
    let got = ok("get", kv.get(&key).await);
    assert_eq!(got, put, "get returns what put returned");
    assert!(ok("exists", kv.exists(&key).await));
    ok("delete", kv.delete(&key).await);
    expect_kind("get after delete", kv.get(&key).await, ErrorKind::NotFound);
    assert!(!ok("exists after delete", kv.exists(&key).await));
    expect_kind("second delete", kv.delete(&key).await, ErrorKind::NotFound);
    // Empty and binary values round-trip.
    ok(
        "put empty",
        kv.put(&key, Bytes::new(), PutOptions::default()).await,
    );
    assert_eq!(ok("get empty", kv.get(&key).await).value, "");
    let binary: Vec<u8> = (0..=255).collect();
    ok(
        "put binary",
        kv.put(&key, binary.clone(), PutOptions::default()).await,
    );
    assert_eq!(ok("get binary", kv.get(&key).await).value, binary);
}

/// Leading, trailing and repeated slashes name the same key (libkv's trailing-slash
/// cases).
pub async fn normalised_keys<B: Backend>(kv: &Kv<B>) {
    let dir = fresh_dir(kv, "normalised_keys").await;
    let spellings = [
        format!("{dir}/a/b"),
        format!("/{dir}/a/b"),
        format!("{dir}/a/b/"),
        format!("//{dir}//a///b//"),
    ];
    for (i, spelling) in spellings.iter().enumerate() {
        let value = format!("v{i}");
        let put = ok(
            "put",
            kv.put(spelling, value.clone(), PutOptions::default()).await,
        );
        assert_eq!(put.key, format!("{dir}/a/b"), "{spelling:?} is normalised");
        for other in &spellings {
            assert_eq!(
                ok("get", kv.get(other).await).value,
                value,
                "{other:?} reads {spelling:?}"
            );
            assert!(ok("exists", kv.exists(other).await));
        }
    }
    ok(
        "delete with trailing slash",
        kv.delete(format!("{dir}/a/b/")).await,
    );
    assert!(!ok("exists", kv.exists(&spellings[0]).await));
    let listed = ok("list", kv.list(format!("/{dir}/")).await);
    assert!(listed.is_empty(), "nothing left: {listed:?}");
}

/// `get` of a key never written, including the parent of a written key, is NotFound.
pub async fn missing_keys_and_implicit_parents<B: Backend>(kv: &Kv<B>) {
    let dir = fresh_dir(kv, "missing_keys").await;
    expect_kind(
        "get missing",
        kv.get(format!("{dir}/nope")).await,
        ErrorKind::NotFound,
    );
    ok(
        "put deep",
        kv.put(format!("{dir}/p/q/r"), "v", PutOptions::default())
            .await,
    );
    for parent in [format!("{dir}/p"), format!("{dir}/p/q"), dir.clone()] {
        expect_kind(
            "get implicit parent",
            kv.get(&parent).await,
            ErrorKind::NotFound,
        );
        assert!(
            !ok("exists implicit parent", kv.exists(&parent).await),
            "{parent}"
        );
        expect_kind(
            "delete implicit parent",
            kv.delete(&parent).await,
            ErrorKind::NotFound,
        );
    }
    let listed = ok("list", kv.list(&dir).await);
    assert_eq!(
        keys_values(&listed),
        vec![(format!("{dir}/p/q/r"), Bytes::from("v"))],
        "implicit parents are not listed"
    );
}

/// A key may hold a value and have keys below it; deleting it keeps them.
pub async fn key_with_children<B: Backend>(kv: &Kv<B>) {
    let dir = fresh_dir(kv, "key_with_children").await;
    let parent = format!("{dir}/node");
    let child = format!("{dir}/node/child");
    ok(
        "put child",
        kv.put(&child, "c", PutOptions::default()).await,
    );
    ok(
        "put parent",
        kv.put(&parent, "p", PutOptions::default()).await,
    );
    assert_eq!(ok("get parent", kv.get(&parent).await).value, "p");
    assert_eq!(ok("get child", kv.get(&child).await).value, "c");
    let listed = ok("list parent", kv.list(&parent).await);
    assert_eq!(
        keys_values(&listed),
        vec![(child.clone(), Bytes::from("c"))]
    );
    ok("delete parent", kv.delete(&parent).await);
    assert_eq!(ok("child survives", kv.get(&child).await).value, "c");
    expect_kind("parent gone", kv.get(&parent).await, ErrorKind::NotFound);
    ok(
        "re-put parent",
        kv.put(&parent, "p2", PutOptions::default()).await,
    );
    assert_eq!(ok("get parent again", kv.get(&parent).await).value, "p2");
}

/// `last_index` changes on every write of a key and never goes back, also across
/// delete and re-create.
pub async fn last_index_rules<B: Backend>(kv: &Kv<B>) {
    let dir = fresh_dir(kv, "last_index").await;
    let key = format!("{dir}/k");
    let mut last = 0;
    for round in 0..3 {
        for value in ["a", "b", "b"] {
            let pair = ok("put", kv.put(&key, value, PutOptions::default()).await);
            assert!(
                pair.last_index > last,
                "round {round}: {} !> {last}",
                pair.last_index
            );
            assert_eq!(ok("get", kv.get(&key).await).last_index, pair.last_index);
            last = pair.last_index;
        }
        ok("delete", kv.delete(&key).await);
    }
}

/// `list(dir)`: strictly below, recursive, sorted, no siblings, empty when none.
pub async fn list_rules<B: Backend>(kv: &Kv<B>) {
    let dir = fresh_dir(kv, "list").await;
    let sibling_dir = format!("{dir}2");
    ok("clean sibling", kv.delete_tree(&sibling_dir).await);
    let base = format!("{dir}/d");
    assert!(
        ok("list missing dir", kv.list(&base).await).is_empty(),
        "missing dir lists empty"
    );
    let (outside, inside) = siblings(&base);
    let written = [
        format!("{base}/b"),
        format!("{base}/a/deep/er"),
        format!("{base}/a"),
        format!("{base}/c/x"),
        inside,
    ];
    for key in outside.iter().chain(&written) {
        ok("put", kv.put(key, key.clone(), PutOptions::default()).await);
    }
    ok(
        "put dir itself",
        kv.put(&base, "self", PutOptions::default()).await,
    );
    ok(
        "put sibling",
        kv.put(format!("{dir}/d2/x"), "sib", PutOptions::default())
            .await,
    );
    ok(
        "put sibling key",
        kv.put(format!("{dir}/dd"), "sib", PutOptions::default())
            .await,
    );
    ok(
        "put sibling dir",
        kv.put(format!("{sibling_dir}/x"), "sib", PutOptions::default())
            .await,
    );
    let mut expected: Vec<String> = written.to_vec();
    expected.sort();
    for spelling in [base.clone(), format!("{base}/"), format!("/{base}")] {
        let listed = ok("list", kv.list(&spelling).await);
        let keys: Vec<&str> = listed.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys, expected,
            "list({spelling:?}) is sorted, recursive, without dir or siblings"
        );
        for pair in &listed {
            assert_eq!(pair.value, pair.key.as_bytes(), "list returns values");
            assert_ne!(pair.last_index, 0);
        }
    }
    let nested = ok("list nested", kv.list(format!("{base}/a")).await);
    assert_eq!(
        keys_values(&nested),
        vec![(
            format!("{base}/a/deep/er"),
            Bytes::from(format!("{base}/a/deep/er"))
        )]
    );
    let leaf = ok("list leaf", kv.list(format!("{base}/b")).await);
    assert!(leaf.is_empty(), "a key without children lists empty");
    let root = ok("list root", kv.list("").await);
    for key in &expected {
        assert!(
            root.iter().any(|p| &p.key == key),
            "list(\"\") contains {key}"
        );
    }
    ok("clean sibling", kv.delete_tree(&sibling_dir).await);
}

/// `delete_tree(dir)`: `dir` and everything below, nothing else; fine when empty.
pub async fn delete_tree_rules<B: Backend>(kv: &Kv<B>) {
    let dir = fresh_dir(kv, "delete_tree").await;
    let base = format!("{dir}/t");
    ok("delete_tree of nothing", kv.delete_tree(&base).await);
    let (outside, inside) = siblings(&base);
    for key in [
        base.clone(),
        format!("{base}/a"),
        format!("{base}/a/b"),
        format!("{base}2/x"),
        format!("{dir}/tt"),
        inside.clone(),
    ]
    .iter()
    .chain(&outside)
    {
        ok("put", kv.put(key, "v", PutOptions::default()).await);
    }
    ok("delete_tree", kv.delete_tree(format!("{base}/")).await);
    expect_kind(
        "dir itself deleted",
        kv.get(&base).await,
        ErrorKind::NotFound,
    );
    expect_kind(
        "child deleted",
        kv.get(format!("{base}/a/b")).await,
        ErrorKind::NotFound,
    );
    assert!(ok("list", kv.list(&base).await).is_empty());
    assert!(ok(
        "sibling dir kept",
        kv.exists(format!("{base}2/x")).await
    ));
    assert!(ok("sibling key kept", kv.exists(format!("{dir}/tt")).await));
    expect_kind(
        "multi-byte child deleted",
        kv.get(&inside).await,
        ErrorKind::NotFound,
    );
    for sibling in &outside {
        assert!(
            ok("prefix-sibling kept", kv.exists(sibling).await),
            "delete_tree({base:?}) keeps {sibling:?}"
        );
    }
}

/// Create-only and compare-and-swap puts.
pub async fn atomic_put_rules<B: Backend>(kv: &Kv<B>) {
    let dir = fresh_dir(kv, "atomic_put").await;
    let key = format!("{dir}/k");
    let created = ok(
        "create",
        kv.atomic_put(&key, "v1", None, PutOptions::default()).await,
    );
    assert_eq!(created.value, "v1");
    assert_eq!(ok("get", kv.get(&key).await), created);
    expect_kind(
        "create again",
        kv.atomic_put(&key, "x", None, PutOptions::default()).await,
        ErrorKind::KeyExists,
    );
    let swapped = ok(
        "cas",
        kv.atomic_put(&key, "v2", Some(&created), PutOptions::default())
            .await,
    );
    assert!(swapped.last_index > created.last_index);
    expect_kind(
        "cas with stale index",
        kv.atomic_put(&key, "v3", Some(&created), PutOptions::default())
            .await,
        ErrorKind::KeyModified,
    );
    assert_eq!(
        ok("get", kv.get(&key).await).value,
        "v2",
        "a failed cas writes nothing"
    );
    // The same value written by someone else still counts as a modification.
    let rewritten = ok(
        "put same value",
        kv.put(&key, "v2", PutOptions::default()).await,
    );
    assert!(rewritten.last_index > swapped.last_index);
    expect_kind(
        "cas after same-value write",
        kv.atomic_put(&key, "v3", Some(&swapped), PutOptions::default())
            .await,
        ErrorKind::KeyModified,
    );
    ok("delete", kv.delete(&key).await);
    expect_kind(
        "cas on deleted key",
        kv.atomic_put(&key, "v4", Some(&rewritten), PutOptions::default())
            .await,
        ErrorKind::NotFound,
    );
    let recreated = ok(
        "create after delete",
        kv.atomic_put(&key, "v5", None, PutOptions::default()).await,
    );
    assert!(
        recreated.last_index > rewritten.last_index,
        "no A-B-A: index moves on after re-create"
    );
    expect_kind(
        "cas with pre-delete index",
        kv.atomic_put(&key, "v6", Some(&rewritten), PutOptions::default())
            .await,
        ErrorKind::KeyModified,
    );
    // Create-only on an implicit parent succeeds: it holds no value.
    ok(
        "put child",
        kv.put(format!("{dir}/p/c"), "c", PutOptions::default())
            .await,
    );
    ok(
        "create implicit parent",
        kv.atomic_put(format!("{dir}/p"), "p", None, PutOptions::default())
            .await,
    );
}

/// Compare-and-delete.
pub async fn atomic_delete_rules<B: Backend>(kv: &Kv<B>) {
    let dir = fresh_dir(kv, "atomic_delete").await;
    let key = format!("{dir}/k");
    let first = ok("put", kv.put(&key, "v1", PutOptions::default()).await);
    let second = ok("put", kv.put(&key, "v2", PutOptions::default()).await);
    expect_kind(
        "stale delete",
        kv.atomic_delete(&key, &first).await,
        ErrorKind::KeyModified,
    );
    assert!(
        ok("exists", kv.exists(&key).await),
        "a failed atomic_delete deletes nothing"
    );
    ok("atomic delete", kv.atomic_delete(&key, &second).await);
    expect_kind("gone", kv.get(&key).await, ErrorKind::NotFound);
    expect_kind(
        "delete again",
        kv.atomic_delete(&key, &second).await,
        ErrorKind::NotFound,
    );
}

/// Invalid keys and oversized values are refused before any I/O, with typed errors.
pub async fn invalid_input<B: Backend>(kv: &Kv<B>) {
    let bad_keys = ["", "/", "a/../b", "./a", "a\nb", "a\u{0}", "\u{7f}"];
    for key in bad_keys {
        expect_kind("get", kv.get(key).await, ErrorKind::InvalidKey);
        expect_kind(
            "put",
            kv.put(key, "v", PutOptions::default()).await,
            ErrorKind::InvalidKey,
        );
        expect_kind("delete", kv.delete(key).await, ErrorKind::InvalidKey);
        expect_kind("exists", kv.exists(key).await, ErrorKind::InvalidKey);
        expect_kind(
            "atomic_put",
            kv.atomic_put(key, "v", None, PutOptions::default()).await,
            ErrorKind::InvalidKey,
        );
        expect_kind(
            "watch",
            kv.watch(key).await.map(|_| ()),
            ErrorKind::InvalidKey,
        );
        expect_kind(
            "lock",
            kv.try_lock(key, LockOptions::default()).await.map(|_| ()),
            ErrorKind::InvalidKey,
        );
    }
    let too_long = "k".repeat(crate::key::MAX_KEY_LEN + 1);
    expect_kind(
        "long key",
        kv.put(&too_long, "v", PutOptions::default()).await,
        ErrorKind::InvalidKey,
    );
    expect_kind("list ..", kv.list("a/..").await, ErrorKind::InvalidKey);
    expect_kind(
        "delete_tree ..",
        kv.delete_tree("..").await,
        ErrorKind::InvalidKey,
    );

    let dir = fresh_dir(kv, "invalid_input").await;
    let limit = kv.capabilities().max_value_size;
    let key = format!("{dir}/big");
    match kv
        .put(&key, vec![0u8; limit + 1], PutOptions::default())
        .await
    {
        Err(Error::ValueTooLarge { size, limit: l }) => assert_eq!((size, l), (limit + 1, limit)),
        other => panic!("oversized put: expected ValueTooLarge, got {other:?}"),
    }
    expect_kind(
        "oversized atomic_put",
        kv.atomic_put(&key, vec![0u8; limit + 1], None, PutOptions::default())
            .await,
        ErrorKind::ValueTooLarge,
    );
    expect_kind(
        "nothing was written",
        kv.get(&key).await,
        ErrorKind::NotFound,
    );
}

/// A key put with a TTL disappears after it; without one it stays.
pub async fn put_ttl<B: Backend>(kv: &Kv<B>) {
    let dir = fresh_dir(kv, "put_ttl").await;
    let caps = kv.capabilities();
    let ttl = caps.effective_ttl(Duration::from_millis(300));
    let bound = ttl * caps.ttl_expiry_factor + caps.ttl_granularity + Duration::from_secs(2);
    let short = format!("{dir}/short");
    let forever = format!("{dir}/forever");
    ok(
        "put ttl",
        kv.put(&short, "v", PutOptions::with_ttl(ttl)).await,
    );
    ok(
        "put forever",
        kv.put(&forever, "v", PutOptions::default()).await,
    );
    assert!(ok("readable before the ttl", kv.exists(&short).await));
    let gone = eventually(bound, || async { !kv.exists(&short).await.unwrap_or(true) }).await;
    assert!(gone, "a key with ttl {ttl:?} is gone within {bound:?}");
    expect_kind("get expired", kv.get(&short).await, ErrorKind::NotFound);
    assert!(ok("key without ttl stays", kv.exists(&forever).await));
    assert!(
        ok("list", kv.list(&dir).await)
            .iter()
            .all(|p| p.key != short),
        "expired keys are not listed"
    );
    // Overwriting without a TTL makes the key permanent again.
    ok(
        "put ttl",
        kv.put(&short, "v", PutOptions::with_ttl(ttl)).await,
    );
    ok(
        "put without ttl",
        kv.put(&short, "w", PutOptions::default()).await,
    );
    tokio::time::sleep(bound).await;
    assert_eq!(ok("rewritten key stays", kv.get(&short).await).value, "w");
}

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

fn lock_options(value: &str) -> LockOptions {
    LockOptions::default().value(value)
}

/// Lock, see the value, refuse a second holder, unlock, relock.
pub async fn lock_unlock_relock<B: Backend>(kv: &Kv<B>) {
    let dir = fresh_dir(kv, "lock_unlock").await;
    let key = format!("{dir}/lock");
    let guard = ok("lock", kv.lock(&key, lock_options("one")).await);
    assert_eq!(guard.key(), key);
    assert!(!guard.is_lost());
    assert_eq!(
        ok("lock value", kv.get(&key).await).value,
        "one",
        "the key holds the lock's value"
    );
    assert!(
        ok(
            "try_lock held",
            kv.try_lock(&key, lock_options("two")).await
        )
        .is_none(),
        "mutual exclusion"
    );
    ok("unlock", guard.unlock().await);
    let again = ok(
        "try_lock after unlock",
        kv.try_lock(&key, lock_options("two")).await,
    )
    .expect("a released lock can be taken again");
    assert_eq!(ok("lock value", kv.get(&key).await).value, "two");
    drop(again);
    // Dropping the guard releases the lock (in the background).
    let relocked = tokio::time::timeout(PROMPTLY, kv.lock(&key, lock_options("three"))).await;
    let relocked = ok(
        "relock after drop",
        relocked.expect("relock after drop within PROMPTLY"),
    );
    ok("unlock", relocked.unlock().await);
}

/// A waiter is woken promptly when the holder unlocks, and exclusion holds throughout.
pub async fn lock_wakes_waiter<B: Backend>(kv: &Kv<B>) {
    let dir = fresh_dir(kv, "lock_waiter").await;
    let key = format!("{dir}/lock");
    let holder = ok("lock", kv.lock(&key, lock_options("holder")).await);
    let waiter = {
        let kv = kv.clone();
        let key = key.clone();
        tokio::spawn(async move { kv.lock(&key, lock_options("waiter")).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiter.is_finished(),
        "the waiter waits while the lock is held"
    );
    assert_eq!(ok("value", kv.get(&key).await).value, "holder");
    ok("unlock", holder.unlock().await);
    let taken = tokio::time::timeout(PROMPTLY, waiter)
        .await
        .expect("the waiter is woken promptly")
        .expect("waiter task");
    let taken = ok("waiter lock", taken);
    assert_eq!(ok("value", kv.get(&key).await).value, "waiter");
    ok("unlock", taken.unlock().await);
}

/// A lock whose key is deleted by someone else is lost, and the guard says so.
pub async fn lock_lost_when_key_taken<B: Backend>(kv: &Kv<B>) {
    let dir = fresh_dir(kv, "lock_lost").await;
    let key = format!("{dir}/lock");
    let guard = ok("lock", kv.lock(&key, lock_options("mine")).await);
    let lost = guard.lost();
    ok("someone deletes the lock key", kv.delete(&key).await);
    tokio::time::timeout(PROMPTLY, lost)
        .await
        .expect("the lost future resolves when the lock key is taken away");
    assert!(guard.is_lost());
    expect_kind(
        "unlock of a lost lock",
        guard.unlock().await,
        ErrorKind::LockLost,
    );
    let next = ok(
        "lock after loss",
        kv.try_lock(&key, lock_options("next")).await,
    );
    assert!(next.is_some(), "the lock is free again");
}

/// A TTL lock is renewed while its guard lives, so it outlives its TTL.
pub async fn lock_ttl_renewal<B: Backend>(kv: &Kv<B>) {
    let dir = fresh_dir(kv, "lock_ttl").await;
    let key = format!("{dir}/lock");
    let caps = kv.capabilities();
    let ttl = caps.effective_ttl(Duration::from_millis(600));
    let guard = ok(
        "lock with ttl",
        kv.lock(&key, lock_options("ttl").ttl(ttl)).await,
    );
    tokio::time::sleep(ttl * caps.ttl_expiry_factor + ttl + caps.ttl_granularity).await;
    assert!(!guard.is_lost(), "renewed in the background");
    assert_eq!(ok("value", kv.get(&key).await).value, "ttl");
    assert!(
        ok("try_lock", kv.try_lock(&key, lock_options("x")).await).is_none(),
        "still held after its ttl"
    );
    ok("unlock", guard.unlock().await);
    assert!(
        ok(
            "try_lock after unlock",
            kv.try_lock(&key, lock_options("x")).await
        )
        .is_some()
    );
}

/// Lock bookkeeping (contenders, sessions, side keys) never shows in `list`.
pub async fn lock_bookkeeping_hidden<B: Backend>(kv: &Kv<B>) {
    let dir = fresh_dir(kv, "lock_hidden").await;
    let key = format!("{dir}/lock");
    ok(
        "put neighbour",
        kv.put(format!("{dir}/plain"), "p", PutOptions::default())
            .await,
    );
    let holder = ok("lock", kv.lock(&key, lock_options("held")).await);
    let waiter = {
        let kv = kv.clone();
        let key = key.clone();
        tokio::spawn(async move { kv.lock(&key, lock_options("waiting")).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let want = vec![
        (key.clone(), Bytes::from("held")),
        (format!("{dir}/plain"), Bytes::from("p")),
    ];
    assert_eq!(
        keys_values(&ok("list", kv.list(&dir).await)),
        want,
        "only the lock key is visible"
    );
    let root = ok("list root", kv.list("").await);
    assert!(
        root.iter()
            .all(|p| !p.key.starts_with(&dir) || want.iter().any(|(k, _)| k == &p.key)),
        "no bookkeeping below the dir in list(\"\")"
    );
    ok("unlock", holder.unlock().await);
    let second = ok(
        "waiter",
        tokio::time::timeout(PROMPTLY, waiter)
            .await
            .expect("woken")
            .expect("task"),
    );
    ok("unlock", second.unlock().await);
    let after = ok("list", kv.list(&dir).await);
    assert_eq!(
        keys_values(&after),
        vec![(format!("{dir}/plain"), Bytes::from("p"))],
        "nothing left behind"
    );
}
