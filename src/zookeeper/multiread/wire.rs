//! The Jute wire format of the bulk reader's requests and replies (zookeeper.jute):
//! opcodes, the encoding primitives, request frames, reply headers and the multiRead
//! records. Pure functions over bytes, no I/O, so every decoder is tested on truncated
//! and garbage input. (Not to be confused with `zookeeper::codec`, the encoding of
//! kvkit values inside znodes.)
//!
//! Frames are an `i32` length and the record; a request is `RequestHeader {xid:int,
//! type:int}` + body, a reply `ReplyHeader {xid:int, zxid:long, err:int}` + body (no
//! body when `err != 0`). A multiRead body is, per op, `MultiHeader {type:int,
//! done:boolean, err:int}` + the op's request, ended by `MultiHeader {-1, true, -1}`;
//! its answer likewise, per op `MultiHeader` + the op's response or, for a failed op,
//! type -1 + `ErrorResponse {err:int}`.

use zookeeper_async::{Stat, ZkError};

pub(super) const OP_GET_DATA: i32 = 4;
pub(super) const OP_GET_CHILDREN: i32 = 8;
pub(super) const OP_SYNC: i32 = 9;
pub(super) const OP_PING: i32 = 11;
pub(super) const OP_MULTI_READ: i32 = 22;
pub(super) const OP_AUTH: i32 = 100;
pub(super) const OP_CLOSE_SESSION: i32 = -11;
/// The type of a failed op in a multi answer.
pub(super) const OP_ERROR: i32 = -1;

pub(super) const XID_WATCH_EVENT: i32 = -1;
pub(super) const XID_PING: i32 = -2;
pub(super) const XID_AUTH: i32 = -4;

/// The reply error of a server that does not know an opcode (ZooKeeper < 3.6 for
/// multiRead); such a server then closes the connection.
pub(super) const ERR_UNIMPLEMENTED: i32 = -6;

pub(super) type ZkResult<T> = std::result::Result<T, ZkError>;

/// A frame that does not decode as the jute record it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    /// The frame ends inside a field.
    #[error("truncated: {needed} more bytes needed, {left} left")]
    Truncated { needed: usize, left: usize },
    /// A negative length other than -1 (null).
    #[error("invalid length {0}")]
    BadLength(i32),
    /// A znode name that is not UTF-8.
    #[error("a string is not UTF-8")]
    BadUtf8,
    /// A result type that does not answer the op that was sent.
    #[error("unexpected result type {0}")]
    BadType(i32),
    /// Not one result per op.
    #[error("{got} results for {sent} reads")]
    Count { got: usize, sent: usize },
    /// Bytes after the record.
    #[error("{0} bytes left after the record")]
    Trailing(usize),
}

// ---- jute encoding -------------------------------------------------------------------

pub(super) fn put_i32(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(super) fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(super) fn put_bool(out: &mut Vec<u8>, v: bool) {
    out.push(u8::from(v));
}

pub(super) fn put_buffer(out: &mut Vec<u8>, v: &[u8]) {
    put_i32(out, i32::try_from(v.len()).unwrap_or(i32::MAX));
    out.extend_from_slice(v);
}

/// A cursor over a received record; every read checks the bounds.
pub(super) struct Jute<'a> {
    pub(super) buf: &'a [u8],
}

