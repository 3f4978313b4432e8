//! The one-shot ZooKeeper watches a handle has armed, and who waits on each: the
//! table the connection's watcher dispatches to, shared by watch streams and lock
//! waiters.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;
use zookeeper_async::{WatchedEvent, WatchedEventType};

use super::Zookeeper;

/// The kind of a one-shot watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// A data (or exists) watch.
    Data,
    /// A child watch.
    Child,
}

/// A watch that fired: the znode and the kind of watch.
pub(crate) type Fired = (String, Kind);

/// Every one-shot watch this handle asked the server for, by (znode, kind), with who
/// waits on it. Watches are requested with the client crate's plain `watch` flag, so
/// their events reach the connection's default watcher, which hands them here: the
/// crate itself keeps no per-watch callback, which it could never drop (it has no way
/// to remove a watch, and after a reconnect the server has forgotten the watch while
/// the crate would keep its callback until the path changes). Entries leave when their
/// watch fires or their waiter forgets them, so the table stays as large as what is
/// watched right now, whatever the number of reconnects.
#[derive(Default)]
pub(crate) struct WatchHub {
    next_waiter: AtomicU64,
    waiting: Mutex<HashMap<Fired, HashMap<u64, mpsc::UnboundedSender<Fired>>>>,
}

impl WatchHub {
    fn waiting(
        &self,
    ) -> MutexGuard<'_, HashMap<Fired, HashMap<u64, mpsc::UnboundedSender<Fired>>>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn register(&self, waiter: u64, fired: Fired, tx: mpsc::UnboundedSender<Fired>) {
        self.waiting().entry(fired).or_default().insert(waiter, tx);
    }

    fn unregister(&self, waiter: u64, fired: &Fired) {
        let mut waiting = self.waiting();
        if let Some(waiters) = waiting.get_mut(fired) {
            waiters.remove(&waiter);
            if waiters.is_empty() {
                waiting.remove(fired);
            }
        }
    }

    /// Hands a watch event of the connection to everyone waiting on it (a watch fires
    /// once: they are forgotten).
    pub(crate) fn dispatch(&self, event: WatchedEvent) {
        let Some(path) = event.path else { return };
        let kinds: &[Kind] = match event.event_type {
            WatchedEventType::NodeCreated | WatchedEventType::NodeDataChanged => &[Kind::Data],
            WatchedEventType::NodeChildrenChanged => &[Kind::Child],
            WatchedEventType::NodeDeleted => &[Kind::Data, Kind::Child],
            _ => &[],
        };
        let mut woken = Vec::new();
        {
            let mut waiting = self.waiting();
            for kind in kinds {
                if let Some(waiters) = waiting.remove(&(path.clone(), *kind)) {
                    woken.extend(waiters.into_values().map(|tx| (tx, *kind)));
                }
            }
        }
        for (tx, kind) in woken {
            let _ = tx.send((path.clone(), kind));
        }
    }

    /// How many (watch, waiter) registrations are held.
    pub(crate) fn registrations(&self) -> usize {
        self.waiting().values().map(HashMap::len).sum()
    }
}

/// The watches one waiter (a stream, a lock) has armed on the server.
pub(crate) struct Arm {
    hub: Arc<WatchHub>,
    id: u64,
    tx: mpsc::UnboundedSender<Fired>,
    armed: Mutex<HashSet<Fired>>,
}

impl Arm {
    pub(crate) fn new(backend: &Zookeeper) -> (Self, mpsc::UnboundedReceiver<Fired>) {
        let hub = backend.inner().watch_hub();
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arm {
                id: hub.next_waiter.fetch_add(1, Ordering::Relaxed),
                hub,
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

    /// True (marking it armed) when no such watch is armed yet: the caller then sends
    /// its read with the watch flag set.
    pub(crate) fn claim(&self, path: &str, kind: Kind) -> bool {
        let fired = (path.to_owned(), kind);
        if !self.armed().insert(fired.clone()) {
            return false;
        }
        self.hub.register(self.id, fired, self.tx.clone());
        true
    }

    /// Forgets an armed watch (it fired, or its request failed).
    pub(crate) fn unmark(&self, path: &str, kind: Kind) {
        let fired = (path.to_owned(), kind);
        self.armed().remove(&fired);
        self.hub.unregister(self.id, &fired);
    }

    /// Forgets every armed watch (a new connection has none).
    pub(crate) fn clear(&self) {
        let armed: Vec<Fired> = self.armed().drain().collect();
        for fired in &armed {
            self.hub.unregister(self.id, fired);
        }
    }
}

impl Drop for Arm {
    fn drop(&mut self) {
        self.clear();
    }
}
