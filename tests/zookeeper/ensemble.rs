//! A three-server ensemble: monotonic reads across members, and one member down.

use std::time::Duration;

use kvkit::testing::zookeeper_server::ZkEnsemble;
use kvkit::{LockGuard, LockOptions, PutOptions};

use crate::lists::list_reads_own_writes;
use crate::streams::{next, watch_until};
use crate::{connect, counted};

/// Monotonic reads across the read paths of one handle: `list` on the bulk reader's
/// member, `get` and CAS reads on the main session's member. Another handle writes all
/// the time through the leader; the main session's member is frozen now and then, so
/// it falls behind the others (a lagging follower, exaggerated): no read returns an
/// older version of a key than one the handle returned before, and a CAS with a listed
/// pair never fails for nothing.
async fn reads_never_go_back(ensemble: &ZkEnsemble, root: &str) {
    use std::collections::HashMap;
    let leader = (0..3).find(|&i| ensemble.is_leader(i)).expect("a leader");
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    // Main session on the first follower (the crate starts at the first server), bulk
    // reader on the second.
    let kv = connect(
        &format!(
            "{},{}",
            ensemble.addr(followers[0]),
            ensemble.addr(followers[1])
        ),
        root,
    )
    .await;
    let writer = connect(&ensemble.addr(leader).to_string(), root).await;
    const KEYS: usize = 8;
    for i in 0..KEYS {
        writer
            .put(format!("m/k{i}"), "0", PutOptions::default())
            .await
            .unwrap();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writing = {
        let (writer, stop) = (writer.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let key = format!("m/k{}", n as usize % KEYS);
                if let Err(e) = writer.put(key, n.to_string(), PutOptions::default()).await {
                    assert!(e.is_retryable(), "{e}");
                }
            }
            n
        })
    };
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut check = |key: &str, index: u64, path: &str, round: usize| {
        let last = seen.entry(key.to_owned()).or_default();
        assert!(
            index >= *last,
            "round {round}: {path} of {key} returned version {index} after {last}"
        );
        *last = index;
    };
    let before = kv.backend().stats();
    let mut gets = 0u64;
    for round in 0..40 {
        let lagging = round % 2 == 0;
        if lagging {
            // Freeze the main session's member while writes go on without it.
            ensemble.pause(followers[0]);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let listed = kv.list("m").await.unwrap();
        for pair in &listed {
            check(&pair.key, pair.last_index, "list", round);
        }
        let reads = async {
            let mut out = Vec::new();
            for pair in listed.iter().filter(|p| p.key.starts_with("m/k")) {
                out.push(kv.get(&pair.key).await.unwrap());
            }
            out
        };
        let got = if lagging {
            // Let the member run again just after the first read was sent to it.
            let resume_later = async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                ensemble.resume(followers[0]);
            };
            let (got, ()) = tokio::join!(reads, resume_later);
            got
        } else {
            reads.await
        };
        for pair in &got {
            gets += 1;
            check(&pair.key, pair.last_index, "get", round);
        }
        // A CAS with the pair just listed fails only when someone wrote since.
        let mine = format!("m/own{}", round % 2);
        if round < 2 {
            kv.put(&mine, "0", PutOptions::default()).await.unwrap();
        }
        let listed_own = kv
            .list("m")
            .await
            .unwrap()
            .into_iter()
            .find(|p| p.key == mine)
            .expect("listed");
        check(&mine, listed_own.last_index, "list", round);
        let written = kv
            .atomic_put(
                &mine,
                round.to_string(),
                Some(&listed_own),
                PutOptions::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("round {round}: CAS with the listed pair: {e}"));
        check(&mine, written.last_index, "CAS", round);
        check(&mine, kv.get(&mine).await.unwrap().last_index, "get", round);
        gets += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writing.await.unwrap();
    let spent = kv.backend().stats().requests - before.requests;
    eprintln!("monotonic reads: {written} concurrent writes, {gets} gets, {spent} requests in all");
    kv.delete_tree("m").await.unwrap();
    kv.close().await.unwrap();
    writer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensemble_with_one_member_down() {
    let Some(mut ensemble) = ZkEnsemble::start() else {
        return;
    };
    let kv = connect(&ensemble.connect_string(), "/kvkit-ensemble").await;
    kv.put("e/k", "1", PutOptions::default()).await.unwrap();
    let guard = kv
        .lock("e/lock", LockOptions::default().value("x"))
        .await
        .unwrap();
    let mut w = kv.watch("e/k").await.unwrap();
    next(&mut w, "initial").await.unwrap();
    // The main session sits on the first member, the bulk reader on the second: its
    // sync makes each list see the write completed just before on the main session.
    list_reads_own_writes(&ensemble.connect_string(), "/kvkit-ensemble-ryw").await;
    reads_never_go_back(&ensemble, "/kvkit-ensemble-monotonic").await;
    ensemble.stop(0);
    // Operations keep working (a request in flight on the stopped member fails as
    // retryable Unavailable while the client moves to another member).
    let mut done = false;
    for i in 0..100 {
        match kv.put("e/k", format!("v{i}"), PutOptions::default()).await {
            Ok(_) => {
                done = true;
                break;
            }
            Err(e) => assert!(e.is_retryable(), "unexpected error {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(done, "no write succeeded with two of three members up");
    kv.put("e/k2", "2", PutOptions::default()).await.unwrap();
    assert_eq!(kv.list("e").await.unwrap().len(), 3);
    let fresh = connect(&ensemble.connect_string(), "/kvkit-ensemble").await;
    let (listed, req, _) = counted(&fresh, fresh.list("e")).await;
    assert_eq!(listed.unwrap().len(), 3);
    // sync + 3 multiReads: getChildren, getData and its marker.
    assert_eq!(req, 4, "bulk reads go on with the first member down");
    fresh.close().await.unwrap();
    let other = connect(&ensemble.connect_string(), "/kvkit-ensemble").await;
    assert_eq!(other.get("e/k2").await.unwrap().value, "2");
    assert!(
        other
            .try_lock("e/lock", LockOptions::default())
            .await
            .unwrap()
            .is_none()
    );
    kv.put("e/k", "last", PutOptions::default()).await.unwrap();
    watch_until(&mut w, "the last write", |s: &Option<kvkit::KvPair>| {
        s.as_ref().is_some_and(|p| p.value == "last")
    })
    .await;
    assert!(!guard.is_lost());
    guard.unlock().await.unwrap();
    ensemble.start_member(0);
    assert!(
        other
            .try_lock("e/lock", LockOptions::default())
            .await
            .unwrap()
            .is_some()
    );
}
