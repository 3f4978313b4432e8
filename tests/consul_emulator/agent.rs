//! The agent around the API: ACL tokens, HTTPS, fault switches, snapshot restore.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kvkit::testing::consul_emulator::{ConsulEmulator, EmulatorConfig, EmulatorTls};

use crate::consul_api::{Api, b64, emulator};

#[tokio::test]
async fn acl_tokens() {
    let emu = ConsulEmulator::start(EmulatorConfig::default().acl_token("secret"))
        .await
        .unwrap();
    let mut api = Api::new(&emu);
    assert_eq!(api.get("/v1/kv/a").await.status, StatusCode::FORBIDDEN);
    assert_eq!(api.put("/v1/kv/a", "x").await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        api.get("/v1/kv/a?token=secret").await.status,
        StatusCode::NOT_FOUND
    );
    api.token = Some("wrong".into());
    assert_eq!(api.get("/v1/kv/a").await.status, StatusCode::FORBIDDEN);
    api.token = Some("secret".into());
    assert_eq!(api.put("/v1/kv/a", "x").await.status, StatusCode::OK);
    assert_eq!(api.get("/v1/kv/a").await.status, StatusCode::OK);
    // Authorization: Bearer works too.
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let req = Request::get(format!("{}/v1/kv/a", emu.url()))
        .header("Authorization", "Bearer secret")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(client.request(req).await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn tls_serves_https() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params
        .signed_by(&key, &rcgen::Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    let emu = ConsulEmulator::start(EmulatorConfig::default().tls(EmulatorTls {
        cert_chain_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        client_ca_pem: None,
    }))
    .await
    .unwrap();
    assert!(emu.url().starts_with("https://"));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let req = Request::put(format!("{}/v1/kv/secure", emu.url()))
        .body(Full::new(Bytes::from_static(b"v")))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Plain HTTP to the TLS port does not get an answer.
    let plain = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::get(format!("http://{}/v1/kv/secure", emu.addr()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), plain.request(req)).await;
    assert!(!matches!(outcome, Ok(Ok(ref r)) if r.status() == StatusCode::OK));
}

#[tokio::test]
async fn fault_switches() {
    let emu = emulator().await;
    let api = Api::new(&emu);
    api.put("/v1/kv/f", "v").await;
    emu.faults().fail_next(2);
    assert_eq!(
        api.get("/v1/kv/f").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        api.get("/v1/kv/f").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(api.get("/v1/kv/f").await.status, StatusCode::OK);
    emu.faults().set_failing(true);
    assert_eq!(
        api.get("/v1/kv/f").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    emu.faults().set_failing(false);

    emu.faults().drop_next(1);
    assert!(
        api.try_call(Method::GET, "/v1/kv/f", Bytes::new())
            .await
            .is_err(),
        "dropped"
    );
    assert_eq!(api.get("/v1/kv/f").await.status, StatusCode::OK);

    emu.faults().set_delay(Duration::from_millis(300));
    let start = Instant::now();
    api.get("/v1/kv/f").await;
    assert!(start.elapsed() >= Duration::from_millis(300));
    emu.faults().set_delay(Duration::ZERO);

    // drop_connections cuts a pending blocking query.
    let index = api.get("/v1/kv/f").await.index();
    let emu_ref = &emu;
    let (outcome, _) = tokio::join!(
        api.try_call(
            Method::GET,
            format!("/v1/kv/f?index={index}&wait=30s"),
            Bytes::new()
        ),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            emu_ref.drop_connections();
        }
    );
    assert!(outcome.is_err());
    assert!(emu.request_count() >= 10);
}

#[tokio::test]
async fn snapshot_restore_moves_the_index_back() {
    let emu = emulator().await;
    let api = Api::new(&emu);
    api.put("/v1/kv/s", "old").await;
    let snapshot = emu.snapshot();
    for i in 0..5 {
        api.put("/v1/kv/s", format!("new{i}")).await;
    }
    let high = api.get("/v1/kv/s").await.index();
    let emu_ref = &emu;
    let (resp, _) = tokio::join!(api.get(format!("/v1/kv/s?index={high}&wait=30s")), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        emu_ref.restore(&snapshot);
    });
    assert!(resp.index() < high, "the index went backwards");
    assert_eq!(resp.json()[0]["Value"], b64("old"));
    assert_eq!(emu.index(), snapshot.index());
}
