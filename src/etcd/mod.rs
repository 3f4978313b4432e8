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
//! delete, list, delete_tree, atomic_put, atomic_delete; see `docs/etcd.md` for the
//! full table, including leases, watches and locks. Concurrent gets and exists share
//! requests: past two in flight, the waiting ones go out together as one read-only
//! Txn (see `batch`).

mod batch;
mod config;
mod lease;
mod lock;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    KeyValue, KvClient, LeaseClient, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchClient,
};
use tokio_util::sync::CancellationToken;

pub use config::{EtcdConfig, EtcdTls};
pub use lock::EtcdLock;
pub use watch::{EtcdWatch, EtcdWatchTree};

use crate::backend::{Backend, Capabilities, Cas, Expect, KvPair, LockOptions, PutOptions};
use crate::error::{Error, Result};
use crate::key::{Dir, Key};

use batch::Reads;
use lease::LeaseCache;

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

/// The lock TTL used when [`LockOptions::ttl`] is `None`.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(15);

/// Largest value accepted: etcd refuses requests over 1.5 MiB (`--max-request-bytes`,
/// 1 572 864 by default); this leaves room for the key, the prefix and the request's
/// framing (a CAS request carries the key twice).
pub const MAX_VALUE_SIZE: usize = 1_536 * 1024 - 16 * 1024;

/// Largest gRPC response the client decodes (a `list` of many large values).
const MAX_DECODING_SIZE: usize = 1 << 30;

