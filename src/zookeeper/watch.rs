//! `watch` and `watch_tree` on one-shot ZooKeeper watches, re-armed after every event and
//! from scratch after every reconnect (the client crate does not re-register watches on
//! a new connection).
//!
//! A task per stream keeps the set of (znode, kind) watches it has armed on the server.
//! After a watch fires it re-reads the state (re-arming only the watches that fired),
//! and yields the new state when it differs from the last one yielded. A TTL value makes
//! the task wake up at its deadline too, so expiry is seen without a write.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt, stream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use zookeeper_async::{WatchedEvent, ZkError};

use super::{Node, Zookeeper};
use crate::backend::KvPair;
use crate::error::Result;
use crate::key::{Dir, Key};

/// The kind of a one-shot watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// A data (or exists) watch.
    Data,
    /// A child watch.
    Child,
}

type Fired = (String, Kind);

/// The watches one stream has armed on the server.
pub(crate) struct Arm {
    tx: mpsc::UnboundedSender<Fired>,
    armed: Mutex<HashSet<Fired>>,
}

impl Arm {
    fn new() -> (Self, mpsc::UnboundedReceiver<Fired>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arm {
                tx,
                armed: Mutex::new(HashSet::new()),
            },
            rx,
        )
    }

    fn armed(&self) -> std::sync::MutexGuard<'_, HashSet<Fired>> {
        self.armed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The watcher to leave on `path` when no such watch is armed yet (marking it
    /// armed), or `None` when one is.
    pub(crate) fn claim(
        &self,
        path: &str,
        kind: Kind,
    ) -> Option<impl FnOnce(WatchedEvent) + Send + Clone + 'static> {
        if !self.armed().insert((path.to_owned(), kind)) {
            return None;
        }
        let tx = self.tx.clone();
        let path = path.to_owned();
        Some(move |_event: WatchedEvent| {
            let _ = tx.send((path, kind));
        })
    }

    /// Forgets an armed watch (it fired, or its request failed).
    pub(crate) fn unmark(&self, path: &str, kind: Kind) {
        self.armed().remove(&(path.to_owned(), kind));
    }

    /// Forgets every armed watch (a new connection has none).
    fn clear(&self) {
        self.armed().clear();
    }
}

/// Aborts the stream's task when the stream is dropped.
#[derive(Debug)]
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The stream of [`crate::Kv::watch`] on ZooKeeper.
#[derive(Debug)]
pub struct ZookeeperWatch {
    rx: mpsc::Receiver<Result<Option<KvPair>>>,
    _task: AbortOnDrop,
}

impl Stream for ZookeeperWatch {
    type Item = Result<Option<KvPair>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// The stream of [`crate::Kv::watch_tree`] on ZooKeeper.
#[derive(Debug)]
pub struct ZookeeperWatchTree {
    rx: mpsc::Receiver<Result<Vec<KvPair>>>,
    _task: AbortOnDrop,
}

impl Stream for ZookeeperWatchTree {
    type Item = Result<Vec<KvPair>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// One snapshot: the state and the earliest TTL deadline in it (server clock, ms).
type Snapshot<T> = (T, Option<i64>);

trait Watched: Send + 'static {
    type State: Clone + Send + PartialEq + 'static;
    /// Reads the state, arming the watches that are not armed.
    fn read(
        &self,
        backend: &Zookeeper,
        arm: &Arm,
    ) -> impl std::future::Future<Output = std::result::Result<Snapshot<Self::State>, ZkError>> + Send;
    /// True when `new` may be yielded after `old` (versions never go back).
    fn newer(old: &Self::State, new: &Self::State) -> bool;
}

struct OneKey(Key);

impl Watched for OneKey {
    type State = Option<KvPair>;

