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
mod config;
mod lease;
mod lock;
mod tree;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue,
    KvClient, LeaseClient, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchClient,
};
use tokio_util::sync::CancellationToken;

pub use config::{DEFAULT_LOCK_TTL, EtcdConfig};
pub use lock::EtcdLock;
pub use watch::{EtcdWatch, EtcdWatchTree};

use crate::backend::{Backend, Capabilities, Cas, Expect, KvPair, LockOptions, PutOptions};
use crate::config::tls::TlsConfig;
use crate::error::{Error, Result};
use crate::key::{Dir, Key};

use batch::ReadBatcher;
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
    reads: ReadBatcher,
    /// Cancelled by `close`: stops watches and lock keep-alives.
    closed: CancellationToken,
    /// The leases of the locks held or awaited through this handle: `close` revokes
    /// them, so its locks are free at once rather than after their TTL.
    lock_leases: std::sync::Mutex<std::collections::HashSet<i64>>,
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
                    let err = refused_credentials(map_error(err), config.username.is_some());
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
                reads: ReadBatcher::default(),
                closed: CancellationToken::new(),
                lock_leases: Default::default(),
            }),
        };
        // The probe (a count of one hidden key): the first request also establishes
        // the connection.
        let probe = etcd.full("\u{1}probe");
        let options = GetOptions::new().with_count_only();
        // The probe is always a valid request: an `InvalidArgument` answer is etcd's
        // "user name is empty" (auth is on and no credentials were given).
        request!(etcd, kv => kv.get(probe, Some(options)), clone probe, options)
            .await
            .map_err(|err| refused_credentials(err, true))?;
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
        // Keys written by other tools in a form kvkit never writes are not ours to
        // show (the bookkeeping namespace below 0x20 is not normal either).
        if !Key::is_normal(key) {
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
        let key = String::from_utf8(key).ok()?;
        if !Key::is_normal(&key) {
            return None;
        }
        Some(KvPair {
            key,
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

    async fn scan_below(&self, dir: &Dir) -> Result<Vec<KvPair>> {
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

/// Client TLS settings from the configuration.
fn tls_options(tls: &TlsConfig) -> Result<TlsOptions> {
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

/// The gRPC status behind an error, if the error came from one.
fn status_of(err: &Error) -> Option<&tonic::Status> {
    match err {
        Error::Backend { source, .. }
        | Error::Unavailable { source, .. }
        | Error::PermissionDenied { source, .. } => source.downcast_ref::<tonic::Status>(),
        _ => None,
    }
}

/// True when the error says a lease does not exist (expired or revoked): etcd answers
/// `NotFound` only for a missing lease (a missing key is an empty answer).
pub(crate) fn is_lease_not_found(err: &Error) -> bool {
    status_of(err).is_some_and(|status| status.code() == tonic::Code::NotFound)
}

/// True when something in `err`'s source chain is a `T` for which `pred` holds.
fn chain_has<T: std::error::Error + 'static>(
    err: &(dyn std::error::Error + 'static),
    pred: impl Fn(&T) -> bool,
) -> bool {
    let mut source = Some(err);
    while let Some(err) = source {
        if err.downcast_ref::<T>().is_some_and(&pred) {
            return true;
        }
        source = err.source();
    }
    false
}

/// Maps an `etcd-client` error to a kvkit error from its gRPC code and typed sources,
/// never from message text: transport failures and timeouts are retryable
/// `Unavailable`, refused credentials `PermissionDenied`, the rest `Backend`.
pub(crate) fn map_error(err: etcd_client::Error) -> Error {
    use etcd_client::Error as E;
    use tonic::Code;
    match err {
        E::GRpcStatus(status) => match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => Error::PermissionDenied {
                backend: NAME,
                source: Box::new(status),
            },
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::ResourceExhausted => Error::unavailable(NAME, status),
            // A status made on this side from a transport failure carries that failure
            // as its source; one sent by the server carries none.
            Code::Unknown | Code::Internal if std::error::Error::source(&status).is_some() => {
                Error::unavailable(NAME, status)
            }
            _ => Error::backend(NAME, status),
        },
        E::TransportError(err) => Error::unavailable(NAME, err),
        E::IoError(err) => Error::unavailable(NAME, err),
        E::WatchError(err) => Error::unavailable(NAME, err),
        E::LeaseKeepAliveError(err) => Error::unavailable(NAME, err),
        other => Error::backend(NAME, other),
    }
}

/// At connect, the requests are fixed and valid (the authentication with credentials,
/// then the probe): etcd answers a wrong user or password, or missing credentials on a
/// server with auth on, with `InvalidArgument` or `FailedPrecondition`, which there
/// means refused credentials.
fn refused_credentials(err: Error, at_connect: bool) -> Error {
    let refused = at_connect
        && status_of(&err).is_some_and(|status| {
            matches!(
                status.code(),
                tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
            )
        });
    match err {
        Error::Backend { backend, source } if refused => {
            Error::PermissionDenied { backend, source }
        }
        err => err,
    }
}

/// True for a request that failed before reaching any server: the connection could not
/// be made (tonic's `ConnectError`, or a refused TCP connection), so nothing was sent.
fn is_connect_error(err: &Error) -> bool {
    let Error::Unavailable { source, .. } = err else {
        return false;
    };
    let source: &(dyn std::error::Error + 'static) = source.as_ref();
    chain_has::<tonic::ConnectError>(source, |_| true)
        || chain_has::<std::io::Error>(source, |io| {
            io.kind() == std::io::ErrorKind::ConnectionRefused
        })
}
