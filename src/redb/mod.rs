//! The embedded, file-backed store on [redb](https://www.redb.org): kvkit's default.
//!
//! * Data survives close and reopen; `last_index` comes from a revision counter stored
//!   in the same transactions as the data, so it never goes back.
//! * TTLs are wall-clock deadlines stored with the data and in a deadline index, so a
//!   key that expired while the process was down is gone after reopen.
//! * Writes go to one writer thread per database. It takes every write that is waiting
//!   and commits them in one durable transaction (group commit): a write returns only
//!   after its data is synced, and concurrent writers share the sync. The async
//!   runtime's worker threads never wait for the disk on a write; short reads run
//!   inline on the caller's thread.
//! * Watches and locks work among all handles of one database in one process
//!   (opening the same path twice in a process returns the same shared store). They
//!   are process-local: a second process cannot open the file at all and gets
//!   [`Error::Backend`] saying the database is already open.
//! * Locks survive their holder's crash: every lock write is also recorded (key and
//!   index) in a lock table, in the same transaction. The file is process-exclusive,
//!   so a lock record found when the file is opened belongs to a process that died
//!   (or a store that was closed): its key is deleted at open if it still holds that
//!   lock write. `close` releases the locks of its store the same way.

mod config;
pub use config::RedbConfig;

use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use bytes::Bytes;
use tokio::sync::oneshot;

use crate::backend::{Backend, Capabilities, Cas, Expect, KvPair, LockOptions, PutOptions};
use crate::error::{Error, Result};
use crate::key::{Dir, Key};
use crate::notify::{LocalStore, LocalWatch, LocalWatchTree, Watchers};
use crate::recipe::CasLock;

/// Largest value accepted.
pub const MAX_VALUE_SIZE: usize = crate::memory::MAX_VALUE_SIZE;

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 1024;

const NAME: &str = "redb";

/// key -> [last_index: u64 LE][expires_at_ms: u64 LE, 0 = never][value]
const DATA: TableDefinition<&str, &[u8]> = TableDefinition::new("kvkit_data");
/// (expires_at_ms, key) -> (): the keys with a TTL, by deadline.
const EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("kvkit_expiry");
/// "revision" -> the last revision handed out.
const META: TableDefinition<&str, u64> = TableDefinition::new("kvkit_meta");
/// key -> last_index of the lock write holding it (see the module docs).
const LOCKS: TableDefinition<&str, u64> = TableDefinition::new("kvkit_locks");
const REVISION: &str = "revision";
const HEADER: usize = 16;

/// The embedded store. Cloning shares the database.
#[derive(Clone)]
pub struct Redb {
    inner: Arc<Inner>,
    /// Set on the handle a lock works through: its conditional writes record lock
    /// ownership (see the module docs).
    lock_records: bool,
}

impl std::fmt::Debug for Redb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redb")
            .field("path", &self.inner.path)
            .finish()
    }
}

struct Inner {
    path: PathBuf,
    db: Arc<Database>,
    writes: Mutex<Option<mpsc::Sender<Write>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    watchers: Arc<Watchers>,
    closed: AtomicBool,
}

