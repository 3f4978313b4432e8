//! The local (in-process) watch of memory and redb: change notification and the
//! watch streams built on it.
//!
//! A watcher owns a [`WatcherFlag`]: a dirty flag and a waker. A write marks the flags whose
//! filter matches the written key and wakes them; the stream then re-reads the current
//! state and yields it if it differs from what it yielded last. Intermediate writes
//! made between two polls are coalesced, so a slow consumer costs no memory, and the
//! last item always converges to the current state. Dropping a stream drops its flag;
//! the registry forgets dead flags on the next notification.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use futures::Stream;
use futures::task::AtomicWaker;

use crate::backend::KvPair;
use crate::error::{Error, Result};
use crate::key::{Dir, Key};

/// What a watcher wants to hear about.
enum Filter {
    Key(String),
    Tree(Dir),
}

impl Filter {
    fn matches(&self, key: &str) -> bool {
        match self {
            Filter::Key(k) => k == key,
            Filter::Tree(dir) => dir.contains(key),
        }
    }
}

/// One watcher's flag and waker.
pub(crate) struct WatcherFlag {
    filter: Filter,
    dirty: AtomicBool,
    waker: AtomicWaker,
}

impl WatcherFlag {
    fn mark(&self) {
        self.dirty.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready once something changed since the last ready poll.
    fn poll_changed(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.dirty.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.dirty.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// The registry of live watchers of one store.
#[derive(Default)]
pub(crate) struct Watchers {
    flags: Mutex<Vec<Weak<WatcherFlag>>>,
}

impl Watchers {
    fn register(&self, filter: Filter) -> Arc<WatcherFlag> {
        let flag = Arc::new(WatcherFlag {
            filter,
            dirty: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        let mut flags = self.flags.lock().unwrap_or_else(|e| e.into_inner());
        flags.retain(|w| w.strong_count() > 0);
        flags.push(Arc::downgrade(&flag));
        flag
    }

    /// Wakes every watcher interested in one of `keys`.
    pub(crate) fn notify<'a>(&self, keys: impl IntoIterator<Item = &'a str> + Clone) {
        let mut flags = self.flags.lock().unwrap_or_else(|e| e.into_inner());
        flags.retain(|weak| match weak.upgrade() {
            Some(flag) => {
                if keys.clone().into_iter().any(|k| flag.filter.matches(k)) {
                    flag.mark();
                }
                true
            }
            None => false,
        });
    }

    /// Wakes every watcher (used on close).
    pub(crate) fn notify_all(&self) {
        let flags = self.flags.lock().unwrap_or_else(|e| e.into_inner());
        for slot in flags.iter().filter_map(Weak::upgrade) {
            slot.mark();
        }
    }

    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        let flags = self.flags.lock().unwrap_or_else(|e| e.into_inner());
        flags.iter().filter(|w| w.strong_count() > 0).count()
    }
}

/// A store whose current state can be read synchronously, cheaply, in process.
pub(crate) trait LocalStore: Send + Sync + 'static {
    /// The current pair at `key`.
    fn read_key(&self, key: &str) -> Result<Option<KvPair>>;
    /// The current sorted subtree below `dir`.
    fn read_tree(&self, dir: &Dir) -> Result<Vec<KvPair>>;
    /// The store's watcher registry.
    fn watchers(&self) -> &Watchers;
    /// True once the store was closed.
    fn is_closed(&self) -> bool;
}

/// Shared state machine of both local streams.
struct Local<S, T> {
    store: Arc<S>,
    slot: Arc<WatcherFlag>,
    started: bool,
    done: bool,
    last: Option<T>,
}

impl<S: LocalStore, T: PartialEq> Local<S, T> {
    fn new(store: Arc<S>, filter: Filter) -> Self {
        let slot = store.watchers().register(filter);
        Local {
            store,
            slot,
            started: false,
            done: false,
            last: None,
        }
    }

    /// Yields `read()`'s result whenever its fingerprint differs from the last yield.
    fn poll_next<V>(
        &mut self,
        cx: &mut Context<'_>,
        read: impl Fn(&S) -> Result<V>,
        fingerprint: impl Fn(&V) -> T,
    ) -> Poll<Option<Result<V>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            if self.started && self.slot.poll_changed(cx).is_pending() {
                return Poll::Pending;
            }
            self.started = true;
            if self.store.is_closed() {
                self.done = true;
                return Poll::Ready(Some(Err(Error::Closed)));
            }
            match read(&self.store) {
                Ok(value) => {
                    let print = fingerprint(&value);
                    if self.last.as_ref() != Some(&print) {
                        self.last = Some(print);
                        return Poll::Ready(Some(Ok(value)));
                    }
                }
                Err(err) => return Poll::Ready(Some(Err(err))),
            }
        }
    }
}

