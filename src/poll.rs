//! Watches for backends that have no change feed: a generic polling adapter.
//!
//! A backend that implements only the storage primitives (`get`, `put`, `delete`,
//! `compare_and_put`, `compare_and_delete`, `scan_below`, `delete_below`) gets its
//! [`Backend::watch`] and [`Backend::watch_tree`] from [`watch`] and [`watch_tree`],
//! and its locks from [`crate::recipes::CasLock`]:
//!
//! ```ignore
//! const POLL_EVERY: Duration = Duration::from_millis(50);
//!
//! impl Backend for MyStore {
//!     type Watch = kvkit::poll::PollWatch<Self>;
//!     type WatchTree = kvkit::poll::PollWatchTree<Self>;
//!     type Lock = kvkit::recipes::CasLock<Self>;
//!     // ... the storage primitives, then:
//!     async fn watch(&self, key: &Key<'_>) -> Result<Self::Watch> {
//!         kvkit::poll::watch(self, key, POLL_EVERY).await
//!     }
//!     async fn watch_tree(&self, dir: &Dir) -> Result<Self::WatchTree> {
//!         kvkit::poll::watch_tree(self, dir, POLL_EVERY).await
//!     }
//!     async fn lock(&self, key: &Key<'_>, options: &LockOptions) -> Result<Self::Lock> {
//!         kvkit::recipes::CasLock::lock(self, key, options).await
//!     }
//!     // try_lock likewise with CasLock::try_lock
//! }
//! ```
//!
//! `examples/custom_backend.rs` is a whole backend built this way, over SQLite.
//!
//! The rules of `docs/design.md` hold: the current state comes first (`None` / an empty
//! `Vec` when absent), read during the `watch` call itself; after that a state is
//! yielded only when its versions (the set of `last_index`es) differ from the last
//! yield; a read older than the last yield (a key's `last_index` going back) is skipped,
//! so nothing stale follows something newer; and the last item converges on the
//! current state. The adapters **coalesce**: writes made between two reads are seen as
//! one change, so a backend using them reports
//! [`Capabilities::watch_sees_every_write`](crate::Capabilities::watch_sees_every_write)
//! `= false`. A change is seen up to one interval late (a `CasLock` waiter too), and
//! each live stream costs one read (`get`, or `list` for a tree) per interval. A reader
//! that does not consume costs nothing: the stream reads only when it has room for an
//! item.
//!
//! Errors: a failed read is reported once as an `Err` item and then retried with the
//! shared jittered backoff (doubling from the interval up to [`MAX_BACKOFF`], or the
//! interval when that is longer, plus up to a quarter for jitter), silently until a
//! read succeeds again; so `Unavailable` is reported once per outage. An error that
//! retrying cannot fix (any but `Unavailable`: see [`crate::Error::is_retryable`]) ends the
//! stream after its `Err` item, the rule of every watch stream
//! ([`TaskStream`]). Dropping the stream stops the polling task at once.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, KvPair};
use crate::backoff::Backoff;
use crate::error::Result;
use crate::key::{Dir, Key};
use crate::task_stream::TaskStream;

/// The longest wait between two reads while a backend keeps failing (unless the
/// polling interval itself is longer), before up to a quarter of jitter.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Watches `key` by reading it every `interval`; see the module docs. Fails like a
/// `get` would when the first read fails. A zero interval is raised to 1 ms.
pub async fn watch<B: Backend>(
    backend: &B,
    key: &Key<'_>,
    interval: Duration,
) -> Result<PollWatch<B>> {
    start(backend, KeyTarget(key.owned()), interval).await
}

/// Watches everything strictly below `dir` by listing it every `interval`; see the
/// module docs. Fails like a `list` would when the first read fails. A zero interval
/// is raised to 1 ms.
pub async fn watch_tree<B: Backend>(
    backend: &B,
    dir: &Dir,
    interval: Duration,
) -> Result<PollWatchTree<B>> {
    start(backend, TreeTarget(dir.clone()), interval).await
}

