//! HTTPS with a generated CA, client certificates, and ACL tokens.

use std::time::Duration;

use futures::StreamExt;
use kvkit::consul::Consul;
use kvkit::testing::consul_emulator::ConsulEmulator;
use kvkit::{ErrorKind, Kv, PutOptions};
use tokio::time::timeout;

use crate::consul_support::{certificates, client_config, emulator_config};
use crate::errors;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_generated_ca_and_a_wrong_ca_refused() {
    let (ca_pem, tls) = certificates(&["localhost"]);
    let emu = ConsulEmulator::start(emulator_config().tls(tls))
        .await
        .unwrap();
    let kv = Kv::new(
        Consul::connect(client_config(&emu).ca_pem(ca_pem))
            .await
            .unwrap(),
    );
    let put = kv
        .put("secure/k", "v", PutOptions::default())
        .await
        .unwrap();
    assert_eq!(kv.get("secure/k").await.unwrap(), put);

    let (other_ca, _) = certificates(&["localhost"]);
    let err = Consul::connect(client_config(&emu).ca_pem(other_ca))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
    assert!(
        errors::cause::<rustls::Error>(&err).is_some(),
        "a TLS failure keeps what rustls raised: {err}"
    );
    // No CA at all (system roots): refused too.
    let err = Consul::connect(client_config(&emu)).await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_presented() {
    let (ca_pem, mut tls) = certificates(&["localhost"]);
    // A client CA and a client certificate it signed.
    let client_ca_key = rcgen::KeyPair::generate().unwrap();
    let mut client_ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    client_ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let client_ca = client_ca_params.self_signed(&client_ca_key).unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client_cert = rcgen::CertificateParams::new(vec!["client".to_string()])
        .unwrap()
        .signed_by(
            &client_key,
            &rcgen::Issuer::from_params(&client_ca_params, &client_ca_key),
        )
        .unwrap();
    tls.client_ca_pem = Some(client_ca.pem());
    let emu = ConsulEmulator::start(emulator_config().tls(tls))
        .await
        .unwrap();

    let mut config = client_config(&emu).ca_pem(ca_pem.clone());
    let tls = config.tls.get_or_insert_with(Default::default);
    tls.cert_pem = Some(client_cert.pem());
    tls.key_pem = Some(client_key.serialize_pem());
    let kv = Kv::new(Consul::connect(config).await.unwrap());
    kv.put("mtls", "ok", PutOptions::default()).await.unwrap();
    assert_eq!(kv.get("mtls").await.unwrap().value, "ok");

    let without = Consul::connect(client_config(&emu).ca_pem(ca_pem)).await;
    assert!(
        without.is_err(),
        "a client without a certificate is refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_tokens() {
    let emu = ConsulEmulator::start(emulator_config().acl_token("s3cret"))
        .await
        .unwrap();
    let wrong = Kv::new(
        Consul::connect(client_config(&emu).token("nope"))
            .await
            .unwrap(),
    );
    let err = wrong
        .put("k", "v", PutOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert_eq!(
        wrong.get("k").await.unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
    let none = Kv::new(Consul::connect(client_config(&emu)).await.unwrap());
    assert_eq!(
        none.list("").await.unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
    // A watch reports the refusal instead of ending silently.
    let mut watch = none.watch("k").await.unwrap();
    let item = timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(item.unwrap_err().kind(), ErrorKind::PermissionDenied);

    let right = Kv::new(
        Consul::connect(client_config(&emu).token("s3cret"))
            .await
            .unwrap(),
    );
    right.put("k", "v", PutOptions::default()).await.unwrap();
    assert_eq!(right.get("k").await.unwrap().value, "v");
}
