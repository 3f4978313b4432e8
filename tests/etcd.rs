//! The etcd backend against real etcd processes (see `kvkit::testing::etcd_server`).
//!
//! Every test starts its own server(s) on free loopback ports; without `/usr/bin/etcd`
//! the tests print a notice and pass, unless `KVKIT_REQUIRE_SERVERS=1`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kvkit::etcd::{Etcd, EtcdConfig, MAX_VALUE_SIZE};
use kvkit::testing::etcd_server::{ClientAuth, EtcdCluster, EtcdServer, ServerTls};
use kvkit::{ErrorKind, Kv, KvPair, LockGuard, LockOptions, PutOptions, TlsConfig};

/// Bounds every wait on a stream item.
const STEP: Duration = Duration::from_secs(10);

async fn connect(config: EtcdConfig) -> Kv<Etcd> {
    Kv::new(
        Etcd::connect(config)
            .await
            .expect("connect to the test etcd"),
    )
}

async fn next<S, T>(stream: &mut S) -> T
where
    S: futures::Stream<Item = kvkit::Result<T>> + Unpin,
{
    tokio::time::timeout(STEP, stream.next())
        .await
        .expect("a stream item within 10 s")
        .expect("the stream ended")
        .expect("the stream yielded an error")
}

/// The next `Ok` item, counting the `Unavailable` errors a watch reports on the way
/// (one per outage).
async fn next_through_outage<S, T>(stream: &mut S, outages: &mut usize) -> T
where
    S: futures::Stream<Item = kvkit::Result<T>> + Unpin,
{
    loop {
        match tokio::time::timeout(STEP, stream.next())
            .await
            .expect("a stream item within 10 s")
            .expect("the stream ended")
        {
            Ok(item) => return item,
            Err(err) => {
                assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
                *outages += 1;
            }
        }
    }
}

/// Asserts the stream yields nothing for `quiet`.
async fn assert_quiet<S, T: std::fmt::Debug>(stream: &mut S, quiet: Duration)
where
    S: futures::Stream<Item = kvkit::Result<T>> + Unpin,
{
    if let Ok(item) = tokio::time::timeout(quiet, stream.next()).await {
        panic!("unexpected extra stream item: {item:?}");
    }
}

fn values(pairs: &[KvPair]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|p| {
            (
                p.key.clone(),
                String::from_utf8_lossy(&p.value).into_owned(),
            )
        })
        .collect()
}

