//! The writer thread of one redb database: it takes every queued [`Write`] and commits
//! them, with the expiries that are due, in one durable transaction (group commit),
//! then answers each writer and wakes the watchers.

use std::ops::Bound;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use ::redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};
use bytes::Bytes;
use tokio::sync::oneshot;

use super::NAME;
use super::codec::{decode, encode, live, now_ms};
use super::error::storage;
use super::tables::{DATA, EXPIRY, LOCKS, META, REVISION, free_locks};
use crate::backend::{Cas, Expect, KvPair};
use crate::error::{Error, Result};
use crate::key::{Dir, Key};
use crate::local_watch::Watchers;

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 1024;

/// A write request for the writer thread.
pub(super) enum Write {
    Put {
        key: Key<'static>,
        value: Bytes,
        ttl: Option<Duration>,
        expect: Option<Expect>,
        /// A lock write: recorded in the lock table.
        lock: bool,
        reply: oneshot::Sender<Result<Cas<KvPair>>>,
    },
    Delete {
        key: Key<'static>,
        expect: Option<u64>,
        /// A lock release: drops the lock record.
        lock: bool,
        reply: oneshot::Sender<Result<Cas<bool>>>,
    },
    /// Deletes every key still held by a recorded lock (`close`).
    ReleaseLocks { reply: oneshot::Sender<Result<()>> },
    DeleteRange {
        dir: Dir,
        /// Delete `dir` itself too (`delete_tree`).
        with_dir: bool,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// The writer thread's state.
pub(super) struct Writer {
    pub(super) db: Arc<Database>,
    pub(super) watchers: Arc<Watchers>,
    /// The last revision handed out.
    pub(super) revision: u64,
}

/// What a write produced, before it is sent back.
enum Outcome {
    Pair(Cas<KvPair>),
    Deleted(Cas<bool>),
    Done,
}

impl Writer {
    /// Commits what arrives until every sender is gone.
    pub(super) fn run(mut self, receiver: mpsc::Receiver<Write>) {
        let mut next_expiry = self.next_expiry().unwrap_or(None);
        loop {
            let first = match next_expiry {
                Some(at) => {
                    let wait = Duration::from_millis(at.saturating_sub(now_ms()));
                    match receiver.recv_timeout(wait) {
                        Ok(write) => Some(write),
                        Err(mpsc::RecvTimeoutError::Timeout) => None,
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
                None => match receiver.recv() {
                    Ok(write) => Some(write),
                    Err(_) => return,
                },
            };
            let mut batch: Vec<Write> = first.into_iter().collect();
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(write) => batch.push(write),
                    Err(_) => break,
                }
            }
            self.commit(batch);
            next_expiry = self.next_expiry().unwrap_or(None);
        }
    }

    fn next_expiry(&self) -> Result<Option<u64>> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(EXPIRY).map_err(storage)?;
        Ok(table.first().map_err(storage)?.map(|(k, _)| k.value().0))
    }

    /// Applies `batch` (and any due expiries) in one durable transaction, then answers
    /// every writer and wakes the watchers.
    fn commit(&mut self, batch: Vec<Write>) {
        let start_revision = self.revision;
        let mut changed: Vec<String> = Vec::new();
        let result = (|| -> Result<Vec<Outcome>> {
            let txn = self.db.begin_write().map_err(storage)?;
            let now = now_ms();
            changed.extend(self.expire(&txn, now)?);
            let mut outcomes = Vec::with_capacity(batch.len());
            for write in &batch {
                outcomes.push(self.apply(&txn, write, now, &mut changed)?);
            }
            txn.open_table(META)
                .map_err(storage)?
                .insert(REVISION, self.revision)
                .map_err(storage)?;
            txn.commit().map_err(storage)?;
            Ok(outcomes)
        })();
        match result {
            Ok(outcomes) => {
                for (write, outcome) in batch.into_iter().zip(outcomes) {
                    match (write, outcome) {
                        (Write::Put { reply, .. }, Outcome::Pair(cas)) => {
                            let _ = reply.send(Ok(cas));
                        }
                        (Write::Delete { reply, .. }, Outcome::Deleted(cas)) => {
                            let _ = reply.send(Ok(cas));
                        }
                        (Write::DeleteRange { reply, .. }, Outcome::Done)
                        | (Write::ReleaseLocks { reply }, Outcome::Done) => {
                            let _ = reply.send(Ok(()));
                        }
                        _ => unreachable!("apply answers each write with its own outcome"),
                    }
                }
                self.watchers.notify(changed.iter().map(String::as_str));
            }
            Err(err) => {
                // Nothing was committed: hand the revision counter back too.
                self.revision = start_revision;
                let message = err.to_string();
                for write in batch {
                    let fail = || Error::backend(NAME, message.clone());
                    match write {
                        Write::Put { reply, .. } => drop(reply.send(Err(fail()))),
                        Write::Delete { reply, .. } => drop(reply.send(Err(fail()))),
                        Write::DeleteRange { reply, .. } => drop(reply.send(Err(fail()))),
                        Write::ReleaseLocks { reply } => drop(reply.send(Err(fail()))),
                    }
                }
            }
        }
    }

    /// Deletes the entries whose deadline passed; returns their keys.
    fn expire(&mut self, txn: &WriteTransaction, now: u64) -> Result<Vec<String>> {
        let mut expiry = txn.open_table(EXPIRY).map_err(storage)?;
        let mut due = Vec::new();
        for entry in expiry
            .range::<(u64, &str)>((Bound::Unbounded, Bound::Included((now, "\u{10FFFF}"))))
            .map_err(storage)?
        {
            let (k, _) = entry.map_err(storage)?;
            let (at, key) = k.value();
            due.push((at, key.to_owned()));
        }
        if due.is_empty() {
            return Ok(due.into_iter().map(|(_, k)| k).collect());
        }
        let mut data = txn.open_table(DATA).map_err(storage)?;
        for (at, key) in &due {
            expiry.remove((*at, key.as_str())).map_err(storage)?;
            data.remove(key.as_str()).map_err(storage)?;
        }
        self.revision += 1;
        Ok(due.into_iter().map(|(_, k)| k).collect())
    }

    fn apply(
        &mut self,
        txn: &WriteTransaction,
        write: &Write,
        now: u64,
        changed: &mut Vec<String>,
    ) -> Result<Outcome> {
        let mut data = txn.open_table(DATA).map_err(storage)?;
        let mut expiry = txn.open_table(EXPIRY).map_err(storage)?;
        // The current live version of a key, and its deadline (to unindex it).
        let current =
            |data: &::redb::Table<&str, &[u8]>, key: &str| -> Result<Option<(u64, u64)>> {
                match data.get(key).map_err(storage)? {
                    Some(raw) => {
                        let (index, expires, _) = decode(raw.value())?;
                        Ok(Some((index, expires)))
                    }
                    None => Ok(None),
                }
            };
        match write {
            Write::Put {
                key,
                value,
                ttl,
                expect,
                lock,
                ..
            } => {
                let existing = current(&data, key.as_str())?;
                let live_index = existing.filter(|(_, exp)| live(*exp, now)).map(|(i, _)| i);
                let holds = match expect {
                    None => true,
                    Some(Expect::Absent) => live_index.is_none(),
                    Some(Expect::Index(index)) => live_index == Some(*index),
                };
                if !holds {
                    return Ok(Outcome::Pair(Cas::Conflict {
                        current: live_index,
                    }));
                }
                if let Some((_, old_expiry)) = existing.filter(|(_, exp)| *exp != 0) {
                    expiry.remove((old_expiry, key.as_str())).map_err(storage)?;
                }
                self.revision += 1;
                let expires_at = ttl.map_or(0, |ttl| {
                    now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
                        .max(1)
                });
                data.insert(
                    key.as_str(),
                    encode(self.revision, expires_at, value).as_slice(),
                )
                .map_err(storage)?;
                if expires_at != 0 {
                    expiry
                        .insert((expires_at, key.as_str()), ())
                        .map_err(storage)?;
                }
                if *lock {
                    txn.open_table(LOCKS)
                        .map_err(storage)?
                        .insert(key.as_str(), self.revision)
                        .map_err(storage)?;
                }
                changed.push(key.as_str().to_owned());
                Ok(Outcome::Pair(Cas::Applied(KvPair {
                    key: key.as_str().to_owned(),
                    value: value.clone(),
                    last_index: self.revision,
                })))
            }
            Write::Delete {
                key, expect, lock, ..
            } => {
                let existing = current(&data, key.as_str())?;
                let live_index = existing.filter(|(_, exp)| live(*exp, now)).map(|(i, _)| i);
                if let Some(index) = expect
                    && live_index != Some(*index)
                {
                    return Ok(Outcome::Deleted(Cas::Conflict {
                        current: live_index,
                    }));
                }
                if let Some((_, exp)) = existing {
                    if exp != 0 {
                        expiry.remove((exp, key.as_str())).map_err(storage)?;
                    }
                    data.remove(key.as_str()).map_err(storage)?;
                    self.revision += 1;
                    changed.push(key.as_str().to_owned());
                }
                if *lock {
                    txn.open_table(LOCKS)
                        .map_err(storage)?
                        .remove(key.as_str())
                        .map_err(storage)?;
                }
                Ok(Outcome::Deleted(Cas::Applied(live_index.is_some())))
            }
            Write::DeleteRange { dir, with_dir, .. } => {
                let prefix = dir.child_prefix();
                let mut doomed = Vec::new();
                if let Some(key) = dir.as_key().filter(|_| *with_dir)
                    && let Some((_, exp)) = current(&data, key.as_str())?
                {
                    doomed.push((key.into_string(), exp));
                }
                for entry in data
                    .range::<&str>((Bound::Included(prefix.as_str()), Bound::Unbounded))
                    .map_err(storage)?
                {
                    let (k, raw) = entry.map_err(storage)?;
                    if !k.value().starts_with(prefix.as_str()) {
                        break;
                    }
                    let (_, exp, _) = decode(raw.value())?;
                    doomed.push((k.value().to_owned(), exp));
                }
                for (key, exp) in &doomed {
                    if *exp != 0 {
                        expiry.remove((*exp, key.as_str())).map_err(storage)?;
                    }
                    data.remove(key.as_str()).map_err(storage)?;
                }
                if !doomed.is_empty() {
                    self.revision += 1;
                }
                changed.extend(doomed.into_iter().map(|(k, _)| k));
                Ok(Outcome::Done)
            }
            Write::ReleaseLocks { .. } => {
                drop((data, expiry));
                changed.extend(free_locks(txn, &mut self.revision)?);
                Ok(Outcome::Done)
            }
        }
    }
}
