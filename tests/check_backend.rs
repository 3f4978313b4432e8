//! `check_backend`, the one call a backend author makes, on every backend's real store
//! with a fault: the conformance suite, the sequential model (TTLs, watches, locks,
//! two handles) and the concurrent phase (linearizability, watches against the
//! history, lock safety), with the backend's shipped fault injector in force during
//! the concurrent phase. Separate handles are separate connections (`open_handle`).
//! Memory's and the SQLite example's runs are in `proptests/model.rs` and
//! `tests/custom_backend.rs`.
//!
//! Server tests skip with a notice when their server is not installed, unless
//! `KVKIT_REQUIRE_SERVERS=1`.

#![allow(dead_code)] // each backend's module uses some of the helpers

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;

use kvkit::testing::concurrent::ConcurrentConfig;
use kvkit::testing::fault::{FaultInjector, SharedFault};
use kvkit::testing::model::{ModelConfig, OpenHandle, check_backend};
use kvkit::{Backend, Kv};

/// Fewer sequential cases than the default on network stores (each step is a round
/// trip, TTL steps cost real seconds), the default concurrent phase with a fixed seed
/// so a failure replays.
fn config<B: Backend>(open: Option<OpenHandle<B>>, fault: SharedFault) -> ModelConfig<B> {
    ModelConfig {
        cases: 24,
        seed: Some([7; 32]),
        open_handle: open,
        fault: Some(fault),
        concurrent: Some(ConcurrentConfig {
            op_timeout: Duration::from_secs(8),
            ..ConcurrentConfig::default()
        }),
        ..ModelConfig::default()
    }
}

/// Counts the injections and heals of a fault, so a test can tell the fault really
/// happened during the run.
struct Counted {
    inner: SharedFault,
    injected: AtomicUsize,
    healed: AtomicUsize,
}

impl FaultInjector for Counted {
    fn name(&self) -> String {
        self.inner.name()
    }

    fn inject(&self) -> BoxFuture<'_, ()> {
        self.injected.fetch_add(1, Ordering::SeqCst);
        self.inner.inject()
    }

    fn heal(&self) -> BoxFuture<'_, ()> {
        self.healed.fetch_add(1, Ordering::SeqCst);
        self.inner.heal()
    }
}

