//! TEST TOOL: starts the servers the test suite uses (an etcd member and a standalone
//! ZooKeeper from the system packages, and kvkit's Consul API emulator, which is not
//! Consul) on free 127.0.0.1 ports in temporary directories, prints where they listen
//! and serves until its stdin closes, then stops them. `scripts/paired-loadgen.sh` runs
//! `loadgen` against them.
//!
//! ```text
//! cargo run --release --example test_servers --features testing,etcd,zookeeper,consul
//! ```
//!
//! Prints `etcd 127.0.0.1:PORT`, `zookeeper 127.0.0.1:PORT`, `consul 127.0.0.1:PORT`
//! and then `ready`.

use kvkit::testing::consul_emulator::ConsulEmulator;
use kvkit::testing::etcd_server::EtcdServer;
use kvkit::testing::zookeeper_server::ZkServer;
use tokio::io::AsyncReadExt;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let missing = |what: &str| std::io::Error::other(format!("{what} could not be started"));
    let etcd = EtcdServer::start().await.ok_or_else(|| missing("etcd"))?;
    let zookeeper = ZkServer::start().ok_or_else(|| missing("ZooKeeper"))?;
    let consul = ConsulEmulator::start_default().await?;
    println!("etcd {}", etcd.config().endpoints.join(","));
    println!("zookeeper {}", zookeeper.connect_string());
    println!("consul {}", consul.addr());
    println!("ready");
    // Serve until whoever started us closes our stdin (or exits).
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    consul.shutdown();
    drop(zookeeper);
    drop(etcd);
    Ok(())
}
