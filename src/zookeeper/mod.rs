//! The ZooKeeper backend, on the `zookeeper-async` client (feature `zookeeper`).
//!
//! ```no_run
//! # async fn demo() -> kvkit::Result<()> {
//! use kvkit::{Kv, PutOptions};
//! use kvkit::zookeeper::{Zookeeper, ZookeeperConfig};
//!
//! let zk = Zookeeper::connect(ZookeeperConfig::new("127.0.0.1:2181").prefix("/myapp")).await?;
//! let kv = Kv::new(zk);
//! kv.put("config/a", "1", PutOptions::default()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Keys live below `{root}/kv` as znodes, one per key segment; a one-byte header in the
//! znode data tells a key with a value from an implicit parent (see `docs/zookeeper.md`
//! for the encoding and the round trips of every operation). `last_index` is the znode's
//! `mzxid`. Lock contenders live below `{root}/locks`, outside the key space.
//!
//! What the client crate lacks and how this backend copes: it has no multi-op (CAS uses
//! a versioned `setData`/`delete` after a read of the `mzxid`), no persistent watches
//! (one-shot watches are re-armed, and re-armed from scratch after every reconnect since
//! the crate does not re-register them), and it neither re-sends credentials after a
//! reconnect nor reports a new session (the backend replays the digest credentials
//! before letting any request through, and counts session expiries for its locks).
//! Nor can it send `multiRead`: `list` and `delete_tree` scans read through a small
//! wire client of their own (`multiread`, a second session) that can.

mod armed;
mod bootstrap;
mod codec;
mod config;
mod error;
mod lock;
mod multiread;
mod nodes;
mod session;
mod snapshot;
mod tree;
mod watch;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use zookeeper_async::{CreateMode, ZkError};

use crate::backend::{Backend, Capabilities, Cas, Expect, KvPair, LockOptions, PutOptions};
use crate::error::{Error, Result};
use crate::key::{Dir, Key};

pub use config::{DigestAuth, ZookeeperConfig, ZookeeperEncoding};
pub use lock::ZookeeperLock;
pub use watch::{ZookeeperWatch, ZookeeperWatchTree};

// Reached as `super::X` by the watch and lock modules.
pub(crate) use nodes::Node;

use error::contention;
use session::Inner;

const NAME: &str = "zookeeper";

/// Largest value accepted: the server's default `jute.maxbuffer` (1 MiB) less room for
/// the header, the path and the request's framing.
pub const MAX_VALUE_SIZE: usize = 1024 * 1024 - 8 * 1024;

/// Bounded retries of the optimistic loops (create vs. concurrent delete and the like).
const MAX_ATTEMPTS: usize = 16;

/// Requests in flight at once for one `list`/`delete_tree` (all pipelined on the session).
const PIPELINE_WINDOW: usize = 512;

/// Request counters, for tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestStats {
    /// Requests sent to the server.
    pub requests: u64,
    /// Sequential request waves of `list`/`delete_tree` traversals: each wave is one
    /// batch of pipelined requests that waits for the previous batch's answers.
    pub waves: u64,
}

/// The ZooKeeper backend; `Clone` shares the session.
#[derive(Clone)]
pub struct Zookeeper {
    inner: Arc<Inner>,
}

impl fmt::Debug for Zookeeper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Zookeeper")
            .field("root", &self.inner.root)
            .finish_non_exhaustive()
    }
}

impl Zookeeper {
    /// The request counters (requests sent, and sequential waves of traversals), the
    /// bulk reader's `sync`s and multiReads included.
    pub fn stats(&self) -> RequestStats {
        let inner = &self.inner;
        let reader = inner.reader.as_ref();
        RequestStats {
            requests: inner.requests.load(Ordering::Relaxed) + reader.map_or(0, |r| r.requests()),
            waves: inner.waves.load(Ordering::Relaxed) + reader.map_or(0, |r| r.waves()),
        }
    }

    /// How many watch registrations this handle holds (one per armed one-shot watch and
    /// stream or lock waiting on it); for tests and diagnostics. It follows what is
    /// watched now and does not grow with reconnects.
    pub fn watch_registrations(&self) -> usize {
        self.inner.watch_hub.registrations()
    }

    /// The root znode of kvkit's own znodes (with the raw encoding: the `.kvkit`
    /// sibling of the configured root, which holds the keys).
    pub fn root(&self) -> &str {
        &self.inner.root
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }
}

