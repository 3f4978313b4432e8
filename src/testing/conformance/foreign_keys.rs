//! Conformance checks of foreign keys: keys another tool wrote straight into the store
//! in forms kvkit never writes are never listed, watched or deleted by kvkit.
//!
//! These checks write through a [`RawStore`], the backend's own client, and need a
//! handle whose key space holds nothing else (a fresh server or a prefix of its own):
//! they list and delete at the root.

use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;

use super::support::{next_item, ok};
use crate::backend::{Backend, KvPair, PutOptions};
use crate::kv::Kv;

/// A backend's key space written and read as another tool would: raw bytes, unchecked.
/// Keys are relative to the handle's prefix, so `b"f//x"` is the raw form of the
/// malformed kvkit key `f//x` of the handle under test.
pub trait RawStore: Clone + Send + Sync + 'static {
    /// Writes `value` at the raw key `key`; panics if the store refuses it.
    fn put_raw(&self, key: &[u8], value: &[u8]) -> BoxFuture<'static, ()>;

    /// Every raw key starting with `prefix`, sorted by bytes.
    fn raw_keys(&self, prefix: &[u8]) -> BoxFuture<'static, Vec<Vec<u8>>>;

    /// Whether the store can hold `key` at all (Consul's keys, for one, are UTF-8
    /// without a leading slash); the checks skip the foreign keys it cannot.
    fn holds(&self, key: &[u8]) -> bool {
        let _ = key;
        true
    }
}

/// Raw keys in and around `dir` in forms kvkit never writes: a leading, trailing or
/// doubled slash, `.` and `..` segments, control characters, a key over the length
/// limit, and bytes that are not UTF-8. Sorted by bytes.
pub fn foreign_keys(dir: &str) -> Vec<Vec<u8>> {
    let long = format!("{dir}/{}", "x".repeat(crate::key::MAX_KEY_LEN));
    let mut keys: Vec<Vec<u8>> = [
        format!("/{dir}/lead"),
        format!("{dir}/"),
        format!("{dir}//double"),
        format!("{dir}/./dot"),
        format!("{dir}/../dotdot"),
        format!("{dir}/trailing/"),
        format!("{dir}/a/"),
        format!("{dir}/b/../c"),
        format!("{dir}/ctl\u{1}"),
        format!("{dir}/del\u{7f}"),
        format!("{dir}/c1\u{85}"),
        long,
    ]
    .into_iter()
    .map(String::into_bytes)
    .chain([format!("{dir}/zz-not-utf8-").into_bytes()])
    .collect();
    keys.last_mut().expect("a key").push(0xff);
    keys.sort();
    keys
}

/// A raw directory below `dir` (ending in `/`) every key of which is foreign, in a form
/// `raw` can hold: `dir//` (an empty segment), or where the store refuses empty
/// segments (ZooKeeper) a segment that makes every key below it too long.
fn foreign_dir<R: RawStore>(raw: &R, dir: &str) -> String {
    let too_long = format!("{dir}/{}/", "x".repeat(crate::key::MAX_KEY_LEN));
    [format!("{dir}//"), too_long]
        .into_iter()
        .find(|foreign| raw.holds(format!("{foreign}k").as_bytes()))
        .expect("the store holds keys below an empty or a too long segment")
}

/// Writes the [`foreign_keys`] below `dir` that `raw` can hold; returns them.
async fn write_foreign_keys<R: RawStore>(raw: &R, dir: &str) -> Vec<Vec<u8>> {
    let keys: Vec<Vec<u8>> = foreign_keys(dir)
        .into_iter()
        .filter(|key| raw.holds(key))
        .collect();
    for key in &keys {
        raw.put_raw(key, b"foreign").await;
    }
    keys
}

fn key_names(pairs: Vec<KvPair>) -> Vec<String> {
    pairs.into_iter().map(|p| p.key).collect()
}

