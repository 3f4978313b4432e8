//! Fault injection for the model harness: a small trait that makes a store misbehave
//! ([`FaultInjector::inject`]) and recover ([`FaultInjector::heal`]) while the
//! harness's clients keep working, so the same checks run under faults.
//!
//! An injector owns whatever it needs to break the store (a cluster to stop a member
//! of, a proxy to cut, an emulator's fault switches). While a fault is in force an
//! operation may fail with `Unavailable` or time out; the harness then treats it as
//! one that may or may not have taken effect. After [`FaultInjector::heal`] returns,
//! the store must serve again (within the backend's own reconnect time) and every
//! rule must hold over the whole history, faults included.
//!
//! The trait is object-safe (its futures are boxed: this is test code, not a hot
//! path), so [`crate::testing::model::ModelConfig`] can hold any injector.
//!
//! Shipped injectors (each behind its backend's feature; `tests/faults.rs` shows each
//! one really breaking its store and the store serving again after `heal`):
//!
//! | injector | store | fault |
//! |---|---|---|
//! | `EtcdLeaderStop` | 3-member `EtcdCluster` | kill the leader; heal restarts it |
//! | `ZkMemberStop` | `ZkEnsemble` | kill one member (the next one each time) |
//! | `ProxyPartition` | anything behind a `TcpProxy` | silent or dropped connections |
//! | `ConsulFault` | `ConsulEmulator` | 500s, dropped connections, or slow answers |
//! | `RedbWriterCrash` | a redb file written by a child process | kill -9, reopen, verify |
//!
//! To add one: implement [`FaultInjector`] on a type that owns (an `Arc` of) what it
//! breaks; make `inject` return only once the fault is in force and `heal` once the
//! store accepts connections again.

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;

/// Makes a store misbehave and recover, for the model harness.
pub trait FaultInjector: Send + Sync + 'static {
    /// A short description for failure reports, e.g. `"stop the etcd leader"`.
    fn name(&self) -> String;

    /// Starts the fault. Returns once it is in force.
    fn inject(&self) -> BoxFuture<'_, ()>;

    /// Ends the fault. Returns once the store serves again (or at least accepts
    /// connections again; clients may still need to reconnect).
    fn heal(&self) -> BoxFuture<'_, ()>;
}

/// A shared injector, as [`crate::testing::model::ModelConfig`] holds it.
#[derive(Clone)]
pub struct SharedFault(pub Arc<dyn FaultInjector>);

impl SharedFault {
    /// Wraps an injector.
    pub fn new(injector: impl FaultInjector) -> Self {
        SharedFault(Arc::new(injector))
    }
}

impl fmt::Debug for SharedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedFault").field(&self.0.name()).finish()
    }
}

impl std::ops::Deref for SharedFault {
    type Target = dyn FaultInjector;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

/// Stops the leader of an etcd cluster ([`inject`](FaultInjector::inject)) and
/// restarts it ([`heal`](FaultInjector::heal)): the remaining members elect a new
/// leader, and writes in flight fail with `Unavailable` or time out meanwhile.
#[cfg(feature = "etcd")]
#[derive(Debug)]
pub struct EtcdLeaderStop {
    cluster: Arc<tokio::sync::Mutex<crate::testing::etcd_server::EtcdCluster>>,
    stopped: std::sync::Mutex<Option<usize>>,
}

#[cfg(feature = "etcd")]
impl EtcdLeaderStop {
    /// An injector for `cluster` (3 members, so that two keep a quorum).
    pub fn new(cluster: Arc<tokio::sync::Mutex<crate::testing::etcd_server::EtcdCluster>>) -> Self {
        EtcdLeaderStop {
            cluster,
            stopped: std::sync::Mutex::new(None),
        }
    }

    /// The member the fault stopped, while it is in force.
    pub fn stopped(&self) -> Option<usize> {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(feature = "etcd")]
impl FaultInjector for EtcdLeaderStop {
    fn name(&self) -> String {
        "stop the etcd leader".to_owned()
    }

    fn inject(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut cluster = self.cluster.lock().await;
            let leader = cluster
                .leader()
                .await
                .expect("the etcd cluster has a leader to stop");
            cluster.stop(leader);
            *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = Some(leader);
        })
    }

