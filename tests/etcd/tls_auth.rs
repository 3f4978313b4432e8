//! TLS, mutual TLS and password authentication against etcd.

use std::time::{Duration, Instant};

use kvkit::etcd::{Etcd, EtcdConfig};
use kvkit::testing::etcd_server::{ClientAuth, EtcdServer};
use kvkit::{ErrorKind, PutOptions, TlsConfig};

use crate::errors::cause;
use crate::etcd_support::{TestCa, connect, server_tls};
use crate::streams::{next_ok, value};

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
    assert_eq!(value(&next_ok(&mut watch).await), Some("ok".into()));

    let err = Etcd::connect(server.config().credentials("root", "wrong"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    // etcd's own refusal of the password (its "authentication failed").
    let status = cause::<tonic::Status>(&err).expect("the server's answer");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{err}");

    let err = Etcd::connect(server.config()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
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
