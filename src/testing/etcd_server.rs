//! Real etcd servers for tests: one member, a 3-member cluster, TLS and auth.
//!
//! Servers run `/usr/bin/etcd` (Debian's `etcd-server`) on free 127.0.0.1 ports with a
//! temporary data dir, and are killed when dropped. A stopped member can be restarted
//! on the same ports and data dir. Every wait is bounded in time.
//!
//! ```no_run
//! # async fn demo() {
//! use kvkit::testing::etcd_server::EtcdServer;
//! let Some(server) = EtcdServer::start().await else { return }; // etcd not installed
//! let config = server.config();
//! # }
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::server::{ChildGuard, find_binary, free_port, wait_for_tcp};
use crate::config::tls::TlsConfig;
use crate::etcd::EtcdConfig;

/// How long a member may take to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// PEM certificate and key for a TLS server, plus the CA that signed it.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The CA certificate clients should trust (PEM).
    pub ca_pem: String,
    /// The server's certificate (PEM), valid for 127.0.0.1.
    pub cert_pem: String,
    /// The server's private key (PEM).
    pub key_pem: String,
    /// When set, clients must present a certificate signed by its CA
    /// (`--client-cert-auth`); the harness and [`EtcdServer::config`] use its
    /// certificate.
    pub client_auth: Option<ClientAuth>,
}

/// Client-certificate authentication for a TLS server.
#[derive(Clone, Debug)]
pub struct ClientAuth {
    /// The CA the server trusts for client certificates (PEM).
    pub ca_pem: String,
    /// A client certificate signed by that CA (PEM).
    pub cert_pem: String,
    /// The client certificate's key (PEM).
    pub key_pem: String,
}

/// One etcd member's process and settings.
#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    starts: u32,
    child: Option<ChildGuard>,
}

impl Member {
    fn client_url(&self, tls: bool) -> String {
        let scheme = if tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// The processes of a single server or a cluster, and how to start them again.
#[derive(Debug)]
struct Processes {
    binary: PathBuf,
    dir: TempDir,
    members: Vec<Member>,
    tls: Option<ServerTls>,
    token: String,
}

impl Processes {
    fn new(binary: PathBuf, size: usize, tls: Option<ServerTls>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kvkit-etcd-")
            .tempdir()
            .expect("create a temporary dir for etcd");
        let members = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                data_dir: dir.path().join(format!("m{i}.etcd")),
                log: dir.path().join(format!("m{i}.log")),
                starts: 0,
                child: None,
            })
            .collect();
        let token = format!(
            "kvkit-{}-{}",
            std::process::id(),
            dir.path().file_name().unwrap_or_default().to_string_lossy()
        );
        Processes {
            binary,
            dir,
            members,
            tls,
            token,
        }
    }

    /// Writes the TLS files; returns etcd's TLS arguments.
    fn write_tls_files(&self) -> Vec<std::ffi::OsString> {
        let Some(tls) = self.tls.as_ref() else {
            return Vec::new();
        };
        let cert = self.dir.path().join("server.pem");
        let key = self.dir.path().join("server-key.pem");
        std::fs::write(&cert, &tls.cert_pem).expect("write the server certificate");
        std::fs::write(&key, &tls.key_pem).expect("write the server key");
        let mut args = vec![
            "--cert-file".into(),
            cert.into_os_string(),
            "--key-file".into(),
            key.into_os_string(),
        ];
        if let Some(client) = &tls.client_auth {
            let ca = self.dir.path().join("client-ca.pem");
            std::fs::write(&ca, &client.ca_pem).expect("write the client CA");
            args.extend([
                "--client-cert-auth".into(),
                "--trusted-ca-file".into(),
                ca.into_os_string(),
            ]);
        }
        args
    }