    fn heal(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let stopped = self
                .stopped
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(member) = stopped {
                self.cluster.lock().await.restart(member).await;
            }
        })
    }
}

/// Kills one member of a ZooKeeper ensemble ([`inject`](FaultInjector::inject)) and
/// starts it again ([`heal`](FaultInjector::heal)). Each injection takes the next
/// member in turn, so a long run stops the one its clients sit on too; those clients
/// see `Unavailable` while they move to another member.
#[cfg(feature = "zookeeper")]
#[derive(Debug)]
pub struct ZkMemberStop {
    ensemble: Arc<std::sync::Mutex<crate::testing::zookeeper_server::ZkEnsemble>>,
    next: std::sync::atomic::AtomicUsize,
    stopped: std::sync::Mutex<Option<usize>>,
}

#[cfg(feature = "zookeeper")]
impl ZkMemberStop {
    /// An injector for `ensemble`, stopping member `first` first.
    pub fn new(
        ensemble: Arc<std::sync::Mutex<crate::testing::zookeeper_server::ZkEnsemble>>,
        first: usize,
    ) -> Self {
        ZkMemberStop {
            ensemble,
            next: std::sync::atomic::AtomicUsize::new(first),
            stopped: std::sync::Mutex::new(None),
        }
    }

    /// The member the fault stopped, while it is in force.
    pub fn stopped(&self) -> Option<usize> {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(feature = "zookeeper")]
impl FaultInjector for ZkMemberStop {
    fn name(&self) -> String {
        "stop a ZooKeeper ensemble member".to_owned()
    }

    fn inject(&self) -> BoxFuture<'_, ()> {
        use std::sync::atomic::Ordering;
        let member = self.next.fetch_add(1, Ordering::SeqCst) % 3;
        let ensemble = self.ensemble.clone();
        Box::pin(async move {
            // Stopping and starting JVMs blocks: keep it off the async workers.
            tokio::task::spawn_blocking(move || {
                ensemble
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .stop(member);
            })
            .await
            .expect("stopping a ZooKeeper member");
            *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = Some(member);
        })
    }

    fn heal(&self) -> BoxFuture<'_, ()> {
        let stopped = self
            .stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let ensemble = self.ensemble.clone();
        Box::pin(async move {
            if let Some(member) = stopped {
                tokio::task::spawn_blocking(move || {
                    ensemble
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .start_member(member);
                })
                .await
                .expect("starting a ZooKeeper member");
            }
        })
    }
}

/// Partitions the clients of a [`TcpProxy`](crate::testing::zookeeper_server::TcpProxy)
/// from their server ([`inject`](FaultInjector::inject)) and reconnects them
/// ([`heal`](FaultInjector::heal)). [`ProxyMode::Silent`] keeps the connections open
/// but forwards nothing (requests time out, sessions may expire);
/// [`ProxyMode::Blocked`] drops them.
///
/// [`ProxyMode::Silent`]: crate::testing::zookeeper_server::ProxyMode::Silent
/// [`ProxyMode::Blocked`]: crate::testing::zookeeper_server::ProxyMode::Blocked
#[cfg(feature = "zookeeper")]
#[derive(Debug)]
pub struct ProxyPartition {
    proxy: Arc<crate::testing::zookeeper_server::TcpProxy>,
    mode: crate::testing::zookeeper_server::ProxyMode,
}

#[cfg(feature = "zookeeper")]
impl ProxyPartition {
    /// A silent partition: connections stay open, nothing passes.
    pub fn silent(proxy: Arc<crate::testing::zookeeper_server::TcpProxy>) -> Self {
        ProxyPartition {
            proxy,
            mode: crate::testing::zookeeper_server::ProxyMode::Silent,
        }
    }

    /// A loud partition: connections are dropped and new ones held.
    pub fn blocked(proxy: Arc<crate::testing::zookeeper_server::TcpProxy>) -> Self {
        ProxyPartition {
            proxy,
            mode: crate::testing::zookeeper_server::ProxyMode::Blocked,
        }
    }
}

#[cfg(feature = "zookeeper")]
impl FaultInjector for ProxyPartition {
    fn name(&self) -> String {
        format!("partition the client from the server ({:?})", self.mode)
    }