/// The etcd v3 backend. A cheap handle: clones share one gRPC connection pool.
#[derive(Clone)]
pub struct Etcd {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    client: Client,
    kv: KvClient,
    watch: WatchClient,
    lease: LeaseClient,
    /// Raw key prefix, empty or ending with `/`.
    prefix: Vec<u8>,
    request_timeout: Duration,
    /// The lease TTL of locks taken without [`LockOptions::ttl`].
    lock_ttl: Duration,
    leases: LeaseCache,
    /// Point reads in flight and queued for a batch (see `batch`).
    reads: Reads,
    /// Cancelled by `close`: stops watches and lock keep-alives.
    closed: CancellationToken,
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
    /// Connects to the cluster and checks that it answers (one Range request), so a
    /// wrong endpoint, TLS setting or password fails here rather than on first use.
    ///
    /// Errors: `Error::Unavailable` when no endpoint answers within
    /// `connect_timeout + request_timeout`, `Error::PermissionDenied` for refused
    /// credentials, `Error::Backend` for an invalid configuration.
    pub async fn connect(config: EtcdConfig) -> Result<Etcd> {
        config.validate()?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(config.request_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_require_leader(true);
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            options = options
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        if let Some(tls) = &config.tls {
            options = options.with_tls(tls_options(tls)?);
        }
        let budget = config.connect_timeout + config.request_timeout;
        let deadline = tokio::time::Instant::now() + budget;
        // With credentials, connecting authenticates (one request): like every request,
        // it is re-sent while it fails to connect at all (a stopped member).
        let client = loop {
            let connect = Client::connect(config.endpoints.clone(), Some(options.clone()));
            match tokio::time::timeout_at(deadline, connect).await {
                Ok(Ok(client)) => break client,
                Ok(Err(err)) => {
                    let err = map_error(err);
                    let pause = Duration::from_millis(50);
                    if !is_connect_error(&err) || tokio::time::Instant::now() + pause >= deadline {
                        return Err(err);
                    }
                    tokio::time::sleep(pause).await;
                }
                Err(_) => return Err(timeout_error(budget)),
            }
        };
        let mut prefix = config.prefix.trim_matches('/').as_bytes().to_vec();
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        let etcd = Etcd {
            inner: Arc::new(Inner {
                kv: client
                    .kv_client()
                    .max_decoding_message_size(MAX_DECODING_SIZE),
                watch: client
                    .watch_client()
                    .max_decoding_message_size(MAX_DECODING_SIZE),
                lease: client.lease_client(),
                client,
                prefix,
                request_timeout: config.request_timeout,
                lock_ttl: config.lock_ttl,
                leases: LeaseCache::default(),
                reads: Reads::default(),
                closed: CancellationToken::new(),
            }),
        };
        // The probe (a count of one hidden key): the first request also establishes
        // the connection.
        let probe = etcd.full("\u{1}probe");
        let options = GetOptions::new().with_count_only();
        request!(etcd, kv => kv.get(probe, Some(options)), clone probe, options).await?;
        Ok(etcd)
    }

    /// The underlying `etcd-client` client, for operations kvkit does not cover.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The etcd key of a kvkit key.
    fn full(&self, key: &str) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.inner.prefix.len() + key.len());
        full.extend_from_slice(&self.inner.prefix);
        full.extend_from_slice(key.as_bytes());
        full
    }

    /// The etcd range `[start, end)` holding every key strictly below `dir`.
    fn dir_range(&self, dir: &Dir) -> (Vec<u8>, Vec<u8>) {
        if dir.is_root() {
            // Start at " " (0x20) to skip the hidden lock namespace ("\x01lock/...").
            let start = self.full(" ");
            let end = if self.inner.prefix.is_empty() {
                vec![0] // "from start to the end of the keyspace"
            } else {
                prefix_end(&self.inner.prefix)
            };
            (start, end)
        } else {
            let start = self.full(&dir.child_prefix());
            let end = prefix_end(&start);
            (start, end)
        }
    }

    /// The kvkit pair of an etcd key/value, `None` for keys outside the namespace.
    fn pair(&self, kv: &KeyValue) -> Option<KvPair> {
        let key = kv.key().strip_prefix(self.inner.prefix.as_slice())?;
        let key = std::str::from_utf8(key).ok()?;
        if key.is_empty() || key.as_bytes()[0] < 0x20 {
            return None;
        }
        Some(KvPair {
            key: key.to_owned(),
            value: Bytes::copy_from_slice(kv.value()),
            last_index: revision(kv.mod_revision()),
        })
    }

    /// Like [`Etcd::pair`], taking the key/value by value: the value moves into the
    /// pair and the key's buffer becomes its `String`, without copying either (the
    /// hot path of `get` and `list`).
    fn owned_pair(&self, kv: KeyValue) -> Option<KvPair> {
        let last_index = revision(kv.mod_revision());
        let (mut key, value) = kv.into_key_value();
        if !key.starts_with(&self.inner.prefix) {
            return None;
        }
        key.drain(..self.inner.prefix.len());
        if key.first().is_none_or(|&b| b < 0x20) {
            return None;
        }
        Some(KvPair {
            key: String::from_utf8(key).ok()?,
            value: Bytes::from(value),
            last_index,
        })
    }

    /// Runs one request under the request timeout, mapping errors; fails fast after
    /// `close`. `request` makes the request afresh for each attempt: a request that
    /// could not even connect (a stopped cluster member still in the balancer) is sent
    /// again, through another member, until the timeout. Nothing was sent then, so
    /// this is safe for every request, conditional ones included.
    async fn call<T, F, Fut>(&self, mut request: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        if self.inner.closed.is_cancelled() {
            return Err(Error::Closed);
        }
        let timeout = self.inner.request_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(10);
        loop {
            match tokio::time::timeout_at(deadline, request()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(err)) => {
                    let err = map_error(err);
                    if !is_connect_error(&err) || tokio::time::Instant::now() + pause >= deadline {
                        return Err(err);
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Err(_) => return Err(timeout_error(timeout)),
            }
        }
    }

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

    async fn range(&self, dir: &Dir) -> Result<Vec<KvPair>> {
        self.list(dir).await
    }

    async fn list(&self, dir: &Dir) -> Result<Vec<KvPair>> {
        let (start, end) = self.dir_range(dir);
        // etcd returns ranges sorted by key bytes, which is the order of `String`.
        let options = GetOptions::new().with_range(end);
        let mut resp =
            request!(self, kv => kv.get(start, Some(options)), clone start, options).await?;
        let kvs = resp.take_kvs();
        // Sized up front: `filter_map` would grow the Vec by doubling and copying.
        let mut pairs = Vec::with_capacity(kvs.len());
        pairs.extend(kvs.into_iter().filter_map(|kv| self.owned_pair(kv)));
        Ok(pairs)
    }

    async fn delete_range(&self, dir: &Dir) -> Result<()> {
        let (start, end) = self.dir_range(dir);
        let options = DeleteOptions::new().with_range(end);
        request!(self, kv => kv.delete(start, Some(options)), clone start, options).await?;
        Ok(())
    }

    async fn delete_tree(&self, dir: &Dir) -> Result<()> {
        let Some(key) = dir.as_key() else {
            return self.delete_range(dir).await;
        };
        let (start, end) = self.dir_range(dir);
        let txn = Txn::new().and_then([
            TxnOp::delete(self.full(key.as_str()), None),
            TxnOp::delete(start, Some(DeleteOptions::new().with_range(end))),
        ]);
        request!(self, kv => kv.txn(txn), clone txn).await?;
        Ok(())
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

    async fn close(&self) -> Result<()> {
        // Stops watches and lock keep-alives. Leases of TTL puts are left to expire on
        // their own: revoking them would delete the keys before their TTL.
        self.inner.closed.cancel();
        Ok(())
    }
}

/// Client TLS settings from the configuration.
fn tls_options(tls: &EtcdTls) -> Result<TlsOptions> {
    let material = tls.load()?;
    let mut options = TlsOptions::new();
    if let Some(ca) = material.ca {
        options = options.ca_certificate(Certificate::from_pem(ca));
    }
    if let Some((cert, key)) = material.identity {
        options = options.identity(Identity::from_pem(cert, key));
    }
    if let Some(domain) = material.server_name {
        options = options.domain_name(domain);
    }
    Ok(options)
}

/// The smallest key greater than every key starting with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // all-0xff prefix: to the end of the keyspace
}

