//! The HTTP requests each operation makes, as docs/consul.md promises, counted by the emulator.

use std::time::Duration;

use futures::StreamExt;
use kvkit::consul::Consul;
use kvkit::testing::consul_emulator::ConsulEmulator;
use kvkit::{ErrorKind, Kv, LockGuard, LockOptions, PutOptions};
use tokio::time::timeout;

use crate::consul_support::{client_config, counted, emulator_config, until_kv_gets};

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
