//! The ZooKeeper backend, on the `zookeeper-async` client (feature `zookeeper`).
//!
//! ```no_run
//! # async fn demo() -> kvkit::Result<()> {
//! use kvkit::{Kv, PutOptions};
//! use kvkit::zookeeper::{Zookeeper, ZookeeperConfig};
//!
//! let zk = Zookeeper::connect(ZookeeperConfig::new("127.0.0.1:2181").prefix("/myapp")).await?;
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

mod armed;
mod codec;
mod config;
mod lock;
mod multiread;
mod session;
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
use session::{Inner, Shared, on_state};
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

    async fn scan_below(&self, dir: &Dir) -> Result<Vec<KvPair>> {
        let base = self.inner.dir_path(dir);
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
        Ok(self.snapshot_pairs(nodes).0)
    }

    async fn delete_below(&self, dir: &Dir) -> Result<()> {
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
        self.delete_below(dir).await?;
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
        assert_eq!(
            config,
            ZookeeperConfig::new("127.0.0.1:2181").prefix("/app")
        );
        assert_eq!(config.session_timeout, Duration::from_secs(10));
        assert!(config.digest.is_none());
        assert!(config.multi_read, "bulk reads are on by default");
    }
}
