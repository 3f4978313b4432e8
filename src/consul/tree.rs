//! Scans and tree deletes of the Consul backend: `GET ?recurse` below a prefix, and
//! deletes by name of exactly the kvkit keys below a directory.

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::json;

use super::Inner;
use super::client::Entry;
use super::txn::{MAX_TXN_OPS, Txn, unexpected};
use crate::backend::KvPair;
use crate::error::Result;
use crate::key::Dir;

impl Inner {
    /// GET `?recurse` below a prefix: the entries and the response index.
    pub(crate) async fn get_tree(
        &self,
        remote_prefix: &str,
        index: u64,
    ) -> Result<(Vec<Entry>, u64)> {
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

    /// Deletes every kvkit key strictly below `dir`, and `dir` itself when `with_dir`
    /// (and `dir` is not the root), never a key in a form kvkit never writes: Consul
    /// has no guarded prefix delete, so the names below `dir/` are read (one
    /// `GET ?keys`) and exactly the kvkit ones deleted by name, [`MAX_TXN_OPS`] per
    /// txn. A key written after the read is kept, as if written after the delete; up
    /// to 63 keys below `dir` go in one txn, atomically.
    pub(super) async fn delete_own_keys_below(&self, dir: &Dir, with_dir: bool) -> Result<()> {
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

/// Every kvkit pair strictly below `dir`.
pub(super) async fn scan_below(inner: &Inner, dir: &Dir) -> Result<Vec<KvPair>> {
    let (entries, _) = inner.get_tree(&inner.remote_children(dir), 0).await?;
    let mut pairs = Vec::with_capacity(entries.len());
    for entry in &entries {
        if let Some(pair) = inner.pair(entry)?
            && dir.contains(&pair.key)
        {
            pairs.push(pair);
        }
    }
    Ok(pairs)
}
