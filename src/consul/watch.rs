//! Watches over blocking queries.
//!
//! A spawned task runs blocking GETs (`?index=&wait=`) and feeds a channel. It yields
//! only when the state differs from the last one yielded (a blocking query may return
//! without a change), resets the index to 0 when Consul's index goes backwards (a
//! snapshot restore), waits at least [`MIN_GAP`] between two queries that returned
//! without a change, and retries transport failures with capped exponential backoff.
//! After [`REPORT_AFTER`] failures in a row it yields one `Err(Unavailable)` (so a
//! long outage is not silent) and keeps retrying. A permanent error (403, a malformed
//! answer) is yielded and ends the stream; `close` ends it after one `Err(Closed)`.
//! Dropping the stream aborts the task (the shared rules of [`TaskStream`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Inner;
use crate::backend::KvPair;
use crate::backoff::Backoff;
use crate::error::Result;
use crate::key::Dir;
use crate::task_stream::TaskStream;

/// Shortest time between two blocking queries when the first returned no change.
const MIN_GAP: Duration = Duration::from_millis(50);
/// First retry delay after a failure; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Failures in a row after which the stream reports one `Err(Unavailable)`.
const REPORT_AFTER: u32 = 5;

/// The stream of a Consul watch: [`crate::Kv::watch`] by default, or
/// `ConsulWatch<Vec<KvPair>>`, the same type as [`ConsulWatchTree`].
pub type ConsulWatch<T = Option<KvPair>> = TaskStream<T>;

/// The stream of [`crate::Kv::watch_tree`] on Consul.
pub type ConsulWatchTree = TaskStream<Vec<KvPair>>;

/// Runs the loop shared by both watches. `fetch(index)` does one (blocking) query
/// and returns the state and the response index.
fn spawn<T, F, Fut>(inner: Arc<Inner>, fetch: F) -> ConsulWatch<T>
where
    T: PartialEq + Clone + Send + 'static,
    F: Fn(Arc<Inner>, u64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(T, u64)>> + Send,
{
    let closed = inner.closed.clone();
    TaskStream::spawn(16, closed.clone(), |tx| async move {
        let mut index = 0u64;
        let mut last: Option<T> = None;
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        let mut failures = 0u32;
        loop {
            let started = Instant::now();
            let outcome = tokio::select! {
                biased;
                _ = closed.cancelled() => return,
                outcome = fetch(inner.clone(), index) => outcome,
            };
            if closed.is_cancelled() {
                // `close` ends every watch; the stream then yields `Err(Closed)`.
                return;
            }
            match outcome {
                Ok((state, at)) => {
                    failures = 0;
                    backoff.reset();
                    if at < index {
                        // The index went backwards (snapshot restore): start over
                        // with a non-blocking query.
                        index = 0;
                        continue;
                    }
                    index = at.max(1);
                    if last.as_ref() != Some(&state) {
                        last = Some(state.clone());
                        if tx.send(Ok(state)).await.is_err() {
                            return;
                        }
                    } else if started.elapsed() < MIN_GAP {
                        tokio::time::sleep(MIN_GAP - started.elapsed()).await;
                    }
                }
                Err(e) if e.is_retryable() => {
                    failures += 1;
                    if failures == REPORT_AFTER && tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    tokio::select! {
                        _ = closed.cancelled() => return,
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    })
}

pub(crate) fn watch_key(inner: Arc<Inner>, remote: String) -> ConsulWatch<Option<KvPair>> {
    spawn(inner, move |inner, index| {
        let remote = remote.clone();
        async move {
            let (entry, at) = inner.get_entry(&remote, index).await?;
            let pair = match entry {
                Some(e) => inner.pair(&e)?,
                None => None,
            };
            Ok((pair, at))
        }
    })
}

pub(crate) fn watch_tree(inner: Arc<Inner>, dir: Dir) -> ConsulWatchTree {
    spawn(inner, move |inner, index| {
        let dir = dir.clone();
        async move {
            let (entries, at) = inner.get_tree(&inner.remote_children(&dir), index).await?;
            let mut pairs = Vec::with_capacity(entries.len());
            for entry in &entries {
                if let Some(pair) = inner.pair(entry)?
                    && dir.contains(&pair.key)
                {
                    pairs.push(pair);
                }
            }
            pairs.sort_unstable_by(|a, b| a.key.cmp(&b.key));
            Ok((pairs, at))
        }
    })
}
