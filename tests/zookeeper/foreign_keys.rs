//! Znodes other tools wrote below kvkit's keys in forms kvkit never writes (the shared
//! foreign-key checks, through a raw client), and what ZooKeeper itself refuses.

use kvkit::testing::conformance;
use kvkit::{ErrorKind, KvPair, PutOptions};
use zookeeper_async::{Acl, CreateMode};

use crate::streams::{next, values, watch_until};
use crate::zookeeper_support::{ZookeeperRaw, raw_client, zookeeper_accepts};
use crate::{connect, kind, shared_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_written_by_other_tools_are_never_listed_or_watched() {
    let Some(turn) = shared_server().await else {
        return;
    };
    let kv = connect(turn.addr(), "/kvkit-foreign-listed").await;
    let raw = ZookeeperRaw::new(turn.addr(), &kv).await;
    conformance::foreign_keys_are_never_listed_or_watched(&kv, &raw).await;
    kv.close().await.unwrap();
}

/// Also when they sit between kvkit keys, and at the root: the znodes above a foreign
/// one are emptied, not deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_written_by_other_tools_are_never_deleted_by_delete_tree() {
    let Some(turn) = shared_server().await else {
        return;
    };
    let kv = connect(turn.addr(), "/kvkit-foreign-deleted").await;
    let raw = ZookeeperRaw::new(turn.addr(), &kv).await;
    conformance::foreign_keys_are_never_deleted_by_delete_tree(&kv, &raw).await;
    kv.close().await.unwrap();
}

/// A znode created below a directory after `delete_tree` read it makes the delete of
/// its parent fail `NotEmpty`, and the parent is emptied instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_keys_written_during_delete_tree_survive_it() {
    let Some(turn) = shared_server().await else {
        return;
    };
    let kv = connect(turn.addr(), "/kvkit-foreign-during").await;
    let raw = ZookeeperRaw::new(turn.addr(), &kv).await;
    conformance::foreign_keys_written_during_delete_tree_survive_it(&kv, &raw).await;
    kv.close().await.unwrap();
}

/// ZooKeeper itself refuses what kvkit's key rules forbid in a segment (control
/// characters, U+E000..U+F8FF, `.` and `..`, empty segments), and it refuses exactly
/// the names the raw store says it cannot hold, so the shared checks skip no foreign
/// key ZooKeeper could hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_refuses_exactly_the_names_the_raw_store_skips() {
    let Some(turn) = shared_server().await else {
        return;
    };
    let kv = connect(turn.addr(), "/kvkit-foreign-names").await;
    kv.put("f/ok", "v", PutOptions::default()).await.unwrap();
    let raw = raw_client(turn.addr()).await;
    let kv_root = format!("{}/kv", kv.backend().root());
    let refused = [
        "f/a\u{1}b",
        "f/\u{7f}",
        "f/\u{E000}",
        "f/\u{F8FF}",
        "f/.",
        "f/..",
        "f/a//b",
    ];
    for name in refused {
        assert!(!zookeeper_accepts(name), "{name:?} is refused");
    }
    let foreign = conformance::foreign_keys("f");
    let names = foreign
        .iter()
        .filter_map(|key| std::str::from_utf8(key).ok())
        .chain(refused)
        .chain(["f/plain"]);
    for name in names {
        let created = raw
            .create(
                &format!("{kv_root}/{name}"),
                b"\x01foreign".to_vec(),
                Acl::open_unsafe().clone(),
                CreateMode::Persistent,
            )
            .await;
        assert_eq!(
            created.is_ok(),
            zookeeper_accepts(name),
            "ZooKeeper's answer to {name:?}: {created:?}"
        );
    }
    raw.close().await.unwrap();
    kv.close().await.unwrap();
}

/// A key up to `MAX_KEY_LEN` is a key however long its segments; a znode whose key
/// would be longer is foreign, and so is every znode below it: never listed, watched or
/// deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn znodes_below_a_too_long_key_are_foreign_and_long_valid_keys_are_not() {
    let Some(turn) = shared_server().await else {
        return;
    };
    let kv = connect(turn.addr(), "/kvkit-foreign").await;
    let raw = raw_client(turn.addr()).await;
    let kv_root = format!("{}/kv", kv.backend().root());
    kv.put("f/ok", "v", PutOptions::default()).await.unwrap();
    let create = |path: String, data: &'static [u8]| {
        let raw = &raw;
        async move {
            raw.create(
                &path,
                data.to_vec(),
                Acl::open_unsafe().clone(),
                CreateMode::Persistent,
            )
            .await
        }
    };
    let long = "x".repeat(600);
    let mid = format!("{kv_root}/f/{long}");
    create(mid.clone(), b"\x01mid").await.unwrap(); // key of 602 bytes: valid
    let too_long = format!("{mid}/{long}");
    create(too_long.clone(), b"\x01foreign").await.unwrap(); // 1,203 bytes
    create(format!("{too_long}/below"), b"\x01deeper")
        .await
        .unwrap();
    let expected = vec![
        ("f/ok".to_owned(), "v".to_owned()),
        (format!("f/{long}"), "mid".to_owned()),
    ];
    assert_eq!(values(&kv.list("f").await.unwrap()), expected, "list");
    assert_eq!(values(&kv.list("").await.unwrap()), expected, "list of all");
    let mut tree = kv.watch_tree("f").await.unwrap();
    assert_eq!(values(&next(&mut tree, "tree").await.unwrap()), expected);
    kv.put("f/ok", "v2", PutOptions::default()).await.unwrap();
    let seen = watch_until(&mut tree, "the change", |t: &Vec<KvPair>| {
        t.iter().any(|p| p.value == "v2")
    })
    .await;
    assert_eq!(seen.len(), 2, "watch_tree never shows the foreign znodes");
    drop(tree);
    kv.delete_tree("f").await.unwrap();
    assert!(
        kv.list("").await.unwrap().is_empty(),
        "every kvkit key is gone"
    );
    assert_eq!(
        raw.get_data(&too_long, false).await.unwrap().0,
        b"\x01foreign",
        "delete_tree left the foreign znode alone"
    );
    assert!(
        raw.exists(&format!("{too_long}/below"), false)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(kind(kv.get(format!("f/{long}")).await), ErrorKind::NotFound);
    kv.close().await.unwrap();
    raw.close().await.unwrap();
}
