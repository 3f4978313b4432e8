//! The etcd v3 backend, over gRPC with the `etcd-client` crate (feature `etcd`).
//!
//! ```no_run
//! # async fn demo() -> kvkit::Result<()> {
//! use kvkit::{Kv, PutOptions, etcd::{Etcd, EtcdConfig}};
//!
//! let kv = Kv::new(Etcd::connect(EtcdConfig::new(["127.0.0.1:2379"]).prefix("myapp")).await?);
//! kv.put("app/config", "v1", PutOptions::default()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout in etcd
//!
//! A kvkit key `k` is stored at the etcd key `{prefix}k` (the prefix, when set, always
//! ends with `/`). Lock bookkeeping lives in a hidden namespace `{prefix}\x01lock/...`:
//! user keys never start with a byte below `0x20`, and every range over the root starts
//! at `{prefix}` + `" "` (0x20), so contender keys never show up in `list`,
//! `watch_tree` or `get` of user keys.
//!
//! `last_index` is etcd's `mod_revision`: nonzero, raised by every write, never reused
//! (also across delete and re-create).
//!
//! # Round trips
//!
//! One gRPC request each for get, exists, put (without TTL, or with a cached lease),
//! delete, list, atomic_put, atomic_delete; two for delete_tree (a keys-only Range,
//! then a guarded Txn, so keys other tools wrote are kept; see `tree`); see
//! `docs/etcd.md` for the full table, including leases, watches and locks. Concurrent gets and exists share
//! requests: past two in flight, the waiting ones go out together as one read-only
//! Txn (see `batch`).

mod batch;
mod client;
mod config;
mod error;
mod keys;
mod lease;
mod lock;
mod tree;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};

pub use config::{DEFAULT_LOCK_TTL, EtcdConfig};
pub use lock::EtcdLock;
pub use watch::{EtcdWatch, EtcdWatchTree};

use crate::backend::{Backend, Capabilities, Cas, Expect, KvPair, LockOptions, PutOptions};
use crate::error::{Error, Result};
use crate::key::{Dir, Key};

// Reached as `super::X` by the other etcd modules.
pub(crate) use client::Inner;
pub(crate) use error::{is_lease_not_found, map_error, timeout_error};
pub(crate) use keys::{header_revision, ttl_secs};

use keys::{first_mod_revision, index_to_revision, revision};
/// Sends one request through [`Etcd::call`]: `$client` names a client field of
/// `Inner` (`kv`, `lease`) bound for the request, and the variables after `clone` are
/// cloned for each attempt.
macro_rules! request {
    ($etcd:expr, $client:ident => $call:expr $(, clone $($arg:ident),*)?) => {
        $etcd.call(|| {
            let mut $client = $etcd.inner.$client.clone();
            $($(let $arg = $arg.clone();)*)?
            async move { $call.await }
        })
    };
}
pub(crate) use request;

/// The backend's name in errors.
const NAME: &str = "etcd";

/// Largest value accepted: etcd refuses requests over 1.5 MiB (`--max-request-bytes`,
/// 1 572 864 by default); this leaves room for the key, the prefix and the request's
/// framing (a CAS request carries the key twice).
pub const MAX_VALUE_SIZE: usize = 1_536 * 1024 - 16 * 1024;

/// The etcd v3 backend. A cheap handle: clones share one gRPC connection pool.
#[derive(Clone)]
pub struct Etcd {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("prefix", &String::from_utf8_lossy(&self.inner.prefix))
            .field("request_timeout", &self.inner.request_timeout)
            .finish_non_exhaustive()
    }
}

