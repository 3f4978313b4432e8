//! The bulk reader of the ZooKeeper backend: `sync` and `multiRead` (opcode 22,
//! ZooKeeper 3.6+), which the `zookeeper-async` crate cannot send, on a session of its
//! own. This module is the reader's policy: when to connect and to which server,
//! the reconnect backoff, batching, giving up on servers without multiRead, and the
//! API the backend calls. The wire format is in [`wire`], the connection (handshake,
//! pipelining, pings) in [`connection`].
//!
//! The session is opened lazily, reopened after a failure with a bounded backoff and
//! closed on drop; the main session's digest credentials are replayed on it.
//!
//! Consistency: this session may sit on another ensemble member than the main session,
//! which may lag behind the leader. Every traversal therefore sends a `sync` ahead of its
//! first multiRead on this session. The server orders a session's requests and holds a
//! read behind the session's pending `sync` until the member has caught up with the
//! leader as of the `sync`; a write the main session completed before the traversal
//! started was committed by then, so the traversal sees it (read-your-writes, as the
//! main session's own reads).

mod connection;
mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use zookeeper_async::{Stat, ZkError};

use crate::backoff::Backoff;

use self::connection::{ReaderSession, await_reply};
use self::wire::{
    Children, Data, ERR_UNIMPLEMENTED, OP_CLOSE_SESSION, OP_MULTI_READ, OP_SYNC, ReadKind,
    ZkResult, decode_multi_read, encode_multi_read, op_bytes, put_buffer,
};

pub(crate) use self::connection::negotiated_session_timeout;