    fn spawn(&mut self, index: usize) {
        let tls_files = self.write_tls_files();
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let tls = self.tls.is_some();
        let member = &mut self.members[index];
        let client_url = member.client_url(tls);
        let mut command = Command::new(&self.binary);
        command
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&member.data_dir)
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(member.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(member.peer_url())
            .arg("--initial-cluster")
            .arg(&initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--heartbeat-interval")
            .arg("50")
            .arg("--election-timeout")
            .arg("500")
            .arg("--logger")
            .arg("zap");
        command.args(&tls_files);
        // One log per start, so a restart does not truncate the previous one.
        member.starts += 1;
        let log = self
            .dir
            .path()
            .join(format!("{}-{}.log", member.name, member.starts));
        let child = ChildGuard::spawn(&member.name, command, &log).expect("spawn etcd");
        member.log = log;
        member.child = Some(child);
    }

    fn wait_listening(&self, index: usize) {
        let member = &self.members[index];
        let addr = SocketAddr::from(([127, 0, 0, 1], member.client_port));
        assert!(
            wait_for_tcp(addr, START_TIMEOUT),
            "etcd member {} did not listen on {addr} within {START_TIMEOUT:?}; log: {}",
            member.name,
            tail(&member.log)
        );
    }

    fn endpoints(&self) -> Vec<String> {
        let tls = self.tls.is_some();
        self.members.iter().map(|m| m.client_url(tls)).collect()
    }

    fn config(&self, endpoints: Vec<String>) -> EtcdConfig {
        let mut config = EtcdConfig::new(endpoints)
            .connect_timeout(Duration::from_secs(2))
            .request_timeout(Duration::from_secs(5));
        if let Some(tls) = &self.tls {
            let mut client_tls = TlsConfig::with_ca_pem(tls.ca_pem.clone());
            if let Some(client) = &tls.client_auth {
                client_tls =
                    client_tls.identity_pem(client.cert_pem.clone(), client.key_pem.clone());
            }
            config = config.tls(client_tls);
        }
        config
    }

    /// The harness's own client TLS settings.
    fn client_tls(&self) -> Option<etcd_client::TlsOptions> {
        let tls = self.tls.as_ref()?;
        let mut options = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(tls.ca_pem.clone()));
        if let Some(client) = &tls.client_auth {
            options = options.identity(etcd_client::Identity::from_pem(
                client.cert_pem.clone(),
                client.key_pem.clone(),
            ));
        }
        Some(options)
    }

    /// Waits until `index` answers a client request (bounded by [`START_TIMEOUT`]).
    async fn wait_ready(&self, index: usize) {
        let member = &self.members[index];
        let deadline = Instant::now() + START_TIMEOUT;
        let tls = self.client_tls();
        let mut last_error = String::new();
        while Instant::now() < deadline {
            let mut options = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_millis(500))
                .with_timeout(Duration::from_secs(1))
                .with_require_leader(true);
            if let Some(tls) = tls.clone() {
                options = options.with_tls(tls);
            }
            let attempt = async {
                let mut client = etcd_client::Client::connect(
                    [member.client_url(self.tls.is_some())],
                    Some(options),
                )
                .await?;
                client.get("kvkit-probe", None).await
            };
            match tokio::time::timeout(Duration::from_secs(2), attempt).await {
                Ok(Ok(_)) => return,
                Ok(Err(err)) => last_error = err.to_string(),
                Err(_) => last_error = "timed out".to_owned(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "etcd member {} did not answer within {START_TIMEOUT:?} ({last_error}); log: {}",
            member.name,
            tail(&member.log)
        );
    }
}

/// The last lines of a log file, for failure messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn etcd_binary() -> Option<PathBuf> {
    find_binary(
        "etcd (Debian package etcd-server)",
        &["/usr/bin/etcd", "etcd"],
    )
}

/// A single etcd server on a free loopback port, killed when dropped.
#[derive(Debug)]
pub struct EtcdServer {
    processes: Processes,
}

impl EtcdServer {
    /// Starts a plain-HTTP server and waits until it answers. `None` (with a notice)
    /// when etcd is not installed and servers are not required.
    pub async fn start() -> Option<EtcdServer> {
        Self::start_with(None).await
    }

    /// Starts a server serving clients over TLS with `tls`'s certificate.
    pub async fn start_tls(tls: ServerTls) -> Option<EtcdServer> {
        Self::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<ServerTls>) -> Option<EtcdServer> {
        let binary = etcd_binary()?;
        let mut processes = Processes::new(binary, 1, tls);
        processes.spawn(0);
        processes.wait_listening(0);
        processes.wait_ready(0).await;
        Some(EtcdServer { processes })
    }

    /// The client URL (`http://127.0.0.1:port`, or `https://` with TLS).
    pub fn endpoint(&self) -> String {
        self.processes.endpoints().remove(0)
    }

    /// A kvkit configuration for this server (with the CA when it uses TLS), with
    /// short test timeouts.
    pub fn config(&self) -> EtcdConfig {
        self.processes.config(self.processes.endpoints())
    }

