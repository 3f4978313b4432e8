//! Conformance checks of single keys: put/get/delete, key spellings, missing keys and
//! implicit parents, keys with children, `last_index`, and invalid input.

use bytes::Bytes;

use super::support::{expect_kind, fresh_dir, keys_values, ok};
use crate::backend::{Backend, LockOptions, PutOptions};
use crate::error::{Error, ErrorKind};
use crate::kv::Kv;

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