/// The stream of [`watch`]: the key's current state, then each changed state.
pub type PollWatch<B> = TaskStream<Option<KvPair>, B>;

/// The stream of [`watch_tree`]: the sorted subtree, then each changed subtree.
pub type PollWatchTree<B> = TaskStream<Vec<KvPair>, B>;

/// What a polling task reads, and how two reads are compared.
trait Target<B: Backend>: Send + Sync + 'static {
    type Item: Send + 'static;

    fn read(&self, backend: &B) -> impl Future<Output = Result<Self::Item>> + Send;

    /// `(key, last_index)` of every pair in a read: what makes two reads differ.
    fn versions(item: &Self::Item) -> Vec<(String, u64)>;
}

struct KeyTarget(Key<'static>);

impl<B: Backend> Target<B> for KeyTarget {
    type Item = Option<KvPair>;

    fn read(&self, backend: &B) -> impl Future<Output = Result<Self::Item>> + Send {
        backend.get(&self.0)
    }

    fn versions(item: &Self::Item) -> Vec<(String, u64)> {
        item.iter().map(|p| (p.key.clone(), p.last_index)).collect()
    }
}

struct TreeTarget(Dir);

impl<B: Backend> Target<B> for TreeTarget {
    type Item = Vec<KvPair>;

    fn read(&self, backend: &B) -> impl Future<Output = Result<Self::Item>> + Send {
        // `list` restricts to strict descendants and sorts (derived or native).
        backend.list(&self.0)
    }

    fn versions(item: &Self::Item) -> Vec<(String, u64)> {
        item.iter().map(|p| (p.key.clone(), p.last_index)).collect()
    }
}

/// True when `new` holds some key at an older version than `last` did: a stale read
/// (from a lagging replica, say) that must not follow the newer state.
fn is_stale(last: &[(String, u64)], new: &[(String, u64)]) -> bool {
    new.iter().any(|(key, index)| {
        last.iter()
            .any(|(seen_key, seen_index)| seen_key == key && index < seen_index)
    })
}

/// Reads the first state (so the `watch` call fails like the read would), then spawns
/// the polling task behind a [`TaskStream`] of one item: the task reads only once the
/// consumer has taken the previous item.
async fn start<B: Backend, T: Target<B>>(
    backend: &B,
    target: T,
    interval: Duration,
) -> Result<TaskStream<T::Item, B>> {
    let interval = interval.max(Duration::from_millis(1));
    let first = target.read(backend).await?;
    let backend = backend.clone();
    // The polled store has no close of its own to report: a read fails with `Closed`.
    Ok(TaskStream::spawn(1, CancellationToken::new(), |sender| {
        poll_loop(backend, target, interval, first, sender)
    }))
}

/// Reads every `interval` and sends each changed state; see the module docs.
async fn poll_loop<B: Backend, T: Target<B>>(
    backend: B,
    target: T,
    interval: Duration,
    first: T::Item,
    sender: mpsc::Sender<Result<T::Item>>,
) {
    let mut last = T::versions(&first);
    // The state read by the `watch` call comes first.
    if sender.send(Ok(first)).await.is_err() {
        return;
    }
    let mut backoff = Backoff::new(interval, interval.max(MAX_BACKOFF));
    let mut delay = interval;
    let mut failing = false;
    loop {
        tokio::time::sleep(delay).await;
        // Read only once there is room for the item, so it is fresh when it goes out.
        let Ok(permit) = sender.reserve().await else {
            return;
        };
        match target.read(&backend).await {
            Ok(item) => {
                failing = false;
                backoff.reset();
                delay = interval;
                let versions = T::versions(&item);
                if versions != last && !is_stale(&last, &versions) {
                    last = versions;
                    permit.send(Ok(item));
                }
            }
            Err(err) if !err.is_retryable() => {
                permit.send(Err(err));
                return;
            }
            Err(err) => {
                if !failing {
                    failing = true;
                    permit.send(Err(err));
                }
                delay = backoff.next_delay();
            }
        }
    }
}
