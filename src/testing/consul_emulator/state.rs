//! The emulated state store: the KV table with its tombstones, the sessions, and the
//! lock-delays, following `consul-http-api.md` (and Consul's `state/kvs.go` and
//! `state/session.go` where the document says the server code wins).
//!
//! Every method is synchronous and runs under the emulator's mutex; the HTTP layer
//! takes the lock, calls one method (or a transaction's worth on a copy) and wakes the
//! blocking queries afterwards.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

/// One KV entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub create_index: u64,
    pub modify_index: u64,
    pub lock_index: u64,
    pub flags: u64,
    pub value: Vec<u8>,
    pub session: Option<String>,
}

/// What happens to a session's held keys when it is invalidated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Behavior {
    Release,
    Delete,
}

impl Behavior {
    pub fn as_str(self) -> &'static str {
        match self {
            Behavior::Release => "release",
            Behavior::Delete => "delete",
        }
    }
}

/// One session.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    pub id: String,
    pub name: String,
    /// The TTL as the client wrote it (echoed back), and its parsed value.
    pub ttl_text: String,
    pub ttl: Option<Duration>,
    pub behavior: Behavior,
    pub lock_delay: Duration,
    pub create_index: u64,
    pub modify_index: u64,
    /// When the server invalidates the session unless it is renewed.
    pub expires_at: Option<Instant>,
}

/// The whole store. Cloned for transactions (apply on the copy, keep it on success)
/// and for snapshots.
#[derive(Clone, Debug, Default)]
pub(crate) struct State {
    /// The last applied (Raft) index: every write request takes the next one.
    pub index: u64,
    pub kv: BTreeMap<String, Entry>,
    /// Deleted keys and the index of their deletion.
    pub tombstones: BTreeMap<String, u64>,
    /// Highest index of the KV table including deletions.
    pub kv_index: u64,
    pub sessions: BTreeMap<String, Session>,
    pub session_index: u64,
    /// Keys whose lock-delay is in force, and until when.
    pub lock_delays: HashMap<String, Instant>,
}

/// Result of a write that can fail as a whole (a 500 on the HTTP API).
pub(crate) type WriteResult<T> = Result<T, String>;