    fn inject(&self) -> BoxFuture<'_, ()> {
        self.proxy.set_mode(self.mode);
        Box::pin(async {})
    }

    fn heal(&self) -> BoxFuture<'_, ()> {
        self.proxy
            .set_mode(crate::testing::zookeeper_server::ProxyMode::Open);
        Box::pin(async {})
    }
}

/// Which of the Consul emulator's fault switches a [`ConsulFault`] throws.
#[cfg(feature = "consul")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsulFaultKind {
    /// Every request gets `500 Internal Server Error` (a server without a leader).
    Failing,
    /// Open connections are closed, and the next requests are answered by closing
    /// the connection with no response.
    DropConnections,
    /// Every response is delayed by this long (a slow or overloaded server).
    Slow(std::time::Duration),
}

/// Throws one of the [`ConsulEmulator`](crate::testing::consul_emulator::ConsulEmulator)'s
/// fault switches ([`inject`](FaultInjector::inject)) and resets them all
/// ([`heal`](FaultInjector::heal)).
#[cfg(feature = "consul")]
#[derive(Debug)]
pub struct ConsulFault {
    emulator: Arc<crate::testing::consul_emulator::ConsulEmulator>,
    kind: ConsulFaultKind,
}

#[cfg(feature = "consul")]
impl ConsulFault {
    /// Connections dropped per injection of [`ConsulFaultKind::DropConnections`].
    pub const DROPPED_REQUESTS: u64 = 20;

    /// An injector throwing `kind` on `emulator`.
    pub fn new(
        emulator: Arc<crate::testing::consul_emulator::ConsulEmulator>,
        kind: ConsulFaultKind,
    ) -> Self {
        ConsulFault { emulator, kind }
    }
}

#[cfg(feature = "consul")]
impl FaultInjector for ConsulFault {
    fn name(&self) -> String {
        format!("Consul emulator fault {:?}", self.kind)
    }

    fn inject(&self) -> BoxFuture<'_, ()> {
        let faults = self.emulator.faults();
        match self.kind {
            ConsulFaultKind::Failing => faults.set_failing(true),
            ConsulFaultKind::DropConnections => {
                faults.drop_next(Self::DROPPED_REQUESTS);
                self.emulator.drop_connections();
            }
            ConsulFaultKind::Slow(delay) => faults.set_delay(delay),
        }
        Box::pin(async {})
    }

    fn heal(&self) -> BoxFuture<'_, ()> {
        let faults = self.emulator.faults();
        faults.set_failing(false);
        faults.fail_next(0);
        faults.drop_next(0);
        faults.set_delay(std::time::Duration::ZERO);
        Box::pin(async {})
    }
}

#[cfg(feature = "redb")]
pub use crash::{
    CRASH_ACK_EARLY_ENV, CRASH_ROUND_ENV, CRASH_WRITER_ENV, CrashFailure, CrashReport,
    RedbWriterCrash, check_crash_durability, crash_writer_if_requested,
};

/// kill -9 of a redb writer process, and the check that every acknowledged write
/// survived it.
///
/// A redb file is open in one process only, and a harness cannot kill -9 its own
/// process, so this fault does not act on the `Kv` under test: a **child process**
/// (the caller's own test binary, re-run with [`CRASH_WRITER_ENV`] set) opens the
/// database, writes from several tasks at once (so commits are shared) and prints an
/// acknowledgement line after each write returned. The parent kills it with SIGKILL
/// after a chosen number of acknowledgements, reopens the file and requires every
/// acknowledged write (or a newer one of the same key) to be there.
/// [`check_crash_durability`] is one such round; [`RedbWriterCrash`] wraps rounds in
/// the [`FaultInjector`] shape (inject = run the child, kill it, reopen and verify;
/// heal = file the verdict) and keeps the verdicts, since the trait returns none.
///
/// kill -9 is a process crash, not a power cut: the OS keeps what was written to its
/// page cache. So this catches a write acknowledged before it was committed (queued,
/// or written behind), not a missing fsync.
#[cfg(feature = "redb")]
mod crash {
    use std::collections::BTreeMap;
    use std::fmt;
    use std::io::{BufRead, BufReader};
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use futures::future::BoxFuture;

