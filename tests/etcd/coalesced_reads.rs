//! Concurrent point reads coalesced into Txns: each read gets its own answer, linearizable, cancellable, with its own verdict.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kvkit::testing::etcd_server::EtcdServer;
use kvkit::{ErrorKind, PutOptions};

use crate::etcd_support::{STEP, calls, connect, round_trips};

/// Concurrent gets and exists of distinct keys, present and missing, coalesced into
/// Txns (more than etcd's 128 operations per Txn in all): each gets its own answer,
/// with far fewer requests than reads.
#[tokio::test]
async fn concurrent_point_reads_coalesce_and_each_gets_its_own_answer() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config().prefix("co")).await;
    let n = 150;
    let mut written = Vec::new();
    for i in (0..n).filter(|i| i % 3 != 0) {
        let pair = kv.put(format!("k/{i}"), format!("v{i}"), PutOptions::default());
        written.push(pair.await.unwrap());
    }
    let ((gets, exists), rt) = round_trips(&server, || {
        let gets = futures::future::join_all((0..n).map(|i| kv.get(format!("k/{i}"))));
        let exists = futures::future::join_all((0..n).map(|i| kv.exists(format!("k/{i}"))));
        futures::future::join(gets, exists)
    })
    .await;
    let mut written = written.into_iter();
    for (i, (got, exists)) in gets.into_iter().zip(exists).enumerate() {
        if i % 3 == 0 {
            assert_eq!(got.unwrap_err().kind(), ErrorKind::NotFound, "k/{i}");
            assert!(!exists.unwrap(), "k/{i}");
        } else {
            assert_eq!(got.unwrap(), written.next().unwrap(), "k/{i}");
            assert!(exists.unwrap(), "k/{i}");
        }
    }
    let requests: u64 = rt.iter().map(|(_, count)| count).sum();
    assert!(requests * 10 < 2 * n as u64, "{} reads took {rt:?}", 2 * n);
}

/// A get never returns a value older than a put that completed before the get
/// began, while 16 readers keep reads queued (coalesced into Txns) and a writer
/// counts up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_gets_are_linearizable() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config().prefix("lin")).await;
    kv.put("x", "0", PutOptions::default()).await.unwrap();
    let last = 300;
    let completed = Arc::new(AtomicU64::new(0));
    let before = server.grpc_calls();
    let writer = tokio::spawn({
        let (kv, completed) = (kv.clone(), completed.clone());
        async move {
            for i in 1..=last {
                kv.put("x", i.to_string(), PutOptions::default())
                    .await
                    .unwrap();
                completed.store(i, Ordering::SeqCst);
            }
        }
    });
    let readers: Vec<_> = (0..16)
        .map(|_| {
            let (kv, completed) = (kv.clone(), completed.clone());
            tokio::spawn(async move {
                for _ in 0..20_000 {
                    let floor = completed.load(Ordering::SeqCst);
                    let pair = kv.get("x").await.unwrap();
                    let seen: u64 = std::str::from_utf8(&pair.value).unwrap().parse().unwrap();
                    assert!(
                        seen >= floor,
                        "read {seen} after the put of {floor} completed"
                    );
                    if floor == last {
                        break;
                    }
                }
            })
        })
        .collect();
    writer.await.unwrap();
    for reader in readers {
        reader.await.unwrap();
    }
    let txns = server.grpc_calls().get("Txn").copied().unwrap_or(0)
        - before.get("Txn").copied().unwrap_or(0);
    assert!(txns > 0, "the readers' gets were never coalesced");
}

