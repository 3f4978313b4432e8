//! Conformance checks of compare-and-swap: `atomic_put` and `atomic_delete`.

use super::support::{expect_kind, fresh_dir, ok};
use crate::backend::{Backend, PutOptions};
use crate::error::ErrorKind;
use crate::kv::Kv;

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
