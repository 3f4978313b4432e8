//! The tables of a kvkit redb file, their creation at open, and the recovery of the
//! locks a dead process left behind (see the module docs of `redb`).

use ::redb::{Database, ReadableTable, TableDefinition, WriteTransaction};

use super::codec::decode;
use super::error::storage;
use crate::error::Result;

/// key -> [last_index: u64 LE][expires_at_ms: u64 LE, 0 = never][value]
pub(super) const DATA: TableDefinition<&str, &[u8]> = TableDefinition::new("kvkit_data");
/// (expires_at_ms, key) -> (): the keys with a TTL, by deadline.
pub(super) const EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("kvkit_expiry");
/// "revision" -> the last revision handed out.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("kvkit_meta");
/// key -> last_index of the lock write holding it (see the module docs).
pub(super) const LOCKS: TableDefinition<&str, u64> = TableDefinition::new("kvkit_locks");
/// The key of the revision counter in [`META`].
pub(super) const REVISION: &str = "revision";

/// Creates the tables if needed, frees the locks left by a dead process (nobody else
/// can have the file open), and returns the stored revision.
pub(super) fn init_tables(db: &Database) -> Result<u64> {
    let txn = db.begin_write().map_err(storage)?;
    let revision = {
        txn.open_table(DATA).map_err(storage)?;
        txn.open_table(EXPIRY).map_err(storage)?;
        let mut meta = txn.open_table(META).map_err(storage)?;
        let mut revision = meta
            .get(REVISION)
            .map_err(storage)?
            .map_or(0, |v| v.value());
        if !free_locks(&txn, &mut revision)?.is_empty() {
            meta.insert(REVISION, revision).map_err(storage)?;
        }
        revision
    };
    txn.commit().map_err(storage)?;
    Ok(revision)
}

/// Deletes every key that still holds the lock write its record names, clears the
/// lock table, and returns the deleted keys (raising `revision` once if any).
pub(super) fn free_locks(txn: &WriteTransaction, revision: &mut u64) -> Result<Vec<String>> {
    let mut locks = txn.open_table(LOCKS).map_err(storage)?;
    let mut records = Vec::new();
    for entry in locks.iter().map_err(storage)? {
        let (key, index) = entry.map_err(storage)?;
        records.push((key.value().to_owned(), index.value()));
    }
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let mut data = txn.open_table(DATA).map_err(storage)?;
    let mut expiry = txn.open_table(EXPIRY).map_err(storage)?;
    let mut freed = Vec::new();
    for (key, index) in records {
        locks.remove(key.as_str()).map_err(storage)?;
        let held = match data.get(key.as_str()).map_err(storage)? {
            Some(raw) => {
                let (current, expires, _) = decode(raw.value())?;
                (current == index).then_some(expires)
            }
            None => None,
        };
        if let Some(expires) = held {
            if expires != 0 {
                expiry.remove((expires, key.as_str())).map_err(storage)?;
            }
            data.remove(key.as_str()).map_err(storage)?;
            freed.push(key);
        }
    }
    if !freed.is_empty() {
        *revision += 1;
    }
    Ok(freed)
}
