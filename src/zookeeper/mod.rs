//! The ZooKeeper backend, on the `zookeeper-async` client (feature `zookeeper`).
//!
//! ```no_run
//! # async fn demo() -> kvkit::Result<()> {
//! use kvkit::{Kv, PutOptions};
//! use kvkit::zookeeper::{Zookeeper, ZookeeperConfig};
//!
//! let zk = Zookeeper::connect(ZookeeperConfig::new("127.0.0.1:2181").root("/myapp")).await?;
//! let kv = Kv::new(zk);
//! kv.put("config/a", "1", PutOptions::default()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Keys live below `{root}/kv` as znodes, one per key segment; a one-byte header in the
//! znode data tells a key with a value from an implicit parent (see `docs/zookeeper.md`
//! for the encoding and the round trips of every operation). `last_index` is the znode's
//! `mzxid`. Lock contenders live below `{root}/locks`, outside the key space.
//!
//! What the client crate lacks and how this backend copes: it has no multi-op (CAS uses
//! a versioned `setData`/`delete` after a read of the `mzxid`), no persistent watches
//! (one-shot watches are re-armed, and re-armed from scratch after every reconnect since
//! the crate does not re-register them), and it neither re-sends credentials after a
//! reconnect nor reports a new session (the backend replays the digest credentials
//! before letting any request through, and counts session expiries for its locks).
//! Nor can it send `multiRead`: `list` and `delete_tree` scans read through a small
//! wire client of their own (`multiread`, a second session) that can.

mod codec;
mod config;
mod lock;
mod multiread;
mod snapshot;
mod watch;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{StreamExt, stream};
use tokio::sync::{RwLock, watch as tokio_watch};
use zookeeper_async::{Acl, CreateMode, Stat, ZkError, ZkState, ZooKeeper};

use crate::backend::{Backend, Capabilities, Cas, Expect, KvPair, LockOptions, PutOptions};
use crate::error::{Error, Result};
use crate::key::{Dir, Key};

pub use config::{DigestAuth, ZookeeperConfig, ZookeeperEncoding};
pub use lock::ZookeeperLock;
pub use watch::{ZookeeperWatch, ZookeeperWatchTree};

use codec::Decoded;
use config::validate_root;
use multiread::{MultiReader, ReaderConfig};
use snapshot::Reads;

const NAME: &str = "zookeeper";

/// Largest value accepted: the server's default `jute.maxbuffer` (1 MiB) less room for
/// the header, the path and the request's framing.
pub const MAX_VALUE_SIZE: usize = 1024 * 1024 - 8 * 1024;

/// Bounded retries of the optimistic loops (create vs. concurrent delete and the like).
const MAX_ATTEMPTS: usize = 16;

/// Requests in flight at once for one `list`/`delete_tree` (all pipelined on the session).
const PIPELINE_WINDOW: usize = 512;

/// Request counters, for tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestStats {
    /// Requests sent to the server.
    pub requests: u64,
    /// Sequential request waves of `list`/`delete_tree` traversals: each wave is one
    /// batch of pipelined requests that waits for the previous batch's answers.
    pub waves: u64,
}

/// The ZooKeeper backend; `Clone` shares the session.
#[derive(Clone)]
pub struct Zookeeper {
    inner: Arc<Inner>,
}

impl fmt::Debug for Zookeeper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Zookeeper")
            .field("root", &self.inner.root)
            .finish_non_exhaustive()
    }
}

/// Connection state shared with the client crate's state listener.
struct Shared {
    /// Bumped on every (re)connect: server-side watches are gone, re-arm them.
    epoch: tokio_watch::Sender<u64>,
    /// Bumped on every session expiry: ephemeral nodes (locks) are gone.
    session: tokio_watch::Sender<u64>,
    /// True while requests may be sent (connected and, with digest auth, credentials
    /// replayed on this connection).
    ready: tokio_watch::Sender<bool>,
}

pub(crate) struct Inner {
    zk: Arc<ZooKeeper>,
    shared: Arc<Shared>,
    root: String,
    kv_root: String,
    lock_root: String,
    acl: Vec<Acl>,
    digest: Option<Vec<u8>>,
    /// Held shared by every request, exclusively while credentials are replayed (the
    /// server answers an auth packet out of order, which the client crate cannot
    /// match to its request if other requests are in flight).
    gate: RwLock<()>,
    clock_offset_ms: AtomicI64,
    session_timeout: Duration,
    request_timeout: Duration,
    closed: AtomicBool,
    /// Cancelled by `close()`: ends watch streams and lock monitors.
    shutdown: tokio_util::sync::CancellationToken,
    requests: AtomicU64,
    waves: AtomicU64,
    /// The watches asked of the server and who waits on them (see `watch::WatchHub`).
    watch_hub: Arc<watch::WatchHub>,
    /// The locks held through this handle, released by `close()`.
    held_locks: lock::HeldLocks,
    /// The highest zxid the main session is known to have applied (from what it
    /// answered), and the same for the bulk reader's session (with the reader session's
    /// generation it was seen in): a read goes where it cannot return an older state
    /// than one this handle already returned (see `read_node`).
    seen_main: AtomicI64,
    seen_reader: AtomicI64,
    seen_reader_generation: AtomicU64,
    /// The expired TTL writes (path, mzxid) this handle is collecting right now.
    collecting: std::sync::Mutex<std::collections::HashSet<(String, i64)>>,
    /// The bulk reader (`None` when `multi_read` is off).
    reader: Option<MultiReader>,
    /// How values are stored in znode data.
    encoding: ZookeeperEncoding,
}

