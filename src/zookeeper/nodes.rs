//! The znodes of the key space one at a time: a key's [`Node`] state and its pair, reads
//! that never go back in time, writes and deletes with their bounded optimistic retries,
//! lazy collection of expired TTL values, and the path helpers they share.

use bytes::Bytes;
use zookeeper_async::{CreateMode, Stat, ZkError};

use super::codec::Decoded;
use super::error::contention;
use super::{MAX_ATTEMPTS, Zookeeper, ZookeeperEncoding};
use crate::backend::{Cas, KvPair, PutOptions};
use crate::error::Result;
use crate::key::Key;

/// The state of one znode of the key space.
#[derive(Debug)]
pub(crate) enum Node {
    /// No znode.
    Missing,
    /// A znode without a (live) value; `expired_mzxid` is set when it holds an expired
    /// TTL value: the `mzxid` of that write, which only its collection may remove.
    Empty {
        stat: Stat,
        expired_mzxid: Option<i64>,
    },
    /// A znode with a live value; `deadline_ms` (server clock) when it has a TTL.
    Value {
        pair: KvPair,
        stat: Stat,
        deadline_ms: Option<i64>,
    },
}

/// What the client answers to a `getChildren`.
pub(super) type ZkResultVec = std::result::Result<Vec<String>, ZkError>;
/// What the client answers to a `getData`.
pub(super) type ZkResultData = std::result::Result<(Vec<u8>, Stat), ZkError>;

/// The pair a znode's data and stat make for `key`.
pub(super) fn pair(encoding: ZookeeperEncoding, key: &str, data: &[u8], stat: &Stat) -> KvPair {
    let value = match encoding.decode(data.to_vec()) {
        Decoded::Value { value, .. } => value,
        Decoded::NoValue => Bytes::new(),
    };
    KvPair {
        key: key.to_owned(),
        value,
        last_index: index_of(stat),
    }
}

/// The highest zxid a `Stat` proves its server had applied.
pub(super) fn stat_zxid(stat: &Stat) -> i64 {
    stat.mzxid.max(stat.czxid).max(stat.pzxid)
}

/// A znode's `last_index`: the zxid of its last data change.
pub(crate) fn index_of(stat: &Stat) -> u64 {
    u64::try_from(stat.mzxid).unwrap_or(0)
}

/// The strict ancestors of `path` (`/a/b/c` → `/a`, `/a/b`), outermost first.
pub(super) fn ancestors(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut end = 0;
    while let Some(pos) = path[end + 1..].find('/') {
        end = end + 1 + pos;
        out.push(path[..end].to_owned());
    }
    out
}

impl Zookeeper {
    /// The TTL written into the znode data, in whole milliseconds (at least 1).
    pub(super) fn ttl_ms(options: &PutOptions) -> Option<u64> {
        options
            .ttl
            .map(|ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
    }

    /// Reads one key's node, never older than what this handle has returned before:
    /// on the main session, unless the bulk reader has returned newer state than the
    /// main session is known to have (see `Inner::read_via_reader`).
    pub(crate) async fn read_node(&self, key: &str) -> Result<Node> {
        let path = self.inner.key_path(key);
        if let Some(node) = self.inner.read_via_reader(&path, key).await {
            return Ok(node);
        }
        self.inner
            .read_node(&path, key, None)
            .await
            .map_err(|e| self.map_err(e))
    }

    /// Collects the expired TTL value at `path` written at `mzxid`, in the background,
    /// once. A versioned delete alone is not enough: once one reader has deleted the
    /// znode and a writer has created it again, the new znode has the data version the
    /// expired one had (0), and a second reader's versioned delete would remove the fresh
    /// write. So one collection per (path, mzxid) in this handle; across handles the
    /// collector first takes an ephemeral claim `{root}/gc/<escaped path>@<mzxid>` (a
    /// taken claim means someone else collects it); then it reads the znode again and
    /// removes it only if it still is that write (same `mzxid`), with a delete versioned
    /// at the data version of that read.
    pub(crate) fn collect_expired(&self, path: String, mzxid: i64) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let job = (path, mzxid);
        if !self.inner.collecting().insert(job.clone()) {
            return;
        }
        let backend = self.clone();
        handle.spawn(async move {
            backend.inner.collect_once(&job.0, job.1).await;
            backend.inner.collecting().remove(&job);
        });
    }

    /// Writes `data` at `key`: an update of the znode, or its creation (with parents).
    pub(super) async fn write_new_or_update(
        &self,
        key: &Key<'_>,
        data: Vec<u8>,
        mode: CreateMode,
    ) -> Result<KvPair> {
        let inner = &self.inner;
        let path = inner.key_path(key.as_str());
        for _ in 0..MAX_ATTEMPTS {
            match inner
                .call(|| inner.zk.set_data(&path, data.clone(), None))
                .await
            {
                Ok(stat) => {
                    return Ok(inner.written(key.as_str(), &data, &stat));
                }
                Err(ZkError::NoNode) => {}
                Err(e) => return Err(self.map_err(e)),
            }
            match inner.create_with_parents(&path, data.clone(), mode).await {
                Ok(stat) => {
                    return Ok(inner.written(key.as_str(), &data, &stat));
                }
                Err(ZkError::NodeExists) => continue,
                Err(e) => return Err(self.map_err(e)),
            }
        }
        Err(contention(key.as_str()))
    }

    /// Writes a lock's value at `key`, an ordinary persistent value: keys may be put
    /// below a held lock's key, and a value someone else writes over it stays.
    pub(crate) async fn write_lock_value(&self, key: &Key<'_>, value: &[u8]) -> Result<KvPair> {
        self.write_new_or_update(
            key,
            self.inner.encoding.encode(value, None)?,
            CreateMode::Persistent,
        )
        .await
    }

    /// Deletes the value at `key`, only if it is at index `expect` when that is given.
    pub(super) async fn delete_node(&self, key: &Key<'_>, expect: Option<u64>) -> Result<Cas<()>> {
        let inner = &self.inner;
        let path = inner.key_path(key.as_str());
        for _ in 0..MAX_ATTEMPTS {
            let (stat, index) = match self.read_node(key.as_str()).await? {
                Node::Missing => return Ok(Cas::Conflict { current: None }),
                Node::Empty { expired_mzxid, .. } => {
                    if let Some(version) = expired_mzxid {
                        self.collect_expired(path.clone(), version);
                    }
                    return Ok(Cas::Conflict { current: None });
                }
                Node::Value { pair, stat, .. } => (stat, pair.last_index),
            };
            if let Some(expected) = expect
                && expected != index
            {
                return Ok(Cas::Conflict {
                    current: Some(index),
                });
            }
            match inner.remove_versioned(&path, stat.version).await {
                Ok(_) => {
                    inner.wrote_on_main();
                    return Ok(Cas::Applied(()));
                }
                Err(ZkError::BadVersion | ZkError::NoNode) => continue,
                Err(e) => return Err(self.map_err(e)),
            }
        }
        Err(contention(key.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_are_outermost_first() {
        assert_eq!(ancestors("/a/b/c"), vec!["/a", "/a/b"]);
        assert!(ancestors("/a").is_empty());
    }
}
