//! Typed configuration under a key, stored as JSON and reloaded whenever it changes.
//!
//! Run with `cargo run --example config_watch`.

use std::time::Duration;

use futures::StreamExt;
use kvkit::redb::Redb;
use kvkit::{Error, Kv, PutOptions};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct AppConfig {
    log_level: String,
    max_connections: u32,
}

#[tokio::main]
async fn main() -> kvkit::Result<()> {
    let dir = tempfile::tempdir().map_err(|e| Error::backend("example", e))?;
    let kv = Kv::new(Redb::open(dir.path().join("config.redb"))?);
    let key = "app/config";
    kv.put_json(
        key,
        &AppConfig {
            log_level: "info".into(),
            max_connections: 100,
        },
        PutOptions::default(),
    )
    .await?;

    // The service side: load the config, then reload it on every change.
    let mut changes = kv.watch(key).await?;
    let reloader = tokio::spawn(async move {
        let mut reloads = 0;
        while let Some(change) = changes.next().await {
            match change.map(|pair| pair.map(|p| serde_json::from_slice::<AppConfig>(&p.value))) {
                Ok(Some(Ok(config))) => {
                    reloads += 1;
                    println!("loaded config #{reloads}: {config:?}");
                    if reloads == 3 {
                        break;
                    }
                }
                Ok(Some(Err(err))) => println!("ignoring undecodable config: {err}"),
                Ok(None) => println!("config deleted; keeping the last one"),
                Err(err) => println!("watch error: {err}"),
            }
        }
    });

    // The operator side: change the config twice (and once badly).
    tokio::time::sleep(Duration::from_millis(100)).await;
    kv.put_json(
        key,
        &AppConfig {
            log_level: "debug".into(),
            max_connections: 100,
        },
        PutOptions::default(),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    kv.put(key, "{not json", PutOptions::default()).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    kv.put_json(
        key,
        &AppConfig {
            log_level: "debug".into(),
            max_connections: 500,
        },
        PutOptions::default(),
    )
    .await?;
    tokio::time::timeout(Duration::from_secs(5), reloader)
        .await
        .expect("three reloads within 5 s")
        .expect("reloader");
    let current: AppConfig = kv.get_json(key).await?;
    println!("final typed read: {current:?}");
    Ok(())
}