/// Runs `check_backend` with `fault` (given as the config's) and requires it to pass
/// with the fault injected and healed at least once.
async fn passes<B: Backend>(name: &str, kv: &Kv<B>, mut config: ModelConfig<B>) {
    let counted = Arc::new(Counted {
        inner: config.fault.take().expect("a fault to inject"),
        injected: AtomicUsize::new(0),
        healed: AtomicUsize::new(0),
    });
    config.fault = Some(SharedFault(counted.clone()));
    if let Err(failure) = check_backend(kv, config).await {
        panic!("{name}: check_backend failed\n{failure}");
    }
    let injected = counted.injected.load(Ordering::SeqCst);
    assert!(injected >= 1, "{name}: the fault was never injected");
    assert_eq!(
        injected,
        counted.healed.load(Ordering::SeqCst),
        "{name}: every injection is healed"
    );
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_cluster_with_its_leader_stopped() {
    use kvkit::etcd::Etcd;
    use kvkit::testing::etcd_server::EtcdCluster;
    use kvkit::testing::fault::EtcdLeaderStop;

    let Some(cluster) = EtcdCluster::start(3).await else {
        return;
    };
    let etcd = cluster.config();
    let cluster = Arc::new(tokio::sync::Mutex::new(cluster));
    let kv = Kv::new(Etcd::connect(etcd.clone()).await.expect("connect"));
    let open: OpenHandle<Etcd> = Arc::new(move || {
        let etcd = etcd.clone();
        Box::pin(async move { Ok(Kv::new(Etcd::connect(etcd).await?)) })
    });
    passes(
        "etcd, 3 members, leader stopped",
        &kv,
        config(Some(open), SharedFault::new(EtcdLeaderStop::new(cluster))),
    )
    .await;
}

#[cfg(feature = "zookeeper")]
mod zookeeper {
    use kvkit::testing::fault::{ProxyPartition, ZkMemberStop};
    use kvkit::testing::zookeeper_server::{TcpProxy, ZkEnsemble, ZkServer};
    use kvkit::zookeeper::{Zookeeper, ZookeeperConfig};

    use super::*;

    fn zk_config(connect: &str) -> ZookeeperConfig {
        ZookeeperConfig::new(connect)
            .prefix("/kvkit-check-backend")
            .session_timeout(Duration::from_secs(6))
            .request_timeout(Duration::from_secs(4))
    }

    fn opener(connect: String) -> OpenHandle<Zookeeper> {
        Arc::new(move || {
            let config = zk_config(&connect);
            Box::pin(async move { Ok(Kv::new(Zookeeper::connect(config).await?)) })
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ensemble_with_a_member_stopped() {
        let Some(ensemble) = tokio::task::spawn_blocking(ZkEnsemble::start)
            .await
            .unwrap()
        else {
            return;
        };
        let connect = ensemble.connect_string();
        let kv = Kv::new(
            Zookeeper::connect(zk_config(&connect))
                .await
                .expect("connect"),
        );
        let fault = ZkMemberStop::new(Arc::new(std::sync::Mutex::new(ensemble)), 0);
        passes(
            "ZooKeeper ensemble, a member stopped",
            &kv,
            config(Some(opener(connect)), SharedFault::new(fault)),
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn client_partitioned_silently() {
        let Some(server) = tokio::task::spawn_blocking(ZkServer::start).await.unwrap() else {
            return;
        };
        // The checked handle goes through the proxy; the others reach the server
        // directly, so the partition cuts one client off while the rest go on.
        let proxy = Arc::new(TcpProxy::start(server.addr()).await.expect("proxy"));
        let kv = Kv::new(
            Zookeeper::connect(zk_config(&proxy.connect_string()))
                .await
                .expect("connect"),
        );
        passes(
            "ZooKeeper, a client partitioned silently",
            &kv,
            config(
                Some(opener(server.connect_string())),
                SharedFault::new(ProxyPartition::silent(proxy.clone())),
            ),
        )
        .await;
    }
}

#[cfg(feature = "consul")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_emulator_failing_requests() {
    use kvkit::consul::{Consul, ConsulConfig};
    use kvkit::testing::consul_emulator::{ConsulEmulator, EmulatorConfig};
    use kvkit::testing::fault::{ConsulFault, ConsulFaultKind};

    // Short sessions (as tests/consul.rs), so TTL locks of a few seconds are valid.
    let emulator = Arc::new(
        ConsulEmulator::start(EmulatorConfig::default().session_ttl_min(Duration::from_secs(1)))
            .await
            .expect("start the emulator"),
    );
    let consul = ConsulConfig::new(emulator.url())
        .min_session_ttl(Duration::from_secs(1))
        .lock_ttl(Duration::from_secs(2))
        .lock_delay(Duration::from_millis(200))
        .wait(Duration::from_secs(5));
    let kv = Kv::new(Consul::connect(consul.clone()).await.expect("connect"));
    let open: OpenHandle<Consul> = Arc::new(move || {
        let consul = consul.clone();
        Box::pin(async move { Ok(Kv::new(Consul::connect(consul).await?)) })
    });
    let fault = SharedFault::new(ConsulFault::new(emulator.clone(), ConsulFaultKind::Failing));
    passes("Consul emulator, failing", &kv, config(Some(open), fault)).await;
}

#[cfg(feature = "redb")]
mod redb {
    use std::process::Command;

    use kvkit::redb::Redb;
    use kvkit::testing::fault::{RedbWriterCrash, crash_writer_if_requested};

    use super::*;

    /// A redb file belongs to one process, so the crash fault kills a writer process
    /// on its own file (re-running this test) while the checked handle's phase runs,
    /// and checks after each kill that every acknowledged write survived.
    #[test]
    fn redb_while_writer_processes_are_killed() {
        crash_writer_if_requested();
        let dir = tempfile::tempdir().unwrap();
        let crash_path = dir.path().join("crash.redb");
        let crash = Arc::new(RedbWriterCrash::new(crash_path, || {
            let mut command = Command::new(std::env::current_exe().unwrap());
            command.args([
                "--exact",
                "redb::redb_while_writer_processes_are_killed",
                "--nocapture",
                "--test-threads=1",
            ]);
            command
        }));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let path = dir.path().join("checked.redb");
        runtime.block_on(async {
            // Clones, not a second open: a path opened twice in one process is one
            // shared store, and closing the second handle would close it for both.
            let kv = Kv::new(Redb::open(&path).expect("open"));
            passes(
                "redb, writer processes killed -9",
                &kv,
                config(None, SharedFault(crash.clone())),
            )
            .await;
        });
        let lost = crash.failures();
        assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
        assert!(
            !crash.reports().is_empty(),
            "no writer process was ever killed"
        );
    }
}