/// The watch stream of a local store: see [`crate::Kv::watch`].
pub(crate) struct LocalWatch<S> {
    inner: Local<S, Option<u64>>,
    key: String,
}

/// The tree watch stream of a local store: see [`crate::Kv::watch_tree`].
pub(crate) struct LocalWatchTree<S> {
    inner: Local<S, Vec<(String, u64)>>,
    dir: Dir,
}

impl<S: LocalStore> LocalWatch<S> {
    pub(crate) fn new(store: Arc<S>, key: &Key<'_>) -> Self {
        LocalWatch {
            inner: Local::new(store, Filter::Key(key.as_str().to_owned())),
            key: key.as_str().to_owned(),
        }
    }
}

impl<S: LocalStore> LocalWatchTree<S> {
    pub(crate) fn new(store: Arc<S>, dir: &Dir) -> Self {
        LocalWatchTree {
            inner: Local::new(store, Filter::Tree(dir.clone())),
            dir: dir.clone(),
        }
    }
}

impl<S: LocalStore> Stream for LocalWatch<S> {
    type Item = Result<Option<KvPair>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let key = &this.key;
        this.inner.poll_next(
            cx,
            |store| store.read_key(key),
            |pair| pair.as_ref().map(|p| p.last_index),
        )
    }
}

impl<S: LocalStore> Stream for LocalWatchTree<S> {
    type Item = Result<Vec<KvPair>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let dir = &this.dir;
        this.inner.poll_next(
            cx,
            |store| store.read_tree(dir),
            |pairs| {
                pairs
                    .iter()
                    .map(|p| (p.key.clone(), p.last_index))
                    .collect()
            },
        )
    }
}

impl<S> std::fmt::Debug for LocalWatch<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalWatch")
            .field("key", &self.key)
            .finish()
    }
}

impl<S> std::fmt::Debug for LocalWatchTree<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalWatchTree")
            .field("dir", &self.dir)
            .finish()
    }
}

/// Declares a backend's public watch stream types as thin wrappers over
/// [`LocalWatch`] and [`LocalWatchTree`] of its private store type.
macro_rules! local_watch_streams {
    ($store:ty, $backend:literal, $watch:ident, $watch_tree:ident) => {
        #[doc = concat!("The watch stream of [`", $backend, "`].")]
        #[derive(Debug)]
        pub struct $watch($crate::local_watch::LocalWatch<$store>);

        #[doc = concat!("The tree watch stream of [`", $backend, "`].")]
        #[derive(Debug)]
        pub struct $watch_tree($crate::local_watch::LocalWatchTree<$store>);

        impl futures::Stream for $watch {
            type Item = $crate::Result<Option<$crate::KvPair>>;

            fn poll_next(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Self::Item>> {
                std::pin::Pin::new(&mut self.0).poll_next(cx)
            }
        }

        impl futures::Stream for $watch_tree {
            type Item = $crate::Result<Vec<$crate::KvPair>>;

            fn poll_next(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Self::Item>> {
                std::pin::Pin::new(&mut self.0).poll_next(cx)
            }
        }
    };
}
pub(crate) use local_watch_streams;