/// Most reads in one multiRead; larger batches go as several pipelined multiReads.
pub(crate) const MAX_OPS: usize = 1_000;
/// Largest multiRead request frame: the server drops a connection whose request is over
/// its `jute.maxbuffer` (1 MiB by default).
const MAX_REQUEST_BYTES: usize = 512 * 1024;
/// Connection-level failures of a multiRead, before any ever succeeded, after which the
/// server is taken not to know it (one that closes the connection instead of answering).
const MAX_STRIKES: u32 = 3;
/// Bounds of the reconnect backoff (the crate's shared [`Backoff`]).
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why a bulk read did not happen; either way the caller reads through the main session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ReadError {
    /// The server does not implement multiRead: stop trying.
    #[error("the ZooKeeper server does not implement multiRead (needs 3.6+)")]
    Unsupported,
    /// The reader session is down, timed out, or got an answer it could not use.
    #[error("bulk reader unavailable: {0}")]
    Unavailable(String),
    /// No reader session could be opened (the reason is the last server's failure);
    /// the next attempt waits for the backoff.
    #[error("bulk reader unavailable: cannot open a reader session: {0}")]
    NoSession(String),
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

/// The reader's connection state, under one lock so that one task at a time connects.
struct State {
    session: Option<Arc<ReaderSession>>,
    /// No reconnect before this (after a failed one).
    retry_at: Option<Instant>,
    backoff: Backoff,
    /// The server tried first on the next connect.
    next_addr: usize,
}

/// The answers of one wave of reads, with the zxids that bracket it: the header zxid of
/// a reply is the last zxid the server had applied when it took the request up, before
/// its operations ran. When the first request's and the marker's are equal, no write
/// was applied on that server between the two, so every read in between saw one state.
#[derive(Debug)]
pub(crate) struct Wave<T> {
    /// One result per path, in order.
    pub(crate) results: Vec<ZkResult<T>>,
    /// The header zxid of the wave's first request (`None` for an empty wave).
    pub(crate) first_zxid: Option<i64>,
    /// The header zxid of the marker sent behind the reads, when one was asked for.
    pub(crate) marker_zxid: Option<i64>,
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
                backoff: Backoff::new(MIN_BACKOFF, MAX_BACKOFF),
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

    /// `getData` of every path, after a `sync` of `sync` when given.
    pub(crate) async fn data(
        &self,
        sync: Option<&str>,
        paths: &[String],
    ) -> Result<Vec<ZkResult<(Vec<u8>, Stat)>>, ReadError> {
        self.read::<Data>(sync, paths, None)
            .await
            .map(|wave| wave.results)
    }

    /// `getChildren` of every path, after a `sync` of `sync` when given, with the
    /// wave's zxids and a marker read of `marker` pipelined behind it when given (see
    /// [`Wave`]).
    pub(crate) async fn children_wave(
        &self,
        sync: Option<&str>,
        paths: &[String],
        marker: Option<&str>,
    ) -> Result<Wave<Vec<String>>, ReadError> {
        self.read::<Children>(sync, paths, marker).await
    }

    /// [`MultiReader::data`] with the wave's zxids and an optional marker.
    pub(crate) async fn data_wave(
        &self,
        sync: Option<&str>,
        paths: &[String],
        marker: Option<&str>,
    ) -> Result<Wave<(Vec<u8>, Stat)>, ReadError> {
        self.read::<Data>(sync, paths, marker).await
    }

    /// Sends the optional `sync`, the multiReads of `paths` and the optional marker
    /// pipelined, as one wave; one result per path, in order.
    async fn read<K: ReadKind>(
        &self,
        sync: Option<&str>,
        paths: &[String],
        marker: Option<&str>,
    ) -> Result<Wave<K::Out>, ReadError> {
        if !self.usable() {
            return Err(ReadError::Unsupported);
        }
        let session = self.current_session().await?;
        let link = &session.link;
        let deadline = Instant::now() + self.config.request_timeout;
        self.waves.fetch_add(1, Ordering::Relaxed);
        // Every request of the wave is counted as it is sent.
        let send = |opcode: i32, body: &[u8]| {
            let reply = link.send(opcode, body)?;
            self.requests.fetch_add(1, Ordering::Relaxed);
            Ok::<_, ReadError>(reply)
        };
        let synced = match sync {
            Some(path) => {
                let mut body = Vec::with_capacity(4 + path.len());
                put_buffer(&mut body, path.as_bytes());
                Some(send(OP_SYNC, &body)?)
            }
            None => None,
        };
        let mut sent = Vec::new();
        for batch in batches(paths) {
            let reply = send(OP_MULTI_READ, &encode_multi_read(K::OPCODE, batch))?;
            sent.push((batch.len(), reply));
        }
        // Taken up by the server after every read above (one session's requests are
        // served in order): its header zxid closes the bracket.
        let marked = match marker {
            Some(path) => Some(send(
                OP_MULTI_READ,
                &encode_multi_read(Children::OPCODE, &[path.to_owned()]),
            )?),
            None => None,
        };
        let mut first_zxid = None;
        if let Some(reply) = synced {
            let reply = await_reply(link, reply, deadline).await?;
            first_zxid = Some(reply.zxid);
            if reply.err != 0 {
                return Err(ReadError::Unavailable(format!(
                    "sync failed: {}",
                    ZkError::from(reply.err)
                )));
            }
        }
        let mut out = Vec::with_capacity(paths.len());
        for (count, reply) in sent {
            let reply = match await_reply(link, reply, deadline).await {
                Ok(reply) => reply,
                Err(e) => return Err(self.connection_lost(e)),
            };
            first_zxid.get_or_insert(reply.zxid);
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
        let marker_zxid = match marked {
            Some(reply) => match await_reply(link, reply, deadline).await {
                Ok(reply) => Some(reply.zxid),
                Err(e) => return Err(self.connection_lost(e)),
            },
            None => None,
        };
        self.answered.store(true, Ordering::Relaxed);
        Ok(Wave {
            results: out,
            first_zxid,
            marker_zxid,
        })
    }

    /// The open session, or a new one (at most one connect pass per backoff period).
    async fn current_session(&self) -> Result<Arc<ReaderSession>, ReadError> {
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
                match ReaderSession::open(&addrs[at], &self.config).await {
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
                state.backoff.reset();
                state.session = Some(session.clone());
                self.generation.fetch_add(1, Ordering::Relaxed);
                Ok(session)
            }
            Err(e) => {
                state.next_addr = (state.next_addr + 1) % addrs.len().max(1);
                state.retry_at = Some(Instant::now() + state.backoff.next_delay());
                Err(ReadError::NoSession(e))
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
    fn connection_lost(&self, e: ReadError) -> ReadError {
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

#[cfg(test)]
mod tests {
    use super::connection::read_small_frame;
    use super::wire::{Jute, put_bool, put_i32, put_i64};
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

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
            reader
                .children_wave(Some("/"), &paths, None)
                .await
                .unwrap_err(),
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

    /// A failed connect holds reconnects off for the shared backoff's delay, doubled on
    /// each further failure (jitter adds at most a quarter).
    #[tokio::test]
    async fn failed_connects_back_off_exponentially() {
        // A peer that hangs up before the handshake answer.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        });
        let reader = reader(addr);
        let paths = ["/a".to_owned()];
        for base in [MIN_BACKOFF, MIN_BACKOFF * 2, MIN_BACKOFF * 4] {
            reader.state.lock().await.retry_at = None;
            let before = Instant::now();
            let err = reader.data(None, &paths).await.unwrap_err();
            let after = Instant::now();
            assert!(matches!(&err, ReadError::NoSession(_)), "{err:?}");
            let retry_at = reader.state.lock().await.retry_at.unwrap();
            assert!(retry_at >= before + base, "{base:?}");
            assert!(retry_at <= after + base + base / 4, "{base:?}");
        }
        assert!(reader.usable(), "a failed connect is not a strike");
    }
}
