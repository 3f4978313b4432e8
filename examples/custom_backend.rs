//! Writing your own backend: a small store over SQLite that implements only the
//! storage primitives, with watches from `kvkit::poll` and locks from `CasLock`, and
//! proves itself with one call to `check_backend`.
//!
//! Run it with `cargo run --example custom_backend --features testing`; the test suite
//! runs the same check (`tests/custom_backend.rs`).
//!
//! The store is one table `kv(key, value, last_index, expires_at)` and a store-wide
//! revision counter in `meta`, bumped in the same transaction as every write, so a
//! key's `last_index` never goes back (also across delete, re-create and restarts).
//! A TTL is an expiry time in milliseconds; reads hide rows past it and every write
//! transaction purges them. SQLite's calls block, so each runs on tokio's blocking pool
//! with the connection behind a mutex.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kvkit::poll::{PollWatch, PollWatchTree};
use kvkit::recipe::CasLock;
use kvkit::testing::model::ModelConfig;
use kvkit::testing::{CheckFailure, Phase, check_backend};
use kvkit::{
    Backend, Capabilities, Cas, Dir, Error, Expect, Key, Kv, KvPair, LockOptions, PutOptions,
    Result,
};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

/// How often a watch re-reads its key or directory.
const POLL_EVERY: Duration = Duration::from_millis(20);

const NAME: &str = "sqlite-example";

/// A kvkit backend over one SQLite database file. Clones share the connection.
#[derive(Clone)]
pub struct Sqlite {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Connection>,
    closed: AtomicBool,
    /// The clock of TTLs: wall-clock milliseconds, advanced by tokio's clock so that
    /// tests which pause tokio's time also move TTLs.
    epoch_ms: u64,
    epoch: tokio::time::Instant,
}

impl Sqlite {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let conn = Connection::open(path).map_err(sql_error)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(sql_error)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS kv (
                 key TEXT PRIMARY KEY NOT NULL,
                 value BLOB NOT NULL,
                 last_index INTEGER NOT NULL,
                 expires_at INTEGER
             );
             CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
             INSERT OR IGNORE INTO meta VALUES ('revision', 0);",
        )
        .map_err(sql_error)?;
        let epoch_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Ok(Sqlite {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                closed: AtomicBool::new(false),
                epoch_ms,
                epoch: tokio::time::Instant::now(),
            }),
        })
    }

    fn now_ms(&self) -> i64 {
        let since = self.inner.epoch.elapsed().as_millis();
        i64::try_from(u128::from(self.inner.epoch_ms) + since).unwrap_or(i64::MAX)
    }

    /// Runs `work` on the connection on tokio's blocking pool, with the current time.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection, i64) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let now = self.now_ms();
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.conn.lock().unwrap_or_else(|e| e.into_inner());
            work(&mut conn, now).map_err(sql_error)
        })
        .await
        .map_err(|e| Error::backend(NAME, e))?
    }
}

/// SQLite's "busy"/"locked" are transient; everything else is the store's own error.
fn sql_error(err: rusqlite::Error) -> Error {
    match err.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            Error::unavailable(NAME, err)
        }
        _ => Error::backend(NAME, err),
    }
}

fn expiry(now: i64, options: &PutOptions) -> Option<i64> {
    options.ttl.map(|ttl| {
        let ms = i64::try_from(ttl.as_millis().max(1)).unwrap_or(i64::MAX);
        now.saturating_add(ms)
    })
}

/// The key range `[low, high)` of everything strictly below `dir`; `None` for the
/// root. Keys compare as bytes, and `'0'` is the byte after `'/'`.
fn below(dir: &Dir) -> Option<(String, String)> {
    let prefix = dir.child_prefix();
    let base = prefix.strip_suffix('/')?;
    Some((prefix.clone(), format!("{base}0")))
}

/// A live row: `(value, last_index)`.
fn read_row(conn: &Connection, key: &str, now: i64) -> rusqlite::Result<Option<(Vec<u8>, u64)>> {
    conn.query_row(
        "SELECT value, last_index FROM kv
         WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
        params![key, now],
        |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)),
    )
    .optional()
}

/// Deletes expired rows and returns the next revision; call inside a write transaction.
fn begin_write(tx: &rusqlite::Transaction<'_>, now: i64) -> rusqlite::Result<u64> {
    tx.execute(
        "DELETE FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ?1",
        params![now],
    )?;
    tx.query_row(
        "UPDATE meta SET value = value + 1 WHERE name = 'revision' RETURNING value",
        [],
        |row| row.get::<_, i64>(0).map(|r| r as u64),
    )
}

fn write_row(
    tx: &rusqlite::Transaction<'_>,
    key: &str,
    value: &[u8],
    revision: u64,
    expires_at: Option<i64>,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO kv (key, value, last_index, expires_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(key) DO UPDATE SET
             value = excluded.value,
             last_index = excluded.last_index,
             expires_at = excluded.expires_at",
        params![key, value, revision as i64, expires_at],
    )?;
    Ok(())
}

fn pair(key: String, value: Vec<u8>, last_index: u64) -> KvPair {
    KvPair {
        key,
        value: Bytes::from(value),
        last_index,
    }
}

