//! An in-process emulator of Consul's HTTP API, for tests.
//!
//! No Consul binary can be installed on the project's machines, so the Consul backend
//! is tested against this emulator. It is written from the reference document
//! (`shared/reference/consul-http-api.md`), not from the backend, and shares no code
//! with [`crate::consul`], so a misunderstanding in the backend is not mirrored here.
//!
//! It serves, on an ephemeral 127.0.0.1 port (plain HTTP or TLS):
//!
//! * `/v1/kv/<key>`: GET with `recurse`, `keys`, `separator`, `raw`, `consistent`,
//!   `stale`; PUT with `flags`, `cas`, `acquire`, `release`; DELETE with `recurse`,
//!   `cas`; the 512 KiB value limit (413);
//! * blocking queries (`index` and `wait`, with jitter) on KV reads and session info;
//! * `/v1/session/create|renew|destroy|info|list` with TTLs (a configurable minimum,
//!   expiry after `ttl * multiplier`, 2 by default as in Consul), behaviours
//!   `release`/`delete` and lock-delays;
//! * `/v1/txn` with the KV verbs;
//! * ACL token checks (403) and `/v1/status/leader`.
//!
//! Fault switches ([`Faults`]) make requests fail with 500, delay responses or drop
//! connections; [`ConsulEmulator::snapshot`] and [`ConsulEmulator::restore`] emulate a
//! snapshot restore (the index goes backwards); [`ConsulEmulator::wake_blocking_queries`]
//! makes every pending blocking query return without a change.

mod http;
mod kv;
mod session;
mod state;
mod txn;
mod wire;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::state::State;

/// The emulator's settings.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// When set, every request except `/v1/status/*` must carry this token
    /// (`X-Consul-Token`, `?token=` or `Authorization: Bearer`); others get 403.
    pub acl_token: Option<String>,
    /// The smallest session TTL accepted (Consul's `session_ttl_min`, 10 s by default;
    /// tests usually lower it to 1 s).
    pub session_ttl_min: Duration,
    /// A session with TTL `t` is invalidated `t * session_ttl_multiplier` after its
    /// creation or last renewal (Consul uses 2).
    pub session_ttl_multiplier: u32,
    /// Serve HTTPS with this identity instead of plain HTTP.
    pub tls: Option<EmulatorTls>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            acl_token: None,
            session_ttl_min: Duration::from_secs(10),
            session_ttl_multiplier: 2,
            tls: None,
        }
    }
}

impl EmulatorConfig {
    /// Sets the minimum session TTL.
    pub fn session_ttl_min(mut self, min: Duration) -> Self {
        self.session_ttl_min = min;
        self
    }

    /// Requires this ACL token.
    pub fn acl_token(mut self, token: impl Into<String>) -> Self {
        self.acl_token = Some(token.into());
        self
    }

    /// Serves HTTPS.
    pub fn tls(mut self, tls: EmulatorTls) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// The TLS identity of the emulator (PEM text).
#[derive(Clone, Debug)]
pub struct EmulatorTls {
    /// The server's certificate chain, leaf first.
    pub cert_chain_pem: String,
    /// The server's private key.
    pub key_pem: String,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca_pem: Option<String>,
}

/// Fault switches, shared by every connection of one emulator.
#[derive(Debug, Default)]
pub struct Faults {
    fail_next: AtomicU64,
    fail_all: AtomicBool,
    drop_next: AtomicU64,
    delay_ms: AtomicU64,
    status_next: AtomicU64,
    status_code: AtomicU64,
    refusing: AtomicBool,
}

impl Faults {
    /// The next `n` requests get `500 Internal Server Error`.
    pub fn fail_next(&self, n: u64) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// While `on`, every request gets `500 Internal Server Error`.
    pub fn set_failing(&self, on: bool) {
        self.fail_all.store(on, Ordering::SeqCst);
    }

    /// The next `n` requests are answered by closing the connection, with no response.
    pub fn drop_next(&self, n: u64) {
        self.drop_next.store(n, Ordering::SeqCst);
    }

    /// The next `n` requests get the HTTP status `code` (e.g. 429 or 503) and no data.
    pub fn respond_next(&self, code: u16, n: u64) {
        self.status_code.store(u64::from(code), Ordering::SeqCst);
        self.status_next.store(n, Ordering::SeqCst);
    }

    /// While `on`, the agent is down as during a restart: every new connection is
    /// closed at once, before any TLS handshake or request is read. Together with
    /// [`ConsulEmulator::drop_connections`] this is an agent restart that keeps its
    /// state (as a restarted server agent does).
    pub fn set_refusing(&self, on: bool) {
        self.refusing.store(on, Ordering::SeqCst);
    }

    pub(crate) fn refusing(&self) -> bool {
        self.refusing.load(Ordering::SeqCst)
    }

    pub(crate) fn take_status(&self) -> Option<u16> {
        take_one(&self.status_next)
            .then(|| u16::try_from(self.status_code.load(Ordering::SeqCst)).unwrap_or(500))
    }

