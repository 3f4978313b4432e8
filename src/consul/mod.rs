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

mod client;
mod config;
mod lock;
mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use self::config::{ConsulConfig, Scheme};
pub use self::lock::ConsulLock;
pub use self::watch::{ConsulWatch, ConsulWatchTree};

use self::client::{Client, Entry, NAME, Response, encode};
use crate::backend::{Backend, Capabilities, Cas, Expect, KvPair, LockOptions, PutOptions};
use crate::error::{Error, Result};
use crate::key::{Dir, Key};

/// Consul's limit on a value.
pub const MAX_VALUE_SIZE: usize = 512 * 1024;
/// Consul's largest session TTL.
const MAX_TTL: Duration = Duration::from_secs(86_400);
/// Keys put with the same TTL within this window share one session.
const SHARE_WINDOW: Duration = Duration::from_secs(1);
/// Consul's limit on the operations of one transaction.
const MAX_TXN_OPS: usize = 64;

/// A Consul agent, reached over its HTTP API. A cheap handle: clones share the
/// connection pool and background work.
#[derive(Clone, Debug)]
pub struct Consul {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub client: Client,
    pub config: ConsulConfig,
    /// `"prefix/"` or `""`.
    pub prefix: String,
    /// TTL (whole seconds) -> shared session and when it was created.
    ttl_sessions: Mutex<HashMap<u64, (String, Instant)>>,
    pub closed: CancellationToken,
    /// Lock sessions of this handle: id -> (the lock's Consul key, its guard's lost
    /// signal). `close` releases and destroys each.
    pub lock_sessions: Mutex<HashMap<String, (String, crate::backend::LostSignal)>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnResponse {
    #[serde(default)]
    results: Option<Vec<TxnResult>>,
    #[serde(default)]
    errors: Option<Vec<TxnError>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnResult {
    #[serde(rename = "KV")]
    kv: Option<Entry>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "PascalCase")]
struct TxnError {
    op_index: usize,
    what: String,
}

/// The outcome of a transaction.
enum Txn {
    Applied(Vec<Entry>),
    RolledBack(Vec<TxnError>),
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

impl Inner {
    pub async fn request(&self, method: Method, path: &str, body: Bytes) -> Result<Response> {
        if self.closed.is_cancelled() {
            return Err(Error::Closed);
        }
        self.client
            .request(method, path, body, Duration::ZERO)
            .await
    }

    /// A blocking GET: `?index=&wait=` appended when `index > 0`.
    pub async fn blocking_get(&self, path: &str, index: u64) -> Result<Response> {
        if self.closed.is_cancelled() {
            return Err(Error::Closed);
        }
        if index == 0 {
            return self
                .client
                .request(Method::GET, path, Bytes::new(), Duration::ZERO)
                .await;
        }
        let wait = self
            .config
            .wait
            .min(Duration::from_secs(600))
            .max(Duration::from_millis(1));
        let sep = if path.contains('?') { '&' } else { '?' };
        let full = format!("{path}{sep}index={index}&wait={}ms", wait.as_millis());
        // Consul may add up to wait/16 of jitter.
        self.client
            .request(Method::GET, &full, Bytes::new(), wait + wait / 16)
            .await
    }

