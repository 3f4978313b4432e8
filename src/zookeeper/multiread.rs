//! A minimal ZooKeeper wire client for bulk reads: `sync` and `multiRead` (opcode 22,
//! ZooKeeper 3.6+), which the `zookeeper-async` crate cannot send.
//!
//! One TCP connection with a session of its own (opened lazily, reopened after a failure
//! with a bounded backoff, closed on drop), the main session's digest credentials
//! replayed on it, pings at a third of the session timeout while idle. Requests are
//! pipelined: the server answers a session's requests in order, so replies are matched
//! to requests by xid in send order.
//!
//! Consistency: this session may sit on another ensemble member than the main session,
//! which may lag behind the leader. Every traversal therefore sends a `sync` ahead of its
//! first multiRead on this session. The server orders a session's requests and holds a
//! read behind the session's pending `sync` until the member has caught up with the
//! leader as of the `sync`; a write the main session completed before the traversal
//! started was committed by then, so the traversal sees it (read-your-writes, as the
//! main session's own reads).
//!
//! Wire format (zookeeper.jute): frames are an `i32` length and the record; a request is
//! `RequestHeader {xid:int, type:int}` + body, a reply `ReplyHeader {xid:int, zxid:long,
//! err:int}` + body (no body when `err != 0`). A multiRead body is, per op,
//! `MultiHeader {type:int, done:boolean, err:int}` + the op's request, ended by
//! `MultiHeader {-1, true, -1}`; its answer likewise, per op `MultiHeader` + the op's
//! response or, for a failed op, type -1 + `ErrorResponse {err:int}`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zookeeper_async::{Stat, ZkError};

const OP_GET_DATA: i32 = 4;
const OP_GET_CHILDREN: i32 = 8;
const OP_SYNC: i32 = 9;
const OP_PING: i32 = 11;
const OP_MULTI_READ: i32 = 22;
const OP_AUTH: i32 = 100;
const OP_CLOSE_SESSION: i32 = -11;
/// The type of a failed op in a multi answer.
const OP_ERROR: i32 = -1;

const XID_WATCH_EVENT: i32 = -1;
const XID_PING: i32 = -2;
const XID_AUTH: i32 = -4;

/// The reply error of a server that does not know an opcode (ZooKeeper < 3.6 for
/// multiRead); such a server then closes the connection.
const ERR_UNIMPLEMENTED: i32 = -6;

/// Most reads in one multiRead; larger batches go as several pipelined multiReads.
pub(crate) const MAX_OPS: usize = 1_000;
/// Largest multiRead request frame: the server drops a connection whose request is over
/// its `jute.maxbuffer` (1 MiB by default).
const MAX_REQUEST_BYTES: usize = 512 * 1024;
/// Largest answer accepted; a larger one is skipped and its traversal re-reads through
/// the main session (64 values of 1 MiB).
const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;
/// Connection-level failures of a multiRead, before any ever succeeded, after which the
/// server is taken not to know it (one that closes the connection instead of answering).
const MAX_STRIKES: u32 = 3;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

type ZkResult<T> = std::result::Result<T, ZkError>;

/// Why a bulk read did not happen; either way the caller reads through the main session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ReadError {
    /// The server does not implement multiRead: stop trying.
    #[error("the ZooKeeper server does not implement multiRead (needs 3.6+)")]
    Unsupported,
    /// The reader session is down, timed out, or got an answer it could not use.
    #[error("bulk reader unavailable: {0}")]
    Unavailable(String),
}

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

