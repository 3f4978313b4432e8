//! `watch` and `watch_tree` on one-shot ZooKeeper watches, re-armed after every event and
//! from scratch after every reconnect (the client crate does not re-register watches on
//! a new connection).
//!
//! A task per stream keeps the set of (znode, kind) watches it has armed on the server.
//! After a watch fires it re-reads the state (re-arming only the watches that fired),
//! and yields the new state when it differs from the last one yielded. A TTL value makes
//! the task wake up at its deadline too, so expiry is seen without a write.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use futures::{StreamExt, stream};
use tokio::sync::mpsc;
use zookeeper_async::ZkError;

use super::armed::Fired;
pub(crate) use super::armed::{Arm, Kind, WatchHub};
use super::{Node, Zookeeper};
use crate::backend::KvPair;
use crate::backoff::Backoff;
use crate::error::Result;
use crate::key::{Dir, Key};
use crate::task_stream::TaskStream;

/// Items buffered for a slow consumer.
const CHANNEL_CAPACITY: usize = 16;
/// Retry delays after a failed re-read (the connection is usually coming back).
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The stream of [`crate::Kv::watch`] on ZooKeeper.
pub type ZookeeperWatch = TaskStream<Option<KvPair>>;

/// The stream of [`crate::Kv::watch_tree`] on ZooKeeper.
pub type ZookeeperWatchTree = TaskStream<Vec<KvPair>>;

/// One snapshot: the state and the earliest TTL deadline in it (server clock, ms).
type Snapshot<T> = (T, Option<i64>);

trait Watched: Send + 'static {
    type State: Clone + Send + PartialEq + 'static;
    /// Reads the state, arming the watches that are not armed.
    fn read(
        &mut self,
        backend: &Zookeeper,
        arm: &Arm,
    ) -> impl std::future::Future<Output = std::result::Result<Snapshot<Self::State>, ZkError>> + Send;
    /// True when `new` may be yielded after `old` (versions never go back).
    fn newer(old: &Self::State, new: &Self::State) -> bool;
    /// A watch armed on `path` fired.
    fn fired(&mut self, _path: &str, _kind: Kind) {}
    /// Every armed watch is gone (reconnect, failure): start again from scratch.
    fn reset(&mut self) {}
}

