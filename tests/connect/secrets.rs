//! No secret is ever formatted: not by `Debug`, `Display`, errors or handles.

use std::time::Duration;

use kvkit::consul::ConsulConfig;
use kvkit::etcd::EtcdConfig;
use kvkit::testing::consul_emulator::{ConsulEmulator, EmulatorConfig};
use kvkit::testing::zookeeper_server::ZkServer;
use kvkit::zookeeper::ZookeeperConfig;
use kvkit::{AnyBackend, ErrorKind, PutOptions, StoreConfig, TlsConfig};

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
    let Some(server) = ZkServer::shared() else {
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