/// Lease TTL in whole seconds (at least 1), rounded up.
pub(crate) fn ttl_secs(ttl: Duration) -> u64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    secs.max(1)
}

/// etcd revisions are positive i64; kvkit indexes are u64.
fn revision(rev: i64) -> u64 {
    u64::try_from(rev).unwrap_or(0)
}

/// A kvkit index as an etcd revision; an index no revision can have maps to -1, so the
/// comparison fails as a conflict.
fn index_to_revision(index: u64) -> i64 {
    i64::try_from(index).unwrap_or(-1)
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map_or(0, etcd_client::ResponseHeader::revision)
}

/// The mod_revision of the key read by a transaction's failure branch.
fn first_mod_revision(responses: &[TxnOpResponse]) -> Option<u64> {
    responses.iter().find_map(|resp| match resp {
        TxnOpResponse::Get(get) => get.kvs().first().map(|kv| revision(kv.mod_revision())),
        _ => None,
    })
}

fn timeout_error(after: Duration) -> Error {
    Error::unavailable(NAME, format!("no answer within {after:?}"))
}

/// True when the error says a lease does not exist (expired or revoked).
pub(crate) fn is_lease_not_found(err: &Error) -> bool {
    matches!(err, Error::Backend { source, .. } if source.to_string().contains("lease not found"))
}

/// Maps an `etcd-client` error to a kvkit error: transport failures and timeouts are
/// retryable `Unavailable`, refused credentials `PermissionDenied`, the rest `Backend`.
pub(crate) fn map_error(err: etcd_client::Error) -> Error {
    use etcd_client::Error as E;
    use tonic::Code;
    match err {
        E::GRpcStatus(status) => {
            let message = status.message();
            let auth = message.contains("authentication failed")
                || message.contains("permission denied")
                || message.contains("invalid auth token")
                || message.contains("user name is empty")
                || message.contains("user name not found");
            match status.code() {
                _ if auth => Error::PermissionDenied {
                    backend: NAME,
                    source: Box::new(status),
                },
                Code::Unauthenticated | Code::PermissionDenied => Error::PermissionDenied {
                    backend: NAME,
                    source: Box::new(status),
                },
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Aborted
                | Code::ResourceExhausted => Error::unavailable(NAME, status),
                Code::Unknown if is_transport_message(message) => Error::unavailable(NAME, status),
                _ => Error::backend(NAME, status),
            }
        }
        E::TransportError(err) => Error::unavailable(NAME, err),
        E::IoError(err) => Error::unavailable(NAME, err),
        E::WatchError(err) => Error::unavailable(NAME, err),
        E::LeaseKeepAliveError(err) => Error::unavailable(NAME, err),
        other => Error::backend(NAME, other),
    }
}

/// True for a request that failed before reaching any server (refused connection).
fn is_connect_error(err: &Error) -> bool {
    matches!(err, Error::Unavailable { source, .. } if {
        let text = source.to_string();
        text.contains("tcp connect error") || text.contains("Connection refused")
    })
}

fn is_transport_message(message: &str) -> bool {
    [
        "transport",
        "connection",
        "broken pipe",
        "h2 protocol",
        "tcp connect",
    ]
    .iter()
    .any(|needle| message.contains(needle))
}