impl State {
    /// Takes the index of the next write request.
    pub fn next_index(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    /// The index a blocking query on one key reports: the key's ModifyIndex, or the
    /// highest index of the KV table (with deletions) when it is missing.
    pub fn key_index(&self, key: &str) -> u64 {
        match self.kv.get(key) {
            Some(entry) => entry.modify_index,
            None => self.kv_index,
        }
    }

    /// Entries whose key starts with `prefix` (a plain string prefix).
    pub fn list(&self, prefix: &str) -> Vec<(&String, &Entry)> {
        self.kv
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .collect()
    }

    /// The index of a prefix query: the highest ModifyIndex or deletion index below
    /// the prefix, or the whole table's index when there is none.
    pub fn prefix_index(&self, prefix: &str) -> u64 {
        let entries = self.list(prefix).iter().map(|(_, e)| e.modify_index).max();
        let tombs = self
            .tombstones
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, i)| *i)
            .max();
        match entries.into_iter().chain(tombs).max() {
            Some(index) if index > 0 => index,
            _ => self.kv_index,
        }
    }

    fn touch_kv(&mut self, idx: u64) {
        self.kv_index = self.kv_index.max(idx);
    }

    /// A plain set: keeps CreateIndex, LockIndex and Session; an identical entry is
    /// not rewritten (its ModifyIndex stays).
    pub fn set(&mut self, idx: u64, key: &str, value: Vec<u8>, flags: u64) {
        match self.kv.get_mut(key) {
            Some(entry) => {
                if entry.value == value && entry.flags == flags {
                    return;
                }
                entry.value = value;
                entry.flags = flags;
                entry.modify_index = idx;
            }
            None => {
                self.kv.insert(
                    key.to_owned(),
                    Entry {
                        create_index: idx,
                        modify_index: idx,
                        lock_index: 0,
                        flags,
                        value,
                        session: None,
                    },
                );
            }
        }
        self.touch_kv(idx);
    }

    /// `?cas=`: 0 means "only if missing"; N means "only if ModifyIndex == N".
    pub fn cas(&mut self, idx: u64, key: &str, value: Vec<u8>, flags: u64, cas: u64) -> bool {
        let ok = match self.kv.get(key) {
            None => cas == 0,
            Some(entry) => cas != 0 && entry.modify_index == cas,
        };
        if ok {
            self.set(idx, key, value, flags);
        }
        ok
    }

    /// True while a lock-delay holds `key`.
    pub fn lock_delayed(&self, key: &str, now: Instant) -> bool {
        self.lock_delays.get(key).is_some_and(|until| *until > now)
    }

    /// `?acquire=`: an unknown session is an error; false when another session holds
    /// the key or a lock-delay is in force.
    pub fn acquire(
        &mut self,
        idx: u64,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        session: &str,
        now: Instant,
    ) -> WriteResult<bool> {
        if !self.sessions.contains_key(session) {
            return Err(format!("invalid session \"{session}\""));
        }
        if self.lock_delayed(key, now) {
            return Ok(false);
        }
        match self.kv.get_mut(key) {
            Some(entry) => match entry.session.as_deref() {
                Some(holder) if holder != session => return Ok(false),
                Some(_) => {
                    // Re-acquire by the holder: LockIndex kept (server code).
                    if entry.value == value && entry.flags == flags {
                        return Ok(true);
                    }
                    entry.value = value;
                    entry.flags = flags;
                    entry.modify_index = idx;
                }
                None => {
                    entry.value = value;
                    entry.flags = flags;
                    entry.session = Some(session.to_owned());
                    entry.lock_index += 1;
                    entry.modify_index = idx;
                }
            },
            None => {
                self.kv.insert(
                    key.to_owned(),
                    Entry {
                        create_index: idx,
                        modify_index: idx,
                        lock_index: 1,
                        flags,
                        value,
                        session: Some(session.to_owned()),
                    },
                );
            }
        }
        self.touch_kv(idx);
        Ok(true)
    }

    /// `?release=`: false unless `session` holds the key; clears Session, keeps
    /// LockIndex, writes the body.
    pub fn release(
        &mut self,
        idx: u64,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        session: &str,
    ) -> bool {
        let Some(entry) = self.kv.get_mut(key) else {
            return false;
        };
        if entry.session.as_deref() != Some(session) {
            return false;
        }
        entry.session = None;
        entry.value = value;
        entry.flags = flags;
        entry.modify_index = idx;
        self.touch_kv(idx);
        true
    }

    /// Deletes one key; true when it existed.
    pub fn delete(&mut self, idx: u64, key: &str) -> bool {
        if self.kv.remove(key).is_some() {
            self.tombstones.insert(key.to_owned(), idx);
            self.touch_kv(idx);
            true
        } else {
            false
        }
    }

    /// Deletes every key with `prefix`; the number deleted.
    pub fn delete_tree(&mut self, idx: u64, prefix: &str) -> usize {
        let keys: Vec<String> = self
            .list(prefix)
            .into_iter()
            .map(|(k, _)| k.clone())
            .collect();
        for key in &keys {
            self.delete(idx, key);
        }
        keys.len()
    }

    /// Creates a session.
    pub fn create_session(
        &mut self,
        idx: u64,
        mut session: Session,
        now: Instant,
        multiplier: u32,
    ) -> String {
        session.create_index = idx;
        session.modify_index = idx;
        session.expires_at = session.ttl.map(|ttl| now + ttl * multiplier);
        let id = session.id.clone();
        self.sessions.insert(id.clone(), session);
        self.session_index = idx;
        id
    }

    /// Resets a session's TTL timer; `None` when unknown.
    pub fn renew_session(&mut self, id: &str, now: Instant, multiplier: u32) -> Option<Session> {
        let session = self.sessions.get_mut(id)?;
        session.expires_at = session.ttl.map(|ttl| now + ttl * multiplier);
        Some(session.clone())
    }

    /// Invalidates a session: its held keys are released or deleted per its behaviour,
    /// and their lock-delay starts. False when it did not exist.
    pub fn destroy_session(&mut self, idx: u64, id: &str, now: Instant) -> bool {
        let Some(session) = self.sessions.remove(id) else {
            return false;
        };
        self.session_index = idx;
        let held: Vec<String> = self
            .kv
            .iter()
            .filter(|(_, e)| e.session.as_deref() == Some(id))
            .map(|(k, _)| k.clone())
            .collect();
        for key in held {
            match session.behavior {
                Behavior::Release => {
                    if let Some(entry) = self.kv.get_mut(&key) {
                        entry.session = None;
                        entry.modify_index = idx;
                    }
                    self.touch_kv(idx);
                }
                Behavior::Delete => {
                    self.delete(idx, &key);
                }
            }
            if !session.lock_delay.is_zero() {
                self.lock_delays.insert(key, now + session.lock_delay);
            }
        }
        true
    }

    /// Ids of the sessions whose TTL ran out.
    pub fn expired_sessions(&self, now: Instant) -> Vec<String> {
        self.sessions
            .values()
            .filter(|s| s.expires_at.is_some_and(|at| at <= now))
            .map(|s| s.id.clone())
            .collect()
    }

    /// Forgets lock-delays that are over.
    pub fn prune_lock_delays(&mut self, now: Instant) {
        self.lock_delays.retain(|_, until| *until > now);
    }
}
