//! kvkit in one page, on the embedded default store (redb) in a temporary directory:
//! put/get/list, compare-and-swap, a watch, and a lock.
//!
//! Run with `cargo run --example quickstart`.

use std::time::Duration;

use futures::StreamExt;
use kvkit::redb::Redb;
use kvkit::{Error, Kv, LockGuard, LockOptions, PutOptions};

#[tokio::main]
async fn main() -> kvkit::Result<()> {
    let dir = tempfile::tempdir().map_err(|e| Error::backend("quickstart", e))?;
    let path = dir.path().join("quickstart.redb");
    let kv = Kv::new(Redb::open(&path)?);
    println!("opened {}", path.display());

    // Put, get, list. Slashes are normalised: "/app/config/" is "app/config".
    let config = kv.put("app/config", "v1", PutOptions::default()).await?;
    kv.put("app/features/dark-mode", "on", PutOptions::default())
        .await?;
    kv.put("app2/other", "not listed under app", PutOptions::default())
        .await?;
    let read = kv.get("/app/config/").await?;
    println!(
        "get app/config = {:?} (last_index {})",
        read.value, read.last_index
    );
    for pair in kv.list("app").await? {
        println!("list app: {} = {:?}", pair.key, pair.value);
    }

    // Compare-and-swap: the write succeeds only against the version we read.
    let updated = kv
        .atomic_put("app/config", "v2", Some(&config), PutOptions::default())
        .await?;
    match kv
        .atomic_put("app/config", "v3", Some(&config), PutOptions::default())
        .await
    {
        Err(Error::KeyModified { .. }) => println!("stale CAS refused: KeyModified"),
        other => panic!("a stale CAS must fail, got {other:?}"),
    }
    println!("CAS wrote v2 at index {}", updated.last_index);

    // Watch: the current state first, then every change.
    let mut watch = kv.watch("app/config").await?;
    let first = watch.next().await.expect("a first item")?;
    println!("watch starts at {:?}", first.map(|p| p.value));
    kv.put("app/config", "v4", PutOptions::default()).await?;
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the watch sees the write")
        .expect("an item")?;
    println!("watch saw {:?}", next.map(|p| p.value));

    // A lock: exclusive, holds its value while held, released on unlock or drop.
    let guard = kv
        .lock(
            "locks/migrate",
            LockOptions::default()
                .value("quickstart")
                .ttl(Duration::from_secs(5)),
        )
        .await?;
    println!(
        "locked; lock key holds {:?}",
        kv.get("locks/migrate").await?.value
    );
    assert!(
        kv.try_lock("locks/migrate", LockOptions::default())
            .await?
            .is_none()
    );
    guard.unlock().await?;
    println!(
        "unlocked; free again: {}",
        kv.try_lock("locks/migrate", LockOptions::default())
            .await?
            .is_some()
    );

    // Keys with a TTL disappear on their own.
    kv.put(
        "session/abc",
        "token",
        PutOptions::with_ttl(Duration::from_millis(200)),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!(
        "session/abc after its ttl exists: {}",
        kv.exists("session/abc").await?
    );

    kv.close().await?;
    println!("done");
    Ok(())
}
