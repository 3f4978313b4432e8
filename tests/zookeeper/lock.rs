//! Locks: exclusion and waiting, loss on session expiry and on TTL, abandoned waiters,
//! and the lock key as an ordinary key.

use std::time::Duration;

use kvkit::testing::zookeeper_server::{ProxyMode, TcpProxy, ZkServer};
use kvkit::zookeeper::ZookeeperConfig;
use kvkit::{ErrorKind, LockGuard, LockOptions, PutOptions};

use crate::streams::values;
use crate::zookeeper_support::raw_client;
use crate::{WAIT, behind, connect, connect_with, kind, shared_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_exclude_wake_waiters_and_leave_nothing_behind() {
    let Some(turn) = shared_server().await else {
        return;
    };
    let server = turn.addr();
    let kv = &connect(turn.addr(), "/kvkit-locks").await;
    let other = connect(server, "/kvkit-locks").await;
    let guard = kv
        .lock("l/job", LockOptions::default().value("one"))
        .await
        .unwrap();
    assert_eq!(kv.get("l/job").await.unwrap().value, "one");
    assert!(
        other
            .try_lock("l/job", LockOptions::default().value("two"))
            .await
            .unwrap()
            .is_none()
    );
    // Contender bookkeeping is invisible.
    assert_eq!(
        values(&kv.list("l").await.unwrap()),
        [("l/job".into(), "one".into())]
    );
    assert!(
        kv.list("")
            .await
            .unwrap()
            .iter()
            .all(|p| !p.key.contains("c-"))
    );

    let waiter = tokio::spawn({
        let other = other.clone();
        async move {
            other
                .lock("l/job", LockOptions::default().value("two"))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the second lock must wait");
    assert!(!guard.is_lost());
    guard.unlock().await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("a released lock wakes the waiter promptly")
        .unwrap()
        .unwrap();
    assert_eq!(kv.get("l/job").await.unwrap().value, "two");
    drop(second); // releases in the background
    let mut relocked = None;
    for _ in 0..50 {
        if let Some(g) = kv
            .try_lock("l/job", LockOptions::default().value("three"))
            .await
            .unwrap()
        {
            relocked = Some(g);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let relocked = relocked.expect("relock after the drop released the lock");
    relocked.unlock().await.unwrap();
    assert_eq!(kind(kv.get("l/job").await), ErrorKind::NotFound);

    // Mutual exclusion: two clients, a shared non-atomic counter.
    kv.put("l/count", "0", PutOptions::default()).await.unwrap();
    let mut tasks = Vec::new();
    for client in [kv.clone(), other.clone()] {
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                let g = client
                    .lock("l/mutex", LockOptions::default())
                    .await
                    .unwrap();
                let n: u64 = std::str::from_utf8(&client.get("l/count").await.unwrap().value)
                    .unwrap()
                    .parse()
                    .unwrap();
                client
                    .put("l/count", (n + 1).to_string(), PutOptions::default())
                    .await
                    .unwrap();
                g.unlock().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(kv.get("l/count").await.unwrap().value, "10");

    // A failed try_lock leaves nothing behind that could block the next one.
    let held = kv.lock("l/quick", LockOptions::default()).await.unwrap();
    for _ in 0..3 {
        assert!(
            other
                .try_lock("l/quick", LockOptions::default())
                .await
                .unwrap()
                .is_none()
        );
    }
    held.unlock().await.unwrap();
    let next = other
        .try_lock("l/quick", LockOptions::default())
        .await
        .unwrap();
    assert!(next.is_some(), "free right after the unlock");
    next.unwrap().unlock().await.unwrap();
    other.close().await.unwrap();
    kv.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_loss_uses_the_granted_session_timeout() {
    use kvkit::testing::zookeeper_server::ZkServerSettings;
    // Asked 8 s, granted 4 s (scaled down from 30 s against a maximum of 20 s).
    let Some(server) = ZkServer::start_with(ZkServerSettings {
        max_session_timeout_ms: 4_000,
        ..ZkServerSettings::default()
    }) else {
        return;
    };
    let addr = server.connect_string();
    let root = "/kvkit-granted";
    let proxy = TcpProxy::start(server.addr()).await.unwrap();
    let holder = behind(&proxy, root, Duration::from_secs(8), Duration::from_secs(2)).await;
    let other = connect(&addr, root).await;
    let guard = holder
        .lock("l", LockOptions::default().value("a"))
        .await
        .unwrap();
    // A silent partition: nothing gets through, the connection stays open.
    proxy.set_mode(ProxyMode::Silent);
    let cut = tokio::time::Instant::now();
    let contender = {
        let other = other.clone();
        tokio::spawn(async move {
            let guard = other
                .lock("l", LockOptions::default().value("b"))
                .await
                .unwrap();
            (tokio::time::Instant::now(), guard)
        })
    };
    tokio::time::timeout(Duration::from_secs(30), guard.lost())
        .await
        .expect("the cut-off holder learns of its loss");
    let lost_at = tokio::time::Instant::now();
    let (acquired_at, taken) = tokio::time::timeout(Duration::from_secs(30), contender)
        .await
        .expect("the other contender acquires once the session expired")
        .unwrap();
    assert!(
        lost_at < acquired_at,
        "two holders: lost() after {:?}, the other acquired after {:?}",
        lost_at - cut,
        acquired_at - cut
    );
    taken.unlock().await.unwrap();
    assert_eq!(
        holder.capabilities().default_lock_ttl,
        Some(Duration::from_secs(4)),
        "locks live as long as the granted session"
    );
    proxy.set_mode(ProxyMode::Open);
    drop(guard);
    other.close().await.unwrap();
}

/// The contenders waiting in the lock directory of `key` (a top-level key).
async fn contenders(raw: &zookeeper_async::ZooKeeper, root: &str, key: &str) -> usize {
    raw.get_children(&format!("{root}/locks/{key}"), false)
        .await
        .map_or(0, |c| c.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_waiter_withdraws_its_contender() {
    let Some(server) = ZkServer::start() else {
        return;
    };
    let addr = server.connect_string();
    let root = "/kvkit-withdraw";
    let proxy = TcpProxy::start(server.addr()).await.unwrap();
    let holder = connect(&addr, root).await;
    let waiter = connect_with(
        ZookeeperConfig::new(proxy.connect_string())
            .prefix(root)
            .session_timeout(Duration::from_secs(10))
            .request_timeout(Duration::from_secs(1))
            .multi_read(false),
    )
    .await;
    let fresh = connect(&addr, root).await;
    let raw = raw_client(&addr).await;
    let guard = holder
        .lock("w", LockOptions::default().value("h"))
        .await
        .unwrap();
    let waiting = {
        let waiter = waiter.clone();
        tokio::spawn(async move { waiter.lock("w", LockOptions::default()).await })
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while contenders(&raw, root, "w").await < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the waiter queues");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Cut the waiter off silently; it gives up (cancelled) while cut off.
    proxy.set_mode(ProxyMode::Silent);
    tokio::time::sleep(Duration::from_millis(300)).await;
    waiting.abort();
    assert!(waiting.await.is_err(), "the waiting lock was cancelled");
    // Its withdrawal cannot get through for longer than a request timeout; then the
    // connection drops (what was on its way is lost) and the client reconnects within
    // its session.
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.set_blocked(true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.set_mode(ProxyMode::Open);
    // The holder leaves; a fresh client takes the lock promptly, while the waiter's
    // handle (and session) lives on.
    guard.unlock().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    let taken = loop {
        if let Some(taken) = fresh
            .try_lock("w", LockOptions::default().value("f"))
            .await
            .unwrap()
        {
            break taken;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the abandoned waiter's contender still blocks the lock ({} contenders)",
            contenders(&raw, root, "w").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        waiter.exists("anything").await.is_ok(),
        "the waiter lives on"
    );
    taken.unlock().await.unwrap();
    for kv in [holder, waiter, fresh] {
        kv.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_key_behaves_like_any_key_and_ttl_is_honoured() {
    let Some(server) = ZkServer::start() else {
        return;
    };
    let addr = server.connect_string();
    let root = "/kvkit-lockkey";
    let kv = connect(&addr, root).await;
    let other = connect(&addr, root).await;

    // LockOptions::ttl: a holder cut off silently frees the lock within its TTL, long
    // before its 15 s session would expire, and learns of the loss first.
    let proxy = TcpProxy::start(server.addr()).await.unwrap();
    let holder = behind(
        &proxy,
        root,
        Duration::from_secs(15),
        Duration::from_secs(2),
    )
    .await;
    let ttl = Duration::from_secs(2);
    let guard = holder
        .lock("ttl", LockOptions::default().value("a").ttl(ttl))
        .await
        .unwrap();
    // While it lives, the holder renews: the lock stays held well past its TTL.
    tokio::time::sleep(ttl * 2).await;
    assert!(!guard.is_lost());
    assert!(
        other
            .try_lock("ttl", LockOptions::default().ttl(ttl))
            .await
            .unwrap()
            .is_none(),
        "a live holder keeps a TTL lock"
    );
    proxy.set_mode(ProxyMode::Silent);
    let cut = tokio::time::Instant::now();
    let contender = {
        let other = other.clone();
        tokio::spawn(async move {
            let guard = other
                .lock("ttl", LockOptions::default().value("b").ttl(ttl))
                .await
                .unwrap();
            (tokio::time::Instant::now(), guard)
        })
    };
    tokio::time::timeout(WAIT, guard.lost())
        .await
        .expect("the cut-off holder's lease runs out");
    let lost_at = tokio::time::Instant::now();
    let (acquired_at, taken) = tokio::time::timeout(Duration::from_secs(30), contender)
        .await
        .expect("the other contender acquires")
        .unwrap();
    assert!(lost_at < acquired_at, "two holders at once");
    assert!(
        acquired_at - cut < Duration::from_secs(8),
        "freed after {:?}: the TTL of {ttl:?} was not honoured (session: 15 s)",
        acquired_at - cut
    );
    assert_eq!(other.get("ttl").await.unwrap().value, "b");
    taken.unlock().await.unwrap();
    proxy.set_mode(ProxyMode::Open);
    drop(guard);
    holder.close().await.unwrap();

    // Keys below a held lock's key (a new key).
    let guard = kv
        .lock("held/k", LockOptions::default().value("mine"))
        .await
        .unwrap();
    other
        .put("held/k/child", "c", PutOptions::default())
        .await
        .expect("a key below a held lock's key");
    assert_eq!(
        values(&other.list("held").await.unwrap()),
        vec![
            ("held/k".to_owned(), "mine".to_owned()),
            ("held/k/child".to_owned(), "c".to_owned())
        ]
    );
    // Someone else's write: the holder loses the lock, the new value stays, also after
    // the holder's session is gone.
    other
        .put("held/k", "theirs", PutOptions::default())
        .await
        .unwrap();
    tokio::time::timeout(WAIT, guard.lost())
        .await
        .expect("an overwritten lock is lost");
    drop(guard);
    kv.close().await.unwrap();
    assert_eq!(other.get("held/k").await.unwrap().value, "theirs");
    assert_eq!(other.get("held/k/child").await.unwrap().value, "c");

    other.close().await.unwrap();
}
