//! The Consul backend against the Consul API emulator (and against a real Consul when
//! `KVKIT_CONSUL_ADDR` is set, with the token from `KVKIT_CONSUL_TOKEN`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use kvkit::consul::{Consul, ConsulConfig};
use kvkit::testing::consul_emulator::{ConsulEmulator, EmulatorConfig, EmulatorTls};
use kvkit::testing::{conformance, model};
use kvkit::{ErrorKind, Kv, KvPair, LockGuard, LockOptions, PutOptions};
use tokio::time::{Instant, timeout};

fn emulator_config() -> EmulatorConfig {
    EmulatorConfig::default().session_ttl_min(Duration::from_secs(1))
}

fn client_config(emu: &ConsulEmulator) -> ConsulConfig {
    ConsulConfig::new(emu.url())
        .min_session_ttl(Duration::from_secs(1))
        .lock_ttl(Duration::from_secs(2))
        .lock_delay(Duration::from_millis(200))
        .wait(Duration::from_secs(5))
}

async fn setup() -> (ConsulEmulator, Kv<Consul>) {
    let emu = ConsulEmulator::start(emulator_config()).await.unwrap();
    let kv = Kv::new(Consul::connect(client_config(&emu)).await.unwrap());
    (emu, kv)
}

/// The real Consul named by `KVKIT_CONSUL_ADDR`, if any.
async fn real_consul() -> Option<Kv<Consul>> {
    let addr = std::env::var("KVKIT_CONSUL_ADDR").ok()?;
    let mut config = ConsulConfig::new(addr).prefix("kvkit-test");
    if let Ok(token) = std::env::var("KVKIT_CONSUL_TOKEN") {
        config = config.token(token);
    }
    if let Some(min) = std::env::var("KVKIT_CONSUL_MIN_TTL")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        config = config.min_session_ttl(Duration::from_secs(min));
    }
    Some(Kv::new(
        Consul::connect(config)
            .await
            .expect("connect to KVKIT_CONSUL_ADDR"),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_against_the_emulator() {
    let (emu, kv) = setup().await;
    conformance::run_all(&kv).await;
    kv.close().await.unwrap();
    // Every lock session was destroyed; only TTL sessions (ending by themselves) may remain.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        emu.session_ids().len() <= 2,
        "sessions left: {:?}",
        emu.session_ids()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_harness_against_the_emulator() {
    let (_emu, kv) = setup().await;
    model::check_against_memory(&kv, model::ModelConfig::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_and_model_against_a_real_consul() {
    let Some(kv) = real_consul().await else {
        eprintln!("NOTICE: KVKIT_CONSUL_ADDR is not set; the real-Consul run is skipped");
        return;
    };
    conformance::run_all(&kv).await;
    model::check_against_memory(
        &kv,
        model::ModelConfig {
            cases: 16,
            ..Default::default()
        },
    )
    .await
    .unwrap();
}

fn certificates(names: &[&str]) -> (String, EmulatorTls) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params
        .signed_by(&key, &rcgen::Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    (
        ca.pem(),
        EmulatorTls {
            cert_chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            client_ca_pem: None,
        },
    )
}

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
    assert!(err.to_string().contains("TLS"), "{err}");
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
    let listed: Vec<String> = a
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(listed, ["x/1"]);
    let all: Vec<String> = root
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(all, ["app-a/x/1", "app-b/x/1"]);
    a.delete_tree("").await.unwrap();
    assert!(a.list("").await.unwrap().is_empty());
    assert_eq!(b.get("x/1").await.unwrap().value, "b");
    // A folder marker written by another client ("dir/") is not a kvkit key.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = hyper::Request::put(format!("{}/v1/kv/app-b/x/", emu.url()))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(client.request(req).await.unwrap().status(), 200);
    let listed: Vec<String> = b
        .list("x")
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(listed, ["x/1"]);
}

/// Reads items until `done` holds or `limit` passes; returns what was read.
async fn read_until<S>(
    stream: &mut S,
    limit: Duration,
    done: impl Fn(&Option<KvPair>) -> bool,
) -> Vec<Option<KvPair>>
where
    S: futures::Stream<Item = kvkit::Result<Option<KvPair>>> + Unpin,
{
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    while let Ok(Some(item)) = tokio::time::timeout_at(deadline, stream.next()).await {
        match item {
            Ok(state) => {
                let finished = done(&state);
                seen.push(state);
                if finished {
                    return seen;
                }
            }
            Err(e) => assert_eq!(
                e.kind(),
                ErrorKind::Unavailable,
                "only outages are reported: {e}"
            ),
        }
    }
    panic!("state not reached within {limit:?}; saw {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_query_without_a_change_yields_nothing() {
    let emu = ConsulEmulator::start(emulator_config()).await.unwrap();
    let kv = Kv::new(
        Consul::connect(client_config(&emu).wait(Duration::from_millis(300)))
            .await
            .unwrap(),
    );
    kv.put("w/k", "v", PutOptions::default()).await.unwrap();
    let mut existing = kv.watch("w/k").await.unwrap();
    let mut missing = kv.watch("w/missing").await.unwrap();
    let mut tree = kv.watch_tree("w/empty").await.unwrap();
    assert_eq!(existing.next().await.unwrap().unwrap().unwrap().value, "v");
    assert_eq!(missing.next().await.unwrap().unwrap(), None);
    assert!(tree.next().await.unwrap().unwrap().is_empty());

    let gets_before = emu.kv_get_count();
    let start = Instant::now();
    // Waits run out (300 ms), Consul returns early without a change, and writes to
    // unrelated keys wake the query on the missing key and the empty tree.
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        emu.wake_blocking_queries();
        kv.put(format!("w/other{i}"), "x", PutOptions::default())
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let quiet = |r: Result<Option<kvkit::Result<Option<KvPair>>>, _>| r.is_err();
    assert!(
        quiet(timeout(Duration::from_millis(10), existing.next()).await),
        "no item for the existing key"
    );
    assert!(
        quiet(timeout(Duration::from_millis(10), missing.next()).await),
        "no duplicate None"
    );
    assert!(
        timeout(Duration::from_millis(10), tree.next())
            .await
            .is_err(),
        "no duplicate empty tree"
    );
    // No busy loop: three watches over ~1.5 s, each returning at most on every wait
    // expiry, wake-up and write, rate-limited.
    let elapsed = start.elapsed().as_secs_f64();
    let gets = emu.kv_get_count() - gets_before;
    assert!(
        gets < 3 * (10 + 10 + (elapsed / 0.3) as u64 + 4),
        "{gets} GETs in {elapsed}s"
    );
    // And a real change still comes through.
    kv.put("w/k", "v2", PutOptions::default()).await.unwrap();
    let seen = read_until(&mut existing, Duration::from_secs(5), |s| {
        s.as_ref().is_some_and(|p| p.value == "v2")
    })
    .await;
    assert_eq!(seen.len(), 1, "exactly the change: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_going_backwards_is_handled() {
    // A blocking query sent after the restore, with the old (higher) index, waits
    // until its wait runs out before it sees the lower index (Consul does the same),
    // so the watch notices the restore within one wait: 1 s here.
    let emu = ConsulEmulator::start(emulator_config()).await.unwrap();
    let kv = Kv::new(
        Consul::connect(client_config(&emu).wait(Duration::from_secs(1)))
            .await
            .unwrap(),
    );
    kv.put("r/k", "old", PutOptions::default()).await.unwrap();
    let snapshot = emu.snapshot();
    for i in 0..5 {
        kv.put("r/k", format!("new{i}"), PutOptions::default())
            .await
            .unwrap();
    }
    let mut watch = kv.watch("r/k").await.unwrap();
    let mut tree = kv.watch_tree("r").await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap().unwrap().value, "new4");
    assert_eq!(tree.next().await.unwrap().unwrap()[0].value, "new4");
    emu.restore(&snapshot);
    // The watch re-syncs to the restored state...
    read_until(&mut watch, Duration::from_secs(5), |s| {
        s.as_ref().is_some_and(|p| p.value == "old")
    })
    .await;
    // ...and keeps following writes made after the restore (whose indexes are lower
    // than the ones it had seen before).
    kv.put("r/k", "after", PutOptions::default()).await.unwrap();
    read_until(&mut watch, Duration::from_secs(5), |s| {
        s.as_ref().is_some_and(|p| p.value == "after")
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let item = tokio::time::timeout_at(deadline, tree.next())
            .await
            .expect("tree converges")
            .unwrap()
            .unwrap();
        if item.len() == 1 && item[0].value == "after" {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_are_retried_and_the_watch_converges() {
    let (emu, kv) = setup().await;
    kv.put("d/k", "v0", PutOptions::default()).await.unwrap();
    let mut watch = kv.watch("d/k").await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap().unwrap().value, "v0");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Cut the pending blocking query, and the next few requests too.
    emu.faults().drop_next(3);
    emu.drop_connections();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A write is not retried by the backend (it may have been applied); the caller
    // retries on Unavailable.
    let mut written = false;
    for _ in 0..5 {
        match kv.put("d/k", "v1", PutOptions::default()).await {
            Ok(_) => {
                written = true;
                break;
            }
            Err(e) => assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}"),
        }
    }
    assert!(written);
    read_until(&mut watch, Duration::from_secs(10), |s| {
        s.as_ref().is_some_and(|p| p.value == "v1")
    })
    .await;

    // A longer outage: 500s for a while. Retries back off (no busy loop), one
    // Unavailable is reported, and the watch converges once the server is back.
    let gets_before = emu.kv_get_count();
    emu.faults().set_failing(true);
    emu.drop_connections();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = emu.kv_get_count() - gets_before;
    assert!(
        during <= 12,
        "backoff bounds the retries: {during} GETs in 3 s"
    );
    let reported = timeout(Duration::from_secs(2), watch.next()).await;
    let err = reported
        .expect("the outage is reported")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    emu.faults().set_failing(false);
    kv.put("d/k", "v2", PutOptions::default()).await.unwrap();
    read_until(&mut watch, Duration::from_secs(10), |s| {
        s.as_ref().is_some_and(|p| p.value == "v2")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_exclude_several_contenders() {
    let (emu, kv) = setup().await;
    let inside = Arc::new(AtomicUsize::new(0));
    let entries = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for who in 0..4 {
        let kv = kv.clone();
        let inside = inside.clone();
        let entries = entries.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..3 {
                let value = format!("c{who}-{round}");
                let guard = timeout(
                    Duration::from_secs(30),
                    kv.lock("locks/shared", LockOptions::default().value(&value)),
                )
                .await
                .expect("lock within 30 s")
                .unwrap();
                assert_eq!(
                    inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two holders at once"
                );
                entries.fetch_add(1, Ordering::SeqCst);
                assert_eq!(
                    kv.get("locks/shared").await.unwrap().value,
                    value.as_bytes()
                );
                tokio::time::sleep(Duration::from_millis(30)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                guard.unlock().await.unwrap();
            }
        }));
    }
    for task in tasks {
        timeout(Duration::from_secs(60), task)
            .await
            .expect("contenders finish")
            .unwrap();
    }
    assert_eq!(entries.load(Ordering::SeqCst), 12);
    assert!(
        !kv.exists("locks/shared").await.unwrap(),
        "unlock leaves nothing"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        emu.session_ids().is_empty(),
        "no session leaked: {:?}",
        emu.session_ids()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_session_is_destroyed_sees_lock_lost() {
    let (emu, kv) = setup().await;
    let guard = kv
        .lock("locks/lost", LockOptions::default().value("me"))
        .await
        .unwrap();
    let session = guard.session_id().to_owned();
    assert!(!guard.is_lost());
    assert!(emu.expire_session(&session));
    timeout(Duration::from_secs(5), guard.lost())
        .await
        .expect("lock-lost within 5 s");
    assert!(guard.is_lost());
    assert_eq!(
        guard.unlock().await.unwrap_err().kind(),
        ErrorKind::LockLost
    );

    // Destroyed through the API by someone else: the same.
    let guard = kv
        .lock("locks/lost2", LockOptions::default().value("me"))
        .await
        .unwrap();
    let other = Kv::new(Consul::connect(client_config(&emu)).await.unwrap());
    let url = format!("{}/v1/session/destroy/{}", emu.url(), guard.session_id());
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = hyper::Request::put(url)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(client.request(req).await.unwrap().status(), 200);
    timeout(Duration::from_secs(5), guard.lost())
        .await
        .expect("lock-lost within 5 s");
    // The key keeps its value but nobody holds it: another contender gets it after
    // the lock-delay.
    let next = timeout(
        Duration::from_secs(5),
        other.lock("locks/lost2", LockOptions::default().value("next")),
    )
    .await
    .expect("taken over")
    .unwrap();
    assert_eq!(other.get("locks/lost2").await.unwrap().value, "next");
    next.unlock().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_delay_is_honoured() {
    let emu = ConsulEmulator::start(emulator_config()).await.unwrap();
    let delay = Duration::from_millis(1500);
    let kv = Kv::new(
        Consul::connect(client_config(&emu).lock_delay(delay))
            .await
            .unwrap(),
    );
    let holder = kv
        .lock("locks/delay", LockOptions::default().value("a"))
        .await
        .unwrap();
    let waiter = {
        let kv = kv.clone();
        tokio::spawn(async move {
            let guard = kv
                .lock("locks/delay", LockOptions::default().value("b"))
                .await
                .unwrap();
            (Instant::now(), guard)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let invalidated = Instant::now();
    assert!(emu.expire_session(holder.session_id()));
    let (taken_at, guard) = timeout(Duration::from_secs(10), waiter)
        .await
        .expect("waiter gets it")
        .unwrap();
    let after = taken_at - invalidated;
    assert!(
        after >= delay - Duration::from_millis(50),
        "taken {after:?} after the invalidation"
    );
    assert!(
        after <= delay + Duration::from_secs(2),
        "taken promptly once the delay ended: {after:?}"
    );
    assert!(!emu.session_ids().is_empty());
    guard.unlock().await.unwrap();
    // A clean unlock starts no lock-delay: the next lock is immediate.
    let start = Instant::now();
    let again = kv
        .try_lock("locks/delay", LockOptions::default())
        .await
        .unwrap();
    assert!(again.is_some() && start.elapsed() < Duration::from_secs(1));
    // try_lock never waits: a held lock gives None at once.
    let start = Instant::now();
    assert!(
        kv.try_lock("locks/delay", LockOptions::default())
            .await
            .unwrap()
            .is_none()
    );
    assert!(start.elapsed() < Duration::from_secs(1));
    drop(again);
    drop(holder);
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

/// A guard dropped right before `close()` is released once `close` returns: its
/// session stays registered until the background release is done, so `close`
/// releases it too. (A current-thread runtime: the background task has not run when
/// `close` starts.)
#[tokio::test(flavor = "current_thread")]
async fn a_guard_dropped_just_before_close_is_released_when_close_returns() {
    let (emu, kv) = setup().await;
    let guard = kv
        .lock("d/lock", LockOptions::default().value("held"))
        .await
        .unwrap();
    assert_eq!(emu.session_ids().len(), 1);
    drop(guard);
    kv.close().await.unwrap();
    assert!(
        emu.session_ids().is_empty(),
        "sessions left after close: {:?}",
        emu.session_ids()
    );
    let other = Kv::new(Consul::connect(client_config(&emu)).await.unwrap());
    assert!(
        !other.exists("d/lock").await.unwrap(),
        "the lock key is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_watches_releases_locks_and_tells_their_guards() {
    let (emu, kv) = setup().await;
    let guard = kv
        .lock("c/lock", LockOptions::default().value("held"))
        .await
        .unwrap();
    let mut watch = kv.watch("c/k").await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap(), None);
    kv.close().await.unwrap();
    let closed = timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the watch reports the close");
    assert!(
        matches!(closed, Some(Err(kvkit::Error::Closed))),
        "{closed:?}"
    );
    let end = timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the watch ends");
    assert!(end.is_none(), "{end:?}");
    // The guard knows at once (its session was destroyed), and the lock is free for
    // others now, not after the session's TTL: a closed handle never goes on
    // believing it holds a lock someone else takes.
    timeout(Duration::from_secs(1), guard.lost())
        .await
        .expect("close fires lost() on the guards");
    let other = Kv::new(Consul::connect(client_config(&emu)).await.unwrap());
    let taken = other
        .try_lock("c/lock", LockOptions::default().value("other"))
        .await
        .unwrap()
        .expect("the closed handle's lock is free at once");
    drop(taken);
    assert_eq!(kv.get("c/k").await.unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(
        kv.put("c/k", "v", PutOptions::default())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Closed
    );
    assert_eq!(kv.watch("c/k").await.unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(
        guard.unlock().await.unwrap_err().kind(),
        ErrorKind::LockLost
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while other.exists("c/lock").await.unwrap() || !emu.session_ids().is_empty() {
        assert!(Instant::now() < deadline, "{:?}", emu.session_ids());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_recipes_against_the_emulator() {
    let (_emu, kv) = setup().await;
    kvkit::testing::recipes::close_ends_recipes(&kv).await;
}

/// PUTs `key` into the emulator as another tool would, unchecked.
async fn raw_put(emu: &ConsulEmulator, key: &str, value: &str) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let mut path = String::new();
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'/' => path.push(b as char),
            _ => path.push_str(&format!("%{b:02X}")),
        }
    }
    let req = hyper::Request::put(format!("{}/v1/kv/{path}", emu.url()))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            value.to_owned(),
        )))
        .unwrap();
    assert_eq!(client.request(req).await.unwrap().status(), 200, "{key:?}");
}

/// The key names below `prefix` in the emulator, read as another tool would.
async fn raw_keys(emu: &ConsulEmulator, prefix: &str) -> Vec<String> {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = hyper::Request::get(format!("{}/v1/kv/{prefix}?keys", emu.url()))
        .body(http_body_util::Full::default())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    if resp.status() == 404 {
        return Vec::new();
    }
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

/// `delete_tree` deletes `dir` and the kvkit keys below it, never a key another tool
/// wrote there in a form kvkit never writes (also at the root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_written_by_other_tools_are_never_deleted_by_delete_tree() {
    let (emu, kv) = setup().await;
    let long = format!("f/{}", "x".repeat(kvkit::key::MAX_KEY_LEN));
    let mut foreign = vec![
        "f/".to_owned(),
        "f//double".to_owned(),
        "f/./dot".to_owned(),
        "f/a/".to_owned(),
        "f/ctl\u{1}".to_owned(),
        "f/del\u{7f}".to_owned(),
        long,
    ];
    for key in &foreign {
        raw_put(&emu, key, "foreign").await;
    }
    let mine = ["f", "f/a", "f/b/c", "f/z"];
    for key in mine {
        kv.put(key, "mine", PutOptions::default()).await.unwrap();
    }
    kv.put("fx/sibling", "kept", PutOptions::default())
        .await
        .unwrap();
    kv.delete_tree("f").await.unwrap();
    foreign.sort();
    let mut left = foreign.clone();
    left.push("fx/sibling".to_owned());
    left.sort();
    assert_eq!(raw_keys(&emu, "f").await, left);
    kv.put("r/x", "mine", PutOptions::default()).await.unwrap();
    kv.delete_tree("").await.unwrap();
    assert_eq!(raw_keys(&emu, "").await, foreign);
}

/// Foreign keys written below `dir` while `delete_tree(dir)` runs survive it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_keys_written_during_delete_tree_survive_it() {
    let (emu, kv) = setup().await;
    let emu = Arc::new(emu);
    let writer = tokio::spawn({
        let emu = emu.clone();
        async move {
            for i in 0..300 {
                raw_put(&emu, &format!("c//n{i:03}"), "foreign").await;
            }
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
    assert_eq!(
        raw_keys(&emu, "c/").await.len(),
        300,
        "foreign keys were deleted"
    );
}

/// Keys another tool wrote in a form kvkit never writes are not kvkit keys: never
/// listed, never in a tree watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_written_by_other_tools_are_never_listed_or_watched() {
    let (emu, kv) = setup().await;
    kv.put("f/ok", "mine", PutOptions::default()).await.unwrap();
    let long = format!("f/{}", "x".repeat(kvkit::key::MAX_KEY_LEN));
    let foreign = [
        "f//double",
        "f/./dot",
        "f/trailing/",
        "f/ctl\u{1}",
        "f/del\u{7f}",
        long.as_str(),
    ];
    for key in foreign {
        raw_put(&emu, key, "foreign").await;
    }
    let listed: Vec<String> = kv
        .list("f")
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(listed, ["f/ok"]);
    let everything: Vec<String> = kv
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(everything, ["f/ok"]);
    let mut tree = kv.watch_tree("f").await.unwrap();
    let first: Vec<String> = tree
        .next()
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(first, ["f/ok"]);
    raw_put(&emu, "f//late", "foreign").await;
    kv.put("f/ok2", "mine", PutOptions::default())
        .await
        .unwrap();
    let next = timeout(Duration::from_secs(10), tree.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let keys: Vec<String> = next.into_iter().map(|p| p.key).collect();
    assert_eq!(keys, ["f/ok", "f/ok2"]);
}

/// A TLS connection cut without close_notify, an agent that is down for a while (new
/// connections closed before the handshake) and HTTP 429/503 answers are all
/// retryable `Unavailable`: calls can be retried, and watches and lock waiters resume
/// once the agent is back, still over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_survives_dropped_connections_and_agent_restarts() {
    let (ca_pem, tls) = certificates(&["localhost"]);
    let emu = ConsulEmulator::start(emulator_config().tls(tls))
        .await
        .unwrap();
    let config = client_config(&emu)
        .ca_pem(ca_pem)
        .request_timeout(Duration::from_secs(2));
    let kv = Kv::new(Consul::connect(config.clone()).await.unwrap());
    let other = Kv::new(Consul::connect(config).await.unwrap());
    kv.put("t/k", "v0", PutOptions::default()).await.unwrap();
    let mut watch = kv.watch("t/k").await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap().unwrap().value, "v0");
    let holder = kv.lock("t/lock", LockOptions::default()).await.unwrap();
    let waiter = tokio::spawn(async move {
        let guard = other
            .lock("t/lock", LockOptions::default().value("waiter"))
            .await;
        guard.map(|g| (other, g))
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Cut every connection (TLS streams closed without close_notify, blocking queries
    // included) while the agent refuses new ones, as during a restart.
    emu.faults().set_refusing(true);
    emu.drop_connections();
    let err = kv.get("t/k").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    emu.faults().set_refusing(false);

    // Rate limited and unavailable answers are retryable too.
    emu.faults().respond_next(429, 1);
    let err = kv.get("t/k").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "429: {err}");
    emu.faults().respond_next(503, 1);
    let err = kv.get("t/k").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "503: {err}");

    // The watch resumes: every error it reports is retryable, and it sees v1.
    kv.put("t/k", "v1", PutOptions::default()).await.unwrap();
    let seen = timeout(Duration::from_secs(20), async {
        loop {
            match watch.next().await.expect("the watch keeps going") {
                Ok(Some(pair)) if pair.value == "v1" => return,
                Ok(_) => {}
                Err(err) => assert!(err.is_retryable(), "the watch gave up: {err}"),
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "the watch resumed after the agent came back");

    // The waiter is still waiting, and takes the lock once it is released.
    assert!(
        !waiter.is_finished(),
        "the waiter gave up during the outage"
    );
    assert!(!holder.is_lost(), "a short outage does not lose the lock");
    holder.unlock().await.unwrap();
    let (other, guard) = timeout(Duration::from_secs(20), waiter)
        .await
        .expect("the waiter resumed waiting and took the lock")
        .unwrap()
        .expect("the waiter got the lock");
    assert_eq!(other.get("t/lock").await.unwrap().value, "waiter");
    guard.unlock().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipes_work_against_the_emulator() {
    let (_emu, kv) = setup().await;
    kvkit::testing::recipes::run_all(&kv).await;
}

/// Requests the emulator received during `op`: (all requests, `GET /v1/kv/..` reads).
async fn counted<T, F: std::future::Future<Output = T>>(
    emu: &ConsulEmulator,
    op: F,
) -> (T, u64, u64) {
    let (requests, gets) = (emu.request_count(), emu.kv_get_count());
    let out = op.await;
    (
        out,
        emu.request_count() - requests,
        emu.kv_get_count() - gets,
    )
}

/// Waits (at most 5 s) until the emulator has received `gets` KV reads in all.
async fn until_kv_gets(emu: &ConsulEmulator, gets: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while emu.kv_get_count() < gets && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(emu.kv_get_count(), gets, "KV reads received");
}

/// Pins the round trips of docs/consul.md ("Round trips per operation"), counted by
/// the emulator's request counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_per_operation_match_the_docs() {
    let emu = ConsulEmulator::start(emulator_config()).await.unwrap();
    // A long blocking-query wait and lock TTL, so no query returns without a change and
    // no session renewal happens while counting.
    let kv = Kv::new(
        Consul::connect(
            client_config(&emu)
                .wait(Duration::from_secs(60))
                .lock_ttl(Duration::from_secs(60)),
        )
        .await
        .unwrap(),
    );
    let opts = PutOptions::default;

    let (r, req, gets) = counted(&emu, kv.put("d/k", "v1", opts())).await;
    let first = r.unwrap();
    assert_eq!((req, gets), (1, 0), "put: one txn");
    let (r, req, gets) = counted(&emu, kv.get("d/k")).await;
    assert_eq!(r.unwrap().value, "v1");
    assert_eq!((req, gets), (1, 1), "get");
    let (r, req, gets) = counted(&emu, kv.exists("d/missing")).await;
    assert!(!r.unwrap());
    assert_eq!((req, gets), (1, 1), "exists");
    let (r, req, gets) = counted(&emu, kv.list("d")).await;
    assert_eq!(r.unwrap().len(), 1);
    assert_eq!((req, gets), (1, 1), "list");
    let (r, req, gets) = counted(&emu, kv.atomic_put("d/n", "v", None, opts())).await;
    r.unwrap();
    assert_eq!((req, gets), (1, 0), "atomic_put(None)");
    let (r, req, _) = counted(&emu, kv.atomic_put("d/n", "v", None, opts())).await;
    assert_eq!(r.unwrap_err().kind(), ErrorKind::KeyExists);
    assert_eq!(req, 1, "atomic_put(None) on an existing key");
    let (r, req, gets) = counted(&emu, kv.atomic_put("d/k", "v2", Some(&first), opts())).await;
    let second = r.unwrap();
    assert_eq!((req, gets), (1, 0), "atomic_put(Some)");
    let (r, req, _) = counted(&emu, kv.atomic_put("d/k", "v3", Some(&first), opts())).await;
    assert_eq!(r.unwrap_err().kind(), ErrorKind::KeyModified);
    assert_eq!(req, 1, "a stale atomic_put");
    let (r, req, gets) = counted(&emu, kv.atomic_delete("d/k", &second)).await;
    r.unwrap();
    assert_eq!((req, gets), (1, 0), "atomic_delete");
    let (r, req, gets) = counted(&emu, kv.delete("d/n")).await;
    r.unwrap();
    assert_eq!((req, gets), (1, 0), "delete");
    kv.put("d/a/b", "v", opts()).await.unwrap();
    // delete_tree: `GET ?keys` (to spare keys other tools wrote), then one txn
    // deleting `d` and the keys read by name, 64 per txn.
    let (r, req, gets) = counted(&emu, kv.delete_tree("d")).await;
    r.unwrap();
    assert_eq!((req, gets), (2, 1), "delete_tree");
    assert!(kv.list("d").await.unwrap().is_empty());
    for i in 0..130 {
        kv.put(format!("big/{i:03}"), "v", opts()).await.unwrap();
    }
    let (r, req, gets) = counted(&emu, kv.delete_tree("big")).await;
    r.unwrap();
    assert_eq!(
        (req, gets),
        (4, 1),
        "delete_tree of 130 keys: 131 deletes in 3 txns"
    );
    assert!(kv.list("big").await.unwrap().is_empty());

    // watch_tree: 1 read to start, then 1 blocking query per change, no other read.
    kv.put("w/a", "1", opts()).await.unwrap();
    let start = emu.kv_get_count();
    let mut tree = kv.watch_tree("w").await.unwrap();
    let first = timeout(Duration::from_secs(10), tree.next()).await.unwrap();
    assert_eq!(first.unwrap().unwrap().len(), 1);
    // The initial read, then the blocking query waiting for a change.
    until_kv_gets(&emu, start + 2).await;
    for round in 0..3u64 {
        let (requests, gets) = (emu.request_count(), emu.kv_get_count());
        kv.put(format!("w/k{round}"), "v", opts()).await.unwrap();
        let item = timeout(Duration::from_secs(10), tree.next()).await.unwrap();
        assert_eq!(item.unwrap().unwrap().len(), 2 + round as usize);
        // The query that returned the change is re-armed once, and nothing else.
        until_kv_gets(&emu, gets + 1).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            (emu.request_count() - requests, emu.kv_get_count() - gets),
            (2, 1),
            "one change seen by watch_tree: the put and one blocking query"
        );
    }
    drop(tree);

    // Locks: a session and a txn (the guard's monitor then blocks on the key in the
    // background); a held try_lock also destroys its session; unlock is txn + destroy.
    let before = emu.kv_get_count();
    let (guard, req, gets) = counted(&emu, kv.lock("lk", LockOptions::default())).await;
    let guard = guard.unwrap();
    assert_eq!(req - gets, 2, "lock when free: session create + txn");
    // The guard's monitor: one blocking query on the lock key, in the background.
    until_kv_gets(&emu, before + 1).await;
    let (r, req, gets) = counted(&emu, kv.try_lock("lk", LockOptions::default())).await;
    assert!(r.unwrap().is_none());
    assert_eq!((req, gets), (3, 0), "try_lock on a held lock");
    let (r, req, gets) = counted(&emu, guard.unlock()).await;
    r.unwrap();
    assert_eq!((req, gets), (2, 0), "unlock: txn + session destroy");
    kv.close().await.unwrap();
}
