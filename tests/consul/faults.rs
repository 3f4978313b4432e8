//! Dropped connections, agent restarts and 429/503 answers: retryable, and watches and waiters resume.

use std::time::Duration;

use futures::StreamExt;
use kvkit::consul::Consul;
use kvkit::testing::consul_emulator::ConsulEmulator;
use kvkit::{ErrorKind, Kv, LockGuard, LockOptions, PutOptions};
use tokio::time::timeout;

use crate::consul_support::{certificates, client_config, emulator_config, read_until, setup};

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