/// The state of one znode of the key space.
#[derive(Debug)]
pub(crate) enum Node {
    /// No znode.
    Missing,
    /// A znode without a (live) value; `expired_mzxid` is set when it holds an expired
    /// TTL value: the `mzxid` of that write, which only its collection may remove.
    Empty {
        stat: Stat,
        expired_mzxid: Option<i64>,
    },
    /// A znode with a live value; `deadline_ms` (server clock) when it has a TTL.
    Value {
        pair: KvPair,
        stat: Stat,
        deadline_ms: Option<i64>,
    },
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Zookeeper {
    /// Connects to the ensemble, waits for a session (up to the request timeout) and
    /// creates the root znodes when missing.
    pub async fn connect(config: ZookeeperConfig) -> Result<Self> {
        config.validate()?;
        let root = validate_root(&config.prefix)?;
        let connect = config.connect_string();
        let session_timeout = config.session_timeout.max(Duration::from_secs(2));
        let request_timeout = config.request_timeout.max(Duration::from_millis(100));
        // The session handshake is a request too: the shorter timeout bounds it.
        let connect_timeout = config
            .connect_timeout
            .min(request_timeout)
            .max(Duration::from_millis(100));
        let (epoch, _) = tokio_watch::channel(0u64);
        let (session, _) = tokio_watch::channel(0u64);
        let (ready, _) = tokio_watch::channel(false);
        let shared = Arc::new(Shared {
            epoch,
            session,
            ready,
        });
        let watch_hub = Arc::new(watch::WatchHub::default());
        let hub = watch_hub.clone();
        // The crate retries the first TCP connect forever: bound it.
        let zk = tokio::time::timeout(
            connect_timeout,
            ZooKeeper::connect_with_retry_time(
                &connect,
                session_timeout,
                // Every watch is requested with the plain flag: its event comes here.
                move |event: zookeeper_async::WatchedEvent| hub.dispatch(event),
                Duration::from_millis(200),
            ),
        )
        .await
        .map_err(|_| Error::unavailable(NAME, format!("cannot reach {connect}")))?
        .map_err(|e| Error::backend(NAME, format!("bad connect string: {e}")))?;
        let digest = config
            .digest
            .as_ref()
            .map(|d| format!("{}:{}", d.user, d.password).into_bytes());
        let addrs: Vec<String> = config.endpoints.clone();
        let requested_session_timeout = session_timeout;
        // The server may grant another timeout than asked (clamped to its
        // min/maxSessionTimeout); it expires the session after the granted one, so every
        // deadline of this handle (lock leases above all) uses that.
        let session_timeout = match multiread::negotiated_session_timeout(
            &addrs,
            session_timeout,
            request_timeout,
        )
        .await
        {
            Some(granted) => granted,
            None => {
                tracing::warn!(
                    "could not learn the granted ZooKeeper session timeout; assuming the requested one"
                );
                session_timeout
            }
        };
        let reader = config.multi_read.then(|| {
            MultiReader::new(ReaderConfig {
                addrs,
                session_timeout: requested_session_timeout,
                request_timeout,
                digest: digest.clone(),
            })
        });
        let acl = if digest.is_some() {
            Acl::creator_all().clone()
        } else {
            Acl::open_unsafe().clone()
        };
        // Raw encoding: keys are the znodes below the root itself, as other tools see
        // them; kvkit's own znodes (locks, clock) live in the sibling `{root}.kvkit`.
        let (kv_root, root) = match config.encoding {
            ZookeeperEncoding::Kvkit => (format!("{root}/kv"), root),
            ZookeeperEncoding::Raw => (root.clone(), format!("{root}.kvkit")),
        };
        let inner = Arc::new(Inner {
            zk: Arc::new(zk),
            shared: shared.clone(),
            kv_root,
            lock_root: format!("{root}/locks"),
            root,
            acl,
            digest,
            gate: RwLock::new(()),
            clock_offset_ms: AtomicI64::new(0),
            session_timeout,
            request_timeout,
            closed: AtomicBool::new(false),
            shutdown: tokio_util::sync::CancellationToken::new(),
            requests: AtomicU64::new(0),
            waves: AtomicU64::new(0),
            watch_hub,
            held_locks: lock::HeldLocks::default(),
            collecting: std::sync::Mutex::default(),
            seen_main: AtomicI64::new(0),
            seen_reader: AtomicI64::new(0),
            seen_reader_generation: AtomicU64::new(0),
            reader,
            encoding: config.encoding,
        });
        let weak = Arc::downgrade(&inner);
        inner.zk.add_listener(move |state| on_state(&weak, state));
        // The first connect may have completed before the listener was added.
        let backend = Zookeeper { inner };
        backend.ensure_ready_after_connect().await?;
        backend.ensure_roots().await?;
        backend.measure_clock().await;
        Ok(backend)
    }

    /// Waits for the first session: probes with a request until one succeeds.
    async fn ensure_ready_after_connect(&self) -> Result<()> {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + inner.request_timeout;
        loop {
            let probe = {
                let _gate = inner.gate.write().await;
                tokio::time::timeout(Duration::from_millis(1_000), inner.zk.exists("/", false))
                    .await
            };
            match probe {
                Ok(Ok(_)) => break,
                Ok(Err(e)) if !is_transient(e) => return Err(self.map_err(e)),
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::unavailable(
                    NAME,
                    "no ZooKeeper session could be established",
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let epoch = *inner.shared.epoch.borrow();
        inner.authenticate(epoch).await?;
        Ok(())
    }

    async fn ensure_roots(&self) -> Result<()> {
        let inner = &self.inner;
        for path in [inner.kv_root.clone(), inner.lock_root.clone()] {
            match inner.exists(&path).await {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(ZkError::NoAuth) => continue,
                Err(e) => return Err(self.map_err(e)),
            }
            match inner
                .create_with_parents(&path, codec::no_value(), CreateMode::Persistent)
                .await
            {
                Ok(_) | Err(ZkError::NodeExists) | Err(ZkError::NoAuth) => {}
                Err(e) => return Err(self.map_err(e)),
            }
        }
        Ok(())
    }

    /// Estimates the server clock's offset from ours with writes of `{root}/clock`, so
    /// TTL deadlines (taken from the server's `mtime`) are compared on the server's
    /// clock. The estimate (the midpoint of a write's round trip) is off by up to half
    /// that round trip, so the sample with the shortest round trip is kept: one slow
    /// answer (a loaded server at connect) would otherwise shift every TTL deadline of
    /// the handle. Best effort: without write access the offset stays 0.
    async fn measure_clock(&self) {
        const SAMPLES: usize = 4;
        let inner = &self.inner;
        let path = format!("{}/clock", inner.root);
        let mut best: Option<(i64, i64)> = None; // (round trip, offset)
        // One round more than samples: the first write may only create the znode.
        for _ in 0..=SAMPLES {
            let before = now_ms();
            let result = inner
                .call(|| inner.zk.set_data(&path, Vec::new(), None))
                .await;
            let after = now_ms();
            match result {
                Ok(stat) => {
                    let sample = (after - before, stat.mtime - (before + after) / 2);
                    if best.is_none_or(|(round_trip, _)| sample.0 < round_trip) {
                        best = Some(sample);
                    }
                    // Millisecond clocks: a round trip this short cannot be beaten.
                    if sample.0 <= 2 {
                        break;
                    }
                }
                Err(ZkError::NoNode) => {
                    let _ = inner
                        .create_with_parents(&path, Vec::new(), CreateMode::Persistent)
                        .await;
                }
                Err(_) => break,
            }
        }
        if let Some((_, offset)) = best {
            inner.clock_offset_ms.store(offset, Ordering::Relaxed);
        }
    }

    /// The request counters (requests sent, and sequential waves of traversals), the
    /// bulk reader's `sync`s and multiReads included.
    pub fn stats(&self) -> RequestStats {
        let inner = &self.inner;
        let reader = inner.reader.as_ref();
        RequestStats {
            requests: inner.requests.load(Ordering::Relaxed) + reader.map_or(0, |r| r.requests()),
            waves: inner.waves.load(Ordering::Relaxed) + reader.map_or(0, |r| r.waves()),
        }
    }

    /// How many watch registrations this handle holds (one per armed one-shot watch and
    /// stream or lock waiting on it); for tests and diagnostics. It follows what is
    /// watched now and does not grow with reconnects.
    pub fn watch_registrations(&self) -> usize {
        self.inner.watch_hub.registrations()
    }

    /// The root znode of kvkit's own znodes (with the raw encoding: the `.kvkit`
    /// sibling of the configured root, which holds the keys).
    pub fn root(&self) -> &str {
        &self.inner.root
    }

    pub(crate) fn map_err(&self, e: ZkError) -> Error {
        if self.inner.closed.load(Ordering::Relaxed) {
            return Error::Closed;
        }
        map_zk_error(e)
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    fn ttl_ms(options: &PutOptions) -> Option<u64> {
        options
            .ttl
            .map(|ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
    }

    /// Reads one key's node, never older than what this handle has returned before:
    /// on the main session, unless the bulk reader has returned newer state than the
    /// main session is known to have (see `Inner::read_via_reader`).
    pub(crate) async fn read_node(&self, key: &str) -> Result<Node> {
        let path = self.inner.key_path(key);
        if let Some(node) = self.inner.read_via_reader(&path, key).await {
            return Ok(node);
        }
        self.inner
            .read_node(&path, key, None)
            .await
            .map_err(|e| self.map_err(e))
    }

    /// Collects the expired TTL value at `path` written at `mzxid`, in the background,
    /// once. A versioned delete alone is not enough: once one reader has deleted the
    /// znode and a writer has created it again, the new znode has the data version the
    /// expired one had (0), and a second reader's versioned delete would remove the fresh
    /// write. So one collection per (path, mzxid) in this handle; across handles the
    /// collector first takes an ephemeral claim `{root}/gc/<escaped path>@<mzxid>` (a
    /// taken claim means someone else collects it); then it reads the znode again and
    /// removes it only if it still is that write (same `mzxid`), with a delete versioned
    /// at the data version of that read.
    pub(crate) fn collect_expired(&self, path: String, mzxid: i64) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let job = (path, mzxid);
        if !self.inner.collecting().insert(job.clone()) {
            return;
        }
        let backend = self.clone();
        handle.spawn(async move {
            backend.inner.collect_once(&job.0, job.1).await;
            backend.inner.collecting().remove(&job);
        });
    }

    async fn write_new_or_update(
        &self,
        key: &Key<'_>,
        data: Vec<u8>,
        mode: CreateMode,
    ) -> Result<KvPair> {
        let inner = &self.inner;
        let path = inner.key_path(key.as_str());
        for _ in 0..MAX_ATTEMPTS {
            match inner
                .call(|| inner.zk.set_data(&path, data.clone(), None))
                .await
            {
                Ok(stat) => {
                    return Ok(inner.written(key.as_str(), &data, &stat));
                }
                Err(ZkError::NoNode) => {}
                Err(e) => return Err(self.map_err(e)),
            }
            match inner.create_with_parents(&path, data.clone(), mode).await {
                Ok(stat) => {
                    return Ok(inner.written(key.as_str(), &data, &stat));
                }
                Err(ZkError::NodeExists) => continue,
                Err(e) => return Err(self.map_err(e)),
            }
        }
        Err(contention(key.as_str()))
    }

    /// Writes a lock's value at `key`, an ordinary persistent value: keys may be put
    /// below a held lock's key, and a value someone else writes over it stays.
    pub(crate) async fn write_lock_value(&self, key: &Key<'_>, value: &[u8]) -> Result<KvPair> {
        self.write_new_or_update(
            key,
            self.inner.encoding.encode(value, None)?,
            CreateMode::Persistent,
        )
        .await
    }

    async fn delete_node(&self, key: &Key<'_>, expect: Option<u64>) -> Result<Cas<()>> {
        let inner = &self.inner;
        let path = inner.key_path(key.as_str());
        for _ in 0..MAX_ATTEMPTS {
            let (stat, index) = match self.read_node(key.as_str()).await? {
                Node::Missing => return Ok(Cas::Conflict { current: None }),
                Node::Empty { expired_mzxid, .. } => {
                    if let Some(version) = expired_mzxid {
                        self.collect_expired(path.clone(), version);
                    }
                    return Ok(Cas::Conflict { current: None });
                }
                Node::Value { pair, stat, .. } => (stat, pair.last_index),
            };
            if let Some(expected) = expect
                && expected != index
            {
                return Ok(Cas::Conflict {
                    current: Some(index),
                });
            }
            match inner.remove_versioned(&path, stat.version).await {
                Ok(_) => {
                    inner.wrote_on_main();
                    return Ok(Cas::Applied(()));
                }
                Err(ZkError::BadVersion | ZkError::NoNode) => continue,
                Err(e) => return Err(self.map_err(e)),
            }
        }
        Err(contention(key.as_str()))
    }

    /// Every znode path strictly below `base` (values or not), deepest last, one wave of
    /// `getChildren` per level. A znode whose name does not make a kvkit key (written by
    /// another tool, e.g. a path longer than `MAX_KEY_LEN`) is left out with its subtree,
    /// and the znodes above it are marked `true`: they cannot be deleted, only emptied.
    async fn all_paths_below(&self, base: &str) -> Result<Vec<(usize, String, bool)>> {
        let mut reads = Reads::new(&self.inner);
        let mut out = Vec::new();
        let mut keep = std::collections::HashSet::new();
        let mut frontier = vec![base.to_owned()];
        let mut depth = 0;
        while !frontier.is_empty() {
            depth += 1;
            let lists = reads.children(frontier).await;
            frontier = Vec::new();
            for (parent, result) in lists {
                match result {
                    Ok(children) => {
                        for child in children {
                            let path = format!("{parent}/{child}");
                            if self.inner.key_of(&path).is_none() {
                                keep.extend(
                                    ancestors(&path)
                                        .into_iter()
                                        .filter(|a| a.len() > base.len()),
                                );
                                continue;
                            }
                            out.push((depth, path.clone(), false));
                            frontier.push(path);
                        }
                    }
                    Err(ZkError::NoNode) => {}
                    Err(e) => return Err(self.map_err(e)),
                }
            }
        }
        for entry in &mut out {
            entry.2 = keep.contains(&entry.1);
        }
        Ok(out)
    }
}

type ZkResultVec = std::result::Result<Vec<String>, ZkError>;
type ZkResultData = std::result::Result<(Vec<u8>, Stat), ZkError>;

fn on_state(weak: &Weak<Inner>, state: ZkState) {
    let Some(inner) = weak.upgrade() else {
        return;
    };
    #[allow(deprecated)]
    match state {
        ZkState::Connected | ZkState::ConnectedReadOnly => {
            inner.shared.epoch.send_modify(|e| *e += 1);
            let epoch = *inner.shared.epoch.borrow();
            if inner.digest.is_none() {
                inner.shared.ready.send_replace(true);
            } else if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let weak = weak.clone();
                handle.spawn(async move {
                    if let Some(inner) = weak.upgrade() {
                        let _ = inner.authenticate(epoch).await;
                    }
                });
            }
        }
        ZkState::NotConnected => {
            // The crate's only use of NotConnected: the server said the session expired.
            inner.shared.ready.send_replace(false);
            inner.shared.session.send_modify(|s| *s += 1);
        }
        ZkState::Closed => {
            inner.shared.ready.send_replace(false);
        }
        _ => {
            inner.shared.ready.send_replace(false);
        }
    }
}

fn is_transient(e: ZkError) -> bool {
    matches!(
        e,
        ZkError::ConnectionLoss
            | ZkError::OperationTimeout
            | ZkError::SessionExpired
            | ZkError::SessionMoved
            | ZkError::MarshallingError
    )
}

fn map_zk_error(e: ZkError) -> Error {
    match e {
        e if is_transient(e) => Error::unavailable(NAME, e),
        ZkError::NoAuth | ZkError::AuthFailed | ZkError::InvalidACL => Error::PermissionDenied {
            backend: NAME,
            source: Box::new(e),
        },
        e => Error::backend(NAME, e),
    }
}

fn contention(key: &str) -> Error {
    Error::unavailable(
        NAME,
        format!("gave up on {key:?} after {MAX_ATTEMPTS} conflicting concurrent changes"),
    )
}

fn pair(encoding: ZookeeperEncoding, key: &str, data: &[u8], stat: &Stat) -> KvPair {
    let value = match encoding.decode(data.to_vec()) {
        Decoded::Value { value, .. } => value,
        Decoded::NoValue => Bytes::new(),
    };
    KvPair {
        key: key.to_owned(),
        value,
        last_index: index_of(stat),
    }
}

/// The highest zxid a `Stat` proves its server had applied.
fn stat_zxid(stat: &Stat) -> i64 {
    stat.mzxid.max(stat.czxid).max(stat.pzxid)
}

pub(crate) fn index_of(stat: &Stat) -> u64 {
    u64::try_from(stat.mzxid).unwrap_or(0)
}

impl Inner {
    pub(crate) fn key_path(&self, key: &str) -> String {
        format!("{}/{}", self.kv_root, key)
    }

    pub(crate) fn dir_path(&self, dir: &Dir) -> String {
        if dir.is_root() {
            self.kv_root.clone()
        } else {
            self.key_path(dir.as_str())
        }
    }

    /// The key of a znode path below the key space; `None` when the path does not
    /// spell a normalised kvkit key (a znode another tool wrote, e.g. longer than
    /// `MAX_KEY_LEN`): such znodes are never listed, watched or deleted.
    pub(crate) fn key_of<'a>(&self, path: &'a str) -> Option<&'a str> {
        path.strip_prefix(self.kv_root.as_str())?
            .strip_prefix('/')
            .filter(|key| Key::is_normal(key))
    }

    pub(crate) fn server_now_ms(&self) -> i64 {
        now_ms() + self.clock_offset_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn epoch(&self) -> tokio_watch::Receiver<u64> {
        self.shared.epoch.subscribe()
    }

    pub(crate) fn session(&self) -> tokio_watch::Receiver<u64> {
        self.shared.session.subscribe()
    }

    /// Resolves when the store is closed.
    pub(crate) fn shutdown(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.shutdown.cancelled()
    }

    /// Cancelled when the store is closed (ends the watch streams).
    pub(crate) fn shutdown_token(&self) -> tokio_util::sync::CancellationToken {
        self.shutdown.clone()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    pub(crate) fn zk(&self) -> &ZooKeeper {
        &self.zk
    }

    pub(crate) fn watch_hub(&self) -> Arc<watch::WatchHub> {
        self.watch_hub.clone()
    }

    pub(crate) fn held_locks(&self) -> &lock::HeldLocks {
        &self.held_locks
    }

    fn collecting(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<(String, i64)>> {
        self.collecting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Notes state the main session returned.
    pub(crate) fn saw_on_main(&self, stat: &Stat) {
        self.seen_main.fetch_max(stat_zxid(stat), Ordering::Relaxed);
    }

    /// Notes state the bulk reader returned in its session `generation`.
    fn saw_on_reader(&self, stat: &Stat, generation: u64) {
        self.seen_reader_generation
            .store(generation, Ordering::Relaxed);
        self.seen_reader
            .fetch_max(stat_zxid(stat), Ordering::Relaxed);
    }

    /// A write on the main session completed: its zxid is above everything any
    /// session of this handle returned before (all of it was committed earlier), and
    /// the main session's server applied it before answering.
    pub(crate) fn wrote_on_main(&self) {
        let reader = self.seen_reader.load(Ordering::Relaxed);
        self.seen_main.fetch_max(reader, Ordering::Relaxed);
    }

    /// A write of `data` to `key` on the main session returned `stat`: notes it for
    /// monotonic reads and returns the written pair.
    fn written(&self, key: &str, data: &[u8], stat: &Stat) -> KvPair {
        self.wrote_on_main();
        self.saw_on_main(stat);
        pair(self.encoding, key, data, stat)
    }

    /// Monotonic reads across the two sessions of a handle. A `list` reads on the bulk
    /// reader after a `sync`, so it may return newer state than the main session's
    /// server has applied yet (another ensemble member, lagging by a few ms); a `get`
    /// right after it on the main session could then go back in time (and a CAS with
    /// a listed pair fail for no reason). So while the reader has returned newer state
    /// than the main session is known to have, single reads go to the reader too: in
    /// the same reader session, whose reads never go back, one `multiRead` of one
    /// `getData`; after the reader opened a new session, `sync` + that read (one wave).
    /// `None`: read on the main session.
    async fn read_via_reader(&self, path: &str, key: &str) -> Option<Node> {
        if self.seen_reader.load(Ordering::Relaxed) <= self.seen_main.load(Ordering::Relaxed) {
            return None;
        }
        let reader = self
            .reader
            .as_ref()
            .filter(|r| r.usable() && !self.is_closed())?;
        let paths = [path.to_owned()];
        let mut sync = None;
        for _ in 0..2 {
            let generation = reader.generation();
            if generation != self.seen_reader_generation.load(Ordering::Relaxed) {
                sync = Some(self.kv_root.as_str());
            }
            let result = reader.data(sync, &paths).await.ok()?.pop()?;
            if sync.is_none() && reader.generation() != generation {
                // A new reader session answered without a sync: read again with one.
                sync = Some(self.kv_root.as_str());
                continue;
            }
            return match result {
                Ok((data, stat)) => {
                    self.saw_on_reader(&stat, generation);
                    Some(self.decode_node(key, data, stat))
                }
                Err(ZkError::NoNode) => Some(Node::Missing),
                Err(_) => None,
            };
        }
        None
    }

    /// One collection of an expired write; see [`Zookeeper::collect_expired`].
    async fn collect_once(&self, path: &str, mzxid: i64) {
        let claim = format!("{}/gc/{}@{mzxid}", self.root, codec::escape_segment(path));
        let claimed = match self
            .call(|| {
                self.zk
                    .create(&claim, Vec::new(), self.acl.clone(), CreateMode::Ephemeral)
            })
            .await
        {
            Err(ZkError::NoNode) => self
                .create_with_parents(&claim, Vec::new(), CreateMode::Ephemeral)
                .await
                .map(|_| ()),
            other => other.map(|_| ()),
        };
        if claimed.is_err() {
            // Taken (someone else collects it) or unreachable (a later read retries).
            return;
        }
        if let Ok((data, stat)) = self.call(|| self.zk.get_data(path, false)).await
            && stat.mzxid == mzxid
            && codec::decode(data) != Decoded::NoValue
        {
            let _ = self.remove_versioned(path, stat.version).await;
        }
        let _ = self.call(|| self.zk.delete(&claim, None)).await;
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    pub(crate) fn session_timeout(&self) -> Duration {
        self.session_timeout
    }

    pub(crate) fn lock_root(&self) -> &str {
        &self.lock_root
    }

    pub(crate) fn acl(&self) -> Vec<Acl> {
        self.acl.clone()
    }

    /// Sends the digest credentials on the current connection, with no other request
    /// in flight, then opens the gate.
    async fn authenticate(&self, epoch: u64) -> Result<()> {
        let Some(digest) = self.digest.clone() else {
            self.shared.ready.send_replace(true);
            return Ok(());
        };
        let _exclusive = self.gate.write().await;
        let mut last = None;
        for _ in 0..3 {
            match tokio::time::timeout(
                Duration::from_millis(2_000),
                self.zk.add_auth("digest", digest.clone()),
            )
            .await
            {
                Ok(Ok(())) => {
                    last = None;
                    break;
                }
                Ok(Err(ZkError::AuthFailed)) => {
                    return Err(map_zk_error(ZkError::AuthFailed));
                }
                // An out-of-order answer (a ping in flight) loses the reply, not the
                // authentication; sending it again is harmless.
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(ZkError::OperationTimeout),
            }
        }
        if *self.shared.epoch.borrow() == epoch && last.is_none() {
            self.shared.ready.send_replace(true);
        } else if last.is_some() {
            // Most likely the reply was lost but the credentials were taken; let requests
            // through (a refused one reports PermissionDenied).
            self.shared.ready.send_replace(true);
        }
        Ok(())
    }

    /// Sends one request per item as one counted wave, at most [`PIPELINE_WINDOW`] in
    /// flight on the session; each result comes back beside its item, in item order.
    pub(crate) async fn wave<I, T, F, Fut>(
        &self,
        items: Vec<I>,
        request: F,
    ) -> Vec<(I, std::result::Result<T, ZkError>)>
    where
        I: Clone,
        F: Fn(I) -> Fut,
        Fut: Future<Output = std::result::Result<T, ZkError>>,
    {
        self.waves.fetch_add(1, Ordering::Relaxed);
        let request = &request;
        stream::iter(items)
            .map(|item| async move {
                let result = self.call(|| request(item.clone())).await;
                (item, result)
            })
            .buffered(PIPELINE_WINDOW)
            .collect()
            .await
    }

    /// Runs one request: waits until the session is ready, holds the gate, counts it and
    /// bounds it by the request timeout. `NoAuth` right after a reconnect is retried
    /// once, after the credentials were replayed.
    pub(crate) async fn call<T, F, Fut>(&self, request: F) -> std::result::Result<T, ZkError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::result::Result<T, ZkError>>,
    {
        for attempt in 0..2 {
            if self.closed.load(Ordering::Relaxed) {
                return Err(ZkError::ConnectionLoss);
            }
            let mut ready = self.shared.ready.subscribe();
            if !*ready.borrow() {
                match tokio::time::timeout(self.request_timeout, ready.wait_for(|r| *r)).await {
                    Ok(Ok(_)) => {}
                    _ => return Err(ZkError::ConnectionLoss),
                }
            }
            let result = {
                let _shared = self.gate.read().await;
                self.requests.fetch_add(1, Ordering::Relaxed);
                match tokio::time::timeout(self.request_timeout, request()).await {
                    Ok(result) => result,
                    Err(_) => Err(ZkError::OperationTimeout),
                }
            };
            if result.as_ref().err() == Some(&ZkError::NoAuth)
                && self.digest.is_some()
                && attempt == 0
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            return result;
        }
        Err(ZkError::NoAuth)
    }

    pub(crate) async fn exists(&self, path: &str) -> std::result::Result<Option<Stat>, ZkError> {
        self.call(|| self.zk.exists(path, false)).await
    }

    /// Creates `path` with `data`; creates missing parents (without value) first, all
    /// pipelined in one wave (the server runs one session's requests in order).
    pub(crate) async fn create_with_parents(
        &self,
        path: &str,
        data: Vec<u8>,
        mode: CreateMode,
    ) -> std::result::Result<Stat, ZkError> {
        match self
            .call(|| self.zk.create2(path, data.clone(), self.acl.clone(), mode))
            .await
        {
            Err(ZkError::NoNode) => {}
            other => return other.map(|(_, stat)| stat),
        }
        for _ in 0..MAX_ATTEMPTS {
            let parents: Vec<String> = ancestors(path);
            let creates = futures::future::join_all(parents.iter().map(|p| async move {
                match self
                    .call(|| {
                        self.zk.create(
                            p,
                            codec::no_value(),
                            self.acl.clone(),
                            CreateMode::Persistent,
                        )
                    })
                    .await
                {
                    Ok(_) | Err(ZkError::NodeExists) | Err(ZkError::NoNode) => Ok(()),
                    Err(e) => Err(e),
                }
            }));
            let target = self.call(|| self.zk.create2(path, data.clone(), self.acl.clone(), mode));
            let (parents_done, target) = futures::join!(creates, target);
            for done in parents_done {
                done?;
            }
            match target {
                Err(ZkError::NoNode) => continue,
                other => return other.map(|(_, stat)| stat),
            }
        }
        Err(ZkError::NoNode)
    }

    /// Reads a node of the key space (`key` is its normalised key). With `watch`, the
    /// read leaves a data watch (or, for a missing znode, an exists watch).
    pub(crate) async fn read_node(
        &self,
        path: &str,
        key: &str,
        watch: Option<&watch::Arm>,
    ) -> std::result::Result<Node, ZkError> {
        let armed = watch.is_some_and(|arm| arm.claim(path, watch::Kind::Data));
        let result = self.call(|| self.zk.get_data(path, armed)).await;
        if let Ok((_, stat)) = &result {
            self.saw_on_main(stat);
        }
        if armed
            && result.is_err()
            && let Some(arm) = watch
        {
            arm.unmark(path, watch::Kind::Data);
        }
        match result {
            Ok((data, stat)) => Ok(self.decode_node(key, data, stat)),
            Err(ZkError::NoNode) => {
                if let Some(arm) = watch {
                    // No data watch is left on a missing znode: leave an exists watch.
                    arm.unmark(path, watch::Kind::Data);
                    if !arm.claim(path, watch::Kind::Data) {
                        return Ok(Node::Missing);
                    }
                    let exists = self.call(|| self.zk.exists(path, true)).await;
                    if exists.is_err() {
                        arm.unmark(path, watch::Kind::Data);
                    }
                    if exists?.is_some() {
                        // Created in between: read it again (the watch is armed).
                        return match self.call(|| self.zk.get_data(path, false)).await {
                            Ok((data, stat)) => Ok(self.decode_node(key, data, stat)),
                            Err(ZkError::NoNode) => Ok(Node::Missing),
                            Err(e) => Err(e),
                        };
                    }
                }
                Ok(Node::Missing)
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) fn decode_node(&self, key: &str, data: Vec<u8>, stat: Stat) -> Node {
        match self.encoding.decode(data) {
            Decoded::NoValue => Node::Empty {
                stat,
                expired_mzxid: None,
            },
            Decoded::Value { value, ttl_ms } => {
                let deadline_ms = ttl_ms.map(|ttl| {
                    stat.mtime
                        .saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX))
                });
                if let Some(deadline) = deadline_ms
                    && deadline <= self.server_now_ms()
                {
                    let mzxid = stat.mzxid;
                    return Node::Empty {
                        stat,
                        expired_mzxid: Some(mzxid),
                    };
                }
                Node::Value {
                    pair: KvPair {
                        key: key.to_owned(),
                        value,
                        last_index: index_of(&stat),
                    },
                    stat,
                    deadline_ms,
                }
            }
        }
    }

    /// Removes the value of a znode at data `version`: deletes the znode, or, when it
    /// has children, turns it into an implicit parent (versioned `setData`).
    /// Returns true when the znode itself was deleted (then its implicit ancestors
    /// that are left without children are pruned).
    pub(crate) async fn remove_versioned(
        &self,
        path: &str,
        version: i32,
    ) -> std::result::Result<bool, ZkError> {
        match self.call(|| self.zk.delete(path, Some(version))).await {
            Ok(()) => {
                self.prune_ancestors(path).await;
                Ok(true)
            }
            Err(ZkError::NotEmpty) => self
                .call(|| self.zk.set_data(path, codec::no_value(), Some(version)))
                .await
                .map(|_| false),
            Err(e) => Err(e),
        }
    }

    /// Deletes the implicit parents of `path` (below the key space's root) that hold no
    /// value and have no children left, innermost first. Sound against concurrent
    /// writers: the delete is versioned (a value written since the read keeps the
    /// znode) and the server refuses to delete a znode that got a child (a concurrent
    /// put below it re-creates the parents it needs). Best effort: stops at the first
    /// ancestor that stays.
    pub(crate) async fn prune_ancestors(&self, path: &str) {
        let mut current = path;
        while let Some(pos) = current.rfind('/') {
            current = &current[..pos];
            if current.len() <= self.kv_root.len() || !current.starts_with(&self.kv_root) {
                return;
            }
            let Ok((data, stat)) = self.call(|| self.zk.get_data(current, false)).await else {
                return;
            };
            if stat.num_children != 0 || self.encoding.decode(data) != Decoded::NoValue {
                return;
            }
            if self
                .call(|| self.zk.delete(current, Some(stat.version)))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

impl Drop for Inner {
    /// The client crate keeps its connection (and so the session, with its ephemeral
    /// lock znodes) alive until the session is closed: close it when the last handle
    /// goes without `close()`.
    fn drop(&mut self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let zk = self.zk.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(2), zk.close()).await;
            });
        }
    }
}

/// The strict ancestors of `path` (`/a/b/c` → `/a`, `/a/b`), outermost first.
fn ancestors(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut end = 0;
    while let Some(pos) = path[end + 1..].find('/') {
        end = end + 1 + pos;
        out.push(path[..end].to_owned());
    }
    out
}

impl Backend for Zookeeper {
    type Watch = ZookeeperWatch;
    type WatchTree = ZookeeperWatchTree;
    type Lock = ZookeeperLock;

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: NAME,
            ttl_granularity: Duration::from_millis(1),
            min_ttl: Duration::from_millis(100),
            ttl_expiry_factor: 1,
            default_lock_ttl: Some(self.inner.session_timeout),
            cross_process_locks: true,
            watch_sees_every_write: false,
            max_value_size: MAX_VALUE_SIZE,
            persistent: true,
        }
    }

    async fn get(&self, key: &Key<'_>) -> Result<Option<KvPair>> {
        match self.read_node(key.as_str()).await? {
            Node::Value { pair, .. } => Ok(Some(pair)),
            Node::Empty {
                expired_mzxid: Some(version),
                ..
            } => {
                self.collect_expired(self.inner.key_path(key.as_str()), version);
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    async fn put(&self, key: &Key<'_>, value: Bytes, options: &PutOptions) -> Result<KvPair> {
        let data = self.inner.encoding.encode(&value, Self::ttl_ms(options))?;
        self.write_new_or_update(key, data, CreateMode::Persistent)
            .await
    }

    async fn delete(&self, key: &Key<'_>) -> Result<bool> {
        Ok(matches!(
            self.delete_node(key, None).await?,
            Cas::Applied(())
        ))
    }

    async fn compare_and_put(
        &self,
        key: &Key<'_>,
        value: Bytes,
        expect: Expect,
        options: &PutOptions,
    ) -> Result<Cas<KvPair>> {
        let inner = &self.inner;
        let path = inner.key_path(key.as_str());
        let data = self.inner.encoding.encode(&value, Self::ttl_ms(options))?;
        for _ in 0..MAX_ATTEMPTS {
            if expect == Expect::Absent {
                match inner
                    .create_with_parents(&path, data.clone(), CreateMode::Persistent)
                    .await
                {
                    Ok(stat) => {
                        return Ok(Cas::Applied(inner.written(key.as_str(), &data, &stat)));
                    }
                    Err(ZkError::NodeExists) => {}
                    Err(e) => return Err(self.map_err(e)),
                }
            }
            let version = match (self.read_node(key.as_str()).await?, expect) {
                (Node::Missing, Expect::Absent) => continue,
                (Node::Missing, Expect::Index(_)) => return Ok(Cas::Conflict { current: None }),
                (Node::Empty { .. }, Expect::Index(_)) => {
                    return Ok(Cas::Conflict { current: None });
                }
                (Node::Empty { stat, .. }, Expect::Absent) => stat.version,
                (Node::Value { pair, .. }, Expect::Absent) => {
                    return Ok(Cas::Conflict {
                        current: Some(pair.last_index),
                    });
                }
                (Node::Value { pair, stat, .. }, Expect::Index(expected)) => {
                    if pair.last_index != expected {
                        return Ok(Cas::Conflict {
                            current: Some(pair.last_index),
                        });
                    }
                    stat.version
                }
            };
            match inner
                .call(|| inner.zk.set_data(&path, data.clone(), Some(version)))
                .await
            {
                Ok(stat) => {
                    return Ok(Cas::Applied(inner.written(key.as_str(), &data, &stat)));
                }
                // Changed since the read: read again and decide on the new state.
                Err(ZkError::BadVersion | ZkError::NoNode) => continue,
                Err(e) => return Err(self.map_err(e)),
            }
        }
        Err(contention(key.as_str()))
    }

    async fn compare_and_delete(&self, key: &Key<'_>, index: u64) -> Result<Cas<()>> {
        self.delete_node(key, Some(index)).await
    }

    async fn range(&self, dir: &Dir) -> Result<Vec<KvPair>> {
        let inner = &self.inner;
        let mut out = Vec::new();
        let base = inner.dir_path(dir);
        let nodes = self
            .read_snapshot(&base)
            .await
            .map_err(|e| self.map_err(e))?
            .ok_or_else(|| {
                Error::unavailable(
                    NAME,
                    format!(
                        "the tree below {base:?} kept changing: no two reads of it in a \
                         row agreed within the request timeout"
                    ),
                )
            })?;
        for (path, data, stat) in nodes {
            let Some(key) = inner.key_of(&path) else {
                continue;
            };
            match inner.decode_node(key, data, stat) {
                Node::Value { pair, .. } => out.push(pair),
                Node::Empty {
                    expired_mzxid: Some(version),
                    ..
                } => self.collect_expired(path, version),
                _ => {}
            }
        }
        Ok(out)
    }

    async fn delete_range(&self, dir: &Dir) -> Result<()> {
        let inner = &self.inner;
        let base = inner.dir_path(dir);
        for _ in 0..3 {
            let mut paths = self.all_paths_below(&base).await?;
            if paths.is_empty() {
                return Ok(());
            }
            // Deepest first; each depth in one pipelined wave.
            paths.sort_by_key(|entry| std::cmp::Reverse(entry.0));
            let mut retry = false;
            let mut start = 0;
            while start < paths.len() {
                let depth = paths[start].0;
                let end = paths[start..]
                    .iter()
                    .position(|(d, _, _)| *d != depth)
                    .map_or(paths.len(), |p| start + p);
                let batch: Vec<(String, bool)> = paths[start..end]
                    .iter()
                    .map(|e| (e.1.clone(), e.2))
                    .collect();
                let results = inner
                    .wave(batch, |(path, keep): (String, bool)| async move {
                        if keep {
                            // Above a foreign znode: only its value goes.
                            inner
                                .zk
                                .set_data(&path, codec::no_value(), None)
                                .await
                                .map(|_| ())
                        } else {
                            inner.zk.delete(&path, None).await
                        }
                    })
                    .await;
                for (_, result) in results {
                    match result {
                        Ok(()) | Err(ZkError::NoNode) => {}
                        // A concurrent write created a child after the scan.
                        Err(ZkError::NotEmpty) => retry = true,
                        Err(e) => return Err(self.map_err(e)),
                    }
                }
                start = end;
            }
            if !retry {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn delete_tree(&self, dir: &Dir) -> Result<()> {
        self.delete_range(dir).await?;
        self.inner.wrote_on_main();
        if let Some(key) = dir.as_key() {
            // The directory's own znode: deleted outright (or emptied if a concurrent
            // writer put a child below it meanwhile).
            let inner = &self.inner;
            let path = inner.key_path(key.as_str());
            match inner.call(|| inner.zk.delete(&path, None)).await {
                Ok(()) => inner.prune_ancestors(&path).await,
                Err(ZkError::NoNode) => {}
                Err(ZkError::NotEmpty) => {
                    match inner
                        .call(|| inner.zk.set_data(&path, codec::no_value(), None))
                        .await
                    {
                        Ok(_) | Err(ZkError::NoNode) => {}
                        Err(e) => return Err(self.map_err(e)),
                    }
                }
                Err(e) => return Err(self.map_err(e)),
            }
        }
        Ok(())
    }

    async fn exists(&self, key: &Key<'_>) -> Result<bool> {
        Ok(self.get(key).await?.is_some())
    }

    async fn watch(&self, key: &Key<'_>) -> Result<Self::Watch> {
        watch::watch_key(self.clone(), key.owned()).await
    }

    async fn watch_tree(&self, dir: &Dir) -> Result<Self::WatchTree> {
        watch::watch_tree(self.clone(), dir.clone()).await
    }

    async fn lock(&self, key: &Key<'_>, options: &LockOptions) -> Result<Self::Lock> {
        lock::lock(
            self.clone(),
            key.owned(),
            options.value.clone(),
            options.ttl,
            true,
        )
        .await
        .and_then(|held| {
            held.ok_or_else(|| Error::backend(NAME, "lock wait ended without the lock"))
        })
    }

    async fn try_lock(&self, key: &Key<'_>, options: &LockOptions) -> Result<Option<Self::Lock>> {
        lock::lock(
            self.clone(),
            key.owned(),
            options.value.clone(),
            options.ttl,
            false,
        )
        .await
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        // Held locks first, while requests still go out: their guards learn of the
        // loss, and their value and contender go now rather than with the session.
        self.inner
            .held_locks
            .release_all(Duration::from_secs(2))
            .await;
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.inner.shutdown.cancel();
        if let Some(reader) = &self.inner.reader {
            reader.close().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.zk.close()).await;
        self.inner.shared.ready.send_replace(false);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn ancestors_are_outermost_first() {
        assert_eq!(ancestors("/a/b/c"), vec!["/a", "/a/b"]);
        assert!(ancestors("/a").is_empty());
    }

    #[test]
    fn roots_are_validated() {
        assert_eq!(validate_root("kvkit/").unwrap(), "/kvkit");
        assert_eq!(validate_root("//a//b").unwrap(), "/a/b");
        assert!(validate_root("/").is_err());
        assert!(validate_root("/zookeeper").is_err());
        assert!(validate_root("/a/../b").is_err());
    }

    #[test]
    fn config_deserialises_with_defaults() {
        // serde_json is not a dependency: deserialise from a map of strings.
        use serde::de::IntoDeserializer;
        use serde::de::value::{Error as DeError, MapDeserializer};
        let entries = vec![("connect", "127.0.0.1:2181"), ("root", "/app")];
        let de: MapDeserializer<'_, _, DeError> =
            MapDeserializer::new(entries.into_iter().map(|(k, v)| (k, v.into_deserializer())));
        let config = ZookeeperConfig::deserialize(de).unwrap();
        assert_eq!(config, ZookeeperConfig::new("127.0.0.1:2181").root("/app"));
        assert_eq!(config.session_timeout, Duration::from_secs(10));
        assert!(config.digest.is_none());
        assert!(config.multi_read, "bulk reads are on by default");
    }
}
