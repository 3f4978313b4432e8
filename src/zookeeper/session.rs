//! The ZooKeeper session of a handle: the shared `Inner` with the client, its
//! connection state (reconnects, expiries, replayed credentials), request counters,
//! the monotonic-read bookkeeping across the main and bulk-reader sessions, lazy TTL
//! collection, and closing the session when the last handle goes.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{StreamExt, stream};
use tokio::sync::{RwLock, watch as tokio_watch};
use zookeeper_async::{Acl, CreateMode, Stat, ZkError, ZkState, ZooKeeper};

use super::codec::{self, Decoded};
use super::error::map_zk_error;
use super::multiread::MultiReader;
use super::nodes::{Node, ancestors, index_of, pair, stat_zxid};
use super::{MAX_ATTEMPTS, PIPELINE_WINDOW, ZookeeperEncoding, lock, watch};
use crate::backend::KvPair;
use crate::error::Result;
use crate::key::{Dir, Key};

/// Connection state shared with the client crate's state listener.
pub(super) struct Shared {
    /// Bumped on every (re)connect: server-side watches are gone, re-arm them.
    pub(super) epoch: tokio_watch::Sender<u64>,
    /// Bumped on every session expiry: ephemeral nodes (locks) are gone.
    pub(super) session: tokio_watch::Sender<u64>,
    /// True while requests may be sent (connected and, with digest auth, credentials
    /// replayed on this connection).
    pub(super) ready: tokio_watch::Sender<bool>,
}

pub(crate) struct Inner {
    pub(super) zk: Arc<ZooKeeper>,
    pub(super) shared: Arc<Shared>,
    pub(super) root: String,
    pub(super) kv_root: String,
    pub(super) lock_root: String,
    pub(super) acl: Vec<Acl>,
    pub(super) digest: Option<Vec<u8>>,
    /// Held shared by every request, exclusively while credentials are replayed (the
    /// server answers an auth packet out of order, which the client crate cannot
    /// match to its request if other requests are in flight).
    pub(super) gate: RwLock<()>,
    pub(super) clock_offset_ms: AtomicI64,
    pub(super) session_timeout: Duration,
    pub(super) request_timeout: Duration,
    pub(super) closed: AtomicBool,
    /// Cancelled by `close()`: ends watch streams and lock monitors.
    pub(super) shutdown: tokio_util::sync::CancellationToken,
    pub(super) requests: AtomicU64,
    pub(super) waves: AtomicU64,
    /// The watches asked of the server and who waits on them (see `watch::WatchHub`).
    pub(super) watch_hub: Arc<watch::WatchHub>,
    /// The locks held through this handle, released by `close()`.
    pub(super) held_locks: lock::HeldLocks,
    /// The highest zxid the main session is known to have applied (from what it
    /// answered), and the same for the bulk reader's session (with the reader session's
    /// generation it was seen in): a read goes where it cannot return an older state
    /// than one this handle already returned (see `read_node`).
    pub(super) seen_main: AtomicI64,
    pub(super) seen_reader: AtomicI64,
    pub(super) seen_reader_generation: AtomicU64,
    /// The expired TTL writes (path, mzxid) this handle is collecting right now.
    pub(super) collecting: std::sync::Mutex<std::collections::HashSet<(String, i64)>>,
    /// The bulk reader (`None` when `multi_read` is off).
    pub(super) reader: Option<MultiReader>,
    /// How values are stored in znode data.
    pub(super) encoding: ZookeeperEncoding,
}

/// Milliseconds since the Unix epoch on this host's clock.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(super) fn on_state(weak: &Weak<Inner>, state: ZkState) {
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

    pub(super) fn collecting(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashSet<(String, i64)>> {
        self.collecting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Notes state the main session returned.
    pub(crate) fn saw_on_main(&self, stat: &Stat) {
        self.seen_main.fetch_max(stat_zxid(stat), Ordering::Relaxed);
    }

    /// Notes state the bulk reader returned in its session `generation`.
    pub(super) fn saw_on_reader(&self, stat: &Stat, generation: u64) {
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
    pub(super) fn written(&self, key: &str, data: &[u8], stat: &Stat) -> KvPair {
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
    pub(super) async fn read_via_reader(&self, path: &str, key: &str) -> Option<Node> {
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
    pub(super) async fn collect_once(&self, path: &str, mzxid: i64) {
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
    pub(super) async fn authenticate(&self, epoch: u64) -> Result<()> {
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
        crate::background::release_in_background("zookeeper session", async move {
            match tokio::time::timeout(Duration::from_secs(2), zk.close()).await {
                Ok(closed) => closed.map_err(|e| e.to_string()),
                Err(_) => Err("closing the session timed out".to_owned()),
            }
        });
    }
}
