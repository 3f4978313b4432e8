//! Watches: one initial read, then an etcd watch from that read's revision + 1.
//!
//! Each stream is fed by one background task that owns the etcd watch (a gRPC
//! stream) and a bounded channel to the consumer. The task keeps the revision of the
//! last change it applied. When the watch breaks (server restart, leader change,
//! connection loss) it re-opens it from that revision + 1, with a capped backoff, so no
//! change is missed or repeated; when that revision was compacted, it re-reads the
//! state and yields it if it differs from what was last yielded. `watch_tree` keeps
//! the subtree in a `BTreeMap` and applies events to it, yielding one snapshot per
//! etcd revision (a transaction that deletes a tree is one snapshot). Dropping the
//! stream aborts the task, which drops the gRPC stream and so cancels the etcd watch.
//!
//! An outage is yielded once as `Err(Unavailable)` and the stream resumes on its own.
//! A failure that retrying cannot fix (refused credentials) is yielded as an error and
//! ends the stream; `close` ends it after one `Err(Closed)` (the shared rules of
//! [`TaskStream`]). A watch the server cancels for any reason other
//! than compaction is re-read through a Range, whose typed status tells a revoked
//! permission from a transient cancel.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Event, EventType, GetOptions, WatchOptions, WatchStream};
use tokio::sync::mpsc;

use super::{Etcd, map_error, timeout_error};
use crate::backend::KvPair;
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::key::{Dir, Key};
use crate::task_stream::TaskStream;

/// Items buffered between the watch task and a slow consumer.
const CHANNEL_CAPACITY: usize = 64;
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The stream of [`crate::Kv::watch`] on etcd.
pub type EtcdWatch = TaskStream<Option<KvPair>>;

/// The stream of [`crate::Kv::watch_tree`] on etcd.
pub type EtcdWatchTree = TaskStream<Vec<KvPair>>;

/// What a watch task follows: how to read it, and how events change it.
trait Follow: Send + 'static {
    type Item: Send + 'static;

    /// The etcd key, and the range end for a range watch.
    fn range(&self) -> (Vec<u8>, Option<Vec<u8>>);

    /// Replaces the state with a fresh read (`kvs`); the item to yield if it changed.
    fn reset(&mut self, etcd: &Etcd, kvs: &[etcd_client::KeyValue]) -> Option<Self::Item>;

    /// Applies the events of one revision; the item to yield.
    fn apply(&mut self, etcd: &Etcd, events: &[Event]) -> Option<Self::Item>;
}

struct KeyState {
    full: Vec<u8>,
    last: Option<KvPair>,
}

impl Follow for KeyState {
    type Item = Option<KvPair>;

    fn range(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        (self.full.clone(), None)
    }

    fn reset(&mut self, etcd: &Etcd, kvs: &[etcd_client::KeyValue]) -> Option<Self::Item> {
        let fresh = kvs.first().and_then(|kv| etcd.pair(kv));
        let changed =
            fresh.as_ref().map(|p| p.last_index) != self.last.as_ref().map(|p| p.last_index);
        self.last = fresh;
        changed.then(|| self.last.clone())
    }

    fn apply(&mut self, etcd: &Etcd, events: &[Event]) -> Option<Self::Item> {
        // One key changes at most once per revision; take the last event anyway.
        let event = events.last()?;
        self.last = match event.event_type() {
            EventType::Put => event.kv().and_then(|kv| etcd.pair(kv)),
            EventType::Delete => None,
        };
        Some(self.last.clone())
    }
}

struct TreeState {
    start: Vec<u8>,
    end: Vec<u8>,
    tree: BTreeMap<String, KvPair>,
}

impl TreeState {
    fn snapshot(&self) -> Vec<KvPair> {
        self.tree.values().cloned().collect()
    }
}

impl Follow for TreeState {
    type Item = Vec<KvPair>;

    fn range(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        (self.start.clone(), Some(self.end.clone()))
    }