    /// Kills the server (its data dir is kept).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.processes.members[0].child.take() {
            child.kill();
        }
    }

    /// Starts the server again on the same port and data dir and waits until it
    /// answers.
    pub async fn restart(&mut self) {
        self.stop();
        self.processes.spawn(0);
        self.processes.wait_listening(0);
        self.processes.wait_ready(0).await;
    }

    /// The server's Prometheus metrics text (`/metrics`; plain-HTTP servers only).
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        assert!(
            self.processes.tls.is_none(),
            "metrics need a plain-HTTP server"
        );
        let member = &self.processes.members[0];
        let addr = SocketAddr::from(([127, 0, 0, 1], member.client_port));
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .expect("connect to etcd's metrics endpoint");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set a read timeout");
        // HTTP/1.0: no chunked encoding to undo.
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .expect("request the metrics");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("read the metrics");
        text
    }

    /// The value of metric `name`, summed over its labels (0 when absent), e.g.
    /// `etcd_debugging_mvcc_watcher_total` (open watchers).
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// How many gRPC requests of each method (`"Range"`, `"Txn"`, `"LeaseGrant"`,
    /// `"Watch"`, ...) the server has started so far. Diff two readings to count an
    /// operation's round trips.
    pub fn grpc_calls(&self) -> std::collections::BTreeMap<String, u64> {
        let mut calls = std::collections::BTreeMap::new();
        for line in self.metrics().lines() {
            let Some(rest) = line.strip_prefix("grpc_server_started_total{") else {
                continue;
            };
            let Some(method) = rest
                .split("grpc_method=\"")
                .nth(1)
                .and_then(|m| m.split('"').next())
            else {
                continue;
            };
            let count = line
                .rsplit(' ')
                .next()
                .and_then(|n| n.parse::<f64>().ok())
                .unwrap_or(0.0);
            if count > 0.0 {
                *calls.entry(method.to_owned()).or_insert(0) += count as u64;
            }
        }
        calls
    }

    /// Enables etcd authentication with a `root` user having `password`.
    pub async fn enable_auth(&self, password: &str) -> Result<(), etcd_client::Error> {
        let mut options = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(5));
        if let Some(tls) = self.processes.client_tls() {
            options = options.with_tls(tls);
        }
        let mut client = etcd_client::Client::connect([self.endpoint()], Some(options)).await?;
        client.user_add("root", password, None).await?;
        client.user_grant_role("root", "root").await?;
        client.auth_enable().await?;
        Ok(())
    }
}

/// A 3-member etcd cluster on loopback, killed when dropped.
#[derive(Debug)]
pub struct EtcdCluster {
    processes: Processes,
}

impl EtcdCluster {
    /// Starts `size` members (3 for a useful cluster) and waits until each answers.
    /// `None` (with a notice) when etcd is not installed and servers are not required.
    pub async fn start(size: usize) -> Option<EtcdCluster> {
        let binary = etcd_binary()?;
        let mut processes = Processes::new(binary, size, None);
        for i in 0..size {
            processes.spawn(i);
        }
        for i in 0..size {
            processes.wait_listening(i);
        }
        for i in 0..size {
            processes.wait_ready(i).await;
        }
        Some(EtcdCluster { processes })
    }

    /// The members' client URLs.
    pub fn endpoints(&self) -> Vec<String> {
        self.processes.endpoints()
    }

    /// A kvkit configuration listing every member.
    pub fn config(&self) -> EtcdConfig {
        self.processes.config(self.endpoints())
    }

    /// The index of the current leader, asked of the running members (bounded: up to
    /// 10 s while an election is going on).
    pub async fn leader(&self) -> Option<usize> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            for (index, member) in self.processes.members.iter().enumerate() {
                if member.child.is_none() {
                    continue;
                }
                let options =
                    etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(1));
                let status = async {
                    let mut client =
                        etcd_client::Client::connect([member.client_url(false)], Some(options))
                            .await?;
                    client.status().await
                };
                if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(2), status).await {
                    let me = status.header().map(|h| h.member_id());
                    if status.leader() != 0 && me == Some(status.leader()) {
                        return Some(index);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Kills member `index` (its data dir is kept).
    pub fn stop(&mut self, index: usize) {
        if let Some(mut child) = self.processes.members[index].child.take() {
            child.kill();
        }
    }

    /// Starts member `index` again and waits until it answers.
    pub async fn restart(&mut self, index: usize) {
        self.stop(index);
        self.processes.spawn(index);
        self.processes.wait_listening(index);
        self.processes.wait_ready(index).await;
    }
}
