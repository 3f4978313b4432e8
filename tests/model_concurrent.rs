//! `check_concurrent` on every backend: concurrent clients on separate handles,
//! watchers and lock contenders, checked for linearizability.

use kvkit::Kv;
use kvkit::testing::concurrent::{ConcurrentConfig, ConcurrentReport, check_concurrent};

fn show(name: &str, report: &ConcurrentReport) {
    eprintln!(
        "{name}: {} operations ({} events, {} indeterminate) run in {:?}, checked in {:?} ({:.0} operations checked/s); {} watch items, {} lock holds",
        report.operations,
        report.events,
        report.indeterminate,
        report.run_time,
        report.check_time,
        report.operations as f64 / report.check_time.as_secs_f64().max(1e-9),
        report.watch_items,
        report.lock_holds
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory() {
    let store = kvkit::memory::Memory::new();
    for seed in 0..5 {
        let handles = vec![Kv::new(store.clone()), Kv::new(store.clone())];
        let config = ConcurrentConfig {
            seed,
            ..ConcurrentConfig::default()
        };
        let report = check_concurrent(handles, config, None).await.unwrap();
        show("memory", &report);
    }
}

/// Runs `seeds` seeded concurrent checks on `handles`, printing each report.
async fn check_seeds<B: kvkit::Backend>(name: &str, handles: Vec<Kv<B>>, seeds: std::ops::Range<u64>) {
    for seed in seeds {
        let config = ConcurrentConfig {
            seed,
            ..ConcurrentConfig::default()
        };
        match check_concurrent(handles.clone(), config, None).await {
            Ok(report) => show(name, &report),
            Err(failure) => panic!("{name}: {failure}"),
        }
    }
}

#[cfg(feature = "redb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb() {
    let dir = tempfile::tempdir().unwrap();
    let store = kvkit::redb::Redb::open(dir.path().join("concurrent.redb")).unwrap();
    // Clones share one database, as two handles of one process do.
    check_seeds("redb", vec![Kv::new(store.clone()), Kv::new(store)], 0..3).await;
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd() {
    use kvkit::etcd::Etcd;
    use kvkit::testing::etcd_server::EtcdServer;
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let mut handles = Vec::new();
    for _ in 0..2 {
        // Separate connections: each is its own client of the cluster.
        handles.push(Kv::new(Etcd::connect(server.config()).await.unwrap()));
    }
    check_seeds("etcd", handles, 0..2).await;
}

#[cfg(feature = "zookeeper")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper() {
    use kvkit::testing::zookeeper_server::ZkServer;
    use kvkit::zookeeper::{Zookeeper, ZookeeperConfig};
    let Some(server) = ZkServer::start() else {
        return;
    };
    let mut handles = Vec::new();
    for _ in 0..2 {
        let config = ZookeeperConfig::new(server.connect_string())
            .root("/kvkit-concurrent-suite")
            .session_timeout(std::time::Duration::from_secs(8))
            .request_timeout(std::time::Duration::from_secs(5));
        handles.push(Kv::new(Zookeeper::connect(config).await.unwrap()));
    }
    check_seeds("zookeeper", handles, 0..2).await;
}

#[cfg(feature = "consul")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_emulator() {
    use kvkit::consul::{Consul, ConsulConfig};
    use kvkit::testing::consul_emulator::{ConsulEmulator, EmulatorConfig};
    use std::time::Duration;
    // Short sessions (as tests/consul.rs), so TTL locks of a few seconds are valid.
    let emu = ConsulEmulator::start(EmulatorConfig::default().session_ttl_min(Duration::from_secs(1)))
        .await
        .unwrap();
    let mut handles = Vec::new();
    for _ in 0..2 {
        let config = ConsulConfig::new(emu.url())
            .min_session_ttl(Duration::from_secs(1))
            .lock_ttl(Duration::from_secs(2))
            .lock_delay(Duration::from_millis(200))
            .wait(Duration::from_secs(5));
        handles.push(Kv::new(Consul::connect(config).await.unwrap()));
    }
    check_seeds("consul emulator", handles, 0..2).await;
}
