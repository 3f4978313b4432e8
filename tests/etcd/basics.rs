//! Plain key/value operations with etcd's own semantics: round trips of every call, TTL leases, input limits and config parsing.

use std::time::{Duration, Instant};

use kvkit::etcd::{Etcd, EtcdConfig, MAX_VALUE_SIZE};
use kvkit::testing::etcd_server::EtcdServer;
use kvkit::{ErrorKind, LockOptions, PutOptions};

use crate::etcd_support::connect;
use crate::streams::values;

#[tokio::test]
async fn basic_operations_round_trip_with_native_semantics() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config().prefix("app")).await;

    let first = kv.put("/a/b/", "1", PutOptions::default()).await.unwrap();
    assert_eq!(first.key, "a/b");
    assert!(first.last_index > 0);
    let got = kv.get("a/b").await.unwrap();
    assert_eq!(got, first);
    assert!(kv.exists("a/b").await.unwrap());
    assert!(!kv.exists("a").await.unwrap());
    assert_eq!(kv.get("a").await.unwrap_err().kind(), ErrorKind::NotFound);

    // A key may hold a value and have children; list is strict and sorted.
    kv.put("a", "parent", PutOptions::default()).await.unwrap();
    kv.put("a/c/d", "2", PutOptions::default()).await.unwrap();
    kv.put("ab/x", "sibling", PutOptions::default())
        .await
        .unwrap();
    assert_eq!(
        values(&kv.list("a").await.unwrap()),
        [("a/b".into(), "1".into()), ("a/c/d".into(), "2".into())]
    );
    assert_eq!(kv.list("a/b").await.unwrap(), vec![]);
    assert_eq!(kv.list("").await.unwrap().len(), 4);

    // last_index grows with every write, also across delete and re-create.
    let second = kv.put("a/b", "1b", PutOptions::default()).await.unwrap();
    assert!(second.last_index > first.last_index);
    kv.delete("a/b").await.unwrap();
    assert_eq!(
        kv.delete("a/b").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let third = kv.put("a/b", "1c", PutOptions::default()).await.unwrap();
    assert!(third.last_index > second.last_index);

    // CAS: the three outcomes are told apart from one transaction.
    assert_eq!(
        kv.atomic_put("a/b", "x", None, PutOptions::default())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::KeyExists
    );
    assert_eq!(
        kv.atomic_put("a/b", "x", Some(&first), PutOptions::default())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::KeyModified
    );
    let fourth = kv
        .atomic_put("a/b", "x", Some(&third), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(kv.get("a/b").await.unwrap(), fourth);
    assert_eq!(
        kv.atomic_delete("a/b", &third).await.unwrap_err().kind(),
        ErrorKind::KeyModified
    );
    kv.atomic_delete("a/b", &fourth).await.unwrap();
    assert_eq!(
        kv.atomic_delete("a/b", &fourth).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        kv.atomic_put("a/b", "y", Some(&fourth), PutOptions::default())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    let created = kv
        .atomic_put("new", "n", None, PutOptions::default())
        .await
        .unwrap();
    assert_eq!(kv.get("new").await.unwrap(), created);

    // delete_tree removes the dir and below, not the sibling.
    kv.delete_tree("a").await.unwrap();
    assert!(!kv.exists("a").await.unwrap());
    assert_eq!(kv.list("a").await.unwrap(), vec![]);
    assert!(kv.exists("ab/x").await.unwrap());

    // The prefix isolates: another prefix sees nothing, the raw key carries it.
    let other = connect(server.config().prefix("other/")).await;
    assert_eq!(other.list("").await.unwrap(), vec![]);
    let raw = kv
        .backend()
        .client()
        .kv_client()
        .get("app/ab/x", None)
        .await
        .unwrap();
    assert_eq!(raw.kvs()[0].value(), b"sibling");

    kv.delete_tree("").await.unwrap();
    assert_eq!(kv.list("").await.unwrap(), vec![]);
    kv.close().await.unwrap();
    assert_eq!(kv.get("x").await.unwrap_err().kind(), ErrorKind::Closed);
}

#[tokio::test]
async fn ttl_puts_expire_and_share_leases() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config()).await;
    let caps = kv.capabilities();
    assert_eq!(caps.min_ttl, Duration::from_secs(2));

    let start = Instant::now();
    for i in 0..20 {
        kv.put(
            format!("ttl/{i}"),
            "v",
            PutOptions::with_ttl(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    }
    kv.atomic_put(
        "ttl/cas",
        "v",
        None,
        PutOptions::with_ttl(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    kv.put("ttl/forever", "v", PutOptions::default())
        .await
        .unwrap();
    let leases = kv.backend().client().lease_client().leases().await.unwrap();
    assert!(
        leases.leases().len() <= 2,
        "21 TTL puts must share leases, found {}",
        leases.leases().len()
    );
    assert_eq!(kv.list("ttl").await.unwrap().len(), 22);

    // Gone after ttl * factor + granularity at the latest, not before the TTL.
    let bound = Duration::from_secs(2) * caps.ttl_expiry_factor + caps.ttl_granularity;
    loop {
        let left = kv.list("ttl").await.unwrap().len();
        if left == 1 {
            break;
        }
        assert!(
            start.elapsed() < bound + Duration::from_secs(1),
            "{left} keys still there after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(start.elapsed() >= Duration::from_millis(1900));
    assert!(kv.exists("ttl/forever").await.unwrap());
}

#[tokio::test]
async fn bad_input_fails_before_any_io_and_unreachable_fails_fast() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config()).await;
    assert_eq!(kv.capabilities().max_value_size, MAX_VALUE_SIZE);

    // The largest accepted value really fits etcd's default request limit.
    let big = vec![b'x'; MAX_VALUE_SIZE];
    let pair = kv
        .put("big", big.clone(), PutOptions::default())
        .await
        .unwrap();
    kv.atomic_put("big", big.clone(), Some(&pair), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(kv.get("big").await.unwrap().value.len(), MAX_VALUE_SIZE);
    let over = vec![b'x'; MAX_VALUE_SIZE + 1];
    let err = kv
        .put("big", over.clone(), PutOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueTooLarge);
    let err = kv
        .lock("big-lock", LockOptions::default().value(&over))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueTooLarge);

    for key in ["", "/", "a/../b", "a\nb", "a\u{1}lock"] {
        let err = kv.put(key, "v", PutOptions::default()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidKey, "{key:?}");
    }

    // Nothing listens on this port: connect fails within the configured timeouts.
    let port = kvkit::testing::server::free_port();
    let config = EtcdConfig::new([format!("127.0.0.1:{port}")])
        .connect_timeout(Duration::from_millis(300))
        .request_timeout(Duration::from_millis(700));
    let started = Instant::now();
    let err = Etcd::connect(config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(1000 + 500),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn config_deserialises_with_durations_in_seconds_or_with_units() {
    let config: EtcdConfig = serde_json::from_str(
        r#"{"endpoints": ["https://etcd-1.internal:2379"], "connect_timeout": "500ms",
            "request_timeout": 2.5, "prefix": "svc", "username": "u", "password": "p",
            "tls": {"ca_file": "/etc/ca.pem"}}"#,
    )
    .unwrap();
    assert_eq!(config.connect_timeout, Duration::from_millis(500));
    assert_eq!(config.request_timeout, Duration::from_millis(2500));
    assert_eq!(config.prefix, "svc");
    assert_eq!(
        config.tls.unwrap().ca_file.unwrap().to_str(),
        Some("/etc/ca.pem")
    );
    let defaults: EtcdConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(defaults, EtcdConfig::default());
    assert!(serde_json::from_str::<EtcdConfig>(r#"{"endpoint": []}"#).is_err());
}