    /// The Consul key of a kvkit key.
    pub fn remote(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The kvkit key of a Consul key, or `None` for keys outside the prefix or not in
    /// kvkit's normal form (written by other clients, such as `dir/` folder markers).
    pub fn local(&self, remote: &str) -> Option<String> {
        let key = remote.strip_prefix(&self.prefix)?;
        Key::is_normal(key).then(|| key.to_owned())
    }

    /// The Consul prefix of everything strictly below `dir`.
    pub fn remote_children(&self, dir: &Dir) -> String {
        format!("{}{}", self.prefix, dir.child_prefix())
    }

    pub fn kv_path(&self, remote: &str) -> String {
        format!("/v1/kv/{}", encode(remote, true))
    }

    pub fn pair(&self, entry: &Entry) -> Result<Option<KvPair>> {
        let Some(key) = self.local(&entry.key) else {
            return Ok(None);
        };
        Ok(Some(KvPair {
            key,
            value: entry.decode_value()?,
            last_index: entry.modify_index.max(1),
        }))
    }

    /// GET of one key: the entry and the response index.
    pub async fn get_entry(&self, remote: &str, index: u64) -> Result<(Option<Entry>, u64)> {
        let resp = self
            .blocking_get(&self.kv_path(remote), index)
            .await?
            .expect(&[StatusCode::OK, StatusCode::NOT_FOUND])?;
        let at = resp.index.unwrap_or(1).max(1);
        if resp.status == StatusCode::NOT_FOUND {
            return Ok((None, at));
        }
        let entries: Vec<Entry> = resp.json()?;
        Ok((entries.into_iter().find(|e| e.key == remote), at))
    }

    /// GET `?recurse` below a prefix: the entries and the response index.
    pub async fn get_tree(&self, remote_prefix: &str, index: u64) -> Result<(Vec<Entry>, u64)> {
        let path = format!("{}?recurse", self.kv_path(remote_prefix));
        let resp = self
            .blocking_get(&path, index)
            .await?
            .expect(&[StatusCode::OK, StatusCode::NOT_FOUND])?;
        let at = resp.index.unwrap_or(1).max(1);
        if resp.status == StatusCode::NOT_FOUND {
            return Ok((Vec::new(), at));
        }
        Ok((resp.json()?, at))
    }

    /// Runs a transaction of KV operations.
    async fn txn(&self, ops: Vec<Value>) -> Result<Txn> {
        if self.closed.is_cancelled() {
            return Err(Error::Closed);
        }
        self.txn_even_if_closed(ops).await
    }

    /// Runs a transaction also after `close`: lock guards still release their key.
    async fn txn_even_if_closed(&self, ops: Vec<Value>) -> Result<Txn> {
        let body = Value::Array(ops.into_iter().map(|kv| json!({ "KV": kv })).collect());
        let resp = self
            .client
            .request(
                Method::PUT,
                "/v1/txn",
                Bytes::from(body.to_string()),
                Duration::ZERO,
            )
            .await?
            .expect(&[StatusCode::OK, StatusCode::CONFLICT])?;
        let parsed: TxnResponse = resp.json()?;
        if resp.status == StatusCode::OK {
            Ok(Txn::Applied(
                parsed
                    .results
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|r| r.kv)
                    .collect(),
            ))
        } else {
            Ok(Txn::RolledBack(parsed.errors.unwrap_or_default()))
        }
    }

    /// Session for a TTL put: the shared one of this TTL if it is young enough
    /// (renewed first, so the key lives at least the TTL), or a new one.
    async fn ttl_session(&self, ttl: Duration) -> Result<String> {
        let secs = ttl.as_secs_f64().ceil() as u64;
        let shared = {
            let map = self.ttl_sessions.lock().unwrap_or_else(|p| p.into_inner());
            map.get(&secs)
                .filter(|(_, created)| created.elapsed() < SHARE_WINDOW)
                .map(|(id, _)| id.clone())
        };
        if let Some(id) = shared {
            let resp = self
                .request(
                    Method::PUT,
                    &format!("/v1/session/renew/{}", encode(&id, false)),
                    Bytes::new(),
                )
                .await?;
            if resp.status == StatusCode::OK {
                return Ok(id);
            }
            resp.expect(&[StatusCode::OK, StatusCode::NOT_FOUND])?;
        }
        let id = self
            .create_session(
                &format!("kvkit-ttl-{secs}s"),
                Duration::from_secs(secs),
                "delete",
                Duration::ZERO,
            )
            .await?;
        let mut map = self.ttl_sessions.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, (_, created)| created.elapsed() < SHARE_WINDOW);
        map.insert(secs, (id.clone(), Instant::now()));
        Ok(id)
    }

    /// Creates a session.
    pub async fn create_session(
        &self,
        name: &str,
        ttl: Duration,
        behavior: &str,
        lock_delay: Duration,
    ) -> Result<String> {
        if ttl > MAX_TTL {
            return Err(Error::backend(
                NAME,
                format!("TTL {ttl:?} exceeds Consul's limit of 86400s"),
            ));
        }
        let secs = ttl.as_secs_f64().ceil() as u64;
        let body = json!({
            "Name": name,
            "TTL": format!("{secs}s"),
            "Behavior": behavior,
            "LockDelay": format!("{}ms", lock_delay.as_millis()),
        });
        let resp = self
            .request(
                Method::PUT,
                "/v1/session/create",
                Bytes::from(body.to_string()),
            )
            .await?
            .expect(&[StatusCode::OK])?;
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        Ok(resp.json::<Created>()?.id)
    }

    /// Destroys a session (idempotent).
    pub async fn destroy_session(&self, id: &str) -> Result<()> {
        self.client
            .request(
                Method::PUT,
                &format!("/v1/session/destroy/{}", encode(id, false)),
                Bytes::new(),
                Duration::ZERO,
            )
            .await?
            .expect(&[StatusCode::OK])?;
        Ok(())
    }

