//! `kvkit::connect`, `StoreConfig` and `AnyBackend`: every URL form reaches the right
//! store (real etcd and ZooKeeper servers, the Consul emulator, redb files, memory),
//! `Kv<AnyBackend>` passes `check_backend` on all five,
//! configurations round-trip through TOML, JSON and URLs, bad input is a clear
//! `Error::Config`, and no secret is ever formatted.

use std::path::Path;
use std::time::Duration;

use kvkit::consul::ConsulConfig;
use kvkit::etcd::EtcdConfig;
use kvkit::testing::consul_emulator::{ConsulEmulator, EmulatorConfig, EmulatorTls};
use kvkit::testing::etcd_server::{EtcdServer, ServerTls};
use kvkit::testing::model::{ModelConfig, check_backend};
use kvkit::testing::zookeeper_server::ZkServer;
use kvkit::zookeeper::{ZookeeperConfig, ZookeeperEncoding};
use kvkit::{
    AnyBackend, ErrorKind, Kv, LockGuard, LockOptions, PutOptions, StoreConfig, TlsConfig,
};

/// `check_backend` on `kv`: the conformance suite, a short sequential model run and the
/// concurrent phase.
async fn check(kv: &Kv<AnyBackend>) {
    let config = ModelConfig {
        cases: 12,
        ..ModelConfig::default()
    };
    if let Err(failure) = check_backend(kv, config).await {
        panic!("Kv<{}>: {failure}", kv.capabilities().name);
    }
}

