//! Conformance checks of locks: exclusion, waking waiters, loss, TTL renewal, and
//! hidden bookkeeping.

use std::time::Duration;

use bytes::Bytes;

use super::PROMPTLY;
use super::support::{expect_kind, fresh_dir, keys_values, lock_options, ok};
use crate::backend::{Backend, LockGuard, PutOptions};
use crate::error::ErrorKind;
use crate::kv::Kv;

/// Lock, see the value, refuse a second holder, unlock, relock.
pub async fn lock_unlock_relock<B: Backend>(kv: &Kv<B>) {
    let dir = fresh_dir(kv, "lock_unlock").await;
    let key = format!("{dir}/lock");
    let guard = ok("lock", kv.lock(&key, lock_options("one")).await);
    assert_eq!(guard.key(), key);
    assert!(!guard.is_lost());
    assert_eq!(
        ok("lock value", kv.get(&key).await).value,
        "one",
        "the key holds the lock's value"
    );
    assert!(
        ok(
            "try_lock held",
            kv.try_lock(&key, lock_options("two")).await
        )
        .is_none(),
        "mutual exclusion"
    );
    ok("unlock", guard.unlock().await);
    let again = ok(
        "try_lock after unlock",
        kv.try_lock(&key, lock_options("two")).await,
    )
    .expect("a released lock can be taken again");
    assert_eq!(ok("lock value", kv.get(&key).await).value, "two");
    drop(again);
    // Dropping the guard releases the lock (in the background).
    let relocked = tokio::time::timeout(PROMPTLY, kv.lock(&key, lock_options("three"))).await;
    let relocked = ok(
        "relock after drop",
        relocked.expect("relock after drop within PROMPTLY"),
    );
    ok("unlock", relocked.unlock().await);
}

/// A waiter is woken promptly when the holder unlocks, and exclusion holds throughout.
pub async fn lock_wakes_waiter<B: Backend>(kv: &Kv<B>) {
    let dir = fresh_dir(kv, "lock_waiter").await;
    let key = format!("{dir}/lock");
    let holder = ok("lock", kv.lock(&key, lock_options("holder")).await);
    let waiter = {
        let kv = kv.clone();
        let key = key.clone();
        tokio::spawn(async move { kv.lock(&key, lock_options("waiter")).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiter.is_finished(),
        "the waiter waits while the lock is held"
    );
    assert_eq!(ok("value", kv.get(&key).await).value, "holder");
    ok("unlock", holder.unlock().await);
    let taken = tokio::time::timeout(PROMPTLY, waiter)
        .await
        .expect("the waiter is woken promptly")
        .expect("waiter task");
    let taken = ok("waiter lock", taken);
    assert_eq!(ok("value", kv.get(&key).await).value, "waiter");
    ok("unlock", taken.unlock().await);
}

/// A lock whose key is deleted by someone else is lost, and the guard says so.
pub async fn lock_lost_when_key_taken<B: Backend>(kv: &Kv<B>) {
    let dir = fresh_dir(kv, "lock_lost").await;
    let key = format!("{dir}/lock");
    let guard = ok("lock", kv.lock(&key, lock_options("mine")).await);
    let lost = guard.lost();
    ok("someone deletes the lock key", kv.delete(&key).await);
    tokio::time::timeout(PROMPTLY, lost)
        .await
        .expect("the lost future resolves when the lock key is taken away");
    assert!(guard.is_lost());
    expect_kind(
        "unlock of a lost lock",
        guard.unlock().await,
        ErrorKind::LockLost,
    );
    let next = ok(
        "lock after loss",
        kv.try_lock(&key, lock_options("next")).await,
    );
    assert!(next.is_some(), "the lock is free again");
}

/// A TTL lock is renewed while its guard lives, so it outlives its TTL.
pub async fn lock_ttl_renewal<B: Backend>(kv: &Kv<B>) {
    let dir = fresh_dir(kv, "lock_ttl").await;
    let key = format!("{dir}/lock");
    let caps = kv.capabilities();
    let ttl = caps.effective_ttl(Duration::from_millis(600));
    let guard = ok(
        "lock with ttl",
        kv.lock(&key, lock_options("ttl").ttl(ttl)).await,
    );
    tokio::time::sleep(ttl * caps.ttl_expiry_factor + ttl + caps.ttl_granularity).await;
    assert!(!guard.is_lost(), "renewed in the background");
    assert_eq!(ok("value", kv.get(&key).await).value, "ttl");
    assert!(
        ok("try_lock", kv.try_lock(&key, lock_options("x")).await).is_none(),
        "still held after its ttl"
    );
    ok("unlock", guard.unlock().await);
    assert!(
        ok(
            "try_lock after unlock",
            kv.try_lock(&key, lock_options("x")).await
        )
        .is_some()
    );
}

/// Lock bookkeeping (contenders, sessions, side keys) never shows in `list`.
pub async fn lock_bookkeeping_hidden<B: Backend>(kv: &Kv<B>) {
    let dir = fresh_dir(kv, "lock_hidden").await;
    let key = format!("{dir}/lock");
    ok(
        "put neighbour",
        kv.put(format!("{dir}/plain"), "p", PutOptions::default())
            .await,
    );
    let holder = ok("lock", kv.lock(&key, lock_options("held")).await);
    let waiter = {
        let kv = kv.clone();
        let key = key.clone();
        tokio::spawn(async move { kv.lock(&key, lock_options("waiting")).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let want = vec![
        (key.clone(), Bytes::from("held")),
        (format!("{dir}/plain"), Bytes::from("p")),
    ];
    assert_eq!(
        keys_values(&ok("list", kv.list(&dir).await)),
        want,
        "only the lock key is visible"
    );
    let root = ok("list root", kv.list("").await);
    assert!(
        root.iter()
            .all(|p| !p.key.starts_with(&dir) || want.iter().any(|(k, _)| k == &p.key)),
        "no bookkeeping below the dir in list(\"\")"
    );
    ok("unlock", holder.unlock().await);
    let second = ok(
        "waiter",
        tokio::time::timeout(PROMPTLY, waiter)
            .await
            .expect("woken")
            .expect("task"),
    );
    ok("unlock", second.unlock().await);
    let after = ok("list", kv.list(&dir).await);
    assert_eq!(
        keys_values(&after),
        vec![(format!("{dir}/plain"), Bytes::from("p"))],
        "nothing left behind"
    );
}