    async fn read(
        &self,
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
                expired_version: Some(version),
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

struct Tree(Dir);

impl Watched for Tree {
    type State = Vec<KvPair>;

    async fn read(
        &self,
        backend: &Zookeeper,
        arm: &Arm,
    ) -> std::result::Result<Snapshot<Self::State>, ZkError> {
        scan_tree(backend, &self.0, arm).await
    }

    fn newer(old: &Self::State, new: &Self::State) -> bool {
        old.len() != new.len()
            || old
                .iter()
                .zip(new)
                .any(|(a, b)| a.key != b.key || a.last_index != b.last_index)
    }
}

/// Reads every value below `dir`, leaving a child watch on every znode of the subtree
/// (and on `dir`, or an exists watch when `dir` is missing) and a data watch on every
/// znode below `dir`. Pipelined: two waves per level of depth.
async fn scan_tree(
    backend: &Zookeeper,
    dir: &Dir,
    arm: &Arm,
) -> std::result::Result<Snapshot<Vec<KvPair>>, ZkError> {
    let inner = backend.inner();
    let base = inner.dir_path(dir);
    let mut out = Vec::new();
    let mut deadline: Option<i64> = None;
    let mut frontier = vec![base.clone()];
    while !frontier.is_empty() {
        let lists: Vec<(String, std::result::Result<Vec<String>, ZkError>)> =
            stream::iter(frontier)
                .map(|parent| async move {
                    let result = match arm.claim(&parent, Kind::Child) {
                        Some(fire) => {
                            let r = inner
                                .call(|| inner.zk().get_children_w(&parent, fire.clone()))
                                .await;
                            if r.is_err() {
                                arm.unmark(&parent, Kind::Child);
                            }
                            r
                        }
                        None => inner.call(|| inner.zk().get_children(&parent, false)).await,
                    };
                    (parent, result)
                })
                .buffered(super::PIPELINE_WINDOW)
                .collect()
                .await;
        let mut paths = Vec::new();
        for (parent, result) in lists {
            match result {
                Ok(children) => {
                    paths.extend(children.into_iter().map(|c| format!("{parent}/{c}")));
                }
                Err(ZkError::NoNode) if parent == base => {
                    // The directory does not exist (yet): watch for its creation.
                    arm.unmark(&parent, Kind::Data);
                    if let Some(fire) = arm.claim(&parent, Kind::Data) {
                        match inner
                            .call(|| inner.zk().exists_w(&parent, fire.clone()))
                            .await
                        {
                            Ok(None) => {}
                            // Created in between: the exists watch fires, we read again.
                            Ok(Some(_)) => {}
                            Err(e) => {
                                arm.unmark(&parent, Kind::Data);
                                return Err(e);
                            }
                        }
                    }
                }
                Err(ZkError::NoNode) => {}
                Err(e) => return Err(e),
            }
        }
        let reads: Vec<(String, std::result::Result<Node, ZkError>)> = stream::iter(paths)
            .map(|path| async move {
                let key = inner.key_of(&path).unwrap_or_default().to_owned();
                let result = inner.read_node(&path, &key, Some(arm)).await;
                (path, result)
            })
            .buffered(super::PIPELINE_WINDOW)
            .collect()
            .await;
        frontier = Vec::new();
        for (path, result) in reads {
            match result? {
                Node::Missing => continue,
                Node::Empty {
                    expired_version, ..
                } => {
                    if let Some(version) = expired_version {
                        backend.collect_expired(path.clone(), version);
                    }
                }
                Node::Value {
                    pair, deadline_ms, ..
                } => {
                    if let Some(d) = deadline_ms {
                        deadline = Some(deadline.map_or(d, |old: i64| old.min(d)));
                    }
                    out.push(pair);
                }
            }
            frontier.push(path);
        }
    }
    out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    Ok((out, deadline))
}

pub(crate) async fn watch_key(backend: Zookeeper, key: Key) -> Result<ZookeeperWatch> {
    let (rx, task) = start(backend, OneKey(key)).await?;
    Ok(ZookeeperWatch {
        rx,
        _task: AbortOnDrop(task),
    })
}

pub(crate) async fn watch_tree(backend: Zookeeper, dir: Dir) -> Result<ZookeeperWatchTree> {
    let (rx, task) = start(backend, Tree(dir)).await?;
    Ok(ZookeeperWatchTree {
        rx,
        _task: AbortOnDrop(task),
    })
}

/// Reads the first state (so errors such as a refused ACL surface from the call), then
/// spawns the task that follows the changes.
async fn start<W: Watched>(
    backend: Zookeeper,
    watched: W,
) -> Result<(mpsc::Receiver<Result<W::State>>, AbortHandle)> {
    let (arm, fired) = Arm::new();
    let epoch = backend.inner().epoch();
    let first = watched
        .read(&backend, &arm)
        .await
        .map_err(|e| backend.map_err(e))?;
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(follow(backend, watched, arm, fired, epoch, tx, first));
    Ok((rx, task.abort_handle()))
}

async fn follow<W: Watched>(
    backend: Zookeeper,
    watched: W,
    arm: Arm,
    mut fired: mpsc::UnboundedReceiver<Fired>,
    mut epoch: tokio::sync::watch::Receiver<u64>,
    tx: mpsc::Sender<Result<W::State>>,
    first: Snapshot<W::State>,
) {
    let (mut last, mut deadline) = first;
    if tx.send(Ok(last.clone())).await.is_err() {
        return;
    }
    let mut failing = false;
    epoch.borrow_and_update();
    loop {
        // Wait for a fired watch, a reconnect (watches gone), or a TTL deadline.
        let sleep = deadline.map(|d| {
            let wait = d.saturating_sub(backend.inner().server_now_ms()).max(0) + 1;
            Duration::from_millis(u64::try_from(wait).unwrap_or(u64::MAX))
        });
        let retry = failing.then(|| Duration::from_millis(250));
        let wake = match (sleep, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            _ = tx.closed() => return,
            _ = backend.inner().shutdown() => return,
            event = fired.recv() => {
                let Some((path, kind)) = event else { return };
                arm.unmark(&path, kind);
            }
            changed = epoch.changed() => {
                if changed.is_err() {
                    return;
                }
                arm.clear();
            }
            _ = tokio::time::sleep(wake.unwrap_or(Duration::from_secs(3600))), if wake.is_some() => {}
        }
        // Coalesce whatever else fired meanwhile.
        while let Ok((path, kind)) = fired.try_recv() {
            arm.unmark(&path, kind);
        }
        if backend.inner().is_closed() {
            return;
        }
        match watched.read(&backend, &arm).await {
            Ok((state, next_deadline)) => {
                failing = false;
                deadline = next_deadline;
                if W::newer(&last, &state) {
                    last = state;
                    if tx.send(Ok(last.clone())).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                // Watches of a failed read may not be armed: start again from scratch.
                arm.clear();
                if !failing {
                    failing = true;
                    if tx.send(Err(backend.map_err(e))).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
