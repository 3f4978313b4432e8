//! Conformance checks of directories: `list` and `delete_tree`, with prefix-siblings.

use bytes::Bytes;

use super::support::{expect_kind, fresh_dir, keys_values, ok, siblings};
use crate::backend::{Backend, PutOptions};
use crate::error::ErrorKind;
use crate::kv::Kv;

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
