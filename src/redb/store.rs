//! The shared state of one open redb database: the file, the writer thread's queue,
//! the watchers, the registry that makes a second `open` of a path in this process share
//! the first, and the reads that run on the caller's thread.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use ::redb::{Database, ReadableDatabase};

use super::NAME;
use super::codec::{live_pair, now_ms};
use super::error::storage;
use super::tables::{DATA, init_tables};
use super::writer::{Write, Writer};
use crate::backend::KvPair;
use crate::error::{Error, Result};
use crate::key::Dir;
use crate::local_watch::{LocalStore, Watchers};

/// One open database, shared by every handle of its path.
pub(super) struct Inner {
    pub(super) path: PathBuf,
    pub(super) db: Arc<Database>,
    pub(super) writes: Mutex<Option<mpsc::Sender<Write>>>,
    pub(super) writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub(super) watchers: Arc<Watchers>,
    pub(super) closed: AtomicBool,
}

/// Open stores of this process by absolute path, so a second `open` shares the first.
fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<Inner>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<PathBuf, Weak<Inner>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

impl Inner {
    /// The open database at `path`: the one this process already has open there, or
    /// the file opened (or created) now with its tables and its writer thread.
    pub(super) fn open_shared(path: &Path) -> Result<Arc<Inner>> {
        let path = std::path::absolute(path).map_err(|e| Error::backend(NAME, e))?;
        let mut open = registry().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(inner) = open.get(&path).and_then(Weak::upgrade)
            && !inner.closed.load(Ordering::Acquire)
        {
            return Ok(inner);
        }
        let db = Arc::new(Database::create(&path).map_err(storage)?);
        let revision = init_tables(&db)?;
        let watchers = Arc::new(Watchers::default());
        let (sender, receiver) = mpsc::channel();
        let writer = Writer {
            db: db.clone(),
            watchers: watchers.clone(),
            revision,
        };
        let writer = std::thread::Builder::new()
            .name("kvkit-redb-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| Error::backend(NAME, e))?;
        let inner = Arc::new(Inner {
            path: path.clone(),
            db,
            writes: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(writer)),
            watchers,
            closed: AtomicBool::new(false),
        });
        open.retain(|_, weak| weak.strong_count() > 0);
        open.insert(path, Arc::downgrade(&inner));
        Ok(inner)
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&::redb::ReadOnlyTable<&'static str, &'static [u8]>) -> Result<T>,
    ) -> Result<T> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(DATA).map_err(storage)?;
        f(&table)
    }
}

impl Inner {
    /// Stops the writer after it has committed what is queued, and waits for it, so
    /// the file can be opened again as soon as the last handle is gone.
    fn stop_writer(&self) {
        self.writes.lock().unwrap_or_else(|e| e.into_inner()).take();
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(writer) = writer {
            let _ = writer.join();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_writer();
    }
}

impl LocalStore for Inner {
    fn read_key(&self, key: &str) -> Result<Option<KvPair>> {
        self.read(|table| match table.get(key).map_err(storage)? {
            Some(raw) => live_pair(key, raw.value(), now_ms()),
            None => Ok(None),
        })
    }

    fn read_tree(&self, dir: &Dir) -> Result<Vec<KvPair>> {
        let prefix = dir.child_prefix();
        let now = now_ms();
        self.read(|table| {
            let mut out = Vec::new();
            let range = table
                .range::<&str>((Bound::Included(prefix.as_str()), Bound::Unbounded))
                .map_err(storage)?;
            for entry in range {
                let (key, raw) = entry.map_err(storage)?;
                let key = key.value();
                if !key.starts_with(prefix.as_str()) {
                    break;
                }
                if let Some(pair) = live_pair(key, raw.value(), now)? {
                    out.push(pair);
                }
            }
            Ok(out)
        })
    }

    fn watchers(&self) -> &Watchers {
        &self.watchers
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}
