//! Configurations round-trip through TOML, JSON and URLs, files follow one
//! convention, and durations parse in one format.

use std::time::Duration;

use kvkit::consul::ConsulConfig;
use kvkit::etcd::EtcdConfig;
use kvkit::zookeeper::{ZookeeperConfig, ZookeeperEncoding};
use kvkit::{ErrorKind, StoreConfig, TlsConfig};

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
