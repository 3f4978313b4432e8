//! Bad URLs and bad configurations are clear `Error::Config`s.

use std::time::Duration;

use kvkit::consul::ConsulConfig;
use kvkit::etcd::EtcdConfig;
use kvkit::zookeeper::ZookeeperConfig;
use kvkit::{ErrorKind, StoreConfig, TlsConfig};

use crate::config_error;

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
