//! The Consul backend, over Consul's HTTP API (feature `consul`).
//!
//! ```no_run
//! # async fn demo() -> kvkit::Result<()> {
//! use kvkit::{Kv, PutOptions};
//! use kvkit::consul::{Consul, ConsulConfig};
//!
//! let kv = Kv::new(Consul::connect(ConsulConfig::new("127.0.0.1:8500").prefix("myapp")).await?);
//! kv.put("config/mode", "fast", PutOptions::default()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Round trips per operation (see `docs/consul.md`):
//!
//! | operation | round trips |
//! | --- | --- |
//! | get, exists, list | 1 GET (`list`: `?recurse` on `dir/`) |
//! | put | 1 txn `[delete, set]` (the delete drops any session a TTL put had attached) |
//! | put with TTL | 2: renew or create the shared TTL session, then txn `[delete, lock]` |
//! | delete | 1 txn `[get, delete]` (the `get` tells a missing key apart) |
//! | atomic_put create-only | 1 txn `[check-not-exists, set]` |
//! | atomic_put CAS | 1 txn `[get, check-index, delete, set]` |
//! | atomic_delete | 1 txn `[get, check-index, delete]` |
//! | delete_tree | 2: `GET dir/?keys`, txn `[delete dir, delete k...]` (+1 txn per 64 more keys) |
//! | lock / try_lock | 2 (create session, txn `lock`), + blocking queries while waiting |
//! | unlock | 2 (txn `[check-session, delete]`, destroy session) |
//!
//! TTL puts attach the key to a session with `Behavior=delete` and that TTL. Keys put
//! with the same TTL within one second share a session (renewed before each reuse);
//! the session is never renewed after that, so Consul deletes it with its keys after
//! between 1 and 2 times the TTL. No session leaks: each one ends by itself.

mod agent;
mod client;
mod config;
mod error;
mod lock;
mod sessions;
mod tree;
mod txn;
mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::json;
use tokio_util::sync::CancellationToken;

pub use self::config::{ConsulConfig, Scheme};
pub use self::lock::ConsulLock;
pub use self::watch::{ConsulWatch, ConsulWatchTree};

// Reached as `super::Inner` and `super::Txn` by the watch and lock modules.
pub(crate) use self::agent::Inner;
pub(crate) use self::txn::Txn;

use self::client::{Client, NAME};
use self::txn::{failed_at, reported_index, unexpected};
use crate::backend::{Backend, Capabilities, Cas, Expect, KvPair, LockOptions, PutOptions};
use crate::error::{Error, Result};
use crate::key::{Dir, Key};

/// Consul's limit on a value.
pub const MAX_VALUE_SIZE: usize = 512 * 1024;

/// A Consul agent, reached over its HTTP API. A cheap handle: clones share the
/// connection pool and background work.
#[derive(Clone, Debug)]
pub struct Consul {
    inner: Arc<Inner>,
}

