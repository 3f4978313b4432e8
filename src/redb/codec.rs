//! The stored form of one redb entry: `[last_index: u64 LE][expires_at_ms: u64 LE, 0 =
//! never][value]`, and whether it is still live.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::NAME;
use crate::backend::KvPair;
use crate::error::{Error, Result};

/// Bytes before the value: the index and the deadline.
const HEADER: usize = 16;

/// Milliseconds since the Unix epoch: the clock of TTL deadlines.
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One entry's stored bytes.
pub(super) fn encode(last_index: u64, expires_at: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + value.len());
    out.extend_from_slice(&last_index.to_le_bytes());
    out.extend_from_slice(&expires_at.to_le_bytes());
    out.extend_from_slice(value);
    out
}

/// A decoded entry: (last_index, expires_at_ms, value).
pub(super) fn decode(raw: &[u8]) -> Result<(u64, u64, &[u8])> {
    if raw.len() < HEADER {
        return Err(Error::backend(
            NAME,
            "corrupt entry: shorter than its header",
        ));
    }
    let index = u64::from_le_bytes(raw[..8].try_into().expect("8 bytes"));
    let expires = u64::from_le_bytes(raw[8..16].try_into().expect("8 bytes"));
    Ok((index, expires, &raw[HEADER..]))
}

/// True while a deadline (`0` = none) has not passed.
pub(super) fn live(expires_at: u64, now: u64) -> bool {
    expires_at == 0 || expires_at > now
}

/// The live pair stored as `raw` at `key`, if not expired.
pub(super) fn live_pair(key: &str, raw: &[u8], now: u64) -> Result<Option<KvPair>> {
    let (last_index, expires, value) = decode(raw)?;
    Ok(live(expires, now).then(|| KvPair {
        key: key.to_owned(),
        value: Bytes::copy_from_slice(value),
        last_index,
    }))
}