impl Backend for Zookeeper {
    type Watch = ZookeeperWatch;
    type WatchTree = ZookeeperWatchTree;
    type Lock = ZookeeperLock;

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: NAME,
            ttl_granularity: Duration::from_millis(1),
            min_ttl: Duration::from_millis(100),
            ttl_expiry_factor: 1,
            default_lock_ttl: Some(self.inner.session_timeout),
            cross_process_locks: true,
            watch_sees_every_write: false,
            max_value_size: MAX_VALUE_SIZE,
            persistent: true,
        }
    }

    async fn get(&self, key: &Key<'_>) -> Result<Option<KvPair>> {
        match self.read_node(key.as_str()).await? {
            Node::Value { pair, .. } => Ok(Some(pair)),
            Node::Empty {
                expired_mzxid: Some(version),
                ..
            } => {
                self.collect_expired(self.inner.key_path(key.as_str()), version);
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    async fn put(&self, key: &Key<'_>, value: Bytes, options: &PutOptions) -> Result<KvPair> {
        let data = self.inner.encoding.encode(&value, Self::ttl_ms(options))?;
        self.write_new_or_update(key, data, CreateMode::Persistent)
            .await
    }

    async fn delete(&self, key: &Key<'_>) -> Result<bool> {
        Ok(matches!(
            self.delete_node(key, None).await?,
            Cas::Applied(())
        ))
    }

    async fn compare_and_put(
        &self,
        key: &Key<'_>,
        value: Bytes,
        expect: Expect,
        options: &PutOptions,
    ) -> Result<Cas<KvPair>> {
        let inner = &self.inner;
        let path = inner.key_path(key.as_str());
        let data = self.inner.encoding.encode(&value, Self::ttl_ms(options))?;
        for _ in 0..MAX_ATTEMPTS {
            if expect == Expect::Absent {
                match inner
                    .create_with_parents(&path, data.clone(), CreateMode::Persistent)
                    .await
                {
                    Ok(stat) => {
                        return Ok(Cas::Applied(inner.written(key.as_str(), &data, &stat)));
                    }
                    Err(ZkError::NodeExists) => {}
                    Err(e) => return Err(self.map_err(e)),
                }
            }
            let version = match (self.read_node(key.as_str()).await?, expect) {
                (Node::Missing, Expect::Absent) => continue,
                (Node::Missing, Expect::Index(_)) => return Ok(Cas::Conflict { current: None }),
                (Node::Empty { .. }, Expect::Index(_)) => {
                    return Ok(Cas::Conflict { current: None });
                }
                (Node::Empty { stat, .. }, Expect::Absent) => stat.version,
                (Node::Value { pair, .. }, Expect::Absent) => {
                    return Ok(Cas::Conflict {
                        current: Some(pair.last_index),
                    });
                }
                (Node::Value { pair, stat, .. }, Expect::Index(expected)) => {
                    if pair.last_index != expected {
                        return Ok(Cas::Conflict {
                            current: Some(pair.last_index),
                        });
                    }
                    stat.version
                }
            };
            match inner
                .call(|| inner.zk.set_data(&path, data.clone(), Some(version)))
                .await
            {
                Ok(stat) => {
                    return Ok(Cas::Applied(inner.written(key.as_str(), &data, &stat)));
                }
                // Changed since the read: read again and decide on the new state.
                Err(ZkError::BadVersion | ZkError::NoNode) => continue,
                Err(e) => return Err(self.map_err(e)),
            }
        }
        Err(contention(key.as_str()))
    }

    async fn compare_and_delete(&self, key: &Key<'_>, index: u64) -> Result<Cas<()>> {
        self.delete_node(key, Some(index)).await
    }

    async fn scan_below(&self, dir: &Dir) -> Result<Vec<KvPair>> {
        tree::scan_below(self, dir).await
    }

    async fn delete_below(&self, dir: &Dir) -> Result<()> {
        tree::delete_below(self, dir).await
    }

    async fn delete_tree(&self, dir: &Dir) -> Result<()> {
        tree::delete_tree(self, dir).await
    }

    async fn exists(&self, key: &Key<'_>) -> Result<bool> {
        Ok(self.get(key).await?.is_some())
    }

    async fn watch(&self, key: &Key<'_>) -> Result<Self::Watch> {
        watch::watch_key(self.clone(), key.owned()).await
    }

    async fn watch_tree(&self, dir: &Dir) -> Result<Self::WatchTree> {
        watch::watch_tree(self.clone(), dir.clone()).await
    }

    async fn lock(&self, key: &Key<'_>, options: &LockOptions) -> Result<Self::Lock> {
        lock::lock(
            self.clone(),
            key.owned(),
            options.value.clone(),
            options.ttl,
            true,
        )
        .await
        .and_then(|held| {
            held.ok_or_else(|| Error::backend(NAME, "lock wait ended without the lock"))
        })
    }

    async fn try_lock(&self, key: &Key<'_>, options: &LockOptions) -> Result<Option<Self::Lock>> {
        lock::lock(
            self.clone(),
            key.owned(),
            options.value.clone(),
            options.ttl,
            false,
        )
        .await
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        // Held locks first, while requests still go out: their guards learn of the
        // loss, and their value and contender go now rather than with the session.
        self.inner
            .held_locks
            .release_all(Duration::from_secs(2))
            .await;
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.inner.shutdown.cancel();
        if let Some(reader) = &self.inner.reader {
            reader.close().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.zk.close()).await;
        self.inner.shared.ready.send_replace(false);
        Ok(())
    }
}
