//! Locks on Consul sessions: exclusion, lost sessions, lock-delay.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use kvkit::consul::Consul;
use kvkit::testing::consul_emulator::ConsulEmulator;
use kvkit::{ErrorKind, Kv, LockGuard, LockOptions};
use tokio::time::{Instant, timeout};

use crate::consul_support::{client_config, emulator_config, raw_request, setup};

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
    let path = format!("/v1/session/destroy/{}", guard.session_id());
    let (status, _) = raw_request(&emu.url(), Method::PUT, &path, Bytes::new()).await;
    assert_eq!(status, StatusCode::OK);
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