fn config_error(result: kvkit::Result<impl std::fmt::Debug>) -> String {
    let err = result.expect_err("expected a configuration error");
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    err.to_string()
}

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
    let Some(server) = ZkServer::start() else {
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
    let Some(server) = ZkServer::start() else {
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

/// One configuration of every backend, with non-default settings and no secrets.
fn sample_configs() -> Vec<StoreConfig> {
    let tls = TlsConfig {
        ca_file: Some("/etc/kvkit/ca.pem".into()),
        cert_file: Some("/etc/kvkit/client.pem".into()),
        key_file: Some("/etc/kvkit/client-key.pem".into()),
        ..TlsConfig::default()
    };
    let mut consul = ConsulConfig::new("10.0.0.1:8500")
        .prefix("svc/app")
        .datacenter("dc2")
        .lock_ttl(Duration::from_secs(20))
        .lock_delay(Duration::from_millis(1500))
        .wait(Duration::from_secs(90))
        .request_timeout(Duration::from_millis(2500))
        .tls(tls.clone());
    consul.scheme = kvkit::consul::Scheme::Https;
    consul.endpoints.push("10.0.0.2:8500".to_owned());
    vec![
        StoreConfig::Memory(Default::default()),
        StoreConfig::Redb(kvkit::config::RedbConfig::new("/var/lib/app/data.redb")),
        StoreConfig::Redb(kvkit::config::RedbConfig::new("data/app.redb")),
        StoreConfig::Etcd(
            EtcdConfig::new(["10.0.0.1:2379", "10.0.0.2:2379"])
                .prefix("myapp")
                .request_timeout(Duration::from_secs(2))
                .connect_timeout(Duration::from_millis(1500))
                .lock_ttl(Duration::from_secs(90)),
        ),
        StoreConfig::Etcd(
            EtcdConfig::new(["etcd-1.internal:2379"]).tls(tls.clone().server_name("etcd.internal")),
        ),
        StoreConfig::Zookeeper(
            ZookeeperConfig::new("zk1:2181,zk2:2181")
                .prefix("/services/app")
                .session_timeout(Duration::from_secs(30))
                .request_timeout(Duration::from_millis(2500))
                .encoding(ZookeeperEncoding::Raw)
                .multi_read(false),
        ),
        StoreConfig::Zookeeper(ZookeeperConfig::default()),
        StoreConfig::Consul(consul),
        StoreConfig::Consul(ConsulConfig::default()),
    ]
}

#[test]
fn every_config_round_trips_through_toml_json_and_url() {
    for config in sample_configs() {
        let json = serde_json::to_string(&config).unwrap();
        let from_json: StoreConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(from_json, config, "JSON {json}");

        let toml_text = toml::to_string(&config).unwrap();
        let from_toml: StoreConfig = toml::from_str(&toml_text).unwrap();
        assert_eq!(from_toml, config, "TOML {toml_text}");

        let url = config.to_string();
        let from_url = StoreConfig::from_url(&url).unwrap();
        assert_eq!(from_url, config, "URL {url}");
        assert_eq!(from_url.to_string(), url);
    }
}

#[test]
fn config_files_use_one_convention() {
    #[derive(serde::Deserialize)]
    struct ServiceConfig {
        store: StoreConfig,
    }
    let file: ServiceConfig = toml::from_str(
        r#"
        [store]
        backend = "etcd"
        endpoints = ["10.0.0.1:2379", "10.0.0.2:2379"]
        prefix = "myapp"
        connect_timeout = "1500ms"
        request_timeout = "2s"
        lock_ttl = "1m30s"
        [store.tls]
        ca_file = "/etc/ca.pem"
        server_name = "etcd.internal"
        "#,
    )
    .unwrap();
    let StoreConfig::Etcd(etcd) = file.store else {
        panic!("an etcd config")
    };
    assert_eq!(etcd.connect_timeout, Duration::from_millis(1500));
    assert_eq!(etcd.request_timeout, Duration::from_secs(2));
    assert_eq!(etcd.lock_ttl, Duration::from_secs(90));
    assert_eq!(
        etcd.tls.unwrap().server_name.as_deref(),
        Some("etcd.internal")
    );

    // The same names on every backend.
    for (backend, extra) in [
        ("etcd", ""),
        ("zookeeper", "session_timeout = \"8s\"\n"),
        ("consul", "lock_delay = \"500ms\"\n"),
    ] {
        let text = format!(
            "backend = \"{backend}\"\nendpoints = [\"h1:1\", \"h2:2\"]\nprefix = \"/app\"\n\
             connect_timeout = \"1500ms\"\nrequest_timeout = \"2s\"\n{extra}"
        );
        let config: StoreConfig =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{backend}: {e}"));
        let url = config.to_string();
        assert!(url.contains("h1:1,h2:2/app"), "{url}");
        assert!(url.contains("connect_timeout=1s500ms"), "{url}");
        assert!(url.contains("request_timeout=2s"), "{url}");
    }
    // Memory and redb.
    let memory: StoreConfig = toml::from_str("backend = \"memory\"").unwrap();
    assert_eq!(memory.to_string(), "memory://");
    let redb: StoreConfig = toml::from_str("backend = \"redb\"\npath = \"/data/a.redb\"").unwrap();
    assert_eq!(redb.to_string(), "redb:///data/a.redb");
    // The old field names still read: ZooKeeper's `connect` string and `root`,
    // Consul's `addresses` and `client_cert_pem`, etcd's `domain_name`.
    let zk: ZookeeperConfig =
        serde_json::from_str(r#"{"connect": "a:1,b:2", "root": "/r"}"#).unwrap();
    assert_eq!(zk, ZookeeperConfig::new("a:1,b:2").prefix("/r"));
    let consul: ConsulConfig = serde_json::from_str(
        r#"{"addresses": ["a:1"], "tls": {"client_cert_file": "/c", "client_key_file": "/k"}}"#,
    )
    .unwrap();
    assert_eq!(consul.endpoints, ["a:1"]);
    assert!(consul.tls.unwrap().cert_file.is_some());
    let etcd: EtcdConfig = serde_json::from_str(r#"{"tls": {"domain_name": "x"}}"#).unwrap();
    assert_eq!(etcd.tls.unwrap().server_name.as_deref(), Some("x"));
}

#[tokio::test]
async fn bad_urls_are_clear_configuration_errors() {
    let huge_multi_part = format!("etcd://h:2379?request_timeout={}", "1s".repeat(5000));
    let cases: Vec<(String, &str)> = vec![
        ("".into(), "scheme://"),
        ("memory".into(), "scheme://"),
        ("mysql://h/db".into(), "unknown store scheme \"mysql\""),
        ("memory://host".into(), "takes no host"),
        ("memory://?x=1".into(), "unknown option \"x\" for memory"),
        ("redb://".into(), "needs a file"),
        ("redb:///".into(), "needs a file"),
        (
            "redb:///a.redb?sync=1".into(),
            "unknown option \"sync\" for redb",
        ),
        ("etcd://".into(), "at least one host"),
        ("etcd:///prefix".into(), "at least one host"),
        (
            "etcd://h:2379?request_timeout=soon".into(),
            "option request_timeout: invalid duration",
        ),
        (
            "etcd://h:2379?request_timeout=10000000000000000000s".into(),
            "request_timeout",
        ),
        (
            "etcd://h:2379?connect_timeout=10000000000000000000".into(),
            "connect_timeout",
        ),
        ("etcd://h:2379?request_timeout=400days".into(), "too long"),
        (huge_multi_part, "too long"),
        ("etcd://h:2379?lock_ttl".into(), "has no value"),
        ("etcd://h:2379?ca=/x.pem".into(), "etcd+https://"),
        ("etcd+ftp://h:2379".into(), "unknown transport"),
        (
            "etcd://h:2379?timeout=2s".into(),
            "unknown option \"timeout\" for etcd (known: connect_timeout",
        ),
        (
            "etcd://h:2379?request_timeout=1s&request_timeout=2s".into(),
            "given twice",
        ),
        ("etcd://h:2379#frag".into(), "fragment"),
        (
            "etcd://h:2379?request_timeout=-1s".into(),
            "invalid duration",
        ),
        (
            "zk://h:2181/r?encoding=json".into(),
            "expected kvkit or raw",
        ),
        (
            "zk://h:2181/r?multi_read=maybe".into(),
            "expected true or false",
        ),
        ("zk://user@h:2181/r".into(), "user:password"),
        ("zk+https://h:2181".into(), "makes no sense"),
        (
            "zk://h:2181?lock_ttl=5s".into(),
            "unknown option \"lock_ttl\" for zookeeper",
        ),
        ("consul://user@h:8500".into(), "KVKIT_CONSUL_TOKEN"),
        ("consul://h:8500?wait=%ZZ".into(), "percent-encoding"),
        ("consul://h:8500?cert=/c.pem".into(), "consul+https://"),
        ("consul://".into(), "at least one host"),
    ];
    assert!(cases.len() >= 20);
    for (url, expected) in cases {
        let from_url = StoreConfig::from_url(&url);
        let message = config_error(from_url);
        assert!(
            message.contains(expected),
            "{url:.80}: {message:?} should mention {expected:?}"
        );
        assert!(
            message.len() < 400,
            "{url:.80}: message too long: {message:.200}"
        );
        // connect gives the same error, before any I/O.
        assert_eq!(config_error(kvkit::connect(&url).await), message);
    }
}

#[tokio::test]
async fn bad_configs_are_clear_configuration_errors() {
    // Refused while parsing.
    let parse_cases = [
        (r#"backend = "mysql""#, "unknown variant"),
        ("endpoints = []", "backend"),
        (
            "backend = \"etcd\"\nendpoint = [\"h:1\"]",
            "unknown field `endpoint`",
        ),
        (
            "backend = \"etcd\"\nrequest_timeout = \"soon\"",
            "invalid duration",
        ),
        ("backend = \"etcd\"\nrequest_timeout = 1e19", "too long"),
        (
            "backend = \"etcd\"\nrequest_timeout = -2",
            "invalid duration",
        ),
        (
            "backend = \"consul\"\nwait = \"5000000000000000000000s\"",
            "too large",
        ),
        (
            "backend = \"zookeeper\"\nencoding = \"json\"",
            "unknown variant",
        ),
        (
            "backend = \"zookeeper\"\nsession_timeout_ms = 5000",
            "unknown field",
        ),
        ("backend = \"memory\"\npath = \"/x\"", "unknown field"),
        ("backend = \"redb\"", "missing field `path`"),
        (
            "backend = \"consul\"\n[tls]\nca = \"/x\"",
            "unknown field `ca`",
        ),
    ];
    for (text, expected) in parse_cases {
        let err = toml::from_str::<StoreConfig>(text)
            .expect_err(text)
            .to_string();
        assert!(
            err.contains(expected),
            "{text}: {err:?} should mention {expected:?}"
        );
    }

    // Accepted by serde or builders, refused at connect with Error::Config.
    let mut no_endpoints = EtcdConfig::default();
    no_endpoints.endpoints.clear();
    let user_only = EtcdConfig {
        username: Some("root".into()),
        ..EtcdConfig::default()
    };
    let both_ca = TlsConfig {
        ca_pem: Some("x".into()),
        ca_file: Some("/x".into()),
        ..TlsConfig::default()
    };
    let cert_only = TlsConfig {
        cert_pem: Some("x".into()),
        ..TlsConfig::default()
    };
    let connect_cases: Vec<(StoreConfig, &str)> = vec![
        (StoreConfig::Etcd(no_endpoints), "no endpoints"),
        (StoreConfig::Etcd(user_only), "username and password"),
        (
            StoreConfig::Etcd(EtcdConfig::default().request_timeout(Duration::MAX)),
            "request_timeout",
        ),
        (
            StoreConfig::Etcd(EtcdConfig::default().connect_timeout(Duration::from_secs(u64::MAX))),
            "connect_timeout",
        ),
        (
            StoreConfig::Etcd(EtcdConfig::default().tls(both_ca)),
            "not both",
        ),
        (
            StoreConfig::Etcd(EtcdConfig::default().tls(cert_only.clone())),
            "both the certificate and the key",
        ),
        (
            StoreConfig::Consul(ConsulConfig::default().tls(cert_only)),
            "both the certificate and the key",
        ),
        (
            StoreConfig::Consul(ConsulConfig::default().wait(Duration::MAX)),
            "wait",
        ),
        (StoreConfig::Consul(ConsulConfig::new("")), "empty endpoint"),
        (
            StoreConfig::Zookeeper(ZookeeperConfig::default().session_timeout(Duration::MAX)),
            "session_timeout",
        ),
        (
            StoreConfig::Zookeeper(ZookeeperConfig::new("h:1/chroot")),
            "use `prefix` for a chroot",
        ),
        (
            StoreConfig::Zookeeper(ZookeeperConfig::new("")),
            "no endpoints",
        ),
        (
            StoreConfig::Redb(kvkit::config::RedbConfig::new("")),
            "path is empty",
        ),
    ];
    for (config, expected) in connect_cases {
        let shown = format!("{config:?}");
        let message = config_error(config.validate());
        assert!(
            message.contains(expected),
            "{shown}: {message:?} should mention {expected:?}"
        );
        assert_eq!(config_error(config.connect().await), message);
    }
    // The backends' own constructors validate too: no panic from a huge duration.
    let err = kvkit::etcd::Etcd::connect(EtcdConfig::default().request_timeout(Duration::MAX))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    let err = kvkit::consul::Consul::connect(ConsulConfig::default().lock_ttl(Duration::MAX))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    let err = kvkit::zookeeper::Zookeeper::connect(
        ZookeeperConfig::default().request_timeout(Duration::MAX),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
}

#[test]
fn durations_parse_in_one_format_and_never_overflow() {
    use kvkit::config::{MAX_DURATION, format_duration, parse_duration};
    assert_eq!(
        parse_duration("1500ms").unwrap(),
        Duration::from_millis(1500)
    );
    assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
    assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
    assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    assert_eq!(
        parse_duration("1m0.5s").unwrap(),
        Duration::from_millis(60_500)
    );
    assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
    for d in [
        Duration::from_millis(1500),
        Duration::from_secs(90),
        Duration::ZERO,
        MAX_DURATION,
    ] {
        assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
    }
    assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
    for bad in [
        "10000000000000000000s",
        "10000000000000000000",
        "1e400",
        "18446744073709551615h",
        "366days",
        "",
        "s",
        "-1s",
        "NaN",
        "inf",
        "1.5x",
        "1.5e400s",
        "99999999999999999999.5h",
    ] {
        assert_eq!(
            parse_duration(bad).unwrap_err().kind(),
            ErrorKind::Config,
            "{bad}"
        );
    }
    let huge = "9999999999h".repeat(1000);
    assert_eq!(parse_duration(&huge).unwrap_err().kind(), ErrorKind::Config);
}

const SECRETS: [&str; 5] = [
    "s3cr3t-etcd-password",
    "s3cr3t-consul-token",
    "s3cr3t-zk-password",
    "s3cr3t-private-key",
    "s3cr3t-env-password",
];

fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} shows a secret: {text}");
    }
}

fn secret_configs() -> Vec<StoreConfig> {
    let tls = TlsConfig::with_ca_pem("ca").identity_pem("cert", SECRETS[3]);
    vec![
        StoreConfig::Etcd(
            EtcdConfig::new(["127.0.0.1:1"])
                .credentials("root", SECRETS[0])
                .tls(tls.clone())
                .connect_timeout(Duration::from_millis(200))
                .request_timeout(Duration::from_millis(300)),
        ),
        StoreConfig::Consul(
            ConsulConfig::new("127.0.0.1:1")
                .token(SECRETS[1])
                .tls(TlsConfig {
                    cert_pem: Some("not a certificate".into()),
                    key_pem: Some(SECRETS[3].into()),
                    ..TlsConfig::default()
                })
                .request_timeout(Duration::from_millis(300)),
        ),
        StoreConfig::Zookeeper(
            ZookeeperConfig::new("127.0.0.1:1")
                .digest("user", SECRETS[2])
                .connect_timeout(Duration::from_millis(300)),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_leave_through_debug_display_or_errors() {
    for config in secret_configs() {
        assert_no_secret("Debug", &format!("{config:?}"));
        assert_no_secret("Debug", &format!("{config:#?}"));
        assert_no_secret("Display", &config.to_string());
        // The URL form reads back without the secrets.
        let back = StoreConfig::from_url(&config.to_string()).unwrap();
        assert_no_secret(
            "URL round trip",
            &format!("{back:?} {}", serde_json::to_string(&back).unwrap()),
        );
        // The connect error (nothing listens, or the key is not PEM) names no secret.
        let err = config.clone().connect().await.unwrap_err();
        assert_no_secret("error", &format!("{err} {err:?}"));
        // Serialising is explicit and keeps them (a config file is written on purpose).
        let json = serde_json::to_string(&config).unwrap();
        assert!(SECRETS.iter().any(|s| json.contains(s)), "{json}");
    }
    // Each backend config on its own, and the TLS settings.
    let tls = TlsConfig::default().identity_pem("c", SECRETS[3]);
    assert_no_secret("TlsConfig", &format!("{tls:?}"));
    assert_no_secret("TlsMaterial", &format!("{:?}", tls.load().unwrap()));
    // Secrets from the environment (here a lookup) are used and never shown.
    let env = |name: &str| match name {
        "KVKIT_ETCD_USERNAME" => Some("root".to_owned()),
        "KVKIT_ETCD_PASSWORD" => Some(SECRETS[4].to_owned()),
        "CONSUL_HTTP_TOKEN" => Some(SECRETS[4].to_owned()),
        "KVKIT_ZK_DIGEST" => Some(format!("user:{}", SECRETS[4])),
        _ => None,
    };
    for url in ["etcd://h:2379", "consul://h:8500", "zk://h:2181/r"] {
        let config = StoreConfig::from_url(url)
            .unwrap()
            .with_secrets_from(env)
            .unwrap();
        let json = serde_json::to_string(&config).unwrap();
        assert!(
            json.contains(SECRETS[4]),
            "{url}: the secret is filled in: {json}"
        );
        assert_no_secret(url, &format!("{config:?} {config}"));
    }
    // The configuration's own secret wins over the environment.
    let config = StoreConfig::Consul(ConsulConfig::default().token("mine"))
        .with_secrets_from(env)
        .unwrap();
    assert!(serde_json::to_string(&config).unwrap().contains("\"mine\""));
    let err = StoreConfig::from_url("zk://h:2181/r")
        .unwrap()
        .with_secrets_from(|_| Some(SECRETS[4].to_owned()))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert_no_secret("bad KVKIT_ZK_DIGEST", &err.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_with_secrets_never_show_them() {
    let emu = ConsulEmulator::start(EmulatorConfig::default().acl_token(SECRETS[1]))
        .await
        .unwrap();
    let consul = StoreConfig::Consul(ConsulConfig::new(emu.url()).token(SECRETS[1]))
        .connect()
        .await
        .unwrap();
    consul.put("k", "v", PutOptions::default()).await.unwrap();
    assert_no_secret(
        "Kv<AnyBackend> over Consul",
        &format!("{consul:?} {:?}", consul.backend()),
    );
    if let AnyBackend::Consul(c) = consul.backend() {
        assert_no_secret("ConsulConfig in use", &format!("{:?}", c.config()));
    }
    let Some(server) = ZkServer::start() else {
        return;
    };
    let zk = StoreConfig::Zookeeper(
        ZookeeperConfig::new(server.connect_string())
            .prefix("/secret-handles")
            .digest("user", SECRETS[2]),
    )
    .connect()
    .await
    .unwrap();
    zk.put("k", "v", PutOptions::default()).await.unwrap();
    assert_no_secret("Kv<AnyBackend> over ZooKeeper", &format!("{zk:?}"));
}
