//! Watches over blocking queries: quiet without a change, an index going backwards.

use std::time::Duration;

use futures::StreamExt;
use kvkit::consul::Consul;
use kvkit::testing::consul_emulator::ConsulEmulator;
use kvkit::{Kv, KvPair, PutOptions};
use tokio::time::{Instant, timeout};

use crate::consul_support::{client_config, emulator_config, read_until};

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
