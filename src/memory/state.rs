//! The data of the in-memory store: the sorted map of entries, the deadline index of
//! the entries with a TTL, and the revision counter behind every `last_index`.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::backend::KvPair;
use crate::key::Dir;

/// Every entry, by key, with the deadline index and the revision counter.
#[derive(Default)]
pub(super) struct State {
    pub(super) entries: BTreeMap<String, Entry>,
    /// Deadline index of the entries that have a TTL.
    pub(super) expiries: BTreeSet<(Instant, String)>,
    pub(super) revision: u64,
}

/// One stored value.
pub(super) struct Entry {
    pub(super) value: Bytes,
    pub(super) last_index: u64,
    pub(super) expires_at: Option<Instant>,
}

impl Entry {
    /// True while the deadline (if any) has not passed.
    pub(super) fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }

    /// The entry as the pair of `key`.
    pub(super) fn pair(&self, key: &str) -> KvPair {
        KvPair {
            key: key.to_owned(),
            value: self.value.clone(),
            last_index: self.last_index,
        }
    }
}

impl State {
    /// The live entry at `key`.
    pub(super) fn live(&self, key: &str, now: Instant) -> Option<&Entry> {
        self.entries.get(key).filter(|e| e.live(now))
    }

    /// The live entry at `key`, reading the clock only when it has a TTL (a clock read
    /// is a fifth of a get's time).
    pub(super) fn live_now(&self, key: &str) -> Option<&Entry> {
        self.entries
            .get(key)
            .filter(|e| e.expires_at.is_none_or(|at| at > Instant::now()))
    }

    /// Stores `value` at `key` under the next revision.
    pub(super) fn write(
        &mut self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
        now: Instant,
    ) -> KvPair {
        self.revision += 1;
        let expires_at = ttl.map(|ttl| now + ttl);
        let old = self.entries.insert(
            key.to_owned(),
            Entry {
                value,
                last_index: self.revision,
                expires_at,
            },
        );
        if let Some(at) = old.and_then(|e| e.expires_at) {
            self.expiries.remove(&(at, key.to_owned()));
        }
        if let Some(at) = expires_at {
            self.expiries.insert((at, key.to_owned()));
        }
        self.entries[key].pair(key)
    }

    /// Removes `key`; true when it was live.
    pub(super) fn remove(&mut self, key: &str, now: Instant) -> bool {
        match self.entries.remove(key) {
            Some(entry) => {
                if let Some(at) = entry.expires_at {
                    self.expiries.remove(&(at, key.to_owned()));
                }
                self.revision += 1;
                entry.live(now)
            }
            None => false,
        }
    }

    /// Removes every expired entry and returns their keys.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<String> {
        let mut expired = Vec::new();
        while let Some((at, _)) = self.expiries.first() {
            if *at > now {
                break;
            }
            let (_, key) = self.expiries.pop_first().expect("checked above");
            self.entries.remove(&key);
            expired.push(key);
        }
        if !expired.is_empty() {
            self.revision += 1;
        }
        expired
    }
}

/// Live pairs strictly below `dir`, sorted by key.
pub(super) fn below(state: &State, dir: &Dir, now: Instant) -> Vec<KvPair> {
    let prefix = dir.child_prefix();
    state
        .entries
        .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(&prefix))
        .filter(|(k, e)| e.live(now) && dir.contains(k))
        .map(|(k, e)| e.pair(k))
        .collect()
}
