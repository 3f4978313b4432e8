//! Every URL form reaches its store (real etcd and ZooKeeper servers, the Consul
//! emulator, redb files, memory) below its prefix or root, TLS included.

use std::path::Path;
use std::time::Duration;

use kvkit::consul::ConsulConfig;
use kvkit::testing::consul_emulator::{ConsulEmulator, EmulatorConfig, EmulatorTls};
use kvkit::testing::etcd_server::{EtcdServer, ServerTls};
use kvkit::testing::zookeeper_server::ZkServer;
use kvkit::{AnyBackend, ErrorKind, Kv, LockGuard, LockOptions, PutOptions, StoreConfig};

use crate::{check, config_error};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_url_reaches_memory_and_passes_the_suite() {
    let kv = kvkit::connect("memory://").await.unwrap();
    assert!(matches!(kv.backend(), AnyBackend::Memory(_)));
    assert_eq!(kv.capabilities().name, "memory");
    check(&kv).await;
    // The lock guard and the watch streams are the enums, and behave as memory's.
    let guard = kv
        .lock("l", LockOptions::default().value("me"))
        .await
        .unwrap();
    assert!(
        kv.try_lock("l", LockOptions::default())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(guard.key(), "l");
    guard.unlock().await.unwrap();
    kv.close().await.unwrap();
    assert_eq!(kv.get("x").await.unwrap_err().kind(), ErrorKind::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_urls_with_absolute_and_relative_paths() {
    let dir = tempfile::tempdir().unwrap();
    let absolute = dir.path().join("data.redb");
    let url = format!("redb://{}", absolute.display());
    assert!(url.starts_with("redb:///"));
    let kv = kvkit::connect(&url).await.unwrap();
    assert!(matches!(kv.backend(), AnyBackend::Redb(_)));
    check(&kv).await;
    kv.put("persisted", "yes", PutOptions::default())
        .await
        .unwrap();
    kv.close().await.unwrap();
    drop(kv);
    let again = kvkit::redb::Redb::open(&absolute).unwrap();
    assert_eq!(Kv::new(again).get("persisted").await.unwrap().value, "yes");

    // `redb://rel/path` is relative to the working directory (the package root here).
    let relative_dir = format!("target/connect-test-{}", std::process::id());
    std::fs::create_dir_all(&relative_dir).unwrap();
    let relative = format!("{relative_dir}/rel.redb");
    let config = StoreConfig::from_url(&format!("redb://{relative}")).unwrap();
    assert_eq!(
        config,
        StoreConfig::Redb(kvkit::config::RedbConfig::new(&relative))
    );
    let kv = config.connect().await.unwrap();
    kv.put("k", "v", PutOptions::default()).await.unwrap();
    kv.close().await.unwrap();
    assert!(
        Path::new(&relative).is_file(),
        "the file is where the URL says"
    );
    std::fs::remove_dir_all(&relative_dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_urls_reach_the_server_below_their_prefix() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let hosts = server.endpoint().trim_start_matches("http://").to_owned();
    let kv = kvkit::connect(&format!(
        "etcd://{hosts},{hosts}/connect-app?request_timeout=5s"
    ))
    .await
    .unwrap();
    assert!(matches!(kv.backend(), AnyBackend::Etcd(_)));
    check(&kv).await;
    kv.put("k", "v", PutOptions::default()).await.unwrap();
    // Another handle without a prefix sees the key below `connect-app/`.
    let plain = Kv::new(kvkit::etcd::Etcd::connect(server.config()).await.unwrap());
    assert_eq!(plain.get("connect-app/k").await.unwrap().value, "v");
    // lock_ttl from the URL is the default lock TTL.
    let kv = kvkit::connect(&format!("etcd://{hosts}/connect-app?lock_ttl=7s"))
        .await
        .unwrap();
    assert_eq!(
        kv.capabilities().default_lock_ttl,
        Some(Duration::from_secs(7))
    );
}

/// A CA, with a certificate for 127.0.0.1/localhost signed by it.
fn test_ca() -> (String, String, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer =
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (issuer.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_https_url_with_a_ca_file() {
    let (ca_pem, cert_pem, key_pem) = test_ca();
    let tls = ServerTls {
        ca_pem: ca_pem.clone(),
        cert_pem,
        key_pem,
        client_auth: None,
    };
    let Some(server) = EtcdServer::start_tls(tls).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let hosts = server.endpoint().trim_start_matches("https://").to_owned();
    let url = format!("etcd+https://{hosts}/secure?ca={}", ca_file.display());
    let kv = kvkit::connect(&url).await.unwrap();
    kv.put("k", "tls", PutOptions::default()).await.unwrap();
    assert_eq!(kv.get("k").await.unwrap().value, "tls");
    // Without the CA (system roots) the server is refused.
    let err = kvkit::connect(&format!(
        "etcd+https://{hosts}/secure?connect_timeout=500ms&request_timeout=1s"
    ))
    .await
    .unwrap_err();
    assert_ne!(err.kind(), ErrorKind::Config, "{err}");
    // A CA file that does not exist is a configuration error naming it.
    let err = config_error(
        kvkit::connect(&format!("etcd+https://{hosts}/?ca=/nonexistent/ca.pem")).await,
    );
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_urls_reach_the_server_below_their_root() {
    let Some(server) = ZkServer::shared() else {
        return;
    };
    let hosts = server.connect_string();
    let kv = kvkit::connect(&format!(
        "zk://{hosts}/connect-zk?session_timeout=8s&request_timeout=5s"
    ))
    .await
    .unwrap();
    assert!(matches!(kv.backend(), AnyBackend::Zookeeper(_)));
    check(&kv).await;
    kv.put("k", "v", PutOptions::default()).await.unwrap();
    let other = kvkit::connect(&format!("zookeeper://{hosts}/connect-zk"))
        .await
        .unwrap();
    assert_eq!(other.get("k").await.unwrap().value, "v");
    let AnyBackend::Zookeeper(zk) = other.backend() else {
        panic!("zookeeper:// is ZooKeeper")
    };
    assert_eq!(zk.root(), "/connect-zk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_raw_encoding_reads_and_writes_what_other_clients_see() {
    use zookeeper_async::{Acl, CreateMode, ZooKeeper};
    let Some(server) = ZkServer::shared() else {
        return;
    };
    let raw = ZooKeeper::connect(
        &server.connect_string(),
        Duration::from_secs(8),
        |_: zookeeper_async::WatchedEvent| {},
    )
    .await
    .unwrap();
    // Another client writes a tree the way zkCli or docker/libkv do: plain data, and
    // parents with empty data.
    for (path, data) in [
        ("/legacy", &b""[..]),
        ("/legacy/config", b""),
        ("/legacy/config/db", b"postgres://db:5432"),
        ("/legacy/config/flags", b"\x01binary-looking"),
    ] {
        raw.create(
            path,
            data.to_vec(),
            Acl::open_unsafe().clone(),
            CreateMode::Persistent,
        )
        .await
        .unwrap();
    }
    let kv = kvkit::connect(&format!(
        "zk://{}/legacy?encoding=raw",
        server.connect_string()
    ))
    .await
    .unwrap();
    assert_eq!(
        kv.get("config/db").await.unwrap().value,
        "postgres://db:5432"
    );
    assert_eq!(
        kv.get("config/flags").await.unwrap().value,
        &b"\x01binary-looking"[..],
        "a first byte that looks like kvkit's header is part of the value"
    );
    // The parent with empty data is an implicit parent, not a key.
    assert_eq!(
        kv.get("config").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let listed: Vec<String> = kv
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(listed, ["config/db", "config/flags"]);

    // What kvkit writes, the other client reads as plain data.
    let pair = kv
        .put("config/cache", "redis://cache", PutOptions::default())
        .await
        .unwrap();
    let (data, stat) = raw.get_data("/legacy/config/cache", false).await.unwrap();
    assert_eq!(data, b"redis://cache");
    assert_eq!(pair.last_index, stat.mzxid as u64);
    // CAS on what the other client wrote.
    let db = kv.get("config/db").await.unwrap();
    kv.atomic_put(
        "config/db",
        "postgres://db2:5432",
        Some(&db),
        PutOptions::default(),
    )
    .await
    .unwrap();
    let (data, _) = raw.get_data("/legacy/config/db", false).await.unwrap();
    assert_eq!(data, b"postgres://db2:5432");

    // What raw mode cannot offer is refused, never silently stored.
    let ttl = kv
        .put(
            "config/t",
            "x",
            PutOptions::with_ttl(Duration::from_secs(30)),
        )
        .await
        .unwrap_err();
    assert_eq!(ttl.kind(), ErrorKind::NotSupported, "{ttl}");
    let empty = kv
        .put("config/e", "", PutOptions::default())
        .await
        .unwrap_err();
    assert_eq!(empty.kind(), ErrorKind::NotSupported, "{empty}");
    assert!(
        raw.exists("/legacy/config/t", false)
            .await
            .unwrap()
            .is_none()
    );

    // kvkit's own znodes (locks) stay out of the tree other tools see.
    let guard = kv
        .lock("jobs/nightly", LockOptions::default().value("me"))
        .await
        .unwrap();
    guard.unlock().await.unwrap();
    let children = raw.get_children("/legacy", false).await.unwrap();
    assert_eq!(
        children,
        ["config"],
        "no locks or clock znode below the raw root"
    );

    // The kvkit encoding of the same tree reads none of it (a different layout).
    let kvkit_encoded = kvkit::connect(&format!("zk://{}/legacy", server.connect_string()))
        .await
        .unwrap();
    assert!(kvkit_encoded.list("").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_urls_reach_the_emulator_below_their_prefix() {
    let emu =
        ConsulEmulator::start(EmulatorConfig::default().session_ttl_min(Duration::from_secs(1)))
            .await
            .unwrap();
    let host = emu.url().trim_start_matches("http://").to_owned();
    let url = format!(
        "consul://{host}/connect-app?min_session_ttl=1s&lock_ttl=2s&lock_delay=200ms&wait=5s"
    );
    let kv = kvkit::connect(&url).await.unwrap();
    assert!(matches!(kv.backend(), AnyBackend::Consul(_)));
    check(&kv).await;
    kv.put("k", "v", PutOptions::default()).await.unwrap();
    let plain = Kv::new(
        kvkit::consul::Consul::connect(ConsulConfig::new(emu.url()))
            .await
            .unwrap(),
    );
    assert_eq!(plain.get("connect-app/k").await.unwrap().value, "v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_https_url_with_a_ca_file() {
    let (ca_pem, cert_pem, key_pem) = test_ca();
    let emu = ConsulEmulator::start(EmulatorConfig::default().tls(EmulatorTls {
        cert_chain_pem: cert_pem,
        key_pem,
        client_ca_pem: None,
    }))
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let host = emu.url().trim_start_matches("https://").to_owned();
    let kv = kvkit::connect(&format!(
        "consul+https://{host}/tls?ca={}",
        ca_file.display()
    ))
    .await
    .unwrap();
    kv.put("k", "tls", PutOptions::default()).await.unwrap();
    assert_eq!(kv.get("k").await.unwrap().value, "tls");
    // The same URL over plain HTTP fails: the agent only speaks TLS.
    assert!(
        kvkit::connect(&format!("consul://{host}/tls?request_timeout=2s"))
            .await
            .is_err()
    );
}