impl Consul {
    /// Connects to Consul: builds the connection pool and checks that the agent
    /// answers (`/v1/status/leader`). Needs a Tokio runtime.
    pub async fn connect(config: ConsulConfig) -> Result<Self> {
        let client = Client::new(&config)?;
        let prefix = Dir::new(&config.prefix)?.child_prefix();
        let consul = Consul {
            inner: Arc::new(Inner {
                client,
                config,
                prefix,
                ttl_sessions: Mutex::new(HashMap::new()),
                closed: CancellationToken::new(),
                lock_sessions: Mutex::new(HashMap::new()),
            }),
        };
        // Try each address once: the client moves on after a connection failure.
        let mut attempts = consul.inner.config.endpoints.len();
        loop {
            attempts -= 1;
            let ping = consul
                .inner
                .request(Method::GET, "/v1/status/leader", Bytes::new())
                .await
                .and_then(|resp| resp.expect(&[StatusCode::OK]));
            match ping {
                Ok(_) => return Ok(consul),
                Err(e) if e.is_retryable() && attempts > 0 => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &ConsulConfig {
        &self.inner.config
    }
}

impl Backend for Consul {
    type Watch = ConsulWatch;
    type WatchTree = ConsulWatchTree;
    type Lock = ConsulLock;

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: NAME,
            ttl_granularity: Duration::from_secs(1),
            min_ttl: self.inner.config.min_session_ttl,
            ttl_expiry_factor: 2,
            default_lock_ttl: Some(
                self.inner
                    .config
                    .lock_ttl
                    .max(self.inner.config.min_session_ttl),
            ),
            cross_process_locks: true,
            watch_sees_every_write: false,
            max_value_size: MAX_VALUE_SIZE,
            persistent: true,
        }
    }

    async fn get(&self, key: &Key<'_>) -> Result<Option<KvPair>> {
        let remote = self.inner.remote(key.as_str());
        let (entry, _) = self.inner.get_entry(&remote, 0).await?;
        match entry {
            Some(e) => self.inner.pair(&e),
            None => Ok(None),
        }
    }

    async fn put(&self, key: &Key<'_>, value: Bytes, options: &PutOptions) -> Result<KvPair> {
        let inner = &self.inner;
        let remote = inner.remote(key.as_str());
        let session = inner.session_for(options).await?;
        match inner
            .txn(inner.write_ops(&remote, &value, session.as_deref()))
            .await?
        {
            Txn::Applied(entries) => inner.written(&entries, &remote, value),
            Txn::RolledBack(errors) => Err(unexpected(&errors)),
        }
    }

    async fn delete(&self, key: &Key<'_>) -> Result<bool> {
        let remote = self.inner.remote(key.as_str());
        let ops = vec![
            json!({"Verb": "get", "Key": remote}),
            json!({"Verb": "delete", "Key": remote}),
        ];
        match self.inner.txn(ops).await? {
            Txn::Applied(_) => Ok(true),
            Txn::RolledBack(errors) if failed_at(&errors, 0) => Ok(false),
            Txn::RolledBack(errors) => Err(unexpected(&errors)),
        }
    }

    async fn compare_and_put(
        &self,
        key: &Key<'_>,
        value: Bytes,
        expect: Expect,
        options: &PutOptions,
    ) -> Result<Cas<KvPair>> {
        let inner = &self.inner;
        let remote = inner.remote(key.as_str());
        let session = inner.session_for(options).await?;
        let mut ops = match expect {
            Expect::Absent => vec![json!({"Verb": "check-not-exists", "Key": remote})],
            Expect::Index(n) => vec![
                json!({"Verb": "get", "Key": remote}),
                json!({"Verb": "check-index", "Key": remote, "Index": n}),
            ],
        };
        ops.extend(inner.write_ops(&remote, &value, session.as_deref()));
        match inner.txn(ops).await? {
            Txn::Applied(entries) => Ok(Cas::Applied(inner.written(&entries, &remote, value)?)),
            Txn::RolledBack(errors) => match expect {
                // Consul does not report the existing key's index here: 0 stands for
                // "exists, index unknown".
                Expect::Absent if failed_at(&errors, 0) => Ok(Cas::Conflict { current: Some(0) }),
                Expect::Index(_) if failed_at(&errors, 0) => Ok(Cas::Conflict { current: None }),
                Expect::Index(_) if failed_at(&errors, 1) => Ok(Cas::Conflict {
                    current: Some(reported_index(&errors, 1)),
                }),
                _ => Err(unexpected(&errors)),
            },
        }
    }

    async fn compare_and_delete(&self, key: &Key<'_>, index: u64) -> Result<Cas<()>> {
        let remote = self.inner.remote(key.as_str());
        let ops = vec![
            json!({"Verb": "get", "Key": remote}),
            json!({"Verb": "check-index", "Key": remote, "Index": index}),
            json!({"Verb": "delete", "Key": remote}),
        ];
        match self.inner.txn(ops).await? {
            Txn::Applied(_) => Ok(Cas::Applied(())),
            Txn::RolledBack(errors) if failed_at(&errors, 0) => Ok(Cas::Conflict { current: None }),
            Txn::RolledBack(errors) if failed_at(&errors, 1) => Ok(Cas::Conflict {
                current: Some(reported_index(&errors, 1)),
            }),
            Txn::RolledBack(errors) => Err(unexpected(&errors)),
        }
    }

    async fn scan_below(&self, dir: &Dir) -> Result<Vec<KvPair>> {
        tree::scan_below(&self.inner, dir).await
    }

    /// Keeps keys other tools wrote in a form kvkit never writes; see
    /// `Inner::delete_own_keys_below`.
    async fn delete_below(&self, dir: &Dir) -> Result<()> {
        self.inner.delete_own_keys_below(dir, false).await
    }

    /// `GET dir/?keys`, then one txn deleting `dir` and the kvkit keys read (63 keys
    /// per txn); foreign keys below `dir` are kept.
    async fn delete_tree(&self, dir: &Dir) -> Result<()> {
        self.inner.delete_own_keys_below(dir, true).await
    }

    async fn watch(&self, key: &Key<'_>) -> Result<Self::Watch> {
        if self.inner.closed.is_cancelled() {
            return Err(Error::Closed);
        }
        Ok(watch::watch_key(
            self.inner.clone(),
            self.inner.remote(key.as_str()),
        ))
    }

    async fn watch_tree(&self, dir: &Dir) -> Result<Self::WatchTree> {
        if self.inner.closed.is_cancelled() {
            return Err(Error::Closed);
        }
        Ok(watch::watch_tree(self.inner.clone(), dir.clone()))
    }

    async fn lock(&self, key: &Key<'_>, options: &LockOptions) -> Result<Self::Lock> {
        lock::lock(self.inner.clone(), key, options, true)
            .await?
            .ok_or_else(|| Error::backend(NAME, "lock wait ended without the lock"))
    }

    async fn try_lock(&self, key: &Key<'_>, options: &LockOptions) -> Result<Option<Self::Lock>> {
        lock::lock(self.inner.clone(), key, options, false).await
    }

    /// Releases every lock held through this handle (deletes its key while the
    /// session still holds it, destroys the session; best effort: a session that
    /// cannot be destroyed expires with its TTL) and fires its guard's `lost()`, then
    /// ends every watch with `Err(Closed)`. Later calls fail with `Closed`.
    async fn close(&self) -> Result<()> {
        let sessions: Vec<(String, (String, crate::backend::LostSignal))> = self
            .inner
            .lock_sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        self.inner.closed.cancel();
        let inner = &self.inner;
        let releases = sessions.into_iter().map(|(id, (remote, lost))| async move {
            lost.fire();
            let ops = vec![
                json!({"Verb": "check-session", "Key": remote, "Session": id}),
                json!({"Verb": "delete", "Key": remote}),
            ];
            let released = inner.txn_even_if_closed(ops).await;
            if let Err(err) = inner.destroy_session(&id).await.and(released.map(drop)) {
                tracing::debug!(%err, session = %id, "close: releasing a lock failed; its session expires with its TTL");
            }
        });
        // Bounded: an unreachable agent costs one request timeout, not one per lock.
        let budget = self.inner.config.request_timeout;
        if tokio::time::timeout(budget, futures::future::join_all(releases))
            .await
            .is_err()
        {
            tracing::debug!("close: the agent did not answer; lock sessions expire with their TTL");
        }
        Ok(())
    }
}
