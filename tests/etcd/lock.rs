//! Locks on etcd: exclusion, waking waiters in arrival order, hidden bookkeeping.

use std::time::{Duration, Instant};

use kvkit::testing::etcd_server::EtcdServer;
use kvkit::{LockGuard, LockOptions, PutOptions};

use crate::etcd_support::{STEP, connect};
use crate::streams::values;

#[tokio::test]
async fn locks_exclude_wake_waiters_and_hide_their_bookkeeping() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config()).await;
    let other = connect(server.config()).await;
    kv.put("locks/neighbour", "n", PutOptions::default())
        .await
        .unwrap();

    let guard = kv
        .lock("locks/job", LockOptions::default().value("me"))
        .await
        .unwrap();
    assert_eq!(guard.key(), "locks/job");
    assert_eq!(kv.get("locks/job").await.unwrap().value, "me");
    // Bookkeeping is invisible: only user keys are listed.
    assert_eq!(
        values(&kv.list("").await.unwrap()),
        [
            ("locks/job".into(), "me".into()),
            ("locks/neighbour".into(), "n".into())
        ]
    );
    assert!(
        other
            .try_lock("locks/job", LockOptions::default().value("other"))
            .await
            .unwrap()
            .is_none()
    );
    // A lock on a key below is a different lock.
    let below = other
        .try_lock("locks/job/sub", LockOptions::default())
        .await
        .unwrap()
        .expect("a nested key is a separate lock");

    let waiter = {
        let other = other.clone();
        tokio::spawn(async move {
            let guard = other
                .lock("locks/job", LockOptions::default().value("second"))
                .await
                .unwrap();
            (Instant::now(), guard)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiter.is_finished(),
        "the waiter must wait while the lock is held"
    );
    let released = Instant::now();
    guard.unlock().await.unwrap();
    let (acquired, second) = tokio::time::timeout(STEP, waiter).await.unwrap().unwrap();
    assert!(
        acquired.duration_since(released) < Duration::from_secs(1),
        "the waiter must be woken promptly, took {:?}",
        acquired.duration_since(released)
    );
    assert_eq!(kv.get("locks/job").await.unwrap().value, "second");
    assert!(!second.is_lost());

    // Drop releases in the background.
    drop(second);
    let deadline = Instant::now() + STEP;
    let third = loop {
        if let Some(guard) = kv
            .try_lock("locks/job", LockOptions::default())
            .await
            .unwrap()
        {
            break guard;
        }
        assert!(Instant::now() < deadline, "a dropped lock must be released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    third.unlock().await.unwrap();
    below.unlock().await.unwrap();
    assert!(!kv.exists("locks/job").await.unwrap());
    assert_eq!(kv.list("").await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_waiters_are_served_in_arrival_order() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config()).await;
    let holder = kv.lock("fifo", LockOptions::default()).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut waiters = Vec::new();
    for i in 0..3 {
        let kv = kv.clone();
        let tx = tx.clone();
        waiters.push(tokio::spawn(async move {
            let guard = kv
                .lock("fifo", LockOptions::default().value(format!("w{i}")))
                .await
                .unwrap();
            tx.send(i).unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            guard.unlock().await.unwrap();
        }));
        // Let waiter i register before waiter i + 1.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    holder.unlock().await.unwrap();
    let mut order = Vec::new();
    for _ in 0..3 {
        order.push(
            tokio::time::timeout(STEP, rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(order, [0, 1, 2]);
    for waiter in waiters {
        tokio::time::timeout(STEP, waiter).await.unwrap().unwrap();
    }
    assert!(!kv.exists("fifo").await.unwrap());
}
