//! Real ZooKeeper servers for tests: a standalone server or a 3-server ensemble on
//! loopback, from Debian's `zookeeper` package (`/usr/share/java/zookeeper.jar`, run on
//! the machine's JVM), plus a TCP proxy that can cut a client off (to expire sessions).
//!
//! Servers run with fast settings: `tickTime=200` (sessions of 0.4 s to 20 s unless
//! [`ZkServerSettings`] says otherwise), the `wchs` four-letter word allowed, extended
//! types enabled, a 100 ms container check interval. Each lives in a temporary
//! directory and is killed when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream as TokioTcpStream};
use tokio::sync::watch;

use super::server::{ChildGuard, find_binary, free_port};

/// The jar that holds the server (its manifest lists the other jars).
pub const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";

/// How long a server may take to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(60);

fn classpath() -> String {
    // The manifest's Class-Path brings the dependencies; add a logging binding.
    let mut parts = vec![ZOOKEEPER_JAR.to_owned()];
    for extra in [
        "/usr/share/java/slf4j-simple.jar",
        "/usr/share/java/zookeeper-jute.jar",
    ] {
        if Path::new(extra).is_file() {
            parts.push(extra.to_owned());
        }
    }
    parts.join(":")
}

/// Sends a four-letter command and returns the answer (empty on failure).
pub fn four_letter(addr: SocketAddr, command: &str) -> String {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(1_000)));
    if stream.write_all(command.as_bytes()).is_err() {
        return String::new();
    }
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    out
}

/// True when the server at `addr` serves requests (standalone, leader or follower).
pub fn is_serving(addr: SocketAddr) -> bool {
    four_letter(addr, "srvr").contains("Mode:")
}

/// One ZooKeeper server process with its configuration.
#[derive(Debug)]
struct Member {
    dir: PathBuf,
    client_port: u16,
    child: Option<ChildGuard>,
    java: PathBuf,
    /// Killed when the test process exits ([`ChildGuard::spawn_tied`]).
    tied_to_process: bool,
}

impl Member {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let mut command = Command::new(&self.java);
        command
            .arg("-Xmx192m")
            .arg("-Xss512k")
            .arg("-XX:+UseSerialGC")
            .arg("-XX:TieredStopAtLevel=1")
            .arg("-Dzookeeper.extendedTypesEnabled=true")
            .arg("-Dznode.container.checkIntervalMs=100")
            .arg("-Dzookeeper.admin.enableServer=false")
            .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=warn")
            .arg("-cp")
            .arg(classpath())
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(self.dir.join("zoo.cfg"));
        let log = self.dir.join("server.log");
        self.child = Some(if self.tied_to_process {
            ChildGuard::spawn_tied("zookeeper", command, &log, &self.dir)?
        } else {
            ChildGuard::spawn("zookeeper", command, &log)?
        });
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let start = text.len().saturating_sub(3_000);
        text.get(start..).unwrap_or_default().to_owned()
    }
}

/// Settings of a [`ZkServer`] a test may change ([`ZkServer::start_with`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZkServerSettings {
    /// The shortest session timeout the server grants, in ms (default 400).
    pub min_session_timeout_ms: u64,
    /// The longest session timeout the server grants, in ms (default 20000); a client
    /// asking for more gets this.
    pub max_session_timeout_ms: u64,
}

impl Default for ZkServerSettings {
    fn default() -> Self {
        ZkServerSettings {
            min_session_timeout_ms: 400,
            max_session_timeout_ms: 20_000,
        }
    }
}

fn write_config(
    dir: &Path,
    client_port: u16,
    servers: &[(u16, u16)],
    id: usize,
    settings: &ZkServerSettings,
) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).expect("create the data dir");
    let mut cfg = format!(
        "tickTime=200\ninitLimit=50\nsyncLimit=25\ndataDir={}\nclientPort={client_port}\n\
         clientPortAddress=127.0.0.1\nmaxClientCnxns=0\nadmin.enableServer=false\n\
         4lw.commands.whitelist=ruok,srvr,stat,wchs\nminSessionTimeout={}\nmaxSessionTimeout={}\n\
         autopurge.purgeInterval=0\n",
        data.display(),
        settings.min_session_timeout_ms,
        settings.max_session_timeout_ms,
    );
    if servers.len() > 1 {
        for (i, (quorum, election)) in servers.iter().enumerate() {
            cfg.push_str(&format!("server.{}=127.0.0.1:{quorum}:{election}\n", i + 1));
        }
        std::fs::write(data.join("myid"), format!("{}\n", id + 1)).expect("write myid");
    }
    std::fs::write(dir.join("zoo.cfg"), cfg).expect("write zoo.cfg");
}

