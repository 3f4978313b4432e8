//! The znode data encoding of kvkit (see `docs/zookeeper.md`).
//!
//! Every znode below `{root}/kv` carries a one-byte header telling whether it holds a
//! kvkit value:
//!
//! | first byte | meaning | rest |
//! | --- | --- | --- |
//! | none (empty data) or `0x00` | no value: an implicit parent or a deleted key | ignored |
//! | `0x01` | a value without TTL | the value |
//! | `0x02` | a value with TTL | 8 bytes big-endian TTL in ms, then the value |
//! | anything else | not written by kvkit: reads as no value | ignored |
//!
//! A value with TTL expires at the znode's `mtime` (the ZooKeeper leader's clock at the
//! write) plus the TTL.
//!
//! With [`ZookeeperEncoding::Raw`] a znode's data is the value itself, as other clients
//! (zkCli, Curator, docker/libkv) write it: empty data is an implicit parent, so an
//! empty value cannot be stored, and there is no room for a TTL.

use bytes::Bytes;

use super::{NAME, ZookeeperEncoding};
use crate::error::{Error, Result};

/// Header byte of a znode without a value.
pub(crate) const NO_VALUE: u8 = 0x00;
/// Header byte of a value without TTL.
pub(crate) const VALUE: u8 = 0x01;
/// Header byte of a value with TTL.
pub(crate) const VALUE_TTL: u8 = 0x02;
/// Largest header size in bytes.
pub(crate) const MAX_HEADER: usize = 9;

/// What a znode's data says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// No kvkit value.
    NoValue,
    /// A value, with its TTL in ms when it has one.
    Value {
        /// The value.
        value: Bytes,
        /// TTL in milliseconds from the znode's mtime.
        ttl_ms: Option<u64>,
    },
}

/// Encodes a value with an optional TTL in milliseconds.
pub(crate) fn encode(value: &[u8], ttl_ms: Option<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + MAX_HEADER);
    match ttl_ms {
        None => out.push(VALUE),
        Some(ttl) => {
            out.push(VALUE_TTL);
            out.extend_from_slice(&ttl.to_be_bytes());
        }
    }
    out.extend_from_slice(value);
    out
}

/// The data of a znode without a value.
pub(crate) fn no_value() -> Vec<u8> {
    Vec::new()
}

/// Decodes a znode's data; never fails (unknown data reads as no value).
pub(crate) fn decode(data: Vec<u8>) -> Decoded {
    match data.first() {
        Some(&VALUE) => {
            let mut bytes = Bytes::from(data);
            let value = bytes.split_off(1);
            Decoded::Value {
                value,
                ttl_ms: None,
            }
        }
        Some(&VALUE_TTL) if data.len() >= MAX_HEADER => {
            let mut ttl = [0u8; 8];
            ttl.copy_from_slice(&data[1..MAX_HEADER]);
            let mut bytes = Bytes::from(data);
            let value = bytes.split_off(MAX_HEADER);
            Decoded::Value {
                value,
                ttl_ms: Some(u64::from_be_bytes(ttl)),
            }
        }
        Some(&NO_VALUE) | None => Decoded::NoValue,
        Some(_) => Decoded::NoValue,
    }
}

impl ZookeeperEncoding {
    /// Encodes a value with an optional TTL in milliseconds; in raw encoding a TTL or
    /// an empty value is `Error::NotSupported`.
    pub(crate) fn encode(self, value: &[u8], ttl_ms: Option<u64>) -> Result<Vec<u8>> {
        match self {
            ZookeeperEncoding::Kvkit => Ok(encode(value, ttl_ms)),
            ZookeeperEncoding::Raw if ttl_ms.is_some() => Err(Error::NotSupported {
                backend: NAME,
                operation: "TTLs with encoding = \"raw\"",
            }),
            ZookeeperEncoding::Raw if value.is_empty() => Err(Error::NotSupported {
                backend: NAME,
                operation: "empty values with encoding = \"raw\" (empty data is an implicit parent)",
            }),
            ZookeeperEncoding::Raw => Ok(value.to_vec()),
        }
    }

    /// Decodes a znode's data; never fails.
    pub(crate) fn decode(self, data: Vec<u8>) -> Decoded {
        match self {
            ZookeeperEncoding::Kvkit => decode(data),
            ZookeeperEncoding::Raw if data.is_empty() => Decoded::NoValue,
            ZookeeperEncoding::Raw => Decoded::Value {
                value: Bytes::from(data),
                ttl_ms: None,
            },
        }
    }
}

/// Escapes a key into one znode name (for the lock directory): `%` and `/` are
/// percent-encoded.
pub(crate) fn escape_segment(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 8);
    for c in key.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(
            decode(encode(b"abc", None)),
            Decoded::Value {
                value: Bytes::from_static(b"abc"),
                ttl_ms: None
            }
        );
        assert_eq!(
            decode(encode(b"", Some(1500))),
            Decoded::Value {
                value: Bytes::new(),
                ttl_ms: Some(1500)
            }
        );
        assert_eq!(decode(no_value()), Decoded::NoValue);
        assert_eq!(decode(vec![NO_VALUE, 1, 2]), Decoded::NoValue);
        assert_eq!(decode(vec![b'x', b'y']), Decoded::NoValue);
        assert_eq!(decode(vec![VALUE_TTL, 0, 0]), Decoded::NoValue);
    }

    #[test]
    fn raw_encoding_is_the_value_itself() {
        let raw = ZookeeperEncoding::Raw;
        assert_eq!(raw.encode(b"abc", None).unwrap(), b"abc");
        assert_eq!(
            raw.decode(b"\x01abc".to_vec()),
            Decoded::Value {
                value: Bytes::from_static(b"\x01abc"),
                ttl_ms: None
            }
        );
        assert_eq!(raw.decode(Vec::new()), Decoded::NoValue);
        let ttl = raw.encode(b"abc", Some(1000)).unwrap_err();
        assert_eq!(ttl.kind(), crate::ErrorKind::NotSupported);
        let empty = raw.encode(b"", None).unwrap_err();
        assert_eq!(empty.kind(), crate::ErrorKind::NotSupported);
        // The kvkit encoding is unchanged.
        let kvkit = ZookeeperEncoding::Kvkit;
        assert_eq!(kvkit.encode(b"abc", None).unwrap(), encode(b"abc", None));
        assert_eq!(kvkit.decode(b"abc".to_vec()), Decoded::NoValue);
    }

    #[test]
    fn escapes_slashes() {
        assert_eq!(escape_segment("a/b%c"), "a%2Fb%25c");
    }
}