impl Etcd {
    /// A put with the lease of `ttl`, retried once with a fresh lease when the cached
    /// one vanished on the server.
    async fn put_with_ttl(&self, full: Vec<u8>, value: Vec<u8>, ttl: Duration) -> Result<i64> {
        let secs = ttl_secs(ttl);
        for attempt in 0..2 {
            let lease = self.inner.leases.lease(self, secs).await?;
            let options = etcd_client::PutOptions::new().with_lease(lease);
            let put = request!(self, kv => kv.put(full, value, Some(options)), clone full, value, options);
            match put.await {
                Ok(resp) => return Ok(header_revision(resp.header())),
                Err(err) if attempt == 0 && is_lease_not_found(&err) => {
                    self.inner.leases.forget(secs, lease);
                }
                Err(err) => return Err(err),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// The lease for a TTL put (`None` without TTL).
    async fn lease_for(&self, options: &PutOptions) -> Result<Option<(u64, i64)>> {
        match options.ttl {
            None => Ok(None),
            Some(ttl) => {
                let secs = ttl_secs(ttl);
                Ok(Some((secs, self.inner.leases.lease(self, secs).await?)))
            }
        }
    }
}

impl Backend for Etcd {
    type Watch = EtcdWatch;
    type WatchTree = EtcdWatchTree;
    type Lock = EtcdLock;

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: NAME,
            ttl_granularity: Duration::from_secs(1),
            min_ttl: Duration::from_secs(2),
            ttl_expiry_factor: 2,
            default_lock_ttl: Some(self.inner.lock_ttl),
            cross_process_locks: true,
            watch_sees_every_write: true,
            max_value_size: MAX_VALUE_SIZE,
            persistent: true,
        }
    }

    async fn get(&self, key: &Key<'_>) -> Result<Option<KvPair>> {
        let mut resp = self.read(self.full(key.as_str()), None).await?;
        Ok(resp
            .take_kvs()
            .into_iter()
            .next()
            .and_then(|kv| self.owned_pair(kv)))
    }

    async fn exists(&self, key: &Key<'_>) -> Result<bool> {
        let options = GetOptions::new().with_count_only();
        let resp = self.read(self.full(key.as_str()), Some(options)).await?;
        Ok(resp.count() > 0)
    }

    async fn put(&self, key: &Key<'_>, value: Bytes, options: &PutOptions) -> Result<KvPair> {
        let full = self.full(key.as_str());
        let rev = match options.ttl {
            Some(ttl) => self.put_with_ttl(full, value.to_vec(), ttl).await?,
            None => {
                let raw = value.to_vec();
                let resp = request!(self, kv => kv.put(full, raw, None), clone full, raw).await?;
                header_revision(resp.header())
            }
        };
        Ok(KvPair {
            key: key.as_str().to_owned(),
            value,
            last_index: revision(rev),
        })
    }

    async fn delete(&self, key: &Key<'_>) -> Result<bool> {
        let full = self.full(key.as_str());
        let resp = request!(self, kv => kv.delete(full, None), clone full).await?;
        Ok(resp.deleted() > 0)
    }

    async fn compare_and_put(
        &self,
        key: &Key<'_>,
        value: Bytes,
        expect: Expect,
        options: &PutOptions,
    ) -> Result<Cas<KvPair>> {
        let full = self.full(key.as_str());
        let compare = match expect {
            Expect::Absent => Compare::create_revision(full.clone(), CompareOp::Equal, 0),
            Expect::Index(index) => {
                Compare::mod_revision(full.clone(), CompareOp::Equal, index_to_revision(index))
            }
        };
        for attempt in 0..2 {
            let lease = self.lease_for(options).await?;
            let put_options = lease.map(|(_, id)| etcd_client::PutOptions::new().with_lease(id));
            let txn = Txn::new()
                .when([compare.clone()])
                .and_then([TxnOp::put(full.clone(), value.to_vec(), put_options)])
                .or_else([TxnOp::get(
                    full.clone(),
                    Some(GetOptions::new().with_keys_only()),
                )]);
            let resp = match request!(self, kv => kv.txn(txn), clone txn).await {
                Ok(resp) => resp,
                Err(err) if attempt == 0 && is_lease_not_found(&err) => {
                    if let Some((secs, id)) = lease {
                        self.inner.leases.forget(secs, id);
                    }
                    continue;
                }
                Err(err) => return Err(err),
            };
            if resp.succeeded() {
                return Ok(Cas::Applied(KvPair {
                    key: key.as_str().to_owned(),
                    value,
                    last_index: revision(header_revision(resp.header())),
                }));
            }
            return Ok(Cas::Conflict {
                current: first_mod_revision(&resp.op_responses()),
            });
        }
        unreachable!("the loop returns on its second attempt")
    }

    async fn compare_and_delete(&self, key: &Key<'_>, index: u64) -> Result<Cas<()>> {
        let full = self.full(key.as_str());
        let txn = Txn::new()
            .when([Compare::mod_revision(
                full.clone(),
                CompareOp::Equal,
                index_to_revision(index),
            )])
            .and_then([TxnOp::delete(full.clone(), None)])
            .or_else([TxnOp::get(full, Some(GetOptions::new().with_keys_only()))]);
        let resp = request!(self, kv => kv.txn(txn), clone txn).await?;
        if resp.succeeded() {
            Ok(Cas::Applied(()))
        } else {
            Ok(Cas::Conflict {
                current: first_mod_revision(&resp.op_responses()),
            })
        }
    }

    async fn scan_below(&self, dir: &Dir) -> Result<Vec<KvPair>> {
        self.list(dir).await
    }

    async fn list(&self, dir: &Dir) -> Result<Vec<KvPair>> {
        tree::list(self, dir).await
    }

    /// Keeps keys other tools wrote in a form kvkit never writes; see `tree`.
    async fn delete_below(&self, dir: &Dir) -> Result<()> {
        self.delete_own_keys_below(dir, false).await
    }

    /// A keys-only Range, then one guarded Txn deleting `dir` and the kvkit keys
    /// below it (foreign keys kept); see `tree`.
    async fn delete_tree(&self, dir: &Dir) -> Result<()> {
        self.delete_own_keys_below(dir, true).await
    }

    async fn watch(&self, key: &Key<'_>) -> Result<EtcdWatch> {
        watch::watch_key(self.clone(), key).await
    }

    async fn watch_tree(&self, dir: &Dir) -> Result<EtcdWatchTree> {
        watch::watch_tree(self.clone(), dir).await
    }

    async fn lock(&self, key: &Key<'_>, options: &LockOptions) -> Result<EtcdLock> {
        lock::acquire(self, key, options, true)
            .await?
            .ok_or_else(|| Error::backend(NAME, "lock was not acquired"))
    }

    async fn try_lock(&self, key: &Key<'_>, options: &LockOptions) -> Result<Option<EtcdLock>> {
        lock::acquire(self, key, options, false).await
    }

    /// Revokes the leases of the locks held or awaited through this handle (best
    /// effort: a lease that cannot be revoked expires with its TTL), then stops
    /// watches (each yields `Err(Closed)` and ends) and keep-alives (each guard's
    /// `lost()` fires). Leases of TTL puts are left to expire on their own: revoking
    /// them would delete the keys before their TTL.
    async fn close(&self) -> Result<()> {
        let leases: Vec<i64> = self
            .inner
            .lock_leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        let revokes = leases.into_iter().map(|id| async move {
            if let Err(err) = request!(self, lease => lease.revoke(id)).await {
                tracing::debug!(%err, lease = id, "close: revoking a lock lease failed; it expires with its TTL");
            }
        });
        futures::future::join_all(revokes).await;
        self.inner.closed.cancel();
        Ok(())
    }
}