    /// The write ops of a put: drop any previous entry (and with it any session a
    /// TTL put attached), then set, or lock with the TTL session.
    fn write_ops(&self, remote: &str, value: &Bytes, session: Option<&str>) -> Vec<Value> {
        let encoded = B64.encode(value);
        let write = match session {
            Some(s) => json!({"Verb": "lock", "Key": remote, "Value": encoded, "Session": s}),
            None => json!({"Verb": "set", "Key": remote, "Value": encoded}),
        };
        vec![json!({"Verb": "delete", "Key": remote}), write]
    }

    async fn session_for(&self, options: &PutOptions) -> Result<Option<String>> {
        match options.ttl {
            Some(ttl) => Ok(Some(
                self.ttl_session(ttl.max(self.config.min_session_ttl))
                    .await?,
            )),
            None => Ok(None),
        }
    }

    /// The pair written by an applied transaction: the last result for `remote`.
    fn written(&self, entries: &[Entry], remote: &str, value: Bytes) -> Result<KvPair> {
        let entry = entries
            .iter()
            .rev()
            .find(|e| e.key == remote)
            .ok_or_else(|| Error::backend(NAME, "the transaction returned no entry for the key"))?;
        Ok(KvPair {
            key: self.local(remote).unwrap_or_else(|| remote.to_owned()),
            value,
            last_index: entry.modify_index.max(1),
        })
    }
}

impl Inner {
    /// Deletes every kvkit key strictly below `dir`, and `dir` itself when `with_dir`
    /// (and `dir` is not the root), never a key in a form kvkit never writes: Consul
    /// has no guarded prefix delete, so the names below `dir/` are read (one
    /// `GET ?keys`) and exactly the kvkit ones deleted by name, [`MAX_TXN_OPS`] per
    /// txn. A key written after the read is kept, as if written after the delete; up
    /// to 63 keys below `dir` go in one txn, atomically.
    async fn delete_own_keys_below(&self, dir: &Dir, with_dir: bool) -> Result<()> {
        let path = format!("{}?keys", self.kv_path(&self.remote_children(dir)));
        let resp = self
            .request(Method::GET, &path, Bytes::new())
            .await?
            .expect(&[StatusCode::OK, StatusCode::NOT_FOUND])?;
        let names: Vec<String> = if resp.status == StatusCode::NOT_FOUND {
            Vec::new()
        } else {
            resp.json()?
        };
        let dir_key = dir
            .as_key()
            .filter(|_| with_dir)
            .map(|key| self.remote(key.as_str()));
        let own = names
            .into_iter()
            .filter(|name| self.local(name).is_some_and(|key| dir.contains(&key)));
        let doomed: Vec<String> = dir_key.into_iter().chain(own).collect();
        for chunk in doomed.chunks(MAX_TXN_OPS) {
            let ops = chunk
                .iter()
                .map(|key| json!({"Verb": "delete", "Key": key}))
                .collect();
            if let Txn::RolledBack(errors) = self.txn(ops).await? {
                return Err(unexpected(&errors));
            }
        }
        Ok(())
    }
}

/// The key's index from a failed `check-index`, when Consul says it
/// (`"current modify index N != M"`); 0 when it does not.
fn reported_index(errors: &[TxnError], op: usize) -> u64 {
    errors
        .iter()
        .find(|e| e.op_index == op)
        .and_then(|e| e.what.strip_prefix("current modify index "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn unexpected(errors: &[TxnError]) -> Error {
    Error::backend(NAME, format!("transaction failed: {errors:?}"))
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
            Txn::RolledBack(errors) if errors.iter().any(|e| e.op_index == 0) => Ok(false),
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
                Expect::Absent if errors.iter().any(|e| e.op_index == 0) => {
                    Ok(Cas::Conflict { current: Some(0) })
                }
                Expect::Index(_) if errors.iter().any(|e| e.op_index == 0) => {
                    Ok(Cas::Conflict { current: None })
                }
                Expect::Index(_) if errors.iter().any(|e| e.op_index == 1) => Ok(Cas::Conflict {
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
            Txn::RolledBack(errors) if errors.iter().any(|e| e.op_index == 0) => {
                Ok(Cas::Conflict { current: None })
            }
            Txn::RolledBack(errors) if errors.iter().any(|e| e.op_index == 1) => {
                Ok(Cas::Conflict {
                    current: Some(reported_index(&errors, 1)),
                })
            }
            Txn::RolledBack(errors) => Err(unexpected(&errors)),
        }
    }

    async fn scan_below(&self, dir: &Dir) -> Result<Vec<KvPair>> {
        let (entries, _) = self
            .inner
            .get_tree(&self.inner.remote_children(dir), 0)
            .await?;
        let mut pairs = Vec::with_capacity(entries.len());
        for entry in &entries {
            if let Some(pair) = self.inner.pair(entry)?
                && dir.contains(&pair.key)
            {
                pairs.push(pair);
            }
        }
        Ok(pairs)
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