impl<'a> Jute<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                needed: n,
                left: self.buf.len(),
            });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(super) fn i32(&mut self) -> Result<i32, DecodeError> {
        let mut bytes = [0; 4];
        bytes.copy_from_slice(self.take(4)?);
        Ok(i32::from_be_bytes(bytes))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(self.take(8)?);
        Ok(i64::from_be_bytes(bytes))
    }

    fn bool(&mut self) -> Result<bool, DecodeError> {
        Ok(self.take(1)?[0] != 0)
    }

    /// A length-prefixed field; -1 (null) reads as empty.
    fn len(&mut self) -> Result<usize, DecodeError> {
        match self.i32()? {
            -1 => Ok(0),
            n => usize::try_from(n).map_err(|_| DecodeError::BadLength(n)),
        }
    }

    fn buffer(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.len()?;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.buffer()?.to_vec()).map_err(|_| DecodeError::BadUtf8)
    }

    fn stat(&mut self) -> Result<Stat, DecodeError> {
        Ok(Stat {
            czxid: self.i64()?,
            mzxid: self.i64()?,
            ctime: self.i64()?,
            mtime: self.i64()?,
            version: self.i32()?,
            cversion: self.i32()?,
            aversion: self.i32()?,
            ephemeral_owner: self.i64()?,
            data_length: self.i32()?,
            num_children: self.i32()?,
            pzxid: self.i64()?,
        })
    }

    fn end(&self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

/// One kind of read a multiRead carries.
pub(super) trait ReadKind {
    /// The op's type in its `MultiHeader`.
    const OPCODE: i32;
    /// What one successful op returns.
    type Out;
    /// Decodes the op's response record.
    fn decode(jute: &mut Jute<'_>) -> Result<Self::Out, DecodeError>;
}

/// `getChildren` (`GetChildrenResponse {children: vector<ustring>}`).
pub(super) struct Children;

impl ReadKind for Children {
    const OPCODE: i32 = OP_GET_CHILDREN;
    type Out = Vec<String>;
    fn decode(jute: &mut Jute<'_>) -> Result<Vec<String>, DecodeError> {
        let n = jute.len()?;
        // Each name takes at least its 4-byte length: bound the allocation by the frame.
        let mut names = Vec::with_capacity(n.min(jute.buf.len() / 4));
        for _ in 0..n {
            names.push(jute.string()?);
        }
        Ok(names)
    }
}

/// `getData` (`GetDataResponse {data: buffer, stat: Stat}`).
pub(super) struct Data;

impl ReadKind for Data {
    const OPCODE: i32 = OP_GET_DATA;
    type Out = (Vec<u8>, Stat);
    fn decode(jute: &mut Jute<'_>) -> Result<(Vec<u8>, Stat), DecodeError> {
        let data = jute.buffer()?.to_vec();
        Ok((data, jute.stat()?))
    }
}

/// The body of a multiRead of one `K` per path (`GetDataRequest` and `GetChildrenRequest`
/// are both `{path: ustring, watch: boolean}`).
pub(super) fn encode_multi_read(opcode: i32, paths: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(paths.iter().map(|p| op_bytes(p)).sum::<usize>() + 9);
    for path in paths {
        put_i32(&mut out, opcode);
        put_bool(&mut out, false);
        put_i32(&mut out, -1);
        put_buffer(&mut out, path.as_bytes());
        put_bool(&mut out, false);
    }
    put_i32(&mut out, -1);
    put_bool(&mut out, true);
    put_i32(&mut out, -1);
    out
}

/// Encoded size of one op of a multiRead.
pub(super) fn op_bytes(path: &str) -> usize {
    9 + 4 + path.len() + 1
}

/// Decodes a multiRead answer to `sent` ops of kind `K`: one result per op, in op order;
/// a failed op (a child deleted since it was listed: `NoNode`) is its error.
pub(super) fn decode_multi_read<K: ReadKind>(
    body: &[u8],
    sent: usize,
) -> Result<Vec<ZkResult<K::Out>>, DecodeError> {
    let mut jute = Jute { buf: body };
    let mut out = Vec::with_capacity(sent);
    loop {
        let kind = jute.i32()?;
        let done = jute.bool()?;
        let _err = jute.i32()?;
        if done {
            break;
        }
        match kind {
            OP_ERROR => out.push(Err(ZkError::from(jute.i32()?))),
            k if k == K::OPCODE => out.push(Ok(K::decode(&mut jute)?)),
            other => return Err(DecodeError::BadType(other)),
        }
        if out.len() > sent {
            break;
        }
    }
    if out.len() != sent {
        return Err(DecodeError::Count {
            got: out.len(),
            sent,
        });
    }
    jute.end()?;
    Ok(out)
}

/// A request frame: length, `RequestHeader`, body.
pub(super) fn frame(xid: i32, opcode: i32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + body.len());
    put_i32(&mut out, i32::try_from(8 + body.len()).unwrap_or(i32::MAX));
    put_i32(&mut out, xid);
    put_i32(&mut out, opcode);
    out.extend_from_slice(body);
    out
}

/// The xid and error of a `ReplyHeader {xid, zxid, err}`.
pub(super) fn reply_header(frame: &[u8]) -> Result<(i32, i32), DecodeError> {
    let mut jute = Jute { buf: frame };
    let xid = jute.i32()?;
    jute.i64()?;
    Ok((xid, jute.i32()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(out: &mut Vec<u8>, kind: i32, done: bool, err: i32) {
        put_i32(out, kind);
        put_bool(out, done);
        put_i32(out, err);
    }

    fn stat(out: &mut Vec<u8>, mzxid: i64, num_children: i32) {
        for v in [1, mzxid, 2, 3] {
            put_i64(out, v);
        }
        for v in [4, 5, 6] {
            put_i32(out, v);
        }
        put_i64(out, 0);
        put_i32(out, 7);
        put_i32(out, num_children);
        put_i64(out, 8);
    }

    /// A multiRead answer to three getData: a value, a child deleted meanwhile (NoNode),
    /// and a null buffer.
    fn data_answer() -> Vec<u8> {
        let mut out = Vec::new();
        header(&mut out, OP_GET_DATA, false, 0);
        put_buffer(&mut out, b"\x01v1");
        stat(&mut out, 42, 0);
        header(&mut out, OP_ERROR, false, -101);
        put_i32(&mut out, -101);
        header(&mut out, OP_GET_DATA, false, 0);
        put_i32(&mut out, -1);
        stat(&mut out, 43, 2);
        header(&mut out, -1, true, -1);
        out
    }

    #[test]
    fn multi_read_answers_decode_per_op() {
        let results = decode_multi_read::<Data>(&data_answer(), 3).unwrap();
        let (data, first) = results[0].as_ref().unwrap();
        assert_eq!(
            (data.as_slice(), first.mzxid, first.num_children),
            (&b"\x01v1"[..], 42, 0)
        );
        assert_eq!(first.data_length, 7);
        assert_eq!(first.pzxid, 8);
        assert_eq!(results[1].as_ref().unwrap_err(), &ZkError::NoNode);
        let (data, third) = results[2].as_ref().unwrap();
        assert!(data.is_empty());
        assert_eq!((third.mzxid, third.num_children), (43, 2));

        let mut children = Vec::new();
        header(&mut children, OP_GET_CHILDREN, false, 0);
        put_i32(&mut children, 2);
        put_buffer(&mut children, "a".as_bytes());
        put_buffer(&mut children, "日本".as_bytes());
        header(&mut children, OP_ERROR, false, -102);
        put_i32(&mut children, -102);
        header(&mut children, -1, true, -1);
        let results = decode_multi_read::<Children>(&children, 2).unwrap();
        assert_eq!(results[0], Ok(vec!["a".to_owned(), "日本".to_owned()]));
        assert_eq!(results[1], Err(ZkError::NoAuth));
    }

    #[test]
    fn bad_answers_are_typed_errors() {
        let answer = data_answer();
        // Every truncation of a valid answer.
        for cut in 0..answer.len() {
            let err = decode_multi_read::<Data>(&answer[..cut], 3).unwrap_err();
            assert!(
                matches!(err, DecodeError::Truncated { .. }),
                "cut at {cut}: {err:?}"
            );
        }
        assert_eq!(
            decode_multi_read::<Data>(&answer, 2).unwrap_err(),
            DecodeError::Count { got: 3, sent: 2 }
        );
        assert_eq!(
            decode_multi_read::<Data>(&answer, 4).unwrap_err(),
            DecodeError::Count { got: 3, sent: 4 }
        );
        let mut trailing = answer.clone();
        trailing.push(0);
        assert_eq!(
            decode_multi_read::<Data>(&trailing, 3).unwrap_err(),
            DecodeError::Trailing(1)
        );
        // A getData answer where getChildren results are expected.
        assert_eq!(
            decode_multi_read::<Children>(&answer, 3).unwrap_err(),
            DecodeError::BadType(OP_GET_DATA)
        );
        // A huge child count, a negative length, a name that is not UTF-8.
        let mut huge = Vec::new();
        header(&mut huge, OP_GET_CHILDREN, false, 0);
        put_i32(&mut huge, i32::MAX);
        assert!(matches!(
            decode_multi_read::<Children>(&huge, 1).unwrap_err(),
            DecodeError::Truncated { .. }
        ));
        let mut negative = Vec::new();
        header(&mut negative, OP_GET_DATA, false, 0);
        put_i32(&mut negative, -7);
        assert_eq!(
            decode_multi_read::<Data>(&negative, 1).unwrap_err(),
            DecodeError::BadLength(-7)
        );
        let mut latin1 = Vec::new();
        header(&mut latin1, OP_GET_CHILDREN, false, 0);
        put_i32(&mut latin1, 1);
        put_buffer(&mut latin1, &[0xff, 0xfe]);
        header(&mut latin1, -1, true, -1);
        assert_eq!(
            decode_multi_read::<Children>(&latin1, 1).unwrap_err(),
            DecodeError::BadUtf8
        );
        // Garbage of every length: an error or a result, never a panic.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed >> 24) as u8
                })
                .collect();
            let _ = decode_multi_read::<Data>(&bytes, 2);
            let _ = decode_multi_read::<Children>(&bytes, 2);
        }
        assert!(reply_header(&[0; 15]).is_err());
    }

    #[test]
    fn requests_are_jute() {
        let body = encode_multi_read(OP_GET_DATA, &["/a".to_owned()]);
        assert_eq!(
            body,
            [
                &[0, 0, 0, 4, 0, 0xff, 0xff, 0xff, 0xff][..],
                &[0, 0, 0, 2, b'/', b'a', 0],
                &[0xff, 0xff, 0xff, 0xff, 1, 0xff, 0xff, 0xff, 0xff],
            ]
            .concat()
        );
        assert_eq!(op_bytes("/a"), 16);
        assert_eq!(
            frame(7, OP_SYNC, &[1, 2]),
            [0, 0, 0, 10, 0, 0, 0, 7, 0, 0, 0, 9, 1, 2]
        );
    }
}
