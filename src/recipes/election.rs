//! Leader election on any backend, built on [`Kv::lock`].
//!
//! A [`Candidate`] runs for leadership of a key: it takes the lock on the key with its
//! node id as the lock's value, is leader while it holds the lock, and runs again with
//! a fresh lock after losing or resigning, so it recovers by itself when the store
//! comes back after an outage. A [`Follower`] reports who the leader is by watching
//! the same key.
//!
//! At any instant at most one candidate of a key reports [`Candidate::is_leader`]: the
//! flag is set only after the lock is acquired and cleared before it is released.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, LockGuard, LockOptions};
use crate::error::{Error, Result};
use crate::kv::Kv;

/// Runs for election on a key; see the module docs.
pub struct Candidate<B: Backend> {
    kv: Kv<B>,
    key: String,
    node: String,
    ttl: Duration,
    retry: Duration,
    shared: Arc<Shared>,
}

struct Shared {
    leader: AtomicBool,
    resign: Notify,
    stop: CancellationToken,
    running: AtomicBool,
}

impl<B: Backend> std::fmt::Debug for Candidate<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Candidate")
            .field("key", &self.key)
            .field("node", &self.node)
            .field("leader", &self.is_leader())
            .finish()
    }
}

impl<B: Backend> Candidate<B> {
    /// A candidate for `key` named `node`, whose leadership lock has time to live
    /// `ttl` (a leader that dies is replaced after about that long).
    pub fn new(kv: Kv<B>, key: impl Into<String>, node: impl Into<String>, ttl: Duration) -> Self {
        Candidate {
            kv,
            key: key.into(),
            node: node.into(),
            ttl,
            retry: ttl.min(Duration::from_secs(1)),
            shared: Arc::new(Shared {
                leader: AtomicBool::new(false),
                resign: Notify::new(),
                stop: CancellationToken::new(),
                running: AtomicBool::new(false),
            }),
        }
    }

    /// How long to wait before running again after resigning or after a store error
    /// (default: the TTL, at most one second). Resigning waits so that another
    /// candidate can take over.
    pub fn retry_after(mut self, pause: Duration) -> Self {
        self.retry = pause;
        self
    }

    /// The node id this candidate runs with.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Starts running for election. The stream yields `false` first, `true` when
    /// elected, `false` when leadership is lost or resigned, and ends after
    /// [`Candidate::stop`] or once the store is closed ([`Error::Closed`]). Calling it again while running returns a stream that ends
    /// at once.
    pub fn campaign(&self) -> Campaign {
        let (events, receiver) = mpsc::unbounded_channel();
        if self.shared.running.swap(true, Ordering::AcqRel) || self.shared.stop.is_cancelled() {
            return Campaign { receiver };
        }
        let round = Round {
            kv: self.kv.clone(),
            key: self.key.clone(),
            options: LockOptions::default().value(&self.node).ttl(self.ttl),
            retry: self.retry,
            shared: self.shared.clone(),
            events,
        };
        tokio::spawn(round.run());
        Campaign { receiver }
    }

    /// True while this candidate holds leadership.
    pub fn is_leader(&self) -> bool {
        self.shared.leader.load(Ordering::Acquire)
    }

    /// Gives up leadership (if held) and runs again after the retry pause. Never
    /// blocks, whether or not the campaign stream is being read.
    pub fn resign(&self) {
        self.shared.resign.notify_one();
    }

    /// Stops for good: gives up leadership and ends the campaign stream. A stopped
    /// candidate never reports leadership again.
    pub fn stop(&self) {
        self.shared.stop.cancel();
        self.shared.leader.store(false, Ordering::Release);
    }
}

impl<B: Backend> Drop for Candidate<B> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The stream of [`Candidate::campaign`]: `true` while leader.
#[derive(Debug)]
pub struct Campaign {
    receiver: mpsc::UnboundedReceiver<bool>,
}

impl Stream for Campaign {
    type Item = bool;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<bool>> {
        self.receiver.poll_recv(cx)
    }
}

/// The background task of a campaign.
struct Round<B: Backend> {
    kv: Kv<B>,
    key: String,
    options: LockOptions,
    retry: Duration,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<bool>,
}