impl Backend for Sqlite {
    type Watch = PollWatch<Self>;
    type WatchTree = PollWatchTree<Self>;
    type Lock = CasLock<Self>;

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: NAME,
            ttl_granularity: Duration::from_millis(1),
            min_ttl: Duration::from_millis(1),
            ttl_expiry_factor: 1,
            default_lock_ttl: None,
            // TTLs are judged by this process's clock: keep locks to one process.
            cross_process_locks: false,
            // Polling coalesces writes made between two reads.
            watch_sees_every_write: false,
            max_value_size: 16 * 1024 * 1024,
            persistent: true,
        }
    }

    async fn get(&self, key: &Key<'_>) -> Result<Option<KvPair>> {
        let key = key.as_str().to_owned();
        self.run(move |conn, now| {
            Ok(read_row(conn, &key, now)?.map(|(value, index)| pair(key, value, index)))
        })
        .await
    }

    async fn put(&self, key: &Key<'_>, value: Bytes, options: &PutOptions) -> Result<KvPair> {
        let key = key.as_str().to_owned();
        let options = options.clone();
        self.run(move |conn, now| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let revision = begin_write(&tx, now)?;
            write_row(&tx, &key, &value, revision, expiry(now, &options))?;
            tx.commit()?;
            Ok(pair(key, value.to_vec(), revision))
        })
        .await
    }

    async fn delete(&self, key: &Key<'_>) -> Result<bool> {
        let key = key.as_str().to_owned();
        self.run(move |conn, now| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            begin_write(&tx, now)?;
            let deleted = tx.execute("DELETE FROM kv WHERE key = ?1", params![key])?;
            tx.commit()?;
            Ok(deleted > 0)
        })
        .await
    }

    async fn compare_and_put(
        &self,
        key: &Key<'_>,
        value: Bytes,
        expect: Expect,
        options: &PutOptions,
    ) -> Result<Cas<KvPair>> {
        let key = key.as_str().to_owned();
        let options = options.clone();
        self.run(move |conn, now| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current = read_row(&tx, &key, now)?.map(|(_, index)| index);
            let holds = match expect {
                Expect::Absent => current.is_none(),
                Expect::Index(index) => current == Some(index),
            };
            if !holds {
                return Ok(Cas::Conflict { current });
            }
            let revision = begin_write(&tx, now)?;
            write_row(&tx, &key, &value, revision, expiry(now, &options))?;
            tx.commit()?;
            Ok(Cas::Applied(pair(key, value.to_vec(), revision)))
        })
        .await
    }

    async fn compare_and_delete(&self, key: &Key<'_>, index: u64) -> Result<Cas<()>> {
        let key = key.as_str().to_owned();
        self.run(move |conn, now| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current = read_row(&tx, &key, now)?.map(|(_, index)| index);
            if current != Some(index) {
                return Ok(Cas::Conflict { current });
            }
            begin_write(&tx, now)?;
            tx.execute("DELETE FROM kv WHERE key = ?1", params![key])?;
            tx.commit()?;
            Ok(Cas::Applied(()))
        })
        .await
    }

    async fn scan_below(&self, dir: &Dir) -> Result<Vec<KvPair>> {
        let bounds = below(dir);
        self.run(move |conn, now| {
            let (low, high) = bounds.unwrap_or_default();
            let mut statement = conn.prepare_cached(
                "SELECT key, value, last_index FROM kv
                 WHERE (expires_at IS NULL OR expires_at > ?1)
                   AND (?2 = '' OR (key >= ?2 AND key < ?3))",
            )?;
            let rows = statement.query_map(params![now, low, high], |row| {
                Ok(pair(row.get(0)?, row.get(1)?, row.get::<_, i64>(2)? as u64))
            })?;
            rows.collect()
        })
        .await
    }

    async fn delete_below(&self, dir: &Dir) -> Result<()> {
        let bounds = below(dir);
        self.run(move |conn, now| {
            let (low, high) = bounds.unwrap_or_default();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            begin_write(&tx, now)?;
            tx.execute(
                "DELETE FROM kv WHERE ?1 = '' OR (key >= ?1 AND key < ?2)",
                params![low, high],
            )?;
            tx.commit()
        })
        .await
    }

    // Everything below comes from kvkit's generic adapters.

    async fn watch(&self, key: &Key<'_>) -> Result<Self::Watch> {
        kvkit::poll::watch(self, key, POLL_EVERY).await
    }

    async fn watch_tree(&self, dir: &Dir) -> Result<Self::WatchTree> {
        kvkit::poll::watch_tree(self, dir, POLL_EVERY).await
    }

    async fn lock(&self, key: &Key<'_>, options: &LockOptions) -> Result<Self::Lock> {
        CasLock::lock(self, key, options).await
    }

    async fn try_lock(&self, key: &Key<'_>, options: &LockOptions) -> Result<Option<Self::Lock>> {
        CasLock::try_lock(self, key, options).await
    }

    async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        Ok(())
    }
}

/// Opens a store in `dir` and checks it with kvkit's conformance suite and model
/// harness: the one call a backend author makes.
pub async fn check(dir: &Path) -> std::result::Result<(), CheckFailure> {
    let store = Sqlite::open(dir.join("kv.sqlite3")).map_err(|e| {
        CheckFailure::new(Phase::Setup, format!("cannot open the SQLite store: {e}"))
    })?;
    let kv = Kv::new(store);
    check_backend(&kv, ModelConfig::default()).await
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    match check(dir.path()).await {
        Ok(()) => println!("the SQLite backend passes check_backend"),
        Err(failure) => {
            eprintln!("the SQLite backend fails check_backend:\n{failure}");
            std::process::exit(1);
        }
    }
}