struct OneKey(Key<'static>);

impl Watched for OneKey {
    type State = Option<KvPair>;

    async fn read(
        &mut self,
        backend: &Zookeeper,
        arm: &Arm,
    ) -> std::result::Result<Snapshot<Self::State>, ZkError> {
        let inner = backend.inner();
        let path = inner.key_path(self.0.as_str());
        match inner.read_node(&path, self.0.as_str(), Some(arm)).await? {
            Node::Value {
                pair, deadline_ms, ..
            } => Ok((Some(pair), deadline_ms)),
            Node::Empty {
                expired_mzxid: Some(version),
                ..
            } => {
                backend.collect_expired(path, version);
                Ok((None, None))
            }
            _ => Ok((None, None)),
        }
    }

    fn newer(old: &Self::State, new: &Self::State) -> bool {
        match (old, new) {
            (Some(old), Some(new)) => new.last_index > old.last_index,
            (None, None) => false,
            _ => true,
        }
    }
}

/// `watch_tree`: a cache of the subtree, kept current incrementally. A full scan arms
/// a child watch on every znode (and on the directory, or an exists watch while it is
/// missing) and a data watch on every znode below it; afterwards only what fired is
/// read again: a data watch re-reads that znode, a child watch re-lists that znode's
/// children and scans the new ones. A reconnect or a failed read starts from a full
/// scan again. What is yielded is a snapshot read after the cache is current (see
/// `Tree::snapshot`).
struct Tree {
    dir: Dir,
    base: String,
    /// Every known znode strictly below `base` (its watches are armed; its state is
    /// read by the snapshot), by path (path order is key order).
    nodes: BTreeSet<String>,
    full: bool,
    dirty: HashSet<Fired>,
}

impl Tree {
    fn new(backend: &Zookeeper, dir: Dir) -> Self {
        Tree {
            base: backend.inner().dir_path(&dir),
            dir,
            nodes: BTreeSet::new(),
            full: true,
            dirty: HashSet::new(),
        }
    }

    fn remove_subtree(&mut self, path: &str) {
        let below = format!("{path}/");
        self.nodes
            .retain(|known| known != path && !known.starts_with(&below));
    }

    fn cached_children(&self, parent: &str) -> Vec<String> {
        let below = format!("{parent}/");
        self.nodes
            .range(below.clone()..)
            .take_while(|path| path.starts_with(&below))
            .filter(|path| !path[below.len()..].contains('/'))
            .cloned()
            .collect()
    }

    async fn full_scan(
        &mut self,
        backend: &Zookeeper,
        arm: &Arm,
    ) -> std::result::Result<(), ZkError> {
        self.nodes.clear();
        self.dirty.clear();
        let inner = backend.inner();
        let base = self.base.clone();
        let children = match list_children(backend, arm, &base).await {
            Ok(children) => children,
            Err(ZkError::NoNode) => {
                // The directory does not exist (yet): watch for its creation.
                arm.unmark(&base, Kind::Data);
                if arm.claim(&base, Kind::Data) {
                    let exists = inner.call(|| inner.zk().exists(&base, true)).await;
                    if exists.is_err() {
                        arm.unmark(&base, Kind::Data);
                    }
                    if exists?.is_some() {
                        // Created in between: scan again.
                        self.full = true;
                        return Ok(());
                    }
                }
                self.full = false;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let scanned = scan_nodes(backend, arm, children).await?;
        self.nodes.extend(scanned);
        self.full = false;
        Ok(())
    }

    async fn apply_events(
        &mut self,
        backend: &Zookeeper,
        arm: &Arm,
    ) -> std::result::Result<(), ZkError> {
        let dirty: Vec<Fired> = self.dirty.drain().collect();
        let mut rereads = Vec::new();
        let mut relists = Vec::new();
        for (path, kind) in dirty {
            let known = path == self.base || self.nodes.contains(&path);
            match kind {
                // The exists watch on a missing directory fired (the directory's own
                // value is not part of the tree).
                Kind::Data if path == self.base => self.full = true,
                Kind::Data if known => rereads.push(path),
                Kind::Child if known => relists.push(path),
                _ => {}
            }
        }
        if self.full {
            return Ok(());
        }
        // Changed values, all pipelined.
        let read: Vec<(String, std::result::Result<bool, ZkError>)> = stream::iter(rereads)
            .map(|path| async move {
                let exists = read_entry(backend, arm, &path).await;
                (path, exists)
            })
            .buffered(super::PIPELINE_WINDOW)
            .collect()
            .await;
        for (path, exists) in read {
            if exists? {
                self.nodes.insert(path);
            } else {
                self.remove_subtree(&path);
            }
        }
        // Changed child lists, all pipelined; then the new children's subtrees.
        let listed: Vec<(String, std::result::Result<Vec<String>, ZkError>)> =
            stream::iter(relists)
                .map(|path| async move {
                    let children = list_children(backend, arm, &path).await;
                    (path, children)
                })
                .buffered(super::PIPELINE_WINDOW)
                .collect()
                .await;
        let mut new_paths = Vec::new();
        for (parent, children) in listed {
            let children = match children {
                Ok(children) => children,
                Err(ZkError::NoNode) if parent == self.base => {
                    self.full = true;
                    return Ok(());
                }
                Err(ZkError::NoNode) => {
                    self.remove_subtree(&parent);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if parent != self.base && !self.nodes.contains(&parent) {
                continue; // removed meanwhile by another event of this round
            }
            let now: HashSet<String> = children.into_iter().collect();
            for gone in self.cached_children(&parent) {
                if !now.contains(&gone) {
                    self.remove_subtree(&gone);
                }
            }
            for path in now {
                if !self.nodes.contains(&path) {
                    new_paths.push(path);
                }
            }
        }
        let scanned = scan_nodes(backend, arm, new_paths).await?;
        self.nodes.extend(scanned);
        Ok(())
    }

    /// The state to yield: the cache above keeps the watches armed with a few reads
    /// per change, but it is read piece by piece at different times, so the state
    /// itself is a validated snapshot read of the tree, as `list` reads it
    /// (`Zookeeper::read_snapshot`). A tree that keeps changing through every round
    /// of it is a failed read (retried from a full scan).
    async fn snapshot(
        &self,
        backend: &Zookeeper,
    ) -> std::result::Result<Snapshot<Vec<KvPair>>, ZkError> {
        let nodes = backend
            .read_snapshot(&self.base)
            .await?
            .ok_or(ZkError::OperationTimeout)?;
        let (out, deadline) = backend.snapshot_pairs(nodes);
        debug_assert!(out.iter().all(|p| self.dir.contains(&p.key)));
        Ok((out, deadline))
    }
}

impl Watched for Tree {
    type State = Vec<KvPair>;

    async fn read(
        &mut self,
        backend: &Zookeeper,
        arm: &Arm,
    ) -> std::result::Result<Snapshot<Self::State>, ZkError> {
        if !self.full {
            self.apply_events(backend, arm).await?;
        }
        // A full scan may ask for another (the directory appeared meanwhile).
        for _ in 0..3 {
            if !self.full {
                break;
            }
            self.full_scan(backend, arm).await?;
        }
        self.snapshot(backend).await
    }

    fn fired(&mut self, path: &str, kind: Kind) {
        self.dirty.insert((path.to_owned(), kind));
    }

    fn reset(&mut self) {
        self.full = true;
        self.dirty.clear();
    }

    fn newer(old: &Self::State, new: &Self::State) -> bool {
        old.len() != new.len()
            || old
                .iter()
                .zip(new)
                .any(|(a, b)| a.key != b.key || a.last_index != b.last_index)
    }
}

/// The children of `path` (full paths), leaving a child watch unless one is armed.
async fn list_children(
    backend: &Zookeeper,
    arm: &Arm,
    path: &str,
) -> std::result::Result<Vec<String>, ZkError> {
    let inner = backend.inner();
    let watch = arm.claim(path, Kind::Child);
    let result = inner.call(|| inner.zk().get_children(path, watch)).await;
    if watch && result.is_err() {
        arm.unmark(path, Kind::Child);
    }
    result.map(|children| {
        children
            .into_iter()
            .map(|c| format!("{path}/{c}"))
            .collect()
    })
}

/// Reads one znode of the tree, leaving a data watch unless one is armed; false when
/// it is gone (its creation is seen by its parent's child watch, so no exists watch)
/// or not a kvkit key.
async fn read_entry(
    backend: &Zookeeper,
    arm: &Arm,
    path: &str,
) -> std::result::Result<bool, ZkError> {
    let inner = backend.inner();
    if inner.key_of(path).is_none() {
        return Ok(false);
    }
    let watch = arm.claim(path, Kind::Data);
    let result = inner.call(|| inner.zk().get_data(path, watch)).await;
    if watch && result.is_err() {
        arm.unmark(path, Kind::Data);
    }
    match result {
        Ok(_) => Ok(true),
        Err(ZkError::NoNode) => Ok(false),
        Err(e) => Err(e),
    }
}

type ScanRead = (
    String,
    std::result::Result<bool, ZkError>,
    std::result::Result<Vec<String>, ZkError>,
);

/// Reads `paths` and everything below them, arming watches: one pipelined wave per
/// level of depth (the data and the children of a level go together).
async fn scan_nodes(
    backend: &Zookeeper,
    arm: &Arm,
    paths: Vec<String>,
) -> std::result::Result<Vec<String>, ZkError> {
    let mut out = Vec::new();
    let inner = backend.inner();
    // Znodes that do not spell a kvkit key (another tool's) are not watched at all.
    let mut level: Vec<String> = paths
        .into_iter()
        .filter(|path| inner.key_of(path).is_some())
        .collect();
    while !level.is_empty() {
        let reads: Vec<ScanRead> = stream::iter(level)
            .map(|path| async move {
                let (exists, children) = futures::join!(
                    read_entry(backend, arm, &path),
                    list_children(backend, arm, &path)
                );
                (path, exists, children)
            })
            .buffered(super::PIPELINE_WINDOW / 2)
            .collect()
            .await;
        level = Vec::new();
        for (path, exists, children) in reads {
            if !exists? {
                continue;
            }
            match children {
                Ok(children) => {
                    level.extend(children.into_iter().filter(|c| inner.key_of(c).is_some()));
                }
                Err(ZkError::NoNode) => continue,
                Err(e) => return Err(e),
            }
            out.push(path);
        }
    }
    Ok(out)
}

pub(crate) async fn watch_key(backend: Zookeeper, key: Key<'static>) -> Result<ZookeeperWatch> {
    start(backend, OneKey(key)).await
}

pub(crate) async fn watch_tree(backend: Zookeeper, dir: Dir) -> Result<ZookeeperWatchTree> {
    let tree = Tree::new(&backend, dir);
    start(backend, tree).await
}

/// Reads the first state (so errors such as a refused ACL surface from the call), then
/// spawns the task that follows the changes. The shared [`TaskStream`] keeps the end
/// rules: dropping the stream stops the task, a close yields one `Err(Closed)`.
async fn start<W: Watched>(backend: Zookeeper, mut watched: W) -> Result<TaskStream<W::State>> {
    let (arm, fired) = Arm::new(&backend);
    let epoch = backend.inner().epoch();
    let (first, deadline) = watched
        .read(&backend, &arm)
        .await
        .map_err(|e| backend.map_err(e))?;
    let closed = backend.inner().shutdown_token();
    Ok(TaskStream::spawn(CHANNEL_CAPACITY, closed, |tx| {
        let _ = tx.try_send(Ok(first.clone()));
        follow(backend, watched, arm, fired, epoch, tx, (first, deadline))
    }))
}

/// Re-reads after every fired watch, reconnect or TTL deadline, and sends each state
/// that is newer than the last one sent.
async fn follow<W: Watched>(
    backend: Zookeeper,
    mut watched: W,
    arm: Arm,
    mut fired: mpsc::UnboundedReceiver<Fired>,
    mut epoch: tokio::sync::watch::Receiver<u64>,
    tx: mpsc::Sender<Result<W::State>>,
    first: Snapshot<W::State>,
) {
    let (mut last, mut deadline) = first;
    let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
    let mut retry: Option<Duration> = None;
    epoch.borrow_and_update();
    loop {
        // Wait for a fired watch, a reconnect (watches gone), a TTL deadline or a retry.
        let sleep = deadline.map(|d| {
            let wait = d.saturating_sub(backend.inner().server_now_ms()).max(0) + 1;
            Duration::from_millis(u64::try_from(wait).unwrap_or(u64::MAX))
        });
        let wake = match (sleep, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            _ = tx.closed() => return,
            event = fired.recv() => {
                let Some((path, kind)) = event else { return };
                arm.unmark(&path, kind);
                watched.fired(&path, kind);
            }
            changed = epoch.changed() => {
                if changed.is_err() {
                    return;
                }
                arm.clear();
                watched.reset();
            }
            _ = tokio::time::sleep(wake.unwrap_or(Duration::from_secs(3600))), if wake.is_some() => {}
        }
        // Coalesce whatever else fired meanwhile.
        while let Ok((path, kind)) = fired.try_recv() {
            arm.unmark(&path, kind);
            watched.fired(&path, kind);
        }
        if backend.inner().is_closed() {
            // TaskStream reports the close once the shutdown token is cancelled.
            return backend.inner().shutdown().await;
        }
        match watched.read(&backend, &arm).await {
            Ok((state, next_deadline)) => {
                retry = None;
                backoff.reset();
                deadline = next_deadline;
                if W::newer(&last, &state) {
                    last = state;
                    if tx.send(Ok(last.clone())).await.is_err() {
                        return;
                    }
                }
            }
            Err(_) if backend.inner().is_closed() => return backend.inner().shutdown().await,
            Err(e) => {
                // Watches of a failed read may not be armed: start again from scratch.
                arm.clear();
                watched.reset();
                // One error item per outage; a permanent one also ends the stream.
                if retry.is_none() && tx.send(Err(backend.map_err(e))).await.is_err() {
                    return;
                }
                retry = Some(backoff.next_delay());
            }
        }
    }
}