    fn reset(&mut self, etcd: &Etcd, kvs: &[etcd_client::KeyValue]) -> Option<Self::Item> {
        let fresh: BTreeMap<String, KvPair> = kvs
            .iter()
            .filter_map(|kv| etcd.pair(kv))
            .map(|pair| (pair.key.clone(), pair))
            .collect();
        let changed = fresh.len() != self.tree.len()
            || fresh
                .iter()
                .zip(self.tree.iter())
                .any(|((k1, p1), (k2, p2))| k1 != k2 || p1.last_index != p2.last_index);
        self.tree = fresh;
        changed.then(|| self.snapshot())
    }

    fn apply(&mut self, etcd: &Etcd, events: &[Event]) -> Option<Self::Item> {
        let mut changed = false;
        for event in events {
            let Some(kv) = event.kv() else { continue };
            match event.event_type() {
                EventType::Put => {
                    if let Some(pair) = etcd.pair(kv) {
                        self.tree.insert(pair.key.clone(), pair);
                        changed = true;
                    }
                }
                EventType::Delete => {
                    if let Some(key) = etcd.pair(kv).map(|pair| pair.key) {
                        changed |= self.tree.remove(&key).is_some();
                    }
                }
            }
        }
        changed.then(|| self.snapshot())
    }
}

/// Starts a watch of one key.
pub(crate) async fn watch_key(etcd: Etcd, key: &Key<'_>) -> Result<EtcdWatch> {
    let mut state = KeyState {
        full: etcd.full(key.as_str()),
        last: None,
    };
    let (revision, kvs) = read(&etcd, &state).await?;
    state.reset(&etcd, &kvs);
    let first = state.last.clone();
    let closed = etcd.inner.closed.clone();
    Ok(TaskStream::spawn(CHANNEL_CAPACITY, closed, |tx| {
        let _ = tx.try_send(Ok(first));
        follow(etcd, state, revision, tx)
    }))
}

/// Starts a watch of everything below `dir`.
pub(crate) async fn watch_tree(etcd: Etcd, dir: &Dir) -> Result<EtcdWatchTree> {
    let (start, end) = etcd.dir_range(dir);
    let mut state = TreeState {
        start,
        end,
        tree: BTreeMap::new(),
    };
    let (revision, kvs) = read(&etcd, &state).await?;
    state.reset(&etcd, &kvs);
    let first = state.snapshot();
    let closed = etcd.inner.closed.clone();
    Ok(TaskStream::spawn(CHANNEL_CAPACITY, closed, |tx| {
        let _ = tx.try_send(Ok(first));
        follow(etcd, state, revision, tx)
    }))
}

/// Reads the followed key or range: the revision of the read and the pairs.
async fn read<S: Follow>(etcd: &Etcd, state: &S) -> Result<(i64, Vec<etcd_client::KeyValue>)> {
    let (key, end) = state.range();
    let options = end.map(|end| GetOptions::new().with_range(end));
    let mut resp = super::request!(etcd, kv => kv.get(key, options), clone key, options).await?;
    let revision = super::header_revision(resp.header());
    Ok((revision, resp.take_kvs()))
}

/// Opens an etcd watch on the followed key or range from `start_revision`.
async fn open<S: Follow>(etcd: &Etcd, state: &S, start_revision: i64) -> Result<WatchStream> {
    if etcd.inner.closed.is_cancelled() {
        return Err(Error::Closed);
    }
    let (key, end) = state.range();
    let mut options = WatchOptions::new().with_start_revision(start_revision);
    if let Some(end) = end {
        options = options.with_range(end);
    }
    let mut client = etcd.inner.watch.clone();
    let timeout = etcd.inner.request_timeout;
    match tokio::time::timeout(timeout, client.watch(key, Some(options))).await {
        Ok(result) => result.map_err(map_error),
        Err(_) => Err(timeout_error(timeout)),
    }
}

/// Why the inner loop of [`follow`] stopped.
enum Break {
    /// The consumer is gone or the store was closed: stop.
    Stop,
    /// The watch broke; re-open it after a backoff.
    Retry,
    /// The revision was compacted: re-read, then re-open.
    Compacted,
    /// The server cancelled the watch for another reason: check access with a read,
    /// then re-open from the same revision.
    Cancelled,
}