fn put_i32(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_bool(out: &mut Vec<u8>, v: bool) {
    out.push(u8::from(v));
}

fn put_buffer(out: &mut Vec<u8>, v: &[u8]) {
    put_i32(out, i32::try_from(v.len()).unwrap_or(i32::MAX));
    out.extend_from_slice(v);
}

/// A cursor over a received record; every read checks the bounds.
struct Jute<'a> {
    buf: &'a [u8],
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

    fn i32(&mut self) -> Result<i32, DecodeError> {
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
trait ReadKind {
    /// The op's type in its `MultiHeader`.
    const OPCODE: i32;
    /// What one successful op returns.
    type Out;
    /// Decodes the op's response record.
    fn decode(jute: &mut Jute<'_>) -> Result<Self::Out, DecodeError>;
}

/// `getChildren` (`GetChildrenResponse {children: vector<ustring>}`).
struct Children;

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
struct Data;

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
fn encode_multi_read(opcode: i32, paths: &[String]) -> Vec<u8> {
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
fn op_bytes(path: &str) -> usize {
    9 + 4 + path.len() + 1
}

/// Decodes a multiRead answer to `sent` ops of kind `K`: one result per op, in op order;
/// a failed op (a child deleted since it was listed: `NoNode`) is its error.
fn decode_multi_read<K: ReadKind>(
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

/// Splits `paths` into multiRead batches: at most [`MAX_OPS`] ops and
/// [`MAX_REQUEST_BYTES`] per request (a single longer path still gets a batch).
fn batches(paths: &[String]) -> Vec<&[String]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, path) in paths.iter().enumerate() {
        let size = op_bytes(path);
        if i > start && (i - start == MAX_OPS || bytes + size > MAX_REQUEST_BYTES) {
            out.push(&paths[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < paths.len() {
        out.push(&paths[start..]);
    }
    out
}

/// A request frame: length, `RequestHeader`, body.
fn frame(xid: i32, opcode: i32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + body.len());
    put_i32(&mut out, i32::try_from(8 + body.len()).unwrap_or(i32::MAX));
    put_i32(&mut out, xid);
    put_i32(&mut out, opcode);
    out.extend_from_slice(body);
    out
}

// ---- one connection ------------------------------------------------------------------

/// A reply: its error code and (when 0) its body.
#[derive(Debug)]
struct Reply {
    err: i32,
    body: Vec<u8>,
}

type ReplySender = oneshot::Sender<Result<Reply, ReadError>>;

/// Requests sent and not answered yet, in send (= xid) order.
struct Pending {
    next_xid: i32,
    waiting: VecDeque<(i32, ReplySender)>,
    /// Set once the connection failed: later sends fail at once.
    failure: Option<String>,
}

/// What the connection's reader and writer tasks share with its users.
struct Link {
    pending: Mutex<Pending>,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    stop: CancellationToken,
}

enum Outgoing {
    Frame(Vec<u8>),
    /// The closeSession frame: the last one written.
    Close(Vec<u8>),
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a request; the xid is taken and the frame queued under one lock, so the
    /// writer sends frames in xid order.
    fn send(
        &self,
        opcode: i32,
        body: &[u8],
    ) -> Result<oneshot::Receiver<Result<Reply, ReadError>>, ReadError> {
        let mut pending = self.lock();
        if let Some(failure) = &pending.failure {
            return Err(ReadError::Unavailable(failure.clone()));
        }
        let xid = pending.next_xid;
        pending.next_xid = if xid == i32::MAX { 1 } else { xid + 1 };
        let (tx, rx) = oneshot::channel();
        if self
            .outgoing
            .send(Outgoing::Frame(frame(xid, opcode, body)))
            .is_err()
        {
            return Err(ReadError::Unavailable("connection closed".into()));
        }
        pending.waiting.push_back((xid, tx));
        Ok(rx)
    }

    /// Ends the connection: every waiting request fails with `reason`.
    fn fail(&self, reason: &str) {
        let waiting = {
            let mut pending = self.lock();
            pending.failure.get_or_insert_with(|| reason.to_owned());
            std::mem::take(&mut pending.waiting)
        };
        for (_, tx) in waiting {
            let _ = tx.send(Err(ReadError::Unavailable(reason.to_owned())));
        }
        self.stop.cancel();
    }

    fn is_failed(&self) -> bool {
        self.lock().failure.is_some()
    }

    /// Hands a reply to its request (the oldest waiting one: replies come in order).
    fn deliver(&self, xid: i32, reply: Result<Reply, ReadError>) -> Result<(), String> {
        let front = self.lock().waiting.pop_front();
        match front {
            Some((expected, tx)) if expected == xid => {
                let _ = tx.send(reply);
                Ok(())
            }
            Some((expected, _)) => Err(format!("reply xid {xid}, expected {expected}")),
            None => Err(format!("reply xid {xid} to no request")),
        }
    }
}

/// What a reader session needs to know.
#[derive(Clone, Debug)]
pub(crate) struct ReaderConfig {
    /// `host:port` of each server, in connect-string order.
    pub(crate) addrs: Vec<String>,
    pub(crate) session_timeout: Duration,
    pub(crate) request_timeout: Duration,
    /// `user:password` for the digest scheme.
    pub(crate) digest: Option<Vec<u8>>,
}

/// One open reader session; dropping it closes the session.
struct Session {
    link: Arc<Link>,
}

impl Session {
    /// Connects to `addr`, opens a new session and replays the credentials.
    async fn open(addr: &str, config: &ReaderConfig) -> Result<Session, String> {
        let (mut stream, negotiated) = handshake(addr, config.session_timeout).await?;
        if let Some(digest) = &config.digest {
            // AuthPacket {type, scheme, auth}; the server answers it at once with xid -4.
            let mut auth = Vec::new();
            put_i32(&mut auth, 0);
            put_buffer(&mut auth, b"digest");
            put_buffer(&mut auth, digest);
            stream
                .write_all(&frame(XID_AUTH, OP_AUTH, &auth))
                .await
                .map_err(|e| e.to_string())?;
            loop {
                let reply = read_small_frame(&mut stream).await?;
                let (xid, err) =
                    reply_header(&reply).map_err(|e| format!("bad auth answer: {e}"))?;
                if xid != XID_AUTH {
                    continue;
                }
                if err != 0 {
                    return Err(format!("credentials refused: {}", ZkError::from(err)));
                }
                break;
            }
        }
        let timeout = Duration::from_millis(u64::try_from(negotiated).unwrap_or(1));
        let (read_half, write_half) = stream.into_split();
        let (outgoing, queue) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            pending: Mutex::new(Pending {
                next_xid: 1,
                waiting: VecDeque::new(),
                failure: None,
            }),
            outgoing,
            stop: CancellationToken::new(),
        });
        tokio::spawn(read_loop(link.clone(), read_half, timeout * 2 / 3));
        tokio::spawn(write_loop(link.clone(), queue, write_half, timeout / 3));
        Ok(Session { link })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Best effort: without it the server keeps the session until it times out.
        let _ = self
            .link
            .outgoing
            .send(Outgoing::Close(frame(0, OP_CLOSE_SESSION, &[])));
    }
}

/// Connects to `addr` and opens a new session asking for `session_timeout`: the
/// stream and the session timeout the server granted (in ms; it clamps the request to
/// its `minSessionTimeout`..`maxSessionTimeout`).
async fn handshake(addr: &str, session_timeout: Duration) -> Result<(TcpStream, i32), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    // ConnectRequest {protocolVersion, lastZxidSeen, timeOut, sessionId, passwd},
    // then the readOnly flag every client appends (false: no read-only servers).
    let timeout_ms = i32::try_from(session_timeout.as_millis()).unwrap_or(i32::MAX);
    let mut body = Vec::with_capacity(45);
    put_i32(&mut body, 0);
    put_i64(&mut body, 0);
    put_i32(&mut body, timeout_ms);
    put_i64(&mut body, 0);
    put_buffer(&mut body, &[0; 16]);
    put_bool(&mut body, false);
    let mut request = Vec::with_capacity(4 + body.len());
    put_i32(&mut request, i32::try_from(body.len()).unwrap_or(i32::MAX));
    request.extend_from_slice(&body);
    stream
        .write_all(&request)
        .await
        .map_err(|e| e.to_string())?;
    // ConnectResponse {protocolVersion, timeOut, sessionId, passwd} (+ readOnly).
    let answer = read_small_frame(&mut stream).await?;
    let mut jute = Jute { buf: &answer };
    let negotiated = jute
        .i32()
        .and_then(|_| jute.i32())
        .map_err(|e| format!("bad connect answer: {e}"))?;
    if negotiated <= 0 {
        return Err("the server refused a session".into());
    }
    Ok((stream, negotiated))
}

/// The session timeout the servers at `addrs` grant for a request of `requested`: the
/// first that answers is asked with a session of its own, closed at once. The client
/// crate does not tell the timeout it was granted, and every deadline of the locks must
/// use the granted one (a server clamps a request above its `maxSessionTimeout`).
pub(crate) async fn negotiated_session_timeout(
    addrs: &[String],
    requested: Duration,
    within: Duration,
) -> Option<Duration> {
    for addr in addrs {
        let probe = tokio::time::timeout(within, async {
            let (mut stream, negotiated) = handshake(addr, requested).await?;
            // Close the probe's session now rather than let it time out.
            let _ = stream.write_all(&frame(1, OP_CLOSE_SESSION, &[])).await;
            let _ = tokio::time::timeout(Duration::from_millis(500), read_small_frame(&mut stream))
                .await;
            Ok::<_, String>(negotiated)
        })
        .await;
        if let Ok(Ok(ms)) = probe {
            return Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
        }
    }
    None
}

/// The xid and error of a `ReplyHeader {xid, zxid, err}`.
fn reply_header(frame: &[u8]) -> Result<(i32, i32), DecodeError> {
    let mut jute = Jute { buf: frame };
    let xid = jute.i32()?;
    jute.i64()?;
    Ok((xid, jute.i32()?))
}

/// Reads one frame of the handshake (a few dozen bytes).
async fn read_small_frame<R: AsyncRead + Unpin>(stream: &mut R) -> Result<Vec<u8>, String> {
    let len = stream.read_i32().await.map_err(|e| e.to_string())?;
    let len = usize::try_from(len)
        .ok()
        .filter(|n| *n <= 4096)
        .ok_or_else(|| format!("bad frame length {len}"))?;
    let mut buf = vec![0; len];
    stream
        .read_exact(&mut buf)
        .await
        .map_err(|e| e.to_string())?;
    Ok(buf)
}

/// Reads replies and hands each to its request until the connection ends.
async fn read_loop<R: AsyncRead + Unpin>(link: Arc<Link>, stream: R, idle_limit: Duration) {
    let mut stream = BufReader::with_capacity(64 * 1024, stream);
    let reason = loop {
        let next = tokio::select! {
            () = link.stop.cancelled() => break "connection closed".to_owned(),
            next = tokio::time::timeout(idle_limit, read_reply(&mut stream)) => next,
        };
        let (xid, reply) = match next {
            Err(_) => break "no answer from the server (not even to pings)".to_owned(),
            Ok(Err(e)) => break e,
            Ok(Ok(read)) => read,
        };
        if matches!(xid, XID_WATCH_EVENT | XID_PING | XID_AUTH) {
            continue;
        }
        if let Err(e) = link.deliver(xid, reply) {
            break e;
        }
    };
    link.fail(&reason);
}

/// Reads one reply frame: its xid and the reply (an answer over [`MAX_REPLY_BYTES`] is
/// skipped and reported, the connection stays usable).
async fn read_reply<R: AsyncRead + Unpin>(
    stream: &mut R,
) -> Result<(i32, Result<Reply, ReadError>), String> {
    let io = |e: std::io::Error| e.to_string();
    let len = stream.read_i32().await.map_err(io)?;
    let len = usize::try_from(len)
        .ok()
        .filter(|n| *n >= 16)
        .ok_or_else(|| format!("bad frame length {len}"))?;
    let xid = stream.read_i32().await.map_err(io)?;
    let _zxid = stream.read_i64().await.map_err(io)?;
    let err = stream.read_i32().await.map_err(io)?;
    let body_len = len - 16;
    if body_len > MAX_REPLY_BYTES {
        let skipped = tokio::io::copy(&mut stream.take(body_len as u64), &mut tokio::io::sink())
            .await
            .map_err(io)?;
        if skipped != body_len as u64 {
            return Err("connection closed".into());
        }
        let too_large = format!("an answer of {len} bytes (over {MAX_REPLY_BYTES})");
        return Ok((xid, Err(ReadError::Unavailable(too_large))));
    }
    let mut body = vec![0; body_len];
    stream.read_exact(&mut body).await.map_err(io)?;
    Ok((xid, Ok(Reply { err, body })))
}

/// Writes queued frames (several per flush when they pile up) and a ping after
/// `ping_every` without any.
async fn write_loop<W: AsyncWrite + Unpin>(
    link: Arc<Link>,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    stream: W,
    ping_every: Duration,
) {
    let mut stream = BufWriter::with_capacity(64 * 1024, stream);
    let ping = frame(XID_PING, OP_PING, &[]);
    loop {
        let first = tokio::select! {
            () = link.stop.cancelled() => return,
            next = tokio::time::timeout(ping_every, queue.recv()) => match next {
                Err(_) => Outgoing::Frame(ping.clone()),
                Ok(Some(out)) => out,
                Ok(None) => return,
            },
        };
        let mut closing = false;
        let mut next = Some(first);
        while let Some(out) = next {
            let bytes = match out {
                Outgoing::Frame(bytes) => bytes,
                Outgoing::Close(bytes) => {
                    closing = true;
                    bytes
                }
            };
            if let Err(e) = stream.write_all(&bytes).await {
                link.fail(&e.to_string());
                return;
            }
            next = if closing { None } else { queue.try_recv().ok() };
        }
        if let Err(e) = stream.flush().await {
            link.fail(&e.to_string());
            return;
        }
        if closing {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

// ---- the reader ----------------------------------------------------------------------

struct State {
    session: Option<Arc<Session>>,
    /// No reconnect before this (after a failed one).
    retry_at: Option<Instant>,
    backoff: Duration,
    /// The server tried first on the next connect.
    next_addr: usize,
}

/// The bulk-read client of one backend: a lazily opened session of its own and counters
/// of what it sent.
pub(crate) struct MultiReader {
    config: ReaderConfig,
    state: tokio::sync::Mutex<State>,
    requests: AtomicU64,
    waves: AtomicU64,
    unsupported: AtomicBool,
    /// A multiRead has been answered once: connection losses are then just that.
    answered: AtomicBool,
    strikes: AtomicU32,
    closed: AtomicBool,
    /// Bumped on every new session: reads of one session never go back in time, reads
    /// of a new one may (until a `sync`).
    generation: AtomicU64,
}

impl MultiReader {
    /// A reader for `config`; it connects on first use. It starts at the second server
    /// of the list (the client crate starts at the first), so with an ensemble the bulk
    /// reads usually land on another member than the main session.
    pub(crate) fn new(config: ReaderConfig) -> Self {
        let next_addr = 1 % config.addrs.len().max(1);
        MultiReader {
            config,
            state: tokio::sync::Mutex::new(State {
                session: None,
                retry_at: None,
                backoff: MIN_BACKOFF,
                next_addr,
            }),
            requests: AtomicU64::new(0),
            waves: AtomicU64::new(0),
            unsupported: AtomicBool::new(false),
            answered: AtomicBool::new(false),
            strikes: AtomicU32::new(0),
            closed: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        }
    }

    /// The number of sessions opened so far (see `generation`).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Requests sent (`sync` and multiRead, each 1; handshakes and pings not counted).
    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Rounds of pipelined requests sent.
    pub(crate) fn waves(&self) -> u64 {
        self.waves.load(Ordering::Relaxed)
    }

    /// False once the server turned out not to know multiRead, or after `close`.
    pub(crate) fn usable(&self) -> bool {
        !self.unsupported.load(Ordering::Relaxed) && !self.closed.load(Ordering::Relaxed)
    }

    /// `getChildren` of every path, after a `sync` of `sync` when given.
    pub(crate) async fn children(
        &self,
        sync: Option<&str>,
        paths: &[String],
    ) -> Result<Vec<ZkResult<Vec<String>>>, ReadError> {
        self.read::<Children>(sync, paths).await
    }

    /// `getData` of every path, after a `sync` of `sync` when given.
    pub(crate) async fn data(
        &self,
        sync: Option<&str>,
        paths: &[String],
    ) -> Result<Vec<ZkResult<(Vec<u8>, Stat)>>, ReadError> {
        self.read::<Data>(sync, paths).await
    }

    /// Sends the optional `sync` and the multiReads of `paths` pipelined, as one wave;
    /// one result per path, in order.
    async fn read<K: ReadKind>(
        &self,
        sync: Option<&str>,
        paths: &[String],
    ) -> Result<Vec<ZkResult<K::Out>>, ReadError> {
        if !self.usable() {
            return Err(ReadError::Unsupported);
        }
        let session = self.session().await?;
        let link = &session.link;
        let deadline = Instant::now() + self.config.request_timeout;
        self.waves.fetch_add(1, Ordering::Relaxed);
        let synced = match sync {
            Some(path) => {
                let mut body = Vec::with_capacity(4 + path.len());
                put_buffer(&mut body, path.as_bytes());
                let reply = link.send(OP_SYNC, &body)?;
                self.requests.fetch_add(1, Ordering::Relaxed);
                Some(reply)
            }
            None => None,
        };
        let mut sent = Vec::new();
        for batch in batches(paths) {
            let reply = link.send(OP_MULTI_READ, &encode_multi_read(K::OPCODE, batch))?;
            self.requests.fetch_add(1, Ordering::Relaxed);
            sent.push((batch.len(), reply));
        }
        if let Some(reply) = synced {
            let reply = wait(link, reply, deadline).await?;
            if reply.err != 0 {
                return Err(ReadError::Unavailable(format!(
                    "sync failed: {}",
                    ZkError::from(reply.err)
                )));
            }
        }
        let mut out = Vec::with_capacity(paths.len());
        for (count, reply) in sent {
            let reply = match wait(link, reply, deadline).await {
                Ok(reply) => reply,
                Err(e) => return Err(self.lost(e)),
            };
            match reply.err {
                0 => {}
                ERR_UNIMPLEMENTED => return Err(self.unsupported()),
                err => {
                    return Err(ReadError::Unavailable(format!(
                        "multiRead failed: {}",
                        ZkError::from(err)
                    )));
                }
            }
            match decode_multi_read::<K>(&reply.body, count) {
                Ok(results) => out.extend(results),
                Err(e) => {
                    let reason = format!("undecodable multiRead answer: {e}");
                    link.fail(&reason);
                    return Err(ReadError::Unavailable(reason));
                }
            }
        }
        self.answered.store(true, Ordering::Relaxed);
        Ok(out)
    }

    /// The open session, or a new one (at most one connect pass per backoff period).
    async fn session(&self) -> Result<Arc<Session>, ReadError> {
        let mut state = self.state.lock().await;
        if self.closed.load(Ordering::Relaxed) {
            return Err(ReadError::Unavailable("closed".into()));
        }
        if let Some(session) = &state.session {
            if !session.link.is_failed() {
                return Ok(session.clone());
            }
            state.session = None;
        }
        if state.retry_at.is_some_and(|at| Instant::now() < at) {
            return Err(ReadError::Unavailable(
                "reconnecting after a backoff".into(),
            ));
        }
        let addrs = &self.config.addrs;
        let opened = tokio::time::timeout(self.config.request_timeout, async {
            let mut last = String::from("no servers");
            for i in 0..addrs.len() {
                let at = (state.next_addr + i) % addrs.len();
                match Session::open(&addrs[at], &self.config).await {
                    Ok(session) => return Ok((at, session)),
                    Err(e) => last = e,
                }
            }
            Err(last)
        })
        .await
        .unwrap_or_else(|_| Err("connect timed out".into()));
        match opened {
            Ok((at, session)) => {
                let session = Arc::new(session);
                state.next_addr = at;
                state.retry_at = None;
                state.backoff = MIN_BACKOFF;
                state.session = Some(session.clone());
                self.generation.fetch_add(1, Ordering::Relaxed);
                Ok(session)
            }
            Err(e) => {
                state.next_addr = (state.next_addr + 1) % addrs.len().max(1);
                state.retry_at = Some(Instant::now() + state.backoff);
                state.backoff = (state.backoff * 2).min(MAX_BACKOFF);
                Err(ReadError::Unavailable(format!(
                    "cannot open a reader session: {e}"
                )))
            }
        }
    }

    /// Marks multiRead unsupported (logged once).
    fn unsupported(&self) -> ReadError {
        if !self.unsupported.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "the ZooKeeper server does not implement multiRead (ZooKeeper < 3.6): \
                 lists read with pipelined single requests from now on"
            );
        }
        ReadError::Unsupported
    }

    /// A multiRead lost with its connection: a server that never answered one and
    /// closes the connection on it repeatedly is taken not to know it.
    fn lost(&self, e: ReadError) -> ReadError {
        if !self.answered.load(Ordering::Relaxed)
            && self.strikes.fetch_add(1, Ordering::Relaxed) + 1 >= MAX_STRIKES
        {
            return self.unsupported();
        }
        e
    }

    /// Closes the session (waits up to 2 s for the server's answer); no reconnect after.
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let Some(session) = self.state.lock().await.session.take() else {
            return;
        };
        if let Ok(reply) = session.link.send(OP_CLOSE_SESSION, &[]) {
            let _ = tokio::time::timeout(Duration::from_secs(2), reply).await;
        }
        session.link.stop.cancel();
    }
}

/// Waits for a reply until `deadline`; a timeout ends the connection (it may be stuck).
async fn wait(
    link: &Link,
    reply: oneshot::Receiver<Result<Reply, ReadError>>,
    deadline: Instant,
) -> Result<Reply, ReadError> {
    match tokio::time::timeout_at(deadline, reply).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => Err(ReadError::Unavailable("connection closed".into())),
        Err(_) => {
            link.fail("request timed out");
            Err(ReadError::Unavailable("request timed out".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::net::TcpListener;

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

    #[test]
    fn large_batches_are_split() {
        let short: Vec<String> = (0..2_500).map(|i| format!("/r/kv/k{i}")).collect();
        let sizes: Vec<usize> = batches(&short).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [1_000, 1_000, 500]);
        let long: Vec<String> = (0..600)
            .map(|i| format!("/{i:0width$}", width = 2_000))
            .collect();
        let split = batches(&long);
        assert!(split.len() > 1);
        for batch in &split {
            assert!(batch.iter().map(|p| op_bytes(p)).sum::<usize>() <= MAX_REQUEST_BYTES);
        }
        assert_eq!(split.iter().map(|b| b.len()).sum::<usize>(), 600);
        assert!(batches(&[]).is_empty());
    }

    /// How a scripted peer answers a multiRead.
    #[derive(Clone, Copy)]
    enum OldServer {
        /// As ZooKeeper < 3.6: `Unimplemented`, then it closes the connection.
        Unimplemented,
        /// Closes the connection without an answer.
        Hangs,
    }

    /// A peer on 127.0.0.1 speaking the handshake and answering `sync` but not multiRead,
    /// as a server older than 3.6 does (none can be installed here); counts connections.
    async fn old_server(behaviour: OldServer) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let _connect = read_small_frame(&mut stream).await?;
                    let mut answer = Vec::new();
                    for v in [0, 4_000] {
                        put_i32(&mut answer, v);
                    }
                    put_i64(&mut answer, 99);
                    put_buffer(&mut answer, &[0; 16]);
                    put_bool(&mut answer, false);
                    let mut framed = Vec::new();
                    put_buffer(&mut framed, &answer);
                    stream.write_all(&framed).await.map_err(|e| e.to_string())?;
                    loop {
                        let request = read_small_frame(&mut stream).await?;
                        let mut jute = Jute { buf: &request };
                        let (xid, opcode) = (jute.i32().unwrap(), jute.i32().unwrap());
                        let err = match (opcode, behaviour) {
                            (OP_MULTI_READ, OldServer::Hangs) => return Ok(()),
                            (OP_MULTI_READ, OldServer::Unimplemented) => ERR_UNIMPLEMENTED,
                            _ => 0,
                        };
                        let mut reply = Vec::new();
                        put_i32(&mut reply, xid);
                        put_i64(&mut reply, 0);
                        put_i32(&mut reply, err);
                        if err == 0 {
                            reply.extend_from_slice(jute.buf);
                        }
                        let mut framed = Vec::new();
                        put_buffer(&mut framed, &reply);
                        stream.write_all(&framed).await.map_err(|e| e.to_string())?;
                        if err != 0 {
                            return Ok::<(), String>(());
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn reader(addr: String) -> MultiReader {
        MultiReader::new(ReaderConfig {
            addrs: vec![addr],
            session_timeout: Duration::from_secs(4),
            request_timeout: Duration::from_secs(2),
            digest: Some(b"u:p".to_vec()),
        })
    }

    #[tokio::test]
    async fn a_server_without_multi_read_disables_it_for_good() {
        let (addr, accepted) = old_server(OldServer::Unimplemented).await;
        let reader = reader(addr);
        let paths = ["/a".to_owned()];
        assert_eq!(
            reader.children(Some("/"), &paths).await.unwrap_err(),
            ReadError::Unsupported
        );
        assert!(!reader.usable());
        assert_eq!(
            reader.data(None, &paths).await.unwrap_err(),
            ReadError::Unsupported
        );
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "no reconnect after that"
        );
        assert_eq!(reader.requests(), 2, "the sync and the multiRead");
    }

    #[tokio::test]
    async fn a_server_that_drops_multi_read_is_given_up_after_strikes() {
        let (addr, accepted) = old_server(OldServer::Hangs).await;
        let reader = reader(addr);
        let paths = ["/a".to_owned()];
        for strike in 1..MAX_STRIKES {
            let err = reader.data(None, &paths).await.unwrap_err();
            assert!(
                matches!(err, ReadError::Unavailable(_)),
                "{strike}: {err:?}"
            );
            assert!(reader.usable());
        }
        assert_eq!(
            reader.data(None, &paths).await.unwrap_err(),
            ReadError::Unsupported
        );
        assert_eq!(accepted.load(Ordering::SeqCst), MAX_STRIKES as usize);
    }
}