    /// Delays every response by `delay` (zero: no delay).
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    pub(crate) fn take_drop(&self) -> bool {
        take_one(&self.drop_next)
    }

    pub(crate) fn take_fail(&self) -> bool {
        self.fail_all.load(Ordering::SeqCst) || take_one(&self.fail_next)
    }

    pub(crate) fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms.load(Ordering::SeqCst))
    }
}

fn take_one(counter: &AtomicU64) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// A copy of the emulator's whole state, to restore later (see
/// [`ConsulEmulator::restore`]).
#[derive(Clone, Debug)]
pub struct Snapshot(State);

impl Snapshot {
    /// The Raft index at which the snapshot was taken.
    pub fn index(&self) -> u64 {
        self.0.index
    }
}

/// What the HTTP handlers share.
pub(crate) struct Shared {
    pub config: EmulatorConfig,
    pub state: Mutex<State>,
    /// Bumped after every change; blocking queries wait on it.
    pub changes: watch::Sender<u64>,
    /// Bumped to make every pending blocking query return at once.
    pub abandon: watch::Sender<u64>,
    /// Bumped to close every open connection.
    pub drop_conns: watch::Sender<u64>,
    pub faults: Faults,
    pub requests: AtomicU64,
    pub kv_gets: AtomicU64,
    pub id_seed: AtomicU64,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wakes blocking queries after a change.
    pub fn notify(&self) {
        self.changes.send_modify(|n| *n += 1);
    }
}

/// A running emulator; stopped when dropped.
pub struct ConsulEmulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tls: bool,
}

impl std::fmt::Debug for ConsulEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulEmulator")
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .finish()
    }
}

impl ConsulEmulator {
    /// Starts an emulator with default settings (plain HTTP, no ACL, 10 s minimum TTL).
    pub async fn start_default() -> std::io::Result<Self> {
        Self::start(EmulatorConfig::default()).await
    }

    /// Starts an emulator on an ephemeral 127.0.0.1 port. Needs a Tokio runtime with
    /// I/O and time enabled.
    pub async fn start(config: EmulatorConfig) -> std::io::Result<Self> {
        let acceptor = match &config.tls {
            Some(tls) => Some(http::tls_acceptor(tls)?),
            None => None,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(State::default()),
            changes: watch::channel(0).0,
            abandon: watch::channel(0).0,
            drop_conns: watch::channel(0).0,
            faults: Faults::default(),
            requests: AtomicU64::new(0),
            kv_gets: AtomicU64::new(0),
            id_seed: AtomicU64::new(0),
        });
        let shutdown = CancellationToken::new();
        let tls = acceptor.is_some();
        tokio::spawn(http::accept_loop(
            listener,
            acceptor,
            shared.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(session::reaper(shared.clone(), shutdown.clone()));
        Ok(ConsulEmulator {
            addr,
            shared,
            shutdown,
            tls,
        })
    }

    /// The socket address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` or `https://localhost:PORT` (the name the test
    /// certificates are usually issued for).
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// The fault switches.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Closes every open connection now, including those waiting in blocking queries.
    pub fn drop_connections(&self) {
        self.shared.drop_conns.send_modify(|n| *n += 1);
    }

    /// Makes every pending blocking query return now, with its current (unchanged)
    /// result, as Consul may do at any time.
    pub fn wake_blocking_queries(&self) {
        self.shared.abandon.send_modify(|n| *n += 1);
    }

    /// A copy of the whole state.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot(self.shared.lock().clone())
    }

    /// Restores a snapshot, as `consul snapshot restore` does: the data and the
    /// indexes go back to those of the snapshot, session timers restart, and pending
    /// blocking queries return at once (with indexes lower than they asked for).
    pub fn restore(&self, snapshot: &Snapshot) {
        {
            let mut state = self.shared.lock();
            *state = snapshot.0.clone();
            let now = tokio::time::Instant::now();
            let mult = self.shared.config.session_ttl_multiplier;
            for session in state.sessions.values_mut() {
                session.expires_at = session.ttl.map(|ttl| now + ttl * mult);
            }
        }
        self.shared.notify();
        self.wake_blocking_queries();
    }

    /// The current Raft index.
    pub fn index(&self) -> u64 {
        self.shared.lock().index
    }

    /// The ids of the live sessions.
    pub fn session_ids(&self) -> Vec<String> {
        self.shared.lock().sessions.keys().cloned().collect()
    }

    /// Invalidates a session as if its TTL had run out (held keys released or
    /// deleted, lock-delay started). False when it did not exist.
    pub fn expire_session(&self, id: &str) -> bool {
        let done = {
            let mut state = self.shared.lock();
            let idx = state.next_index();
            state.destroy_session(idx, id, tokio::time::Instant::now())
        };
        self.shared.notify();
        done
    }

    /// The number of requests received so far.
    pub fn request_count(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// The number of `GET /v1/kv/...` requests received so far.
    pub fn kv_get_count(&self) -> u64 {
        self.shared.kv_gets.load(Ordering::SeqCst)
    }

    /// Stops serving (also done on drop).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for ConsulEmulator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
