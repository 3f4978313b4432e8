//! The connection of an etcd handle: its shared state ([`Inner`]), connecting with
//! TLS and credentials, and [`Etcd::call`], the one way every request is sent.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, Identity, KvClient, LeaseClient, TlsOptions,
    WatchClient,
};
use tokio_util::sync::CancellationToken;

use super::batch::ReadBatcher;
use super::error::{is_connect_error, map_error, refused_credentials, timeout_error};
use super::lease::LeaseCache;
use super::{Etcd, EtcdConfig, request};
use crate::backoff::Backoff;
use crate::config::TlsConfig;
use crate::error::{Error, Result};

/// Largest gRPC response the client decodes (a `list` of many large values).
const MAX_DECODING_SIZE: usize = 1 << 30;

/// The state every clone of one handle shares.
pub(crate) struct Inner {
    pub(super) client: Client,
    pub(super) kv: KvClient,
    pub(super) watch: WatchClient,
    pub(super) lease: LeaseClient,
    /// Raw key prefix, empty or ending with `/`.
    pub(super) prefix: Vec<u8>,
    pub(super) request_timeout: Duration,
    /// The lease TTL of locks taken without [`LockOptions::ttl`].
    pub(super) lock_ttl: Duration,
    pub(super) leases: LeaseCache,
    /// Point reads in flight and queued for a batch (see `batch`).
    pub(super) reads: ReadBatcher,
    /// Cancelled by `close`: stops watches and lock keep-alives.
    pub(super) closed: CancellationToken,
    /// The leases of the locks held or awaited through this handle: `close` revokes
    /// them, so its locks are free at once rather than after their TTL.
    pub(super) lock_leases: std::sync::Mutex<std::collections::HashSet<i64>>,
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
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(50));
        // With credentials, connecting authenticates (one request): like every request,
        // it is re-sent while it fails to connect at all (a stopped member).
        let client = loop {
            let connect = Client::connect(config.endpoints.clone(), Some(options.clone()));
            match tokio::time::timeout_at(deadline, connect).await {
                Ok(Ok(client)) => break client,
                Ok(Err(err)) => {
                    let err = refused_credentials(map_error(err), config.username.is_some());
                    let pause = backoff.next_delay();
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

    /// Runs one request under the request timeout, mapping errors; fails fast after
    /// `close`. `request` makes the request afresh for each attempt: a request that
    /// could not even connect (a stopped cluster member still in the balancer) is sent
    /// again, through another member, until the timeout. Nothing was sent then, so
    /// this is safe for every request, conditional ones included.
    pub(super) async fn call<T, F, Fut>(&self, mut request: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        if self.inner.closed.is_cancelled() {
            return Err(Error::Closed);
        }
        let timeout = self.inner.request_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(200));
        loop {
            match tokio::time::timeout_at(deadline, request()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(err)) => {
                    let err = map_error(err);
                    let pause = backoff.next_delay();
                    if !is_connect_error(&err) || tokio::time::Instant::now() + pause >= deadline {
                        return Err(err);
                    }
                    tokio::time::sleep(pause).await;
                }
                Err(_) => return Err(timeout_error(timeout)),
            }
        }
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