/// A write request for the writer thread.
enum Write {
    Put {
        key: Key<'static>,
        value: Bytes,
        ttl: Option<Duration>,
        expect: Option<Expect>,
        /// A lock write: recorded in the lock table.
        lock: bool,
        reply: oneshot::Sender<Result<Cas<KvPair>>>,
    },
    Delete {
        key: Key<'static>,
        expect: Option<u64>,
        /// A lock release: drops the lock record.
        lock: bool,
        reply: oneshot::Sender<Result<Cas<bool>>>,
    },
    /// Deletes every key still held by a recorded lock (`close`).
    ReleaseLocks { reply: oneshot::Sender<Result<()>> },
    DeleteRange {
        dir: Dir,
        /// Delete `dir` itself too (`delete_tree`).
        with_dir: bool,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// Open stores of this process by absolute path, so a second `open` shares the first.
fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<Inner>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<PathBuf, Weak<Inner>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

fn storage(err: impl Into<::redb::Error>) -> Error {
    let err: ::redb::Error = err.into();
    match err {
        ::redb::Error::DatabaseAlreadyOpen => Error::backend(
            NAME,
            "the database file is already open in another process (redb stores are process-local)",
        ),
        other => Error::backend(NAME, other),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn encode(last_index: u64, expires_at: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + value.len());
    out.extend_from_slice(&last_index.to_le_bytes());
    out.extend_from_slice(&expires_at.to_le_bytes());
    out.extend_from_slice(value);
    out
}

/// A decoded entry: (last_index, expires_at_ms, value).
fn decode(raw: &[u8]) -> Result<(u64, u64, &[u8])> {
    if raw.len() < HEADER {
        return Err(Error::backend(
            NAME,
            "corrupt entry: shorter than its header",
        ));
    }
    let index = u64::from_le_bytes(raw[..8].try_into().expect("8 bytes"));
    let expires = u64::from_le_bytes(raw[8..16].try_into().expect("8 bytes"));
    Ok((index, expires, &raw[HEADER..]))
}

fn live(expires_at: u64, now: u64) -> bool {
    expires_at == 0 || expires_at > now
}

/// The live pair stored as `raw` at `key`, if not expired.
fn live_pair(key: &str, raw: &[u8], now: u64) -> Result<Option<KvPair>> {
    let (last_index, expires, value) = decode(raw)?;
    Ok(live(expires, now).then(|| KvPair {
        key: key.to_owned(),
        value: Bytes::copy_from_slice(value),
        last_index,
    }))
}

impl Redb {
    /// Opens (or creates) the database at `path`. Opening a path this process already
    /// has open returns the same shared store; a path open in another process is an
    /// error.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = std::path::absolute(path.as_ref()).map_err(|e| Error::backend(NAME, e))?;
        let mut open = registry().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(inner) = open.get(&path).and_then(Weak::upgrade)
            && !inner.closed.load(Ordering::Acquire)
        {
            return Ok(Redb {
                inner,
                lock_records: false,
            });
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
        Ok(Redb {
            inner,
            lock_records: false,
        })
    }

    /// The handle a lock works through: its conditional writes keep the lock table.
    fn locker(&self) -> Redb {
        Redb {
            inner: self.inner.clone(),
            lock_records: true,
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Hands a write to the writer thread and waits for its durable outcome.
    async fn submit<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Write) -> Result<T> {
        self.check_open()?;
        let (reply, outcome) = oneshot::channel();
        {
            let writes = self.inner.writes.lock().unwrap_or_else(|e| e.into_inner());
            let sender = writes.as_ref().ok_or(Error::Closed)?;
            sender.send(make(reply)).map_err(|_| Error::Closed)?;
        }
        outcome.await.map_err(|_| Error::Closed)?
    }
}

/// Creates the tables if needed, frees the locks left by a dead process (nobody else
/// can have the file open), and returns the stored revision.
fn init_tables(db: &Database) -> Result<u64> {
    let txn = db.begin_write().map_err(storage)?;
    let revision = {
        txn.open_table(DATA).map_err(storage)?;
        txn.open_table(EXPIRY).map_err(storage)?;
        let mut meta = txn.open_table(META).map_err(storage)?;
        let mut revision = meta
            .get(REVISION)
            .map_err(storage)?
            .map_or(0, |v| v.value());
        if !free_locks(&txn, &mut revision)?.is_empty() {
            meta.insert(REVISION, revision).map_err(storage)?;
        }
        revision
    };
    txn.commit().map_err(storage)?;
    Ok(revision)
}

/// Deletes every key that still holds the lock write its record names, clears the
/// lock table, and returns the deleted keys (raising `revision` once if any).
fn free_locks(txn: &WriteTransaction, revision: &mut u64) -> Result<Vec<String>> {
    let mut locks = txn.open_table(LOCKS).map_err(storage)?;
    let mut records = Vec::new();
    for entry in locks.iter().map_err(storage)? {
        let (key, index) = entry.map_err(storage)?;
        records.push((key.value().to_owned(), index.value()));
    }
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let mut data = txn.open_table(DATA).map_err(storage)?;
    let mut expiry = txn.open_table(EXPIRY).map_err(storage)?;
    let mut freed = Vec::new();
    for (key, index) in records {
        locks.remove(key.as_str()).map_err(storage)?;
        let held = match data.get(key.as_str()).map_err(storage)? {
            Some(raw) => {
                let (current, expires, _) = decode(raw.value())?;
                (current == index).then_some(expires)
            }
            None => None,
        };
        if let Some(expires) = held {
            if expires != 0 {
                expiry.remove((expires, key.as_str())).map_err(storage)?;
            }
            data.remove(key.as_str()).map_err(storage)?;
            freed.push(key);
        }
    }
    if !freed.is_empty() {
        *revision += 1;
    }
    Ok(freed)
}

impl Inner {
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

/// The writer thread's state.
struct Writer {
    db: Arc<Database>,
    watchers: Arc<Watchers>,
    revision: u64,
}

/// What a write produced, before it is sent back.
enum Outcome {
    Pair(Cas<KvPair>),
    Deleted(Cas<bool>),
    Done,
}

impl Writer {
    fn run(mut self, receiver: mpsc::Receiver<Write>) {
        let mut next_expiry = self.next_expiry().unwrap_or(None);
        loop {
            let first = match next_expiry {
                Some(at) => {
                    let wait = Duration::from_millis(at.saturating_sub(now_ms()));
                    match receiver.recv_timeout(wait) {
                        Ok(write) => Some(write),
                        Err(mpsc::RecvTimeoutError::Timeout) => None,
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
                None => match receiver.recv() {
                    Ok(write) => Some(write),
                    Err(_) => return,
                },
            };
            let mut batch: Vec<Write> = first.into_iter().collect();
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(write) => batch.push(write),
                    Err(_) => break,
                }
            }
            self.commit(batch);
            next_expiry = self.next_expiry().unwrap_or(None);
        }
    }

    fn next_expiry(&self) -> Result<Option<u64>> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(EXPIRY).map_err(storage)?;
        Ok(table.first().map_err(storage)?.map(|(k, _)| k.value().0))
    }

    /// Applies `batch` (and any due expiries) in one durable transaction, then answers
    /// every writer and wakes the watchers.
    fn commit(&mut self, batch: Vec<Write>) {
        let start_revision = self.revision;
        let mut changed: Vec<String> = Vec::new();
        let result = (|| -> Result<Vec<Outcome>> {
            let txn = self.db.begin_write().map_err(storage)?;
            let now = now_ms();
            changed.extend(self.expire(&txn, now)?);
            let mut outcomes = Vec::with_capacity(batch.len());
            for write in &batch {
                outcomes.push(self.apply(&txn, write, now, &mut changed)?);
            }
            txn.open_table(META)
                .map_err(storage)?
                .insert(REVISION, self.revision)
                .map_err(storage)?;
            txn.commit().map_err(storage)?;
            Ok(outcomes)
        })();
        match result {
            Ok(outcomes) => {
                for (write, outcome) in batch.into_iter().zip(outcomes) {
                    match (write, outcome) {
                        (Write::Put { reply, .. }, Outcome::Pair(cas)) => {
                            let _ = reply.send(Ok(cas));
                        }
                        (Write::Delete { reply, .. }, Outcome::Deleted(cas)) => {
                            let _ = reply.send(Ok(cas));
                        }
                        (Write::DeleteRange { reply, .. }, Outcome::Done)
                        | (Write::ReleaseLocks { reply }, Outcome::Done) => {
                            let _ = reply.send(Ok(()));
                        }
                        _ => unreachable!("apply answers each write with its own outcome"),
                    }
                }
                self.watchers.notify(changed.iter().map(String::as_str));
            }
            Err(err) => {
                // Nothing was committed: hand the revision counter back too.
                self.revision = start_revision;
                let message = err.to_string();
                for write in batch {
                    let fail = || Error::backend(NAME, message.clone());
                    match write {
                        Write::Put { reply, .. } => drop(reply.send(Err(fail()))),
                        Write::Delete { reply, .. } => drop(reply.send(Err(fail()))),
                        Write::DeleteRange { reply, .. } => drop(reply.send(Err(fail()))),
                        Write::ReleaseLocks { reply } => drop(reply.send(Err(fail()))),
                    }
                }
            }
        }
    }

    /// Deletes the entries whose deadline passed; returns their keys.
    fn expire(&mut self, txn: &WriteTransaction, now: u64) -> Result<Vec<String>> {
        let mut expiry = txn.open_table(EXPIRY).map_err(storage)?;
        let mut due = Vec::new();
        for entry in expiry
            .range::<(u64, &str)>((Bound::Unbounded, Bound::Included((now, "\u{10FFFF}"))))
            .map_err(storage)?
        {
            let (k, _) = entry.map_err(storage)?;
            let (at, key) = k.value();
            due.push((at, key.to_owned()));
        }
        if due.is_empty() {
            return Ok(due.into_iter().map(|(_, k)| k).collect());
        }
        let mut data = txn.open_table(DATA).map_err(storage)?;
        for (at, key) in &due {
            expiry.remove((*at, key.as_str())).map_err(storage)?;
            data.remove(key.as_str()).map_err(storage)?;
        }
        self.revision += 1;
        Ok(due.into_iter().map(|(_, k)| k).collect())
    }

    fn apply(
        &mut self,
        txn: &WriteTransaction,
        write: &Write,
        now: u64,
        changed: &mut Vec<String>,
    ) -> Result<Outcome> {
        let mut data = txn.open_table(DATA).map_err(storage)?;
        let mut expiry = txn.open_table(EXPIRY).map_err(storage)?;
        // The current live version of a key, and its deadline (to unindex it).
        let current =
            |data: &::redb::Table<&str, &[u8]>, key: &str| -> Result<Option<(u64, u64)>> {
                match data.get(key).map_err(storage)? {
                    Some(raw) => {
                        let (index, expires, _) = decode(raw.value())?;
                        Ok(Some((index, expires)))
                    }
                    None => Ok(None),
                }
            };
        match write {
            Write::Put {
                key,
                value,
                ttl,
                expect,
                lock,
                ..
            } => {
                let existing = current(&data, key.as_str())?;
                let live_index = existing.filter(|(_, exp)| live(*exp, now)).map(|(i, _)| i);
                let holds = match expect {
                    None => true,
                    Some(Expect::Absent) => live_index.is_none(),
                    Some(Expect::Index(index)) => live_index == Some(*index),
                };
                if !holds {
                    return Ok(Outcome::Pair(Cas::Conflict {
                        current: live_index,
                    }));
                }
                if let Some((_, old_expiry)) = existing.filter(|(_, exp)| *exp != 0) {
                    expiry.remove((old_expiry, key.as_str())).map_err(storage)?;
                }
                self.revision += 1;
                let expires_at = ttl.map_or(0, |ttl| {
                    now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
                        .max(1)
                });
                data.insert(
                    key.as_str(),
                    encode(self.revision, expires_at, value).as_slice(),
                )
                .map_err(storage)?;
                if expires_at != 0 {
                    expiry
                        .insert((expires_at, key.as_str()), ())
                        .map_err(storage)?;
                }
                if *lock {
                    txn.open_table(LOCKS)
                        .map_err(storage)?
                        .insert(key.as_str(), self.revision)
                        .map_err(storage)?;
                }
                changed.push(key.as_str().to_owned());
                Ok(Outcome::Pair(Cas::Applied(KvPair {
                    key: key.as_str().to_owned(),
                    value: value.clone(),
                    last_index: self.revision,
                })))
            }
            Write::Delete {
                key, expect, lock, ..
            } => {
                let existing = current(&data, key.as_str())?;
                let live_index = existing.filter(|(_, exp)| live(*exp, now)).map(|(i, _)| i);
                if let Some(index) = expect
                    && live_index != Some(*index)
                {
                    return Ok(Outcome::Deleted(Cas::Conflict {
                        current: live_index,
                    }));
                }
                if let Some((_, exp)) = existing {
                    if exp != 0 {
                        expiry.remove((exp, key.as_str())).map_err(storage)?;
                    }
                    data.remove(key.as_str()).map_err(storage)?;
                    self.revision += 1;
                    changed.push(key.as_str().to_owned());
                }
                if *lock {
                    txn.open_table(LOCKS)
                        .map_err(storage)?
                        .remove(key.as_str())
                        .map_err(storage)?;
                }
                Ok(Outcome::Deleted(Cas::Applied(live_index.is_some())))
            }
            Write::DeleteRange { dir, with_dir, .. } => {
                let prefix = dir.child_prefix();
                let mut doomed = Vec::new();
                if let Some(key) = dir.as_key().filter(|_| *with_dir)
                    && let Some((_, exp)) = current(&data, key.as_str())?
                {
                    doomed.push((key.into_string(), exp));
                }
                for entry in data
                    .range::<&str>((Bound::Included(prefix.as_str()), Bound::Unbounded))
                    .map_err(storage)?
                {
                    let (k, raw) = entry.map_err(storage)?;
                    if !k.value().starts_with(prefix.as_str()) {
                        break;
                    }
                    let (_, exp, _) = decode(raw.value())?;
                    doomed.push((k.value().to_owned(), exp));
                }
                for (key, exp) in &doomed {
                    if *exp != 0 {
                        expiry.remove((*exp, key.as_str())).map_err(storage)?;
                    }
                    data.remove(key.as_str()).map_err(storage)?;
                }
                if !doomed.is_empty() {
                    self.revision += 1;
                }
                changed.extend(doomed.into_iter().map(|(k, _)| k));
                Ok(Outcome::Done)
            }
            Write::ReleaseLocks { .. } => {
                drop((data, expiry));
                changed.extend(free_locks(txn, &mut self.revision)?);
                Ok(Outcome::Done)
            }
        }
    }
}

crate::notify::local_watch_streams!(Inner, "Redb", RedbWatch, RedbWatchTree);

impl Backend for Redb {
    type Watch = RedbWatch;
    type WatchTree = RedbWatchTree;
    type Lock = CasLock<Redb>;

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: NAME,
            ttl_granularity: Duration::from_millis(1),
            min_ttl: Duration::from_millis(1),
            ttl_expiry_factor: 1,
            default_lock_ttl: None,
            cross_process_locks: false,
            watch_sees_every_write: false,
            max_value_size: MAX_VALUE_SIZE,
            persistent: true,
        }
    }

    async fn get(&self, key: &Key<'_>) -> Result<Option<KvPair>> {
        self.check_open()?;
        self.inner.read_key(key.as_str())
    }

    async fn put(&self, key: &Key<'_>, value: Bytes, options: &PutOptions) -> Result<KvPair> {
        let ttl = options.ttl;
        let key = key.owned();
        match self
            .submit(|reply| Write::Put {
                key,
                value,
                ttl,
                expect: None,
                lock: false,
                reply,
            })
            .await?
        {
            Cas::Applied(pair) => Ok(pair),
            Cas::Conflict { .. } => unreachable!("an unconditional write cannot conflict"),
        }
    }

    async fn delete(&self, key: &Key<'_>) -> Result<bool> {
        let key = key.owned();
        match self
            .submit(|reply| Write::Delete {
                key,
                expect: None,
                lock: false,
                reply,
            })
            .await?
        {
            Cas::Applied(existed) => Ok(existed),
            Cas::Conflict { .. } => unreachable!("an unconditional delete cannot conflict"),
        }
    }

    async fn compare_and_put(
        &self,
        key: &Key<'_>,
        value: Bytes,
        expect: Expect,
        options: &PutOptions,
    ) -> Result<Cas<KvPair>> {
        let ttl = options.ttl;
        let key = key.owned();
        let lock = self.lock_records;
        self.submit(|reply| Write::Put {
            key,
            value,
            ttl,
            expect: Some(expect),
            lock,
            reply,
        })
        .await
    }

    async fn compare_and_delete(&self, key: &Key<'_>, index: u64) -> Result<Cas<()>> {
        let key = key.owned();
        let lock = self.lock_records;
        let outcome = self
            .submit(|reply| Write::Delete {
                key,
                expect: Some(index),
                lock,
                reply,
            })
            .await?;
        Ok(match outcome {
            Cas::Applied(_) => Cas::Applied(()),
            Cas::Conflict { current } => Cas::Conflict { current },
        })
    }

    async fn scan_below(&self, dir: &Dir) -> Result<Vec<KvPair>> {
        self.check_open()?;
        self.inner.read_tree(dir)
    }

    async fn list(&self, dir: &Dir) -> Result<Vec<KvPair>> {
        // redb ranges are sorted and `read_tree` is exact.
        self.scan_below(dir).await
    }

    async fn delete_below(&self, dir: &Dir) -> Result<()> {
        let dir = dir.clone();
        self.submit(|reply| Write::DeleteRange {
            dir,
            with_dir: false,
            reply,
        })
        .await
    }

    /// Native: `dir` and everything below it in one transaction.
    async fn delete_tree(&self, dir: &Dir) -> Result<()> {
        let dir = dir.clone();
        self.submit(|reply| Write::DeleteRange {
            dir,
            with_dir: true,
            reply,
        })
        .await
    }

    async fn watch(&self, key: &Key<'_>) -> Result<RedbWatch> {
        self.check_open()?;
        Ok(RedbWatch(LocalWatch::new(self.inner.clone(), key)))
    }

    async fn watch_tree(&self, dir: &Dir) -> Result<RedbWatchTree> {
        self.check_open()?;
        Ok(RedbWatchTree(LocalWatchTree::new(self.inner.clone(), dir)))
    }

    async fn lock(&self, key: &Key<'_>, options: &LockOptions) -> Result<CasLock<Redb>> {
        CasLock::lock(&self.locker(), key, options).await
    }

    async fn try_lock(
        &self,
        key: &Key<'_>,
        options: &LockOptions,
    ) -> Result<Option<CasLock<Redb>>> {
        CasLock::try_lock(&self.locker(), key, options).await
    }

    /// Finishes the queued writes, releases the locks held through this store (their
    /// guards see `lost()`), stops the writer thread and ends the watches. The file is
    /// released when the last handle is dropped.
    async fn close(&self) -> Result<()> {
        let sender = self
            .inner
            .writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.inner.closed.store(true, Ordering::Release);
        if let Some(sender) = sender {
            let (reply, released) = oneshot::channel();
            let queued = sender.send(Write::ReleaseLocks { reply }).is_ok();
            // Dropping the sender lets the writer drain what is queued and exit.
            drop(sender);
            if queued && let Ok(Err(err)) = released.await {
                tracing::warn!(%err, "redb: releasing the held locks on close failed; they are freed at the next open");
            }
        }
        self.inner.watchers.notify_all();
        Ok(())
    }
}