/// Foreign keys are not kvkit keys: never listed, never in a tree watch, also when
/// written while the watch runs.
pub async fn foreign_keys_are_never_listed_or_watched<B: Backend, R: RawStore>(
    kv: &Kv<B>,
    raw: &R,
) {
    ok("put", kv.put("f/ok", "mine", PutOptions::default()).await);
    write_foreign_keys(raw, "f").await;
    assert_eq!(key_names(ok("list", kv.list("f").await)), ["f/ok"]);
    assert_eq!(key_names(ok("list root", kv.list("").await)), ["f/ok"]);
    let mut tree = ok("watch_tree", kv.watch_tree("f").await);
    let first = ok("first subtree", next_item("first subtree", &mut tree).await);
    assert_eq!(key_names(first), ["f/ok"]);
    // Foreign writes while watching are not part of the subtree either.
    let late = format!("{}late", foreign_dir(raw, "f"));
    raw.put_raw(late.as_bytes(), b"foreign").await;
    ok("put", kv.put("f/ok2", "mine", PutOptions::default()).await);
    let next = ok("next subtree", next_item("next subtree", &mut tree).await);
    assert_eq!(key_names(next), ["f/ok", "f/ok2"]);
    let quiet = tokio::time::timeout(Duration::from_millis(300), tree.next()).await;
    assert!(quiet.is_err(), "unexpected extra subtree: {quiet:?}");
}

/// `delete_tree` deletes `dir` and the kvkit keys below it, never a foreign key there,
/// also when foreign keys sit between kvkit keys in the store's key order, and at the
/// root.
pub async fn foreign_keys_are_never_deleted_by_delete_tree<B: Backend, R: RawStore>(
    kv: &Kv<B>,
    raw: &R,
) {
    let foreign = write_foreign_keys(raw, "f").await;
    // In byte order these fall before, between and after the foreign keys.
    let mine = ["f", "f/a", "f/b/c", "f/d", "f/y", "f/z", "f/zzz"];
    for key in mine {
        ok("put", kv.put(key, "mine", PutOptions::default()).await);
    }
    ok(
        "put sibling",
        kv.put("fx/sibling", "kept", PutOptions::default()).await,
    );
    ok("delete_tree", kv.delete_tree("f").await);
    for key in mine {
        assert!(!ok("exists", kv.exists(key).await), "{key} was not deleted");
    }
    assert!(
        ok("exists", kv.exists("fx/sibling").await),
        "the sibling is kept"
    );
    let mut left = foreign.clone();
    left.push(b"fx/sibling".to_vec());
    left.sort();
    assert_eq!(
        raw.raw_keys(b"").await,
        left,
        "delete_tree(\"f\") keeps every foreign key and the sibling"
    );
    // The root: every kvkit key goes, every foreign key stays.
    ok("put", kv.put("r/x", "mine", PutOptions::default()).await);
    ok("delete_tree root", kv.delete_tree("").await);
    assert!(ok("list root", kv.list("").await).is_empty());
    assert_eq!(
        raw.raw_keys(b"").await,
        foreign,
        "delete_tree(\"\") keeps every foreign key"
    );
}

/// Foreign keys written below `dir` while `delete_tree(dir)` runs survive it: a key
/// written after the delete read its keys is never deleted with them.
pub async fn foreign_keys_written_during_delete_tree_survive_it<B: Backend, R: RawStore>(
    kv: &Kv<B>,
    raw: &R,
) {
    const WRITES: usize = 400;
    let foreign = foreign_dir(raw, "c");
    let writer = tokio::spawn({
        let raw = raw.clone();
        let foreign = foreign.clone();
        async move {
            for i in 0..WRITES {
                raw.put_raw(format!("{foreign}n{i:03}").as_bytes(), b"foreign")
                    .await;
            }
        }
    });
    let mut rounds = 0;
    while !writer.is_finished() {
        for i in 0..4 {
            ok(
                "put",
                kv.put(format!("c/k{i}"), "mine", PutOptions::default())
                    .await,
            );
        }
        ok("delete_tree", kv.delete_tree("c").await);
        assert!(ok("list", kv.list("c").await).is_empty());
        rounds += 1;
    }
    writer.await.expect("the raw writer");
    assert!(
        rounds > 1,
        "the writer ended before delete_tree overlapped it"
    );
    assert_eq!(
        raw.raw_keys(foreign.as_bytes()).await.len(),
        WRITES,
        "foreign keys were deleted"
    );
}