    use super::FaultInjector;
    use crate::backend::PutOptions;
    use crate::kv::Kv;
    use crate::redb::Redb;

    /// Set (to the database path) in a child that must run as the crash writer.
    pub const CRASH_WRITER_ENV: &str = "KVKIT_CRASH_WRITER_DB";
    /// The round number a crash writer child writes under.
    pub const CRASH_ROUND_ENV: &str = "KVKIT_CRASH_WRITER_ROUND";
    /// Set to `1` to make the writer lie: it acknowledges a write, then waits, then
    /// writes. Only for proving that [`check_crash_durability`] catches a lost
    /// acknowledged write.
    pub const CRASH_ACK_EARLY_ENV: &str = "KVKIT_CRASH_WRITER_ACK_EARLY";

    /// Concurrent writer tasks in the child.
    const WRITERS: u64 = 4;
    /// Bounds of the child: it stops by itself after this many writes per task or
    /// this long.
    const MAX_WRITES: u64 = 100_000;
    const MAX_RUN: Duration = Duration::from_secs(60);

    /// When this process was started as a crash writer ([`CRASH_WRITER_ENV`] set),
    /// runs the writer and exits (it is normally killed first); otherwise returns at
    /// once. Call it first thing in the test that the parent re-runs.
    pub fn crash_writer_if_requested() {
        let Some(path) = std::env::var_os(CRASH_WRITER_ENV) else {
            return;
        };
        let round: u64 = std::env::var(CRASH_ROUND_ENV)
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime for the crash writer");
        let lie = std::env::var(CRASH_ACK_EARLY_ENV).is_ok_and(|v| v == "1");
        let status = runtime.block_on(write_and_acknowledge(PathBuf::from(path), round, lie));
        std::process::exit(status);
    }

