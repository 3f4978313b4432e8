//! Consul's own semantics: typed errors, prefixes, TTL keys on shared sessions.

use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use kvkit::consul::{Consul, ConsulConfig};
use kvkit::testing::consul_emulator::ConsulEmulator;
use kvkit::{ErrorKind, Kv, PutOptions};
use tokio::time::Instant;

use crate::consul_support::{client_config, emulator_config, raw_request, setup};
use crate::streams::keys;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_typed() {
    let (emu, kv) = setup().await;
    // Too large: refused before sending.
    let before = emu.request_count();
    let err = kv
        .put("big", vec![0u8; 512 * 1024 + 1], PutOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueTooLarge);
    assert_eq!(emu.request_count(), before, "nothing was sent");
    kv.put("big", vec![7u8; 512 * 1024], PutOptions::default())
        .await
        .unwrap();
    assert_eq!(kv.get("big").await.unwrap().value.len(), 512 * 1024);
    // 5xx: Unavailable (retryable).
    emu.faults().fail_next(1);
    let err = kv.get("big").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.is_retryable());
    // Timeout: Unavailable.
    let slow = Kv::new(
        Consul::connect(client_config(&emu).request_timeout(Duration::from_millis(300)))
            .await
            .unwrap(),
    );
    emu.faults().set_delay(Duration::from_secs(1));
    assert_eq!(
        slow.get("big").await.unwrap_err().kind(),
        ErrorKind::Unavailable
    );
    emu.faults().set_delay(Duration::ZERO);
    // Nobody listening: Unavailable.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = Consul::connect(ConsulConfig::new(format!("127.0.0.1:{port}")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    // A second address is used after the first fails.
    let mut config = client_config(&emu);
    config.endpoints = vec![format!("127.0.0.1:{port}"), emu.url()];
    let failover = Kv::new(
        Consul::connect(config)
            .await
            .unwrap_or_else(|_| panic!("connect")),
    );
    let _ = failover.get("big").await;
    assert_eq!(failover.get("big").await.unwrap().value.len(), 512 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_isolate_and_foreign_keys_are_skipped() {
    let emu = ConsulEmulator::start(emulator_config()).await.unwrap();
    let a = Kv::new(
        Consul::connect(client_config(&emu).prefix("/app-a/"))
            .await
            .unwrap(),
    );
    let b = Kv::new(
        Consul::connect(client_config(&emu).prefix("app-b"))
            .await
            .unwrap(),
    );
    let root = Kv::new(Consul::connect(client_config(&emu)).await.unwrap());
    a.put("x/1", "a", PutOptions::default()).await.unwrap();
    b.put("x/1", "b", PutOptions::default()).await.unwrap();
    assert_eq!(a.get("x/1").await.unwrap().value, "a");
    let listed = keys(&a.list("").await.unwrap());
    assert_eq!(listed, ["x/1"]);
    let all = keys(&root.list("").await.unwrap());
    assert_eq!(all, ["app-a/x/1", "app-b/x/1"]);
    a.delete_tree("").await.unwrap();
    assert!(a.list("").await.unwrap().is_empty());
    assert_eq!(b.get("x/1").await.unwrap().value, "b");
    // A folder marker written by another client ("dir/") is not a kvkit key.
    let (status, _) = raw_request(&emu.url(), Method::PUT, "/v1/kv/app-b/x/", Bytes::new()).await;
    assert_eq!(status, StatusCode::OK);
    let listed = keys(&b.list("x").await.unwrap());
    assert_eq!(listed, ["x/1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_keys_expire_within_the_bound_and_sessions_do_not_leak() {
    let (emu, kv) = setup().await;
    let ttl = Duration::from_secs(1);
    let caps = kv.capabilities();
    let bound = ttl * caps.ttl_expiry_factor + caps.ttl_granularity;
    let start = Instant::now();
    for i in 0..10 {
        kv.put(format!("ttl/k{i}"), "v", PutOptions::with_ttl(ttl))
            .await
            .unwrap();
    }
    kv.put("ttl/forever", "v", PutOptions::default())
        .await
        .unwrap();
    assert!(
        emu.session_ids().len() <= 2,
        "keys with one TTL share sessions: {:?}",
        emu.session_ids()
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        kv.list("ttl").await.unwrap().len(),
        11,
        "alive before the TTL"
    );
    let mut gone_at = None;
    while start.elapsed() < bound + Duration::from_secs(2) {
        if kv.list("ttl").await.unwrap().len() == 1 {
            gone_at = Some(start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gone_at = gone_at.expect("TTL keys gone");
    assert!(
        gone_at >= ttl && gone_at <= bound,
        "gone after {gone_at:?}, bound {bound:?}"
    );
    assert!(kv.exists("ttl/forever").await.unwrap());
    assert!(
        emu.session_ids().is_empty(),
        "TTL sessions end by themselves: {:?}",
        emu.session_ids()
    );
}