fn value(pair: &Option<KvPair>) -> Option<String> {
    pair.as_ref()
        .map(|p| String::from_utf8_lossy(&p.value).into_owned())
}

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
async fn watches_start_on_missing_keys_and_follow_every_change() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config()).await;

    kv.put("dir/old", "o", PutOptions::default()).await.unwrap();
    let mut watch = kv.watch("dir/k").await.unwrap();
    let mut tree = kv.watch_tree("dir").await.unwrap();
    assert_eq!(next(&mut watch).await, None);
    assert_eq!(
        values(&next(&mut tree).await),
        [("dir/old".into(), "o".into())]
    );

    let p1 = kv.put("dir/k", "1", PutOptions::default()).await.unwrap();
    let p2 = kv.put("dir/k", "2", PutOptions::default()).await.unwrap();
    kv.put("dirty/x", "sibling", PutOptions::default())
        .await
        .unwrap();
    kv.put("dir", "the dir itself", PutOptions::default())
        .await
        .unwrap();
    kv.delete("dir/k").await.unwrap();
    kv.delete_tree("dir").await.unwrap();

    assert_eq!(next(&mut watch).await, Some(p1));
    assert_eq!(next(&mut watch).await, Some(p2));
    assert_eq!(next(&mut watch).await, None);
    assert_quiet(&mut watch, Duration::from_millis(300)).await;

    let expected: [&[(&str, &str)]; 4] = [
        &[("dir/k", "1"), ("dir/old", "o")],
        &[("dir/k", "2"), ("dir/old", "o")],
        &[("dir/old", "o")],
        &[], // delete_tree is one transaction: one snapshot
    ];
    for want in expected {
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(values(&next(&mut tree).await), want);
    }
    assert_quiet(&mut tree, Duration::from_millis(300)).await;

    // Dropping the streams cancels their etcd watches: the server's count of open
    // watchers falls back to zero.
    assert_eq!(server.metric("etcd_debugging_mvcc_watcher_total"), 2.0);
    drop(watch);
    drop(tree);
    let deadline = Instant::now() + STEP;
    while server.metric("etcd_debugging_mvcc_watcher_total") != 0.0 {
        assert!(
            Instant::now() < deadline,
            "dropped watches must be cancelled on the server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn locks_exclude_wake_waiters_and_hide_their_bookkeeping() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config()).await;
    let other = connect(server.config()).await;
    kv.put("locks/neighbour", "n", PutOptions::default())
        .await
        .unwrap();

    let guard = kv
        .lock("locks/job", LockOptions::default().value("me"))
        .await
        .unwrap();
    assert_eq!(guard.key(), "locks/job");
    assert_eq!(kv.get("locks/job").await.unwrap().value, "me");
    // Bookkeeping is invisible: only user keys are listed.
    assert_eq!(
        values(&kv.list("").await.unwrap()),
        [
            ("locks/job".into(), "me".into()),
            ("locks/neighbour".into(), "n".into())
        ]
    );
    assert!(
        other
            .try_lock("locks/job", LockOptions::default().value("other"))
            .await
            .unwrap()
            .is_none()
    );
    // A lock on a key below is a different lock.
    let below = other
        .try_lock("locks/job/sub", LockOptions::default())
        .await
        .unwrap()
        .expect("a nested key is a separate lock");

    let waiter = {
        let other = other.clone();
        tokio::spawn(async move {
            let guard = other
                .lock("locks/job", LockOptions::default().value("second"))
                .await
                .unwrap();
            (Instant::now(), guard)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiter.is_finished(),
        "the waiter must wait while the lock is held"
    );
    let released = Instant::now();
    guard.unlock().await.unwrap();
    let (acquired, second) = tokio::time::timeout(STEP, waiter).await.unwrap().unwrap();
    assert!(
        acquired.duration_since(released) < Duration::from_secs(1),
        "the waiter must be woken promptly, took {:?}",
        acquired.duration_since(released)
    );
    assert_eq!(kv.get("locks/job").await.unwrap().value, "second");
    assert!(!second.is_lost());

    // Drop releases in the background.
    drop(second);
    let deadline = Instant::now() + STEP;
    let third = loop {
        if let Some(guard) = kv
            .try_lock("locks/job", LockOptions::default())
            .await
            .unwrap()
        {
            break guard;
        }
        assert!(Instant::now() < deadline, "a dropped lock must be released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    third.unlock().await.unwrap();
    below.unlock().await.unwrap();
    assert!(!kv.exists("locks/job").await.unwrap());
    assert_eq!(kv.list("").await.unwrap().len(), 1);
}

#[tokio::test]
async fn restart_watches_resume_without_loss_or_duplicates_and_locks_are_lost() {
    let Some(mut server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config()).await;
    let contender = connect(server.config()).await;

    kv.put("w", "0", PutOptions::default()).await.unwrap();
    kv.put("t/a", "0", PutOptions::default()).await.unwrap();
    let mut watch = kv.watch("w").await.unwrap();
    let mut tree = kv.watch_tree("t").await.unwrap();
    assert_eq!(value(&next(&mut watch).await), Some("0".into()));
    assert_eq!(values(&next(&mut tree).await), [("t/a".into(), "0".into())]);
    let guard = kv
        .lock(
            "lock",
            LockOptions::default()
                .value("holder")
                .ttl(Duration::from_secs(2)),
        )
        .await
        .unwrap();

    // A change made just before the restart is seen too.
    kv.put("w", "1", PutOptions::default()).await.unwrap();

    server.stop();
    // While the server is down, requests fail fast and retryably.
    let err = kv.get("w").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable());
    // The lock's lease (2 s) cannot be renewed: its lost-future fires.
    tokio::time::timeout(Duration::from_secs(6), guard.lost())
        .await
        .expect("the lock's lost-future must fire while the server is down");
    assert!(guard.is_lost());
    server.restart().await;

    // Writes made after the restart (retry: the client reconnects).
    let deadline = Instant::now() + STEP;
    while kv.put("w", "2", PutOptions::default()).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "no write succeeded after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kv.put("w", "3", PutOptions::default()).await.unwrap();
    kv.put("t/b", "1", PutOptions::default()).await.unwrap();
    kv.delete("t/a").await.unwrap();
    kv.put("t/b", "2", PutOptions::default()).await.unwrap();

    let mut watch_outages = 0;
    for want in ["1", "2", "3"] {
        let item = next_through_outage(&mut watch, &mut watch_outages).await;
        assert_eq!(value(&item), Some(want.into()));
    }
    assert_eq!(watch_outages, 1, "the watch reports the outage once");
    assert_quiet(&mut watch, Duration::from_millis(500)).await;
    let mut tree_outages = 0;
    let expected: [&[(&str, &str)]; 3] = [
        &[("t/a", "0"), ("t/b", "1")],
        &[("t/b", "1")],
        &[("t/b", "2")],
    ];
    for want in expected {
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let item = next_through_outage(&mut tree, &mut tree_outages).await;
        assert_eq!(values(&item), want);
    }
    assert_eq!(tree_outages, 1, "the tree watch reports the outage once");
    assert_quiet(&mut tree, Duration::from_millis(500)).await;

    // The lost lock reports it; another client gets the lock once the lease is gone.
    assert_eq!(
        guard.unlock().await.unwrap_err().kind(),
        ErrorKind::LockLost
    );
    let taken = tokio::time::timeout(
        Duration::from_secs(15),
        contender.lock("lock", LockOptions::default().value("next")),
    )
    .await
    .expect("the lock must be free again after the lost lease expired")
    .unwrap();
    assert_eq!(kv.get("lock").await.unwrap().value, "next");
    taken.unlock().await.unwrap();
}

#[tokio::test]
async fn cluster_survives_stopping_the_leader() {
    let Some(mut cluster) = EtcdCluster::start(3).await else {
        return;
    };
    let kv = connect(cluster.config()).await;
    kv.put("c/k", "before", PutOptions::default())
        .await
        .unwrap();
    let mut watch = kv.watch("c/k").await.unwrap();
    assert_eq!(value(&next(&mut watch).await), Some("before".into()));

    let leader = cluster.leader().await.expect("the cluster elects a leader");
    cluster.stop(leader);

    let deadline = Instant::now() + Duration::from_secs(20);
    let written = loop {
        match kv.put("c/k", "after", PutOptions::default()).await {
            Ok(pair) => break pair,
            Err(err) => {
                assert!(err.is_retryable(), "unexpected error: {err}");
                assert!(
                    Instant::now() < deadline,
                    "no write after the leader stopped: {err}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(kv.get("c/k").await.unwrap(), written);
    assert_eq!(next(&mut watch).await, Some(written.clone()));
    // A new client listing every member, one of them down, connects and works.
    for _ in 0..5 {
        let fresh = connect(cluster.config()).await;
        assert_eq!(fresh.get("c/k").await.unwrap(), written);
    }
    let new_leader = cluster.leader().await.expect("a new leader");
    assert_ne!(new_leader, leader);

    // The stopped member comes back and catches up.
    cluster.restart(leader).await;
    let member_only = EtcdConfig::new([cluster.endpoints()[leader].clone()]);
    let deadline = Instant::now() + STEP;
    loop {
        if let Ok(member) = Etcd::connect(member_only.clone()).await
            && let Ok(pair) = Kv::new(member).get("c/k").await
        {
            assert_eq!(pair.value, "after");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted member did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A CA, and a certificate for 127.0.0.1 signed by it.
struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        TestCa { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate and key (PEM) for 127.0.0.1 and localhost.
    fn issue(&self) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap()
                .signed_by(&key, &self.issuer)
                .unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn server_tls(ca: &TestCa, client_auth: Option<ClientAuth>) -> ServerTls {
    let (cert_pem, key_pem) = ca.issue();
    ServerTls {
        ca_pem: ca.pem(),
        cert_pem,
        key_pem,
        client_auth,
    }
}

#[tokio::test]
async fn tls_connects_with_the_ca_and_is_refused_without_it() {
    let ca = TestCa::new();
    let other_ca = TestCa::new().pem();
    let Some(server) = EtcdServer::start_tls(server_tls(&ca, None)).await else {
        return;
    };
    assert!(server.endpoint().starts_with("https://"));

    let kv = connect(server.config()).await;
    kv.put("secure", "yes", PutOptions::default())
        .await
        .unwrap();
    assert_eq!(kv.get("secure").await.unwrap().value, "yes");

    let fast = |config: EtcdConfig| {
        config
            .connect_timeout(Duration::from_millis(500))
            .request_timeout(Duration::from_secs(1))
    };
    let port = server.endpoint().rsplit(':').next().unwrap().to_owned();
    // Plain HTTP/2 to a TLS port, a client trusting another CA, and no CA at all.
    let refused = [
        fast(EtcdConfig::new([format!("127.0.0.1:{port}")])),
        fast(EtcdConfig::new([server.endpoint()])).tls(TlsConfig::with_ca_pem(other_ca)),
        fast(EtcdConfig::new([server.endpoint()])).tls(TlsConfig::default()),
    ];
    for config in refused {
        let started = Instant::now();
        let err = Etcd::connect(config).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(started.elapsed() < Duration::from_secs(4));
    }
}

#[tokio::test]
async fn auth_accepts_the_right_password_and_refuses_a_wrong_one() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    server.enable_auth("s3cret").await.unwrap();

    let kv = connect(server.config().credentials("root", "s3cret")).await;
    kv.put("guarded", "ok", PutOptions::default())
        .await
        .unwrap();
    assert_eq!(kv.get("guarded").await.unwrap().value, "ok");
    let mut watch = kv.watch("guarded").await.unwrap();
    assert_eq!(value(&next(&mut watch).await), Some("ok".into()));

    let err = Etcd::connect(server.config().credentials("root", "wrong"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("authentication failed"), "{err}");

    let err = Etcd::connect(server.config()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config().prefix("conformance")).await;
    kvkit::testing::conformance::run_all(&kv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_harness_agrees_with_memory() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config().prefix("model")).await;
    kvkit::testing::model::check_against_memory(&kv, Default::default())
        .await
        .unwrap_or_else(|failure| panic!("{failure}"));
}

/// The gRPC requests `op` made, counted on the server (its `/metrics`).
async fn round_trips<F, Fut, T>(server: &EtcdServer, op: F) -> (T, Vec<(String, u64)>)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let before = server.grpc_calls();
    let out = op().await;
    let after = server.grpc_calls();
    let diff = after
        .iter()
        .filter_map(|(method, n)| {
            let delta = n - before.get(method).copied().unwrap_or(0);
            (delta > 0).then(|| (method.clone(), delta))
        })
        .collect();
    (out, diff)
}

fn calls(expected: &[(&str, u64)]) -> Vec<(String, u64)> {
    let mut calls: Vec<(String, u64)> = expected.iter().map(|(m, n)| (m.to_string(), *n)).collect();
    calls.sort();
    calls
}

/// Each operation takes the round trips `docs/etcd.md` promises, counted by the
/// server itself; also prints the median latency of the common operations.
#[tokio::test]
async fn round_trips_per_operation_match_the_docs() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config().prefix("rt")).await;
    let opts = PutOptions::default;

    let (pair, rt) = round_trips(&server, || kv.put("d/k", "v", opts())).await;
    let pair = pair.unwrap();
    assert_eq!(rt, calls(&[("Put", 1)]), "put");
    let (_, rt) = round_trips(&server, || kv.get("d/k")).await;
    assert_eq!(rt, calls(&[("Range", 1)]), "get");
    let (_, rt) = round_trips(&server, || kv.exists("d/k")).await;
    assert_eq!(rt, calls(&[("Range", 1)]), "exists");
    // Concurrent point reads coalesce: the first two go out as Ranges, the 14 that
    // queue behind them as one read-only Txn (this runtime polls all 16 before any
    // answer arrives).
    let (r, rt) = round_trips(&server, || {
        futures::future::join_all((0..16).map(|i| kv.exists(format!("d/{i}"))))
    })
    .await;
    assert!(r.iter().all(|r| matches!(r, Ok(false))));
    assert_eq!(
        rt,
        calls(&[("Range", 2), ("Txn", 1)]),
        "16 concurrent exists"
    );
    let (_, rt) = round_trips(&server, || kv.list("d")).await;
    assert_eq!(rt, calls(&[("Range", 1)]), "list");
    let (r, rt) = round_trips(&server, || kv.atomic_put("d/k", "w", Some(&pair), opts())).await;
    let pair = r.unwrap();
    assert_eq!(rt, calls(&[("Txn", 1)]), "atomic_put applied");
    let (r, rt) = round_trips(&server, || kv.atomic_put("d/k", "w", None, opts())).await;
    assert_eq!(r.unwrap_err().kind(), ErrorKind::KeyExists);
    assert_eq!(rt, calls(&[("Txn", 1)]), "atomic_put conflict");
    let (r, rt) = round_trips(&server, || kv.atomic_delete("d/gone", &pair)).await;
    assert_eq!(r.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(rt, calls(&[("Txn", 1)]), "atomic_delete conflict");
    let (r, rt) = round_trips(&server, || kv.atomic_delete("d/k", &pair)).await;
    r.unwrap();
    assert_eq!(rt, calls(&[("Txn", 1)]), "atomic_delete applied");
    let (_, rt) = round_trips(&server, || kv.delete("d/k")).await;
    assert_eq!(rt, calls(&[("DeleteRange", 1)]), "delete");
    // delete_tree: a keys-only Range (to spare keys other tools wrote), then one Txn
    // guarded by that Range's revision.
    let (_, rt) = round_trips(&server, || kv.delete_tree("d")).await;
    assert_eq!(rt, calls(&[("Range", 1), ("Txn", 1)]), "delete_tree");

    let ttl = || PutOptions::with_ttl(Duration::from_secs(30));
    let (_, rt) = round_trips(&server, || kv.put("d/t1", "v", ttl())).await;
    assert_eq!(rt, calls(&[("LeaseGrant", 1), ("Put", 1)]), "first TTL put");
    let (_, rt) = round_trips(&server, || kv.put("d/t2", "v", ttl())).await;
    assert_eq!(rt, calls(&[("Put", 1)]), "TTL put reusing the lease");

    // Lock: one LeaseGrant and one Txn, then the guard's two background streams
    // (keep-alive, watch of the lock key).
    let (guard, rt) = round_trips(&server, || async {
        let guard = kv.lock("l", LockOptions::default().value("x")).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        guard
    })
    .await;
    let guard = guard.unwrap();
    assert_eq!(
        rt,
        calls(&[
            ("LeaseGrant", 1),
            ("LeaseKeepAlive", 1),
            ("Txn", 1),
            ("Watch", 1)
        ]),
        "uncontended lock"
    );
    let (r, rt) = round_trips(&server, || kv.try_lock("l", LockOptions::default())).await;
    assert!(r.unwrap().is_none());
    assert_eq!(
        rt,
        calls(&[("LeaseGrant", 1), ("LeaseRevoke", 1), ("Txn", 1)]),
        "try_lock on a held lock"
    );
    let (r, rt) = round_trips(&server, || guard.unlock()).await;
    r.unwrap();
    assert_eq!(rt, calls(&[("LeaseRevoke", 1)]), "unlock");

    let (w, rt) = round_trips(&server, || async {
        let mut w = kv.watch("d/w").await.unwrap();
        assert_eq!(next(&mut w).await, None);
        // The etcd watch is opened by the background task.
        tokio::time::sleep(Duration::from_millis(300)).await;
        w
    })
    .await;
    assert_eq!(rt, calls(&[("Range", 1), ("Watch", 1)]), "watch");
    drop(w);

    // watch_tree: one Range and one Watch stream to start; then an event is applied to
    // the cached subtree: no extra read per event (the Put is the write itself).
    kv.put("wt/a", "1", opts()).await.unwrap();
    let (tree, rt) = round_trips(&server, || async {
        let mut tree = kv.watch_tree("wt").await.unwrap();
        assert_eq!(next(&mut tree).await.len(), 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        tree
    })
    .await;
    assert_eq!(rt, calls(&[("Range", 1), ("Watch", 1)]), "watch_tree");
    let mut tree = tree;
    for i in 0..3 {
        let (snapshot, rt) = round_trips(&server, || async {
            kv.put(format!("wt/k{i}"), "v", opts()).await.unwrap();
            let snapshot = next(&mut tree).await;
            // Give a (wrong) re-read after the event the time to show up.
            tokio::time::sleep(Duration::from_millis(200)).await;
            snapshot
        })
        .await;
        assert_eq!(snapshot.len(), 2 + i);
        assert_eq!(rt, calls(&[("Put", 1)]), "a watch_tree event costs 0 reads");
    }
    drop(tree);
    let (r, rt) = round_trips(&server, || kv.delete_tree("wt")).await;
    r.unwrap();
    assert_eq!(
        rt,
        calls(&[("Range", 1), ("Txn", 1)]),
        "delete_tree of a populated dir"
    );

    // list of 1,000 keys is still one Range.
    let puts = futures::stream::iter(0..1_000)
        .map(|i| kv.put(format!("big/{i:04}"), "v", opts()))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    assert!(puts.iter().all(Result::is_ok));
    let (r, rt) = round_trips(&server, || kv.list("big")).await;
    assert_eq!(r.unwrap().len(), 1_000);
    assert_eq!(rt, calls(&[("Range", 1)]), "list of 1,000 keys");

    // Latency on this machine (loopback, one member, fsync on): printed, not asserted.
    for (name, runs) in [("put", 100), ("get", 100), ("atomic_put", 100)] {
        let mut times = Vec::with_capacity(runs);
        let mut last = kv.put("bench", "0", opts()).await.unwrap();
        for i in 0..runs {
            let started = Instant::now();
            match name {
                "put" => {
                    kv.put("bench", i.to_string(), opts()).await.unwrap();
                }
                "get" => {
                    kv.get("bench").await.unwrap();
                }
                _ => {
                    last = kv
                        .atomic_put("bench", i.to_string(), Some(&last), opts())
                        .await
                        .unwrap();
                }
            }
            times.push(started.elapsed());
        }
        times.sort();
        eprintln!(
            "etcd {name}: median {:?}, p90 {:?} over {runs}",
            times[runs / 2],
            times[runs * 9 / 10]
        );
    }
}

/// Writes and compacts from another thread (its own runtime) while this test's
/// current-thread runtime is blocked, so the watch tasks spawned here have not yet
/// opened their etcd watches: they will open them at a compacted revision.
fn write_and_compact_elsewhere(config: EtcdConfig) {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let kv = connect(config).await;
            kv.put("c/k", "1", PutOptions::default()).await.unwrap();
            kv.put("c/k", "2", PutOptions::default()).await.unwrap();
            let last = kv.put("c/other", "x", PutOptions::default()).await.unwrap();
            let mut client = kv.backend().client().clone();
            client
                .compact(
                    last.last_index as i64,
                    Some(etcd_client::CompactionOptions::new().with_physical()),
                )
                .await
                .unwrap();
        });
    })
    .join()
    .unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn watches_starting_at_a_compacted_revision_reread_and_continue() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config()).await;

    // watch_tree: created last, so its task has not run before the compaction.
    let mut tree = kv.watch_tree("c").await.unwrap();
    write_and_compact_elsewhere(server.config());
    assert_eq!(values(&next(&mut tree).await), []);
    // "c/k" = "1" was compacted away: the fresh state comes next, then live changes.
    assert_eq!(
        values(&next(&mut tree).await),
        [("c/k".into(), "2".into()), ("c/other".into(), "x".into())]
    );
    kv.put("c/k", "3", PutOptions::default()).await.unwrap();
    assert_eq!(
        values(&next(&mut tree).await),
        [("c/k".into(), "3".into()), ("c/other".into(), "x".into())]
    );
    assert_quiet(&mut tree, Duration::from_millis(300)).await;

    // watch: the same, on a key that exists.
    let mut watch = kv.watch("c/k").await.unwrap();
    write_and_compact_elsewhere(server.config());
    let initial = next(&mut watch).await.expect("c/k exists");
    assert_eq!(initial.value, "3");
    let fresh = next(&mut watch).await.expect("c/k exists");
    assert_eq!(fresh.value, "2");
    assert!(fresh.last_index > initial.last_index);
    kv.delete("c/k").await.unwrap();
    assert_eq!(next(&mut watch).await, None);
    assert_quiet(&mut watch, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn mutual_tls_needs_a_client_certificate_from_the_trusted_ca() {
    let ca = TestCa::new();
    let client_ca = TestCa::new();
    let (cert_pem, key_pem) = client_ca.issue();
    let client_auth = ClientAuth {
        ca_pem: client_ca.pem(),
        cert_pem,
        key_pem,
    };
    let Some(server) = EtcdServer::start_tls(server_tls(&ca, Some(client_auth))).await else {
        return;
    };
    // The harness config carries the client certificate.
    let kv = connect(server.config()).await;
    kv.put("mtls", "yes", PutOptions::default()).await.unwrap();
    assert_eq!(kv.get("mtls").await.unwrap().value, "yes");

    let fast = |config: EtcdConfig| {
        config
            .connect_timeout(Duration::from_millis(500))
            .request_timeout(Duration::from_secs(1))
    };
    // Without a client certificate, and with one from a CA the server does not trust.
    let (stranger_cert, stranger_key) = TestCa::new().issue();
    let refused = [
        TlsConfig::with_ca_pem(ca.pem()),
        TlsConfig::with_ca_pem(ca.pem()).identity_pem(stranger_cert, stranger_key),
    ];
    for tls in refused {
        let err = Etcd::connect(fast(EtcdConfig::new([server.endpoint()])).tls(tls))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_waiters_are_served_in_arrival_order() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config()).await;
    let holder = kv.lock("fifo", LockOptions::default()).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut waiters = Vec::new();
    for i in 0..3 {
        let kv = kv.clone();
        let tx = tx.clone();
        waiters.push(tokio::spawn(async move {
            let guard = kv
                .lock("fifo", LockOptions::default().value(format!("w{i}")))
                .await
                .unwrap();
            tx.send(i).unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            guard.unlock().await.unwrap();
        }));
        // Let waiter i register before waiter i + 1.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    holder.unlock().await.unwrap();
    let mut order = Vec::new();
    for _ in 0..3 {
        order.push(
            tokio::time::timeout(STEP, rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(order, [0, 1, 2]);
    for waiter in waiters {
        tokio::time::timeout(STEP, waiter).await.unwrap().unwrap();
    }
    assert!(!kv.exists("fifo").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipes_work_on_etcd() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config().prefix("recipes")).await;
    kvkit::testing::recipes::run_all(&kv).await;
}

/// Long-lived streams (watches, lock keep-alives) are not cut by the per-request
/// timeout: an idle watch and a held lock keep one stream each for several timeouts.
#[tokio::test]
async fn streams_outlive_the_request_timeout() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config().request_timeout(Duration::from_millis(500))).await;
    let (streams, rt) = round_trips(&server, || async {
        let mut watch = kv.watch("idle").await.unwrap();
        assert_eq!(next(&mut watch).await, None);
        let guard = kv
            .lock("held", LockOptions::default().ttl(Duration::from_secs(2)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        (watch, guard)
    })
    .await;
    let (mut watch, guard) = streams;
    let streams: Vec<_> = rt
        .into_iter()
        .filter(|(m, _)| m == "Watch" || m == "LeaseKeepAlive")
        .collect();
    assert_eq!(
        streams,
        calls(&[("LeaseKeepAlive", 1), ("Watch", 2)]),
        "one watch stream each for the watch and the lock key, one keep-alive stream"
    );
    assert!(!guard.is_lost());
    let pair = kv.put("idle", "now", PutOptions::default()).await.unwrap();
    assert_eq!(next(&mut watch).await, Some(pair));
    guard.unlock().await.unwrap();
}

/// Concurrent gets and exists of distinct keys, present and missing, coalesced into
/// Txns (more than etcd's 128 operations per Txn in all): each gets its own answer,
/// with far fewer requests than reads.
#[tokio::test]
async fn concurrent_point_reads_coalesce_and_each_gets_its_own_answer() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config().prefix("co")).await;
    let n = 150;
    let mut written = Vec::new();
    for i in (0..n).filter(|i| i % 3 != 0) {
        let pair = kv.put(format!("k/{i}"), format!("v{i}"), PutOptions::default());
        written.push(pair.await.unwrap());
    }
    let ((gets, exists), rt) = round_trips(&server, || {
        let gets = futures::future::join_all((0..n).map(|i| kv.get(format!("k/{i}"))));
        let exists = futures::future::join_all((0..n).map(|i| kv.exists(format!("k/{i}"))));
        futures::future::join(gets, exists)
    })
    .await;
    let mut written = written.into_iter();
    for (i, (got, exists)) in gets.into_iter().zip(exists).enumerate() {
        if i % 3 == 0 {
            assert_eq!(got.unwrap_err().kind(), ErrorKind::NotFound, "k/{i}");
            assert!(!exists.unwrap(), "k/{i}");
        } else {
            assert_eq!(got.unwrap(), written.next().unwrap(), "k/{i}");
            assert!(exists.unwrap(), "k/{i}");
        }
    }
    let requests: u64 = rt.iter().map(|(_, count)| count).sum();
    assert!(requests * 10 < 2 * n as u64, "{} reads took {rt:?}", 2 * n);
}

/// A get never returns a value older than a put that completed before the get
/// began, while 16 readers keep reads queued (coalesced into Txns) and a writer
/// counts up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_gets_are_linearizable() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config().prefix("lin")).await;
    kv.put("x", "0", PutOptions::default()).await.unwrap();
    let last = 300;
    let completed = Arc::new(AtomicU64::new(0));
    let before = server.grpc_calls();
    let writer = tokio::spawn({
        let (kv, completed) = (kv.clone(), completed.clone());
        async move {
            for i in 1..=last {
                kv.put("x", i.to_string(), PutOptions::default())
                    .await
                    .unwrap();
                completed.store(i, Ordering::SeqCst);
            }
        }
    });
    let readers: Vec<_> = (0..16)
        .map(|_| {
            let (kv, completed) = (kv.clone(), completed.clone());
            tokio::spawn(async move {
                for _ in 0..20_000 {
                    let floor = completed.load(Ordering::SeqCst);
                    let pair = kv.get("x").await.unwrap();
                    let seen: u64 = std::str::from_utf8(&pair.value).unwrap().parse().unwrap();
                    assert!(
                        seen >= floor,
                        "read {seen} after the put of {floor} completed"
                    );
                    if floor == last {
                        break;
                    }
                }
            })
        })
        .collect();
    writer.await.unwrap();
    for reader in readers {
        reader.await.unwrap();
    }
    let txns = server.grpc_calls().get("Txn").copied().unwrap_or(0)
        - before.get("Txn").copied().unwrap_or(0);
    assert!(txns > 0, "the readers' gets were never coalesced");
}

/// Dropping get futures at any point (before sending, while queued, while their Txn
/// is in flight) strands no other read and leaks no in-flight slot.
#[tokio::test]
async fn cancelled_gets_strand_nothing() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config().prefix("cancel")).await;
    for i in 0..8 {
        kv.put(format!("k/{i}"), i.to_string(), PutOptions::default())
            .await
            .unwrap();
    }
    let key = |i: u64| format!("k/{}", i % 8);
    for round in 0..30 {
        let mut gets = Box::pin(futures::future::join_all((0..20).map(|i| kv.get(key(i)))));
        // Polled once: two Ranges sent and 18 reads queued. Dropped at once, or after
        // the first answers (their queue's Txn is then in flight), or a bit later.
        assert!(futures::poll!(gets.as_mut()).is_pending());
        match round % 3 {
            0 => {}
            1 => tokio::task::yield_now().await,
            _ => tokio::time::sleep(Duration::from_millis(1)).await,
        }
        drop(gets);
        // Gets under timeouts of 0 to 1.4 ms: some answer, the rest are dropped
        // wherever they are.
        let timed =
            (0..8).map(|i| tokio::time::timeout(Duration::from_micros(200 * i), kv.get(key(i))));
        for got in futures::future::join_all(timed).await.into_iter().flatten() {
            got.unwrap();
        }
    }
    // Wait (bounded) until the abandoned requests are done: no new request for 100 ms.
    let mut seen = server.grpc_calls();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = server.grpc_calls();
        if now == seen {
            break;
        }
        seen = now;
    }
    // Both slots are free again: four concurrent gets take two Ranges and one Txn (of
    // the two queued), as on a fresh connection.
    let (gets, rt) = round_trips(&server, || {
        futures::future::join_all((0..4).map(|i| kv.get(key(i))))
    })
    .await;
    for (i, got) in gets.into_iter().enumerate() {
        assert_eq!(got.unwrap().value, i.to_string());
    }
    assert_eq!(rt, calls(&[("Range", 2), ("Txn", 1)]));
}

/// With the server down, every one of many concurrent gets fails with a typed
/// `Unavailable` within its timeout (nothing hangs); back up, they all succeed.
#[tokio::test]
async fn concurrent_gets_fail_typed_while_the_server_is_down() {
    let Some(mut server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config().request_timeout(Duration::from_secs(1))).await;
    kv.put("k", "v", PutOptions::default()).await.unwrap();
    server.stop();
    let gets = futures::future::join_all((0..16).map(|_| kv.get("k")));
    for got in tokio::time::timeout(STEP, gets).await.expect("no hang") {
        let err = got.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    }
    server.restart().await;
    let gets = futures::future::join_all((0..16).map(|_| kv.get("k")));
    for got in tokio::time::timeout(STEP, gets).await.expect("no hang") {
        assert_eq!(got.unwrap().value, "v");
    }
}

/// `close` while reads are queued: the two already sent answer, the queued ones
/// fail with `Closed` (one shared error, copied to each).
#[tokio::test]
async fn close_fails_queued_gets_with_closed() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config()).await;
    kv.put("k", "v", PutOptions::default()).await.unwrap();
    let mut gets = std::pin::pin!(futures::future::join_all((0..16).map(|_| kv.get("k"))));
    assert!(futures::poll!(gets.as_mut()).is_pending());
    kv.close().await.unwrap();
    let results = tokio::time::timeout(STEP, gets).await.expect("no hang");
    let kinds: Vec<_> = results
        .iter()
        .map(|r| r.as_ref().err().map(|e| e.kind()))
        .collect();
    let closed = kinds
        .iter()
        .filter(|k| **k == Some(ErrorKind::Closed))
        .count();
    assert_eq!(
        (kinds.iter().filter(|k| k.is_none()).count(), closed),
        (2, 14),
        "{kinds:?}"
    );
}

/// A coalesced Txn refused for one key (a role that may read `a/` but not `b/`) is
/// re-sent as single Ranges: each get gets its own verdict.
#[tokio::test]
async fn a_refused_batch_falls_back_to_single_reads() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let admin = connect(server.config().prefix("p")).await;
    for i in 0..4 {
        admin
            .put(format!("a/{i}"), "ok", PutOptions::default())
            .await
            .unwrap();
        admin
            .put(format!("b/{i}"), "secret", PutOptions::default())
            .await
            .unwrap();
    }
    server.enable_auth("s3cret").await.unwrap();
    let mut root = etcd_client::Client::connect(
        [server.endpoint()],
        Some(etcd_client::ConnectOptions::new().with_user("root", "s3cret")),
    )
    .await
    .unwrap();
    // Readable: "p/\x01..." (connect's probe) up to "p/b", so `a/` but not `b/`.
    root.role_add("reader").await.unwrap();
    let readable = etcd_client::Permission::read("p/\u{1}").with_range_end("p/b");
    root.role_grant_permission("reader", readable)
        .await
        .unwrap();
    root.user_add("reader", "pw", None).await.unwrap();
    root.user_grant_role("reader", "reader").await.unwrap();

    let kv = connect(server.config().prefix("p").credentials("reader", "pw")).await;
    let keys: Vec<String> = (0..4)
        .flat_map(|i| [format!("a/{i}"), format!("b/{i}")])
        .collect();
    let gets = futures::future::join_all(keys.iter().map(|key| kv.get(key)));
    for (key, got) in keys
        .iter()
        .zip(tokio::time::timeout(STEP, gets).await.expect("no hang"))
    {
        if key.starts_with("a/") {
            assert_eq!(got.unwrap().value, "ok", "{key}");
        } else {
            let err = got.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{key}: {err}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_recipes_on_etcd() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config().prefix("close-recipes")).await;
    kvkit::testing::recipes::close_ends_recipes(&kv).await;
}

/// `close` revokes the leases of the locks held (and awaited) through the handle: the
/// guards see `lost()`, another client takes the lock at once rather than after the
/// lease's TTL, also when the guard is dropped only after the close; watches yield
/// `Err(Closed)` and end.
/// A guard dropped right before `close()` is free once `close` returns: its lease stays
/// registered with the handle until the background revoke is done, so `close` revokes
/// it too. (A current-thread runtime: the background task has not run when `close`
/// starts, so this fails if the drop forgot the lease first.)
#[tokio::test(flavor = "current_thread")]
async fn a_guard_dropped_just_before_close_is_free_when_close_returns() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config()).await;
    let other = connect(server.config()).await;
    let long = LockOptions::default().ttl(Duration::from_secs(60));
    let guard = kv.lock("d/lock", long.clone()).await.unwrap();
    drop(guard);
    kv.close().await.unwrap();
    let taken = tokio::time::timeout(STEP, other.try_lock("d/lock", long))
        .await
        .unwrap()
        .unwrap();
    assert!(
        taken.is_some(),
        "the dropped guard's lock is free after close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_releases_locks_at_once_and_ends_watches() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config()).await;
    let other = connect(server.config()).await;
    let long = LockOptions::default().ttl(Duration::from_secs(60));
    let held = kv.lock("c/held", long.clone().value("a")).await.unwrap();
    let dropped = kv.lock("c/dropped", long.clone()).await.unwrap();
    let blocker = other.lock("c/awaited", long.clone()).await.unwrap();
    let waiter = {
        let kv = kv.clone();
        let long = long.clone();
        tokio::spawn(async move { kv.lock("c/awaited", long).await.map(drop) })
    };
    let mut watch = kv.watch("c/watched").await.unwrap();
    assert_eq!(next(&mut watch).await, None);
    let mut tree = kv.watch_tree("c").await.unwrap();
    assert_eq!(next(&mut tree).await.len(), 3);
    tokio::time::sleep(Duration::from_millis(200)).await;

    kv.close().await.unwrap();

    tokio::time::timeout(STEP, held.lost())
        .await
        .expect("close fires lost() on the guards");
    let waited = tokio::time::timeout(STEP, waiter)
        .await
        .expect("the waiter ends");
    assert_eq!(waited.unwrap().unwrap_err().kind(), ErrorKind::Closed);
    for key in ["c/held", "c/dropped"] {
        let taken = tokio::time::timeout(STEP, other.try_lock(key, long.clone()))
            .await
            .unwrap()
            .unwrap();
        assert!(taken.is_some(), "{key} is free right after close");
    }
    drop(dropped);
    assert_eq!(held.unlock().await.unwrap_err().kind(), ErrorKind::LockLost);
    // No contender of the closed handle is left queued before the next one.
    blocker.unlock().await.unwrap();
    let next_holder = tokio::time::timeout(STEP, other.lock("c/awaited", long))
        .await
        .expect("the closed waiter's contender is gone");
    drop(next_holder);
    // The tree saw the released locks go before the close ended it.
    let mut tail = Vec::new();
    let tree_end = loop {
        match tokio::time::timeout(STEP, tree.next()).await.unwrap() {
            Some(Ok(pairs)) => tail.push(pairs.len()),
            other => break other,
        }
    };
    assert!(
        matches!(tree_end, Some(Err(kvkit::Error::Closed))),
        "{tree_end:?} after {tail:?}"
    );
    let watch_end = tokio::time::timeout(STEP, watch.next()).await.unwrap();
    assert!(
        matches!(watch_end, Some(Err(kvkit::Error::Closed))),
        "{watch_end:?}"
    );
    assert!(
        tokio::time::timeout(STEP, watch.next())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        tokio::time::timeout(STEP, tree.next())
            .await
            .unwrap()
            .is_none()
    );
}

/// Keys another tool wrote straight into etcd in a form kvkit never writes are not
/// kvkit keys: never listed, never in a tree watch, never in a point watch's answer.
#[tokio::test]
async fn keys_written_by_other_tools_are_never_listed_or_watched() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config()).await;
    let mut raw = kv.backend().client().kv_client();
    kv.put("f/ok", "mine", PutOptions::default()).await.unwrap();
    let long = format!("f/{}", "x".repeat(kvkit::key::MAX_KEY_LEN));
    let foreign: Vec<Vec<u8>> = [
        "/f/lead",
        "f//double",
        "f/./dot",
        "f/../dotdot",
        "f/trailing/",
        "f/ctl\u{1}",
        "f/del\u{7f}",
        "f/c1\u{85}",
        long.as_str(),
    ]
    .iter()
    .map(|k| k.as_bytes().to_vec())
    .chain([b"f/not-utf8-\xff".to_vec()])
    .collect();
    for key in &foreign {
        raw.put(key.clone(), "foreign", None).await.unwrap();
    }
    let keys = |pairs: Vec<KvPair>| pairs.into_iter().map(|p| p.key).collect::<Vec<_>>();
    assert_eq!(keys(kv.list("f").await.unwrap()), ["f/ok"]);
    assert_eq!(keys(kv.list("").await.unwrap()), ["f/ok"]);
    let mut tree = kv.watch_tree("f").await.unwrap();
    assert_eq!(keys(next(&mut tree).await), ["f/ok"]);
    // Foreign writes while watching are not part of the subtree either.
    raw.put("f//late", "foreign", None).await.unwrap();
    kv.put("f/ok2", "mine", PutOptions::default())
        .await
        .unwrap();
    assert_eq!(keys(next(&mut tree).await), ["f/ok", "f/ok2"]);
    assert_quiet(&mut tree, Duration::from_millis(300)).await;
}

/// `delete_tree` deletes `dir` and the kvkit keys below it, never a key another tool
/// wrote there in a form kvkit never writes, also when such keys sit between kvkit
/// keys in etcd's key order and at the root; still 2 requests (Range + Txn).
#[tokio::test]
async fn keys_written_by_other_tools_are_never_deleted_by_delete_tree() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config()).await;
    let mut raw = kv.backend().client().kv_client();
    let long = format!("f/{}", "x".repeat(kvkit::key::MAX_KEY_LEN));
    // In etcd's order these fall before, between and after the kvkit keys below.
    let foreign: Vec<Vec<u8>> = [
        "/f/lead",
        "f//double",
        "f/./dot",
        "f/a/",
        "f/b/../c",
        "f/ctl\u{1}",
        "f/del\u{7f}",
        long.as_str(),
    ]
    .iter()
    .map(|k| k.as_bytes().to_vec())
    .chain([b"f/zz-not-utf8-\xff".to_vec()])
    .collect();
    for key in &foreign {
        raw.put(key.clone(), "foreign", None).await.unwrap();
    }
    let mine = ["f", "f/a", "f/b/c", "f/d", "f/y", "f/zzz"];
    for key in mine {
        kv.put(key, "mine", PutOptions::default()).await.unwrap();
    }
    kv.put("fx/sibling", "kept", PutOptions::default())
        .await
        .unwrap();

    let (r, rt) = round_trips(&server, || kv.delete_tree("f")).await;
    r.unwrap();
    for key in mine {
        assert!(!kv.exists(key).await.unwrap(), "{key} was not deleted");
    }
    assert!(kv.exists("fx/sibling").await.unwrap());
    for key in &foreign {
        let resp = raw.get(key.clone(), None).await.unwrap();
        assert_eq!(
            resp.kvs().len(),
            1,
            "the foreign key {:?} was deleted",
            String::from_utf8_lossy(key)
        );
    }
    assert_eq!(rt, calls(&[("Range", 1), ("Txn", 1)]), "delete_tree");

    // The root: every kvkit key goes, every foreign key stays.
    kv.put("r/x", "mine", PutOptions::default()).await.unwrap();
    kv.delete_tree("").await.unwrap();
    assert!(kv.list("").await.unwrap().is_empty());
    for key in &foreign {
        let resp = raw.get(key.clone(), None).await.unwrap();
        assert_eq!(resp.kvs().len(), 1, "{:?}", String::from_utf8_lossy(key));
    }
}

/// Foreign keys written below `dir` while `delete_tree(dir)` runs survive it: the
/// delete is guarded by the revision of its read, so a key written after the read
/// makes it re-read instead of deleting the new key with the range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_keys_written_during_delete_tree_survive_it() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config().prefix("p")).await;
    let mut raw = kv.backend().client().kv_client();
    let writer = tokio::spawn(async move {
        for i in 0..400 {
            raw.put(format!("p/c//n{i:03}"), "foreign", None)
                .await
                .unwrap();
        }
    });
    let mut rounds = 0;
    while !writer.is_finished() {
        for i in 0..4 {
            kv.put(format!("c/k{i}"), "mine", PutOptions::default())
                .await
                .unwrap();
        }
        kv.delete_tree("c").await.unwrap();
        assert!(kv.list("c").await.unwrap().is_empty());
        rounds += 1;
    }
    writer.await.unwrap();
    assert!(
        rounds > 1,
        "the writer ended before delete_tree overlapped it"
    );
    let mut raw = kv.backend().client().kv_client();
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_keys_only();
    let left = raw.get("p/c//", Some(options)).await.unwrap();
    assert_eq!(left.kvs().len(), 400, "foreign keys were deleted");
}