fn find_server() -> Option<PathBuf> {
    find_binary("ZooKeeper (Debian package zookeeper)", &[ZOOKEEPER_JAR])?;
    find_binary("java (to run ZooKeeper)", &["java"])
}

/// A standalone ZooKeeper server on a free loopback port; killed on drop.
#[derive(Debug)]
pub struct ZkServer {
    _temp: tempfile::TempDir,
    member: Member,
}

impl ZkServer {
    /// Starts a server and waits until it serves. `None` (after a notice) when
    /// ZooKeeper or Java is not installed and servers are not required.
    pub fn start() -> Option<Self> {
        Self::start_with(ZkServerSettings::default())
    }

    /// Like [`ZkServer::start`], with other settings.
    pub fn start_with(settings: ZkServerSettings) -> Option<Self> {
        Self::launch(settings, false)
    }

    /// One standalone server (default settings) shared by every test of this process
    /// that asks for it, started by the first. Tests share it by working under roots
    /// of their own. A `static` is never dropped, so its process is tied to the test
    /// process ([`ChildGuard::spawn_tied`]): it ends when the test process exits,
    /// however that happens. `None` as for [`ZkServer::start`].
    pub fn shared() -> Option<&'static Self> {
        static SHARED: OnceLock<Option<ZkServer>> = OnceLock::new();
        SHARED
            .get_or_init(|| Self::launch(ZkServerSettings::default(), true))
            .as_ref()
    }

    fn launch(settings: ZkServerSettings, tied_to_process: bool) -> Option<Self> {
        let java = find_server()?;
        let temp = tempfile::tempdir().expect("temp dir");
        let client_port = free_port();
        write_config(temp.path(), client_port, &[], 0, &settings);
        let mut member = Member {
            dir: temp.path().to_path_buf(),
            client_port,
            child: None,
            java,
            tied_to_process,
        };
        member.spawn().expect("spawn the ZooKeeper server");
        let server = ZkServer {
            _temp: temp,
            member,
        };
        server.wait_serving();
        Some(server)
    }

    fn wait_serving(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if is_serving(self.member.addr()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "ZooKeeper did not start serving on {} within {START_TIMEOUT:?}; log tail:\n{}",
            self.member.addr(),
            self.member.log_tail()
        );
    }

    /// `127.0.0.1:port`.
    pub fn connect_string(&self) -> String {
        self.member.addr().to_string()
    }

    /// The client address.
    pub fn addr(&self) -> SocketAddr {
        self.member.addr()
    }

    /// Kills the server (its data stays).
    pub fn stop(&mut self) {
        self.member.stop();
    }

    /// Starts the server again on the same port and data, and waits until it serves.
    pub fn restart(&mut self) {
        self.member.stop();
        self.member.spawn().expect("respawn the ZooKeeper server");
        self.wait_serving();
    }
}

/// Three ZooKeeper servers forming an ensemble on loopback; killed on drop.
#[derive(Debug)]
pub struct ZkEnsemble {
    _temp: tempfile::TempDir,
    members: Vec<Member>,
}

impl ZkEnsemble {
    /// Starts three servers and waits until all serve. `None` when ZooKeeper is not
    /// installed and servers are not required.
    pub fn start() -> Option<Self> {
        let java = find_server()?;
        let temp = tempfile::tempdir().expect("temp dir");
        let servers: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let mut members = Vec::new();
        for id in 0..3 {
            let dir = temp.path().join(format!("s{}", id + 1));
            let client_port = free_port();
            write_config(
                &dir,
                client_port,
                &servers,
                id,
                &ZkServerSettings::default(),
            );
            let mut member = Member {
                dir,
                client_port,
                child: None,
                java: java.clone(),
                tied_to_process: false,
            };
            member.spawn().expect("spawn a ZooKeeper server");
            members.push(member);
        }
        let ensemble = ZkEnsemble {
            _temp: temp,
            members,
        };
        for i in 0..3 {
            ensemble.wait_serving(i);
        }
        Some(ensemble)
    }

