//! The fault injectors of `kvkit::testing::fault`, each against its real store: under
//! `inject` the store really misbehaves (operations fail with `Unavailable` or time
//! out, or the member is really down), and after `heal` a `Kv` serves again within a
//! bound and every acknowledged write of a small workload is there.
//!
//! Server tests skip with a notice when their server is not installed, unless
//! `KVKIT_REQUIRE_SERVERS=1`.

#![allow(dead_code)] // each backend's module uses some of the helpers

use std::time::{Duration, Instant};

use kvkit::{Backend, Kv, PutOptions};

/// How long a healed store may take to serve again (clients reconnect, a member
/// catches up, an election ends), generous for a loaded machine.
const SERVE_AGAIN: Duration = Duration::from_secs(45);

/// Writes `count` distinct keys below `prefix`, retrying a retryable failure until
/// `limit` passes; returns the acknowledged `(key, value)`s. A write that failed may or
/// may not have taken effect, so only acknowledged ones are returned.
async fn workload<B: Backend>(
    kv: &Kv<B>,
    prefix: &str,
    count: usize,
    limit: Duration,
) -> Vec<(String, String)> {
    let deadline = Instant::now() + limit;
    let mut acknowledged = Vec::new();
    for i in 0..count {
        let key = format!("{prefix}/k{i}");
        let value = format!("{prefix}-{i}");
        loop {
            match tokio::time::timeout(
                Duration::from_secs(10),
                kv.put(&key, value.clone(), PutOptions::default()),
            )
            .await
            {
                Ok(Ok(_)) => {
                    acknowledged.push((key, value));
                    break;
                }
                Ok(Err(err)) => assert!(err.is_retryable(), "{key}: unexpected error {err}"),
                Err(_) => {}
            }
            if Instant::now() > deadline {
                return acknowledged;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    acknowledged
}

/// Waits until `kv` serves a write and a read again, within [`SERVE_AGAIN`].
async fn serves_again<B: Backend>(kv: &Kv<B>, what: &str) -> Duration {
    let start = Instant::now();
    let key = "faults/probe";
    loop {
        let attempt = async {
            let written = kv.put(key, "probe", PutOptions::default()).await?;
            let read = kv.get(key).await?;
            Ok::<_, kvkit::Error>(read.last_index >= written.last_index)
        };
        if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_secs(10), attempt).await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < SERVE_AGAIN,
            "{what}: the store does not serve again within {SERVE_AGAIN:?} of heal"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every acknowledged write is there with its value.
async fn all_present<B: Backend>(kv: &Kv<B>, acknowledged: &[(String, String)], what: &str) {
    for (key, value) in acknowledged {
        let pair = kv
            .get(key)
            .await
            .unwrap_or_else(|e| panic!("{what}: acknowledged {key} lost: {e}"));
        assert_eq!(pair.value, value.as_bytes(), "{what}: {key} changed");
    }
}

/// One operation while the fault is in force must fail with `Unavailable` or time out.
async fn fails_while_faulted<B: Backend>(kv: &Kv<B>, what: &str, limit: Duration) {
    let outcome =
        tokio::time::timeout(limit, kv.put("faults/during", "x", PutOptions::default())).await;
    match outcome {
        Err(_) => {}
        Ok(Err(err)) => assert!(
            err.is_retryable(),
            "{what}: a fault must give Unavailable, got {err}"
        ),
        Ok(Ok(pair)) => panic!("{what}: the store served a write during the fault: {pair:?}"),
    }
}

fn accepts_tcp(addr: std::net::SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

#[cfg(feature = "etcd")]
mod etcd {
    use std::sync::Arc;

    use kvkit::etcd::Etcd;
    use kvkit::testing::etcd_server::EtcdCluster;
    use kvkit::testing::fault::{EtcdLeaderStop, FaultInjector};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stopping_the_leader_then_restarting_it_loses_no_acknowledged_write() {
        let Some(cluster) = EtcdCluster::start(3).await else {
            return;
        };
        let config = cluster.config();
        let endpoints = cluster.endpoints();
        let cluster = Arc::new(tokio::sync::Mutex::new(cluster));
        let kv = Kv::new(Etcd::connect(config).await.expect("connect"));
        let fault = EtcdLeaderStop::new(cluster.clone());
        let mut acknowledged = workload(&kv, "faults/etcd/before", 10, SERVE_AGAIN).await;
        assert_eq!(acknowledged.len(), 10);

        fault.inject().await;
        let stopped = fault.stopped().expect("a leader was stopped");
        let addr = endpoints[stopped]
            .trim_start_matches("http://")
            .parse()
            .expect("a loopback endpoint");
        assert!(
            !accepts_tcp(addr),
            "the stopped leader still accepts connections"
        );
        let new_leader = cluster.lock().await.leader().await;
        assert!(
            new_leader.is_some_and(|l| l != stopped),
            "the others elect a new leader: {new_leader:?}"
        );
        // The two remaining members keep a quorum: writes go on (after retries).
        acknowledged.extend(workload(&kv, "faults/etcd/during", 10, SERVE_AGAIN).await);

        fault.heal().await;
        assert!(accepts_tcp(addr), "the old leader is back");
        serves_again(&kv, "etcd").await;
        acknowledged.extend(workload(&kv, "faults/etcd/after", 10, SERVE_AGAIN).await);
        assert_eq!(
            acknowledged.len(),
            30,
            "every write was acknowledged in the end"
        );
        all_present(&kv, &acknowledged, "etcd").await;
        // The restarted member has them too.
        let member_only = kvkit::etcd::EtcdConfig::new([endpoints[stopped].clone()]);
        let member = Kv::new(
            Etcd::connect(member_only)
                .await
                .expect("connect to the restarted member"),
        );
        let deadline = Instant::now() + SERVE_AGAIN;
        while member.get(&acknowledged[29].0).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the restarted member never caught up"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        all_present(&member, &acknowledged, "etcd, restarted member").await;
    }
}

#[cfg(feature = "zookeeper")]
mod zookeeper {
    use std::sync::Arc;

    use kvkit::testing::fault::{FaultInjector, ProxyPartition, ZkMemberStop};
    use kvkit::testing::zookeeper_server::{TcpProxy, ZkEnsemble, ZkServer, is_serving};
    use kvkit::zookeeper::{Zookeeper, ZookeeperConfig};

    use super::*;

    async fn connect(
        connect: &str,
        root: &str,
        session: Duration,
        request: Duration,
    ) -> Kv<Zookeeper> {
        let config = ZookeeperConfig::new(connect)
            .prefix(root)
            .session_timeout(session)
            .request_timeout(request);
        Kv::new(
            Zookeeper::connect(config)
                .await
                .expect("connect to ZooKeeper"),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stopping_a_member_then_starting_it_loses_no_acknowledged_write() {
        let Some(ensemble) = tokio::task::spawn_blocking(ZkEnsemble::start)
            .await
            .unwrap()
        else {
            return;
        };
        let addr = ensemble.addr(0);
        let kv = connect(
            &ensemble.connect_string(),
            "/kvkit-faults",
            Duration::from_secs(8),
            Duration::from_secs(5),
        )
        .await;
        let ensemble = Arc::new(std::sync::Mutex::new(ensemble));
        // Member 0 first: the client's session sits on the first member it lists.
        let fault = ZkMemberStop::new(ensemble.clone(), 0);
        let mut acknowledged = workload(&kv, "faults/zk/before", 10, SERVE_AGAIN).await;

        fault.inject().await;
        assert_eq!(fault.stopped(), Some(0));
        assert!(!is_serving(addr), "the stopped member still serves");
        acknowledged.extend(workload(&kv, "faults/zk/during", 10, SERVE_AGAIN).await);

        fault.heal().await;
        assert!(is_serving(addr), "the member is back");
        serves_again(&kv, "ZooKeeper ensemble").await;
        acknowledged.extend(workload(&kv, "faults/zk/after", 10, SERVE_AGAIN).await);
        assert_eq!(acknowledged.len(), 30);
        all_present(&kv, &acknowledged, "ZooKeeper ensemble").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partitioning_a_client_silently_or_loudly_then_healing_loses_no_acknowledged_write() {
        let Some(server) = tokio::task::spawn_blocking(ZkServer::start).await.unwrap() else {
            return;
        };
        let proxy = Arc::new(
            TcpProxy::start(server.addr())
                .await
                .expect("start the proxy"),
        );
        let kv = connect(
            &proxy.connect_string(),
            "/kvkit-faults",
            Duration::from_secs(4),
            Duration::from_secs(2),
        )
        .await;
        let mut acknowledged = workload(&kv, "faults/zkp/before", 10, SERVE_AGAIN).await;
        for (round, fault) in [
            ProxyPartition::silent(proxy.clone()),
            ProxyPartition::blocked(proxy.clone()),
        ]
        .into_iter()
        .enumerate()
        {
            fault.inject().await;
            fails_while_faulted(&kv, &fault.name(), Duration::from_secs(10)).await;
            fault.heal().await;
            let took = serves_again(&kv, &fault.name()).await;
            eprintln!("{}: served again {took:?} after heal", fault.name());
            acknowledged
                .extend(workload(&kv, &format!("faults/zkp/after{round}"), 10, SERVE_AGAIN).await);
        }
        assert_eq!(acknowledged.len(), 30);
        all_present(&kv, &acknowledged, "ZooKeeper partition").await;
    }
}

#[cfg(feature = "consul")]
mod consul {
    use std::sync::Arc;

    use kvkit::consul::{Consul, ConsulConfig};
    use kvkit::testing::consul_emulator::ConsulEmulator;
    use kvkit::testing::fault::{ConsulFault, ConsulFaultKind, FaultInjector};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_emulator_fault_fails_operations_and_healing_loses_no_acknowledged_write() {
        let emulator = Arc::new(
            ConsulEmulator::start_default()
                .await
                .expect("start the emulator"),
        );
        let config = ConsulConfig::new(emulator.url()).request_timeout(Duration::from_secs(1));
        let kv = Kv::new(Consul::connect(config).await.expect("connect"));
        let mut acknowledged = workload(&kv, "faults/consul/before", 10, SERVE_AGAIN).await;
        let kinds = [
            ConsulFaultKind::Failing,
            ConsulFaultKind::DropConnections,
            ConsulFaultKind::Slow(Duration::from_secs(3)),
        ];
        for (round, kind) in kinds.into_iter().enumerate() {
            let fault = ConsulFault::new(emulator.clone(), kind);
            let before = emulator.request_count();
            fault.inject().await;
            // Failing and dropped connections fail fast with Unavailable; a slow
            // server runs past the 1 s request timeout.
            match tokio::time::timeout(Duration::from_secs(10), kv.get("faults/consul/before/k0"))
                .await
            {
                Ok(Err(err)) => assert!(err.is_retryable(), "{kind:?}: {err}"),
                Ok(Ok(pair)) => panic!("{kind:?}: served during the fault: {pair:?}"),
                Err(_) => panic!("{kind:?}: the request timeout did not fire"),
            }
            if kind != ConsulFaultKind::DropConnections {
                // (A dropped connection is closed before the request is counted.)
                assert!(
                    emulator.request_count() > before,
                    "{kind:?}: the request reached the emulator"
                );
            }
            fault.heal().await;
            serves_again(&kv, &fault.name()).await;
            acknowledged.extend(
                workload(&kv, &format!("faults/consul/after{round}"), 10, SERVE_AGAIN).await,
            );
        }
        assert_eq!(acknowledged.len(), 40);
        all_present(&kv, &acknowledged, "Consul emulator").await;
    }
}

#[cfg(feature = "redb")]
mod redb {
    use std::process::Command;

    use kvkit::testing::fault::{
        CRASH_ACK_EARLY_ENV, CrashFailure, FaultInjector, RedbWriterCrash, check_crash_durability,
        crash_writer_if_requested,
    };

    /// This test binary, re-run as the crash writer of the test named `name`.
    fn writer(name: &str) -> Command {
        let mut command = Command::new(std::env::current_exe().expect("the test binary"));
        command.args(["--exact", name, "--nocapture", "--test-threads", "1"]);
        command
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn kill_9_of_a_writer_process_loses_no_acknowledged_write() {
        crash_writer_if_requested();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crash.redb");
        let fault = RedbWriterCrash::new(path.clone(), || {
            writer("redb::kill_9_of_a_writer_process_loses_no_acknowledged_write")
        });
        runtime().block_on(async {
            for _ in 0..3 {
                fault.inject().await;
                fault.heal().await;
            }
        });
        assert_eq!(
            fault.failures(),
            Vec::<CrashFailure>::new(),
            "acknowledged writes were lost"
        );
        let reports = fault.reports();
        assert_eq!(reports.len(), 3, "three crash rounds");
        for report in &reports {
            assert!(report.acknowledged >= 1, "{report:?}");
            // Really killed, not a clean exit.
            assert_eq!(report.signal, Some(9), "{report:?}");
        }
        eprintln!("crash rounds: {reports:?}");
    }

    /// The check has teeth: a writer that acknowledges before it writes is caught.
    #[test]
    fn a_writer_that_acknowledges_before_writing_is_caught() {
        crash_writer_if_requested();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("liar.redb");
        let mut liar = writer("redb::a_writer_that_acknowledges_before_writing_is_caught");
        liar.env(CRASH_ACK_EARLY_ENV, "1");
        let outcome = runtime().block_on(check_crash_durability(
            liar,
            &path,
            1,
            1,
            std::time::Duration::ZERO,
        ));
        let lost = outcome.expect_err("an early acknowledgement must be reported as lost");
        assert!(matches!(lost, CrashFailure::LostWrite(_)), "{lost}");
    }
}