/// Dropping get futures at any point (before sending, while queued, while their Txn
/// is in flight) strands no other read and leaks no in-flight slot.
#[tokio::test]
async fn cancelled_gets_strand_nothing() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config().prefix("cancel")).await;
    for i in 0..8 {
        kv.put(format!("k/{i}"), i.to_string(), PutOptions::default())
            .await
            .unwrap();
    }
    let key = |i: u64| format!("k/{}", i % 8);
    for round in 0..30 {
        let mut gets = Box::pin(futures::future::join_all((0..20).map(|i| kv.get(key(i)))));
        // Polled once: two Ranges sent and 18 reads queued. Dropped at once, or after
        // the first answers (their queue's Txn is then in flight), or a bit later.
        assert!(futures::poll!(gets.as_mut()).is_pending());
        match round % 3 {
            0 => {}
            1 => tokio::task::yield_now().await,
            _ => tokio::time::sleep(Duration::from_millis(1)).await,
        }
        drop(gets);
        // Gets under timeouts of 0 to 1.4 ms: some answer, the rest are dropped
        // wherever they are.
        let timed =
            (0..8).map(|i| tokio::time::timeout(Duration::from_micros(200 * i), kv.get(key(i))));
        for got in futures::future::join_all(timed).await.into_iter().flatten() {
            got.unwrap();
        }
    }
    // Wait (bounded) until the abandoned requests are done: no new request for 100 ms.
    let mut seen = server.grpc_calls();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = server.grpc_calls();
        if now == seen {
            break;
        }
        seen = now;
    }
    // Both slots are free again: four concurrent gets take two Ranges and one Txn (of
    // the two queued), as on a fresh connection.
    let (gets, rt) = round_trips(&server, || {
        futures::future::join_all((0..4).map(|i| kv.get(key(i))))
    })
    .await;
    for (i, got) in gets.into_iter().enumerate() {
        assert_eq!(got.unwrap().value, i.to_string());
    }
    assert_eq!(rt, calls(&[("Range", 2), ("Txn", 1)]));
}

/// A coalesced Txn refused for one key (a role that may read `a/` but not `b/`) is
/// re-sent as single Ranges: each get gets its own verdict.
#[tokio::test]
async fn a_refused_batch_falls_back_to_single_reads() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let admin = connect(server.config().prefix("p")).await;
    for i in 0..4 {
        admin
            .put(format!("a/{i}"), "ok", PutOptions::default())
            .await
            .unwrap();
        admin
            .put(format!("b/{i}"), "secret", PutOptions::default())
            .await
            .unwrap();
    }
    server.enable_auth("s3cret").await.unwrap();
    let mut root = etcd_client::Client::connect(
        [server.endpoint()],
        Some(etcd_client::ConnectOptions::new().with_user("root", "s3cret")),
    )
    .await
    .unwrap();
    // Readable: "p/\x01..." (connect's probe) up to "p/b", so `a/` but not `b/`.
    root.role_add("reader").await.unwrap();
    let readable = etcd_client::Permission::read("p/\u{1}").with_range_end("p/b");
    root.role_grant_permission("reader", readable)
        .await
        .unwrap();
    root.user_add("reader", "pw", None).await.unwrap();
    root.user_grant_role("reader", "reader").await.unwrap();

    let kv = connect(server.config().prefix("p").credentials("reader", "pw")).await;
    let keys: Vec<String> = (0..4)
        .flat_map(|i| [format!("a/{i}"), format!("b/{i}")])
        .collect();
    let gets = futures::future::join_all(keys.iter().map(|key| kv.get(key)));
    for (key, got) in keys
        .iter()
        .zip(tokio::time::timeout(STEP, gets).await.expect("no hang"))
    {
        if key.starts_with("a/") {
            assert_eq!(got.unwrap().value, "ok", "{key}");
        } else {
            let err = got.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{key}: {err}");
        }
    }
}

/// `close` while reads are queued: the two already sent answer, the queued ones
/// fail with `Closed` (one shared error, copied to each).
#[tokio::test]
async fn close_fails_queued_gets_with_closed() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config()).await;
    kv.put("k", "v", PutOptions::default()).await.unwrap();
    let mut gets = std::pin::pin!(futures::future::join_all((0..16).map(|_| kv.get("k"))));
    assert!(futures::poll!(gets.as_mut()).is_pending());
    kv.close().await.unwrap();
    let results = tokio::time::timeout(STEP, gets).await.expect("no hang");
    let kinds: Vec<_> = results
        .iter()
        .map(|r| r.as_ref().err().map(|e| e.kind()))
        .collect();
    let closed = kinds
        .iter()
        .filter(|k| **k == Some(ErrorKind::Closed))
        .count();
    assert_eq!(
        (kinds.iter().filter(|k| k.is_none()).count(), closed),
        (2, 14),
        "{kinds:?}"
    );
}
