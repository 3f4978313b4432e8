//! The shared state of a Consul handle ([`Inner`]) and its requests to the agent:
//! plain and blocking GETs, one key's entry, and the mapping between kvkit keys and
//! Consul keys below the prefix.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ConsulConfig;
use super::client::{Client, Entry, Response, encode};
use crate::backend::KvPair;
use crate::error::{Error, Result};
use crate::key::{Dir, Key};

/// The state every clone of one handle shares.
#[derive(Debug)]
pub(crate) struct Inner {
    pub client: Client,
    pub config: ConsulConfig,
    /// `"prefix/"` or `""`.
    pub prefix: String,
    /// TTL (whole seconds) -> shared session and when it was created.
    pub(super) ttl_sessions: Mutex<HashMap<u64, (String, Instant)>>,
    pub closed: CancellationToken,
    /// Lock sessions of this handle: id -> (the lock's Consul key, its guard's lost
    /// signal). `close` releases and destroys each.
    pub lock_sessions: Mutex<HashMap<String, (String, crate::backend::LostSignal)>>,
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
}
