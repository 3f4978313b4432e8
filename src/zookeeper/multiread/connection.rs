//! One connection of the bulk reader: TCP, the session handshake (ZooKeeper's
//! `ConnectRequest`, then the digest credentials replayed), and pipelined requests.
//!
//! A reader and a writer task own the two halves of the stream; callers queue a request
//! and wait on a oneshot for its reply. The server answers a session's requests in
//! order, so replies are matched to requests by xid in send order. The writer pings at
//! a third of the negotiated session timeout while idle; the reader ends the connection
//! after two thirds without any frame. Any failure fails every waiting request and the
//! connection for good: reconnecting is the reader policy's job (`super`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zookeeper_async::ZkError;

use super::wire::{
    Jute, OP_AUTH, OP_CLOSE_SESSION, OP_PING, XID_AUTH, XID_PING, XID_WATCH_EVENT, frame, put_bool,
    put_buffer, put_i32, put_i64, reply_header,
};
use super::{ReadError, ReaderConfig};

/// Largest answer accepted; a larger one is skipped and its traversal re-reads through
/// the main session (64 values of 1 MiB).
const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;

/// A reply: its error code, (when 0) its body, and the header's zxid: the last zxid
/// the server had applied when it took up the request, before its operations ran.
#[derive(Debug)]
pub(super) struct Reply {
    pub(super) err: i32,
    pub(super) body: Vec<u8>,
    pub(super) zxid: i64,
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
pub(super) struct Link {
    pending: Mutex<Pending>,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    pub(super) stop: CancellationToken,
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
    pub(super) fn send(
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
    pub(super) fn fail(&self, reason: &str) {
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

    pub(super) fn is_failed(&self) -> bool {
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

/// One open reader session; dropping it closes the session.
pub(super) struct ReaderSession {
    pub(super) link: Arc<Link>,
}

impl ReaderSession {
    /// Connects to `addr`, opens a new session and replays the credentials.
    pub(super) async fn open(addr: &str, config: &ReaderConfig) -> Result<ReaderSession, String> {
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
        Ok(ReaderSession { link })
    }
}

impl Drop for ReaderSession {
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

/// Reads one frame of the handshake (a few dozen bytes).
pub(super) async fn read_small_frame<R: AsyncRead + Unpin>(
    stream: &mut R,
) -> Result<Vec<u8>, String> {
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
    let zxid = stream.read_i64().await.map_err(io)?;
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
    Ok((xid, Ok(Reply { err, body, zxid })))
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

/// Waits for a reply until `deadline`; a timeout ends the connection (it may be stuck).
pub(super) async fn await_reply(
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
