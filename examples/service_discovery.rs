//! Service discovery on the embedded store: instances register with a TTL heartbeat,
//! a watcher sees the set change, and a dropped or crashed instance disappears.
//!
//! Run with `cargo run --example service_discovery`.

use std::time::Duration;

use futures::StreamExt;
use kvkit::discovery::Registry;
use kvkit::redb::Redb;
use kvkit::{Error, Kv};

#[tokio::main]
async fn main() -> kvkit::Result<()> {
    let dir = tempfile::tempdir().map_err(|e| Error::backend("example", e))?;
    let kv = Kv::new(Redb::open(dir.path().join("discovery.redb"))?);
    let registry = Registry::new(kv, "services");

    let mut watch = registry.watch("api").await?;
    let printer = tokio::spawn(async move {
        while let Some(Ok(instances)) = watch.next().await {
            let names: Vec<String> = instances
                .iter()
                .map(|i| format!("{}@{}", i.id, i.address))
                .collect();
            println!("api instances: {names:?}");
        }
    });

    let ttl = Duration::from_millis(600);
    let one = registry
        .register("api", "one", "127.0.0.1:8001", ttl)
        .await?;
    let two = registry
        .register("api", "two", "127.0.0.1:8002", ttl)
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("now: {:?}", registry.instances("api").await?);

    println!("dropping 'one' (clean shutdown)");
    drop(one);
    tokio::time::sleep(Duration::from_millis(300)).await;

    println!("'two' stops heartbeating (a crash); it goes when its TTL runs out");
    two.abandon();
    tokio::time::sleep(ttl + Duration::from_millis(400)).await;
    println!("finally: {:?}", registry.instances("api").await?);
    printer.abort();
    Ok(())
}