/// The watch task: follows etcd from `revision + 1` until the consumer goes away.
async fn follow<S: Follow>(
    etcd: Etcd,
    mut state: S,
    mut revision: i64,
    tx: mpsc::Sender<Result<S::Item>>,
) {
    let closed = etcd.inner.closed.clone();
    let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
    // One `Err` item per outage tells the consumer; then the watch keeps retrying.
    let mut reported_outage = false;
    loop {
        let outcome = match open(&etcd, &state, revision + 1).await {
            Ok(mut stream) => {
                reported_outage = false;
                pump(
                    &etcd,
                    &mut state,
                    &mut revision,
                    &mut stream,
                    &tx,
                    &mut backoff,
                )
                .await
            }
            Err(Error::Closed) => Break::Stop,
            Err(err) if !err.is_retryable() => {
                let _ = tx.send(Err(err)).await;
                Break::Stop
            }
            Err(err) => {
                tracing::debug!(%err, "etcd watch could not be opened; retrying");
                if !reported_outage {
                    reported_outage = true;
                    if tx.send(Err(err)).await.is_err() {
                        return;
                    }
                }
                Break::Retry
            }
        };
        match outcome {
            Break::Stop => return,
            Break::Cancelled => match read(&etcd, &state).await {
                Err(Error::Closed) => return,
                Err(err) if !err.is_retryable() => {
                    // A revoked permission: the typed answer of the read says so.
                    let _ = tx.send(Err(err)).await;
                    return;
                }
                _ => {}
            },
            Break::Compacted => match read(&etcd, &state).await {
                Ok((read_revision, kvs)) => {
                    revision = read_revision;
                    if let Some(item) = state.reset(&etcd, &kvs)
                        && tx.send(Ok(item)).await.is_err()
                    {
                        return;
                    }
                    continue;
                }
                Err(Error::Closed) => return,
                Err(err) if !err.is_retryable() => {
                    let _ = tx.send(Err(err)).await;
                    return;
                }
                Err(err) => {
                    tracing::debug!(%err, "etcd watch re-read failed; retrying");
                    // Re-opening from the compacted revision will report it again.
                }
            },
            Break::Retry => {}
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = closed.cancelled() => return,
            () = tx.closed() => return,
        }
    }
}

/// Delivers the responses of one etcd watch until it breaks.
async fn pump<S: Follow>(
    etcd: &Etcd,
    state: &mut S,
    revision: &mut i64,
    stream: &mut WatchStream,
    tx: &mpsc::Sender<Result<S::Item>>,
    backoff: &mut Backoff,
) -> Break {
    let closed = etcd.inner.closed.clone();
    loop {
        let message = tokio::select! {
            message = stream.message() => message,
            () = closed.cancelled() => return Break::Stop,
            () = tx.closed() => return Break::Stop,
        };
        let resp = match message {
            Ok(Some(resp)) => resp,
            Ok(None) => return Break::Retry,
            Err(err) => {
                let err = map_error(err);
                if !err.is_retryable() {
                    let _ = tx.send(Err(err)).await;
                    return Break::Stop;
                }
                tracing::debug!(%err, "etcd watch broke; resuming");
                return Break::Retry;
            }
        };
        if resp.canceled() {
            tracing::debug!(
                compacted = resp.compact_revision(),
                reason = resp.cancel_reason(),
                "etcd watch cancelled by the server"
            );
            return if resp.compact_revision() > 0 {
                Break::Compacted
            } else {
                Break::Cancelled
            };
        }
        if resp.created() {
            backoff.reset();
        }
        // Events arrive in revision order; yield once per revision.
        let events = resp.events();
        let mut start = 0;
        while start < events.len() {
            let group_revision = event_revision(&events[start]);
            let mut end = start + 1;
            while end < events.len() && event_revision(&events[end]) == group_revision {
                end += 1;
            }
            let item = state.apply(etcd, &events[start..end]);
            *revision = (*revision).max(group_revision);
            if let Some(item) = item
                && tx.send(Ok(item)).await.is_err()
            {
                return Break::Stop;
            }
            start = end;
        }
    }
}

fn event_revision(event: &Event) -> i64 {
    event.kv().map_or(0, etcd_client::KeyValue::mod_revision)
}