    fn wait_serving(&self, i: usize) {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if is_serving(self.members[i].addr()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "ensemble member {} did not serve within {START_TIMEOUT:?}; log tail:\n{}",
            i + 1,
            self.members[i].log_tail()
        );
    }

    /// `127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3`.
    pub fn connect_string(&self) -> String {
        self.members
            .iter()
            .map(|m| m.addr().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client address of member `i` (0-based).
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.members[i].addr()
    }

    /// Kills member `i`.
    pub fn stop(&mut self, i: usize) {
        self.members[i].stop();
    }

    /// True when member `i` is the ensemble's leader.
    pub fn is_leader(&self, i: usize) -> bool {
        four_letter(self.members[i].addr(), "srvr").contains("Mode: leader")
    }

    /// Freezes member `i` (`SIGSTOP`): it neither answers nor applies the leader's
    /// commits until [`ZkEnsemble::resume`], so it falls behind the others.
    pub fn pause(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    /// Lets a paused member run again.
    pub fn resume(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    fn signal(&self, i: usize, signal: &str) {
        if let Some(pid) = self.members[i].child.as_ref().and_then(ChildGuard::id) {
            let _ = Command::new("kill")
                .arg(signal)
                .arg(pid.to_string())
                .status();
        }
    }

    /// Starts member `i` again and waits until it serves.
    pub fn start_member(&mut self, i: usize) {
        self.members[i].stop();
        self.members[i].spawn().expect("respawn a ZooKeeper server");
        self.wait_serving(i);
    }
}

/// What a [`TcpProxy`] does with its clients' traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forwards both ways.
    Open,
    /// Keeps the connections open but forwards nothing: a silent network partition.
    Silent,
    /// Drops the connections and holds new ones without forwarding.
    Blocked,
}

/// A loopback TCP proxy in front of a server that can cut its clients off (see
/// [`ProxyMode`]), so the server hears nothing from them and expires their sessions.
#[derive(Debug)]
pub struct TcpProxy {
    port: u16,
    mode: Arc<watch::Sender<ProxyMode>>,
    task: tokio::task::JoinHandle<()>,
}

/// Copies one direction while the proxy is open; pauses while silent.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<ProxyMode>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match mode.wait_for(|m| *m != ProxyMode::Silent).await {
            Ok(m) if *m == ProxyMode::Open => {}
            _ => return,
        }
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            _ = mode.wait_for(|m| *m != ProxyMode::Open) => continue,
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Data read just as the proxy went silent is held back, not lost.
        match mode.wait_for(|m| *m != ProxyMode::Silent).await {
            Ok(m) if *m == ProxyMode::Open => {}
            _ => return,
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl TcpProxy {
    /// Starts a proxy to `target` on a free loopback port (needs a tokio runtime).
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (mode, _) = watch::channel(ProxyMode::Open);
        let mode = Arc::new(mode);
        let state = mode.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut rx = state.subscribe();
                tokio::spawn(async move {
                    if rx.wait_for(|m| *m != ProxyMode::Blocked).await.is_err() {
                        return;
                    }
                    let Ok(server) = TokioTcpStream::connect(target).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::select! {
                        _ = pump(client_read, server_write, rx.clone()) => {}
                        _ = pump(server_read, client_write, rx.clone()) => {}
                        _ = rx.wait_for(|m| *m == ProxyMode::Blocked) => {}
                    }
                });
            }
        });
        Ok(TcpProxy { port, mode, task })
    }

    /// `127.0.0.1:port` of the proxy.
    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Switches the proxy's mode.
    pub fn set_mode(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }

    /// Cuts clients off (`true`: [`ProxyMode::Blocked`]) or lets them through again.
    pub fn set_blocked(&self, blocked: bool) {
        self.set_mode(if blocked {
            ProxyMode::Blocked
        } else {
            ProxyMode::Open
        });
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.set_mode(ProxyMode::Blocked);
        self.task.abort();
    }
}
