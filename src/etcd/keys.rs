//! How kvkit keys and indexes map onto etcd: keys below the prefix, the range of a
//! directory, pairs from etcd key/values, revisions as indexes, lease TTLs in seconds.

use std::time::Duration;

use bytes::Bytes;
use etcd_client::{KeyValue, TxnOpResponse};

use super::Etcd;
use crate::backend::KvPair;
use crate::key::{Dir, Key};

impl Etcd {
    /// The etcd key of a kvkit key.
    pub(super) fn full(&self, key: &str) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.inner.prefix.len() + key.len());
        full.extend_from_slice(&self.inner.prefix);
        full.extend_from_slice(key.as_bytes());
        full
    }

    /// The etcd range `[start, end)` holding every key strictly below `dir`.
    pub(super) fn dir_range(&self, dir: &Dir) -> (Vec<u8>, Vec<u8>) {
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
    pub(super) fn pair(&self, kv: &KeyValue) -> Option<KvPair> {
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
    pub(super) fn owned_pair(&self, kv: KeyValue) -> Option<KvPair> {
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
}

/// The smallest key greater than every key starting with `prefix`.
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
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
pub(super) fn revision(rev: i64) -> u64 {
    u64::try_from(rev).unwrap_or(0)
}

/// A kvkit index as an etcd revision; an index no revision can have maps to -1, so the
/// comparison fails as a conflict.
pub(super) fn index_to_revision(index: u64) -> i64 {
    i64::try_from(index).unwrap_or(-1)
}

/// The revision an answer's header reports (0 without a header).
pub(crate) fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map_or(0, etcd_client::ResponseHeader::revision)
}

/// The mod_revision of the key read by a transaction's failure branch.
pub(super) fn first_mod_revision(responses: &[TxnOpResponse]) -> Option<u64> {
    responses.iter().find_map(|resp| match resp {
        TxnOpResponse::Get(get) => get.kvs().first().map(|kv| revision(kv.mod_revision())),
        _ => None,
    })
}