impl<B: Backend> Round<B> {
    async fn run(self) {
        let _ = self.events.send(false);
        let stop = self.shared.stop.clone();
        while !stop.is_cancelled() {
            let attempt = tokio::select! {
                attempt = self.kv.lock(&self.key, self.options.clone()) => attempt,
                _ = stop.cancelled() => break,
            };
            let guard = match attempt {
                Ok(guard) => guard,
                Err(Error::Closed) => {
                    tracing::debug!(key = %self.key, "election: the store was closed; stopping");
                    break;
                }
                Err(err) => {
                    tracing::warn!(key = %self.key, %err, "election: cannot take the lock, retrying");
                    self.pause().await;
                    continue;
                }
            };
            if stop.is_cancelled() {
                let _ = guard.unlock().await;
                break;
            }
            // A resign request made while not leader is stale.
            let _ = tokio::time::timeout(Duration::ZERO, self.shared.resign.notified()).await;
            self.shared.leader.store(true, Ordering::Release);
            let _ = self.events.send(true);
            let resigned = tokio::select! {
                _ = guard.lost() => false,
                _ = self.shared.resign.notified() => true,
                _ = stop.cancelled() => true,
            };
            // Cleared before the lock is released: never two leaders at once.
            self.shared.leader.store(false, Ordering::Release);
            let _ = self.events.send(false);
            if let Err(err) = guard.unlock().await {
                tracing::debug!(key = %self.key, %err, "election: lock already lost");
            }
            if resigned && !stop.is_cancelled() {
                self.pause().await;
            }
        }
        self.shared.leader.store(false, Ordering::Release);
        self.shared.running.store(false, Ordering::Release);
    }

    async fn pause(&self) {
        tokio::select! {
            _ = tokio::time::sleep(self.retry) => {}
            _ = self.shared.stop.cancelled() => {}
        }
    }
}

/// Follows the leader of a key without running.
#[derive(Debug, Clone)]
pub struct Follower<B: Backend> {
    kv: Kv<B>,
    key: String,
    retry: Duration,
}

impl<B: Backend> Follower<B> {
    /// A follower of `key` (which need not exist yet).
    pub fn new(kv: Kv<B>, key: impl Into<String>) -> Self {
        Follower {
            kv,
            key: key.into(),
            retry: Duration::from_millis(500),
        }
    }

    /// How long to wait before watching again after a store error (default 500 ms).
    pub fn retry_after(mut self, pause: Duration) -> Self {
        self.retry = pause;
        self
    }

    /// The current leader's node id, `None` while there is none.
    pub async fn leader(&self) -> Result<Option<String>> {
        match self.kv.get(&self.key).await {
            Ok(pair) => Ok(Some(String::from_utf8_lossy(&pair.value).into_owned())),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// A stream of leader changes: the current leader first (`None` while there is
    /// none), then each change. A store failure is yielded as an `Err` item, then the
    /// follower watches again after the retry pause; after `Err(Closed)` (the store
    /// was closed) the stream ends.
    pub fn leaders(&self) -> Leaders {
        let (sender, receiver) = mpsc::channel(16);
        tokio::spawn(follow(
            self.kv.clone(),
            self.key.clone(),
            self.retry,
            sender,
        ));
        Leaders { receiver }
    }
}

async fn follow<B: Backend>(
    kv: Kv<B>,
    key: String,
    retry: Duration,
    sender: mpsc::Sender<Result<Option<String>>>,
) {
    let mut last: Option<Option<String>> = None;
    loop {
        let failure = match kv.watch(&key).await {
            Ok(mut watch) => loop {
                match watch.next().await {
                    Some(Ok(state)) => {
                        let leader = state.map(|p| String::from_utf8_lossy(&p.value).into_owned());
                        if last.as_ref() != Some(&leader) {
                            last = Some(leader.clone());
                            if sender.send(Ok(leader)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Some(Err(err)) => break err,
                    None => break Error::unavailable("election", "the watch ended"),
                }
            },
            Err(err) => err,
        };
        // A closed store never comes back: report it once and end the stream.
        let closed = matches!(failure, Error::Closed);
        if sender.send(Err(failure)).await.is_err() || closed {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = sender.closed() => return,
        }
    }
}

/// The stream of [`Follower::leaders`].
#[derive(Debug)]
pub struct Leaders {
    receiver: mpsc::Receiver<Result<Option<String>>>,
}

impl Stream for Leaders {
    type Item = Result<Option<String>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.receiver.poll_recv(cx)
    }
}