    async fn write_and_acknowledge(path: PathBuf, round: u64, lie: bool) -> i32 {
        let kv = match Redb::open(&path) {
            Ok(store) => Kv::new(store),
            Err(err) => {
                eprintln!("crash writer: cannot open {}: {err}", path.display());
                return 2;
            }
        };
        let deadline = tokio::time::Instant::now() + MAX_RUN;
        let mut tasks = Vec::new();
        for writer in 0..WRITERS {
            let kv = kv.clone();
            tasks.push(tokio::spawn(async move {
                if lie && writer > 0 {
                    return; // one liar, so its early acks are the first ones counted
                }
                for i in 0..MAX_WRITES {
                    if tokio::time::Instant::now() > deadline {
                        break;
                    }
                    let value = i.to_string();
                    let key = format!("crash/r{round}/w{writer}/k{i}");
                    let last = format!("crash/r{round}/w{writer}/last");
                    if lie {
                        println!("ack {writer} {i}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    let written = async {
                        kv.put(&key, value.clone(), PutOptions::default()).await?;
                        kv.put(&last, value, PutOptions::default()).await
                    };
                    if let Err(err) = written.await {
                        eprintln!("crash writer: {err}");
                        return;
                    }
                    // One whole line per acknowledgement, written at once.
                    if !lie {
                        println!("ack {writer} {i}");
                    }
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
        0
    }

    /// What one crash round saw.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct CrashReport {
        /// Writes acknowledged by the child before it died.
        pub acknowledged: u64,
        /// Writes found after reopening that the child had not acknowledged yet
        /// (committed, but killed before it could print).
        pub unacknowledged_found: u64,
        /// How the child ended, as the operating system says it.
        pub exit: String,
        /// The signal that ended the child (9, SIGKILL, normally); `None` when it
        /// exited by itself.
        pub signal: Option<i32>,
    }

    /// Why a crash round failed.
    #[derive(Clone, Debug, PartialEq, Eq)]
    #[non_exhaustive]
    pub enum CrashFailure {
        /// The round could not run as planned: the writer could not be started or
        /// reaped, acknowledged too few writes, or the database did not reopen.
        Setup(String),
        /// A write the child acknowledged is missing, wrong or older after the kill.
        LostWrite(String),
    }

    impl fmt::Display for CrashFailure {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                CrashFailure::Setup(why) => write!(f, "crash round could not run: {why}"),
                CrashFailure::LostWrite(what) => f.write_str(what),
            }
        }
    }

    /// One round: runs `writer` (a command re-running the caller's test binary, which
    /// calls [`crash_writer_if_requested`]) as the crash writer of the database at
    /// `path` for `round`, kills it with SIGKILL once it acknowledged `kill_after`
    /// writes (then `jitter` later, so the kill lands mid-commit too), reopens the
    /// database and checks that every write it acknowledged (in this round and all
    /// earlier ones on the same file) is there. `Err` says what was lost, or why the
    /// round could not run.
    pub async fn check_crash_durability(
        mut writer: Command,
        path: &Path,
        round: u64,
        kill_after: u64,
        jitter: Duration,
    ) -> Result<CrashReport, CrashFailure> {
        writer
            .env(CRASH_WRITER_ENV, path)
            .env(CRASH_ROUND_ENV, round.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let (acks, status) =
            tokio::task::spawn_blocking(move || run_and_kill(writer, kill_after, jitter))
                .await
                .map_err(|e| CrashFailure::Setup(format!("crash round panicked: {e}")))?
                .map_err(CrashFailure::Setup)?;
        let mut report = CrashReport {
            acknowledged: acks.values().map(|a| a.len() as u64).sum(),
            exit: status.to_string(),
            signal: exit_signal(&status),
            ..CrashReport::default()
        };
        if report.acknowledged < kill_after {
            return Err(CrashFailure::Setup(format!(
                "the crash writer acknowledged only {} writes (wanted {kill_after}) before it ended: {}",
                report.acknowledged, report.exit
            )));
        }
        let store = Redb::open(path)
            .map_err(|e| CrashFailure::Setup(format!("reopen after kill -9: {e}")))?;
        let kv = Kv::new(store);
        let verdict = verify(&kv, round, &acks, &mut report).await;
        let _ = kv.close().await;
        drop(kv);
        verdict.map(|()| report).map_err(CrashFailure::LostWrite)
    }

    /// The signal that ended a child process, where the platform has signals.
    fn exit_signal(status: &std::process::ExitStatus) -> Option<i32> {
        #[cfg(unix)]
        {
            std::os::unix::process::ExitStatusExt::signal(status)
        }
        #[cfg(not(unix))]
        {
            let _ = status;
            None
        }
    }

    /// Acknowledged indices per writer task.
    type Acks = BTreeMap<u64, Vec<u64>>;

    fn run_and_kill(
        mut writer: Command,
        kill_after: u64,
        jitter: Duration,
    ) -> Result<(Acks, std::process::ExitStatus), String> {
        let mut child = writer
            .spawn()
            .map_err(|e| format!("spawn the crash writer: {e}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (lines, received) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let mut acks = Acks::new();
        let mut count = 0u64;
        let deadline = Instant::now() + MAX_RUN;
        while count < kill_after {
            let left = deadline.saturating_duration_since(Instant::now());
            match received.recv_timeout(left) {
                Ok(line) => {
                    if record(&mut acks, &line) {
                        count += 1;
                    }
                }
                Err(_) => break,
            }
        }
        std::thread::sleep(jitter);
        // SIGKILL on Unix: no destructor, no flush, no clean shutdown.
        let _ = child.kill();
        let status = child
            .wait()
            .map_err(|e| format!("reap the crash writer: {e}"))?;
        let _ = reader.join();
        // Lines printed before the kill are acknowledgements too.
        while let Ok(line) = received.try_recv() {
            record(&mut acks, &line);
        }
        Ok((acks, status))
    }

    /// Records an `ack WRITER I` line; false for anything else.
    fn record(acks: &mut Acks, line: &str) -> bool {
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some("ack"), Some(writer), Some(i)) => match (writer.parse(), i.parse()) {
                (Ok(writer), Ok(i)) => {
                    acks.entry(writer).or_default().push(i);
                    true
                }
                _ => false,
            },
            _ => false,
        }
    }

    async fn verify(
        kv: &Kv<Redb>,
        round: u64,
        acks: &Acks,
        report: &mut CrashReport,
    ) -> Result<(), String> {
        for (writer, acked) in acks {
            let dir = format!("crash/r{round}/w{writer}");
            let max = acked.iter().copied().max().unwrap_or(0);
            for i in acked {
                let key = format!("{dir}/k{i}");
                match kv.get(&key).await {
                    Ok(pair) if pair.value == i.to_string().as_bytes() => {}
                    Ok(pair) => {
                        return Err(format!("{key}: acknowledged {i}, found {:?}", pair.value));
                    }
                    Err(err) => {
                        return Err(format!("{key}: acknowledged, then lost by kill -9: {err}"));
                    }
                }
            }
            let last = kv
                .get(format!("{dir}/last"))
                .await
                .map_err(|e| format!("{dir}/last: acknowledged {max}, then lost: {e}"))?;
            let found: u64 = std::str::from_utf8(&last.value)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{dir}/last holds garbage {:?}", last.value))?;
            if found < max {
                return Err(format!(
                    "{dir}/last went back: acknowledged {max}, found {found} after kill -9"
                ));
            }
            let listed = kv
                .list(&dir)
                .await
                .map_err(|e| format!("list {dir}: {e}"))?;
            let keys = listed.iter().filter(|p| !p.key.ends_with("/last")).count() as u64;
            report.unacknowledged_found += keys.saturating_sub(acked.len() as u64);
        }
        Ok(())
    }

    /// [`check_crash_durability`] rounds in the [`FaultInjector`] shape: `inject` runs
    /// a writer child on its own database file, kills it -9 after a varying number
    /// of acknowledgements, reopens the file and checks the acknowledged writes;
    /// `heal` files the verdict (the store is already reopened). The verdicts are kept in [`RedbWriterCrash::failures`] and
    /// [`RedbWriterCrash::reports`]. It does not touch the `Kv` a harness checks (that
    /// one lives in the harness's own process).
    pub struct RedbWriterCrash {
        command: Box<dyn Fn() -> Command + Send + Sync>,
        path: PathBuf,
        state: std::sync::Mutex<CrashState>,
    }

    #[derive(Default)]
    struct CrashState {
        round: u64,
        pending: Option<Result<CrashReport, CrashFailure>>,
        reports: Vec<CrashReport>,
        failures: Vec<CrashFailure>,
    }

    impl std::fmt::Debug for RedbWriterCrash {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("RedbWriterCrash")
                .field("path", &self.path)
                .finish_non_exhaustive()
        }
    }

    impl RedbWriterCrash {
        /// Rounds on the database at `path`, each child made by `command`.
        pub fn new(
            path: impl Into<PathBuf>,
            command: impl Fn() -> Command + Send + Sync + 'static,
        ) -> Self {
            RedbWriterCrash {
                command: Box::new(command),
                path: path.into(),
                state: std::sync::Mutex::default(),
            }
        }

        /// The reports of the rounds that passed.
        pub fn reports(&self) -> Vec<CrashReport> {
            self.lock().reports.clone()
        }

        /// What the failed rounds lost.
        pub fn failures(&self) -> Vec<CrashFailure> {
            self.lock().failures.clone()
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, CrashState> {
            self.state.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    impl FaultInjector for RedbWriterCrash {
        fn name(&self) -> String {
            "kill -9 a redb writer process".to_owned()
        }

        fn inject(&self) -> BoxFuture<'_, ()> {
            Box::pin(async move {
                let round = {
                    let mut state = self.lock();
                    state.round += 1;
                    state.round
                };
                // Kill points and timing vary by round: early, mid-stream, later.
                let kill_after = 1 + (round * 37) % 200;
                let jitter = Duration::from_micros((round * 7919) % 3000);
                let outcome =
                    check_crash_durability((self.command)(), &self.path, round, kill_after, jitter)
                        .await;
                self.lock().pending = Some(outcome);
            })
        }

        fn heal(&self) -> BoxFuture<'_, ()> {
            // The reopen and check ran right after the kill; heal records the verdict.
            let mut state = self.lock();
            match state.pending.take() {
                Some(Ok(report)) => state.reports.push(report),
                Some(Err(lost)) => state.failures.push(lost),
                None => {}
            }
            Box::pin(async {})
        }
    }
}
