//! `check_concurrent` on every backend: concurrent clients on separate handles,
//! watchers and lock contenders, checked for linearizability.

use kvkit::Kv;
use kvkit::testing::concurrent::{ConcurrentConfig, ConcurrentReport, check_concurrent};

fn show(name: &str, report: &ConcurrentReport) {
    eprintln!(
        "{name}: {} operations ({} events, {} indeterminate) run in {:?} (clients {:?}, settle {:?}), checked in {:?} ({:.0} operations checked/s); {} watch items, {} lock holds",
        report.operations,
        report.events,
        report.indeterminate,
        report.run_time,
        report.clients_time,
        report.settle_time,
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
async fn check_seeds<B: kvkit::Backend>(
    name: &str,
    handles: Vec<Kv<B>>,
    seeds: std::ops::Range<u64>,
) {
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
            .prefix("/kvkit-concurrent-suite")
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
    let emu =
        ConsulEmulator::start(EmulatorConfig::default().session_ttl_min(Duration::from_secs(1)))
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

#[cfg(any(feature = "etcd", feature = "zookeeper", feature = "consul"))]
/// Runs one seeded check with `fault` injected a third of the way through and healed
/// at two thirds; failed operations are then of unknown outcome.
async fn check_with_fault<B: kvkit::Backend>(
    name: &str,
    handles: Vec<Kv<B>>,
    fault: kvkit::testing::fault::SharedFault,
    must_fail_operations: bool,
) {
    let config = ConcurrentConfig {
        seed: 11,
        op_timeout: std::time::Duration::from_secs(5),
        ..ConcurrentConfig::default()
    };
    match check_concurrent(handles, config, Some(fault)).await {
        Ok(report) => {
            show(name, &report);
            if must_fail_operations {
                assert!(report.indeterminate > 0, "{name}: the fault never bit");
            }
        }
        Err(failure) => panic!("{name}: {failure}"),
    }
}

#[cfg(feature = "consul")]
struct EmulatorFailing(std::sync::Arc<kvkit::testing::consul_emulator::ConsulEmulator>);

#[cfg(feature = "consul")]
impl kvkit::testing::fault::FaultInjector for EmulatorFailing {
    fn name(&self) -> String {
        "the Consul emulator answers 500 to everything".into()
    }
    fn inject(&self) -> futures::future::BoxFuture<'_, ()> {
        self.0.faults().set_failing(true);
        Box::pin(async {})
    }
    fn heal(&self) -> futures::future::BoxFuture<'_, ()> {
        self.0.faults().set_failing(false);
        Box::pin(async {})
    }
}

#[cfg(feature = "consul")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_emulator_under_fault() {
    use kvkit::consul::{Consul, ConsulConfig};
    use kvkit::testing::consul_emulator::{ConsulEmulator, EmulatorConfig};
    use std::time::Duration;
    let emu = std::sync::Arc::new(
        ConsulEmulator::start(EmulatorConfig::default().session_ttl_min(Duration::from_secs(1)))
            .await
            .unwrap(),
    );
    let mut handles = Vec::new();
    for _ in 0..2 {
        let config = ConsulConfig::new(emu.url())
            .min_session_ttl(Duration::from_secs(1))
            .lock_ttl(Duration::from_secs(2))
            .lock_delay(Duration::from_millis(200))
            .wait(Duration::from_secs(5));
        handles.push(Kv::new(Consul::connect(config).await.unwrap()));
    }
    let fault = kvkit::testing::fault::SharedFault::new(EmulatorFailing(emu.clone()));
    check_with_fault("consul emulator, failing", handles, fault, true).await;
}

#[cfg(feature = "etcd")]
struct EtcdStopped(tokio::sync::Mutex<kvkit::testing::etcd_server::EtcdServer>);

#[cfg(feature = "etcd")]
impl kvkit::testing::fault::FaultInjector for EtcdStopped {
    fn name(&self) -> String {
        "kill the etcd server, restart it on heal".into()
    }
    fn inject(&self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async { self.0.lock().await.stop() })
    }
    fn heal(&self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async { self.0.lock().await.restart().await })
    }
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_under_fault() {
    use kvkit::etcd::Etcd;
    use kvkit::testing::etcd_server::EtcdServer;
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let mut handles = Vec::new();
    for _ in 0..2 {
        handles.push(Kv::new(Etcd::connect(server.config()).await.unwrap()));
    }
    let fault =
        kvkit::testing::fault::SharedFault::new(EtcdStopped(tokio::sync::Mutex::new(server)));
    // The etcd client may hold its requests until the server is back: no operation
    // needs to fail, but every one must still be linearizable.
    check_with_fault("etcd, killed and restarted", handles, fault, false).await;
}

/// The harness's cost on a 2,000-operation history (4 clients x 500 operations on
/// memory), printed rather than asserted:
/// `cargo test --features testing --test model_concurrent cost -- --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_of_a_2000_operation_history() {
    let store = kvkit::memory::Memory::new();
    let config = ConcurrentConfig {
        ops_per_client: 500,
        seed: 3,
        ..ConcurrentConfig::default()
    };
    let report = check_concurrent(vec![Kv::new(store)], config, None)
        .await
        .unwrap();
    show("memory, 2,000 operations", &report);
    assert!(report.operations >= 2000);
}

#[cfg(feature = "zookeeper")]
struct ZkStopped(std::sync::Mutex<kvkit::testing::zookeeper_server::ZkServer>);

#[cfg(feature = "zookeeper")]
impl kvkit::testing::fault::FaultInjector for ZkStopped {
    fn name(&self) -> String {
        "stop the ZooKeeper server, restart it on heal".into()
    }
    fn inject(&self) -> futures::future::BoxFuture<'_, ()> {
        self.0.lock().unwrap().stop();
        Box::pin(async {})
    }
    fn heal(&self) -> futures::future::BoxFuture<'_, ()> {
        let server = &self.0;
        Box::pin(async move {
            tokio::task::block_in_place(|| server.lock().unwrap().restart());
        })
    }
}

#[cfg(feature = "zookeeper")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_under_fault() {
    use kvkit::testing::zookeeper_server::ZkServer;
    use kvkit::zookeeper::{Zookeeper, ZookeeperConfig};
    let Some(server) = ZkServer::start() else {
        return;
    };
    let mut handles = Vec::new();
    for _ in 0..2 {
        let config = ZookeeperConfig::new(server.connect_string())
            .prefix("/kvkit-concurrent-fault")
            .session_timeout(std::time::Duration::from_secs(8))
            .request_timeout(std::time::Duration::from_secs(5));
        handles.push(Kv::new(Zookeeper::connect(config).await.unwrap()));
    }
    let fault = kvkit::testing::fault::SharedFault::new(ZkStopped(std::sync::Mutex::new(server)));
    check_with_fault("zookeeper, stopped and restarted", handles, fault, false).await;
}
