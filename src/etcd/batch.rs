//! Coalescing of concurrent point reads (`get`, `exists`) into one read-only Txn.
//!
//! etcd's cost of a linearizable read is mostly per request (gRPC, one ReadIndex), so
//! reads that wait anyway are better sent together. A read goes out at once, as its
//! own Range, while fewer than [`MAX_IN_FLIGHT`] reads are in flight: a lone read costs
//! one Range and no extra latency. Otherwise it queues, and when an in-flight read
//! finishes, the queue (up to [`MAX_TXN_OPS`] reads) goes out as one Txn with an empty
//! compare and one Range per read (a single queued read as a plain Range). etcd serves
//! a read-only Txn like a Range, linearizably and without raft; the Txn is sent after
//! each of its reads was invoked and answers before any of them returns, so every
//! read stays linearizable.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use etcd_client::{GetOptions, GetResponse, Txn, TxnOp, TxnOpResponse};
use tokio::sync::oneshot;

use super::{Etcd, NAME, request, timeout_error};
use crate::error::{BoxError, Error, Result};

/// Reads sent at once before further ones queue for a Txn: 2 keeps a read that
/// arrives while another is in flight (or behind one slow, large read) from always
/// waiting for it, and still batches; docs/performance.md has the measurements.
pub(crate) const MAX_IN_FLIGHT: usize = 2;

/// Most reads in one Txn: etcd's default `--max-txn-ops`.
pub(crate) const MAX_TXN_OPS: usize = 128;

/// The in-flight count and the queue of point reads of one `Etcd`.
#[derive(Default)]
pub(crate) struct ReadBatcher(Mutex<State>);

#[derive(Default)]
struct State {
    /// Range and Txn requests of reads in flight, at most [`MAX_IN_FLIGHT`].
    in_flight: usize,
    /// Reads waiting for the next Txn; only non-empty while `in_flight` is at the cap.
    queue: VecDeque<Waiter>,
}

/// A queued read and where its answer goes.
struct Waiter {
    key: Vec<u8>,
    options: Option<GetOptions>,
    reply: oneshot::Sender<Result<GetResponse>>,
}

impl ReadBatcher {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic: every change is one statement.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One in-flight request slot; dropping it (done or cancelled) frees the slot and
/// sends the queued reads, so a dropped caller never strands them.
struct InFlightPermit(Etcd);

impl Drop for InFlightPermit {
    fn drop(&mut self) {
        let waiters = {
            let mut state = self.0.inner.reads.lock();
            state.in_flight -= 1;
            // Skip reads whose caller is gone (cancelled or timed out).
            state.queue.retain(|waiter| !waiter.reply.is_closed());
            let take = state.queue.len().min(MAX_TXN_OPS);
            let waiters: Vec<Waiter> = state.queue.drain(..take).collect();
            if !waiters.is_empty() {
                state.in_flight += 1;
            }
            waiters
        };
        if waiters.is_empty() {
            return;
        }
        // The slot moves into the task before it runs: a task dropped unpolled (runtime
        // shutting down) still frees it. Without a runtime the waiters are dropped and
        // their callers see an error.
        let slot = InFlightPermit(self.0.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                slot.0.send_batch(waiters).await;
                // Let the answered callers run first: a caller reading again queues
                // now and joins the next batch, instead of going out alone.
                tokio::task::yield_now().await;
                drop(slot);
            });
        }
    }
}

impl Etcd {
    /// One point read (`key` with `options`), coalesced with concurrent ones as the
    /// module describes. Times out after `request_timeout` from the call, queueing
    /// included.
    pub(super) async fn read(
        &self,
        key: Vec<u8>,
        options: Option<GetOptions>,
    ) -> Result<GetResponse> {
        if self.inner.closed.is_cancelled() {
            return Err(Error::Closed);
        }
        let timeout = self.inner.request_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let turn = {
            let mut state = self.inner.reads.lock();
            if state.in_flight < MAX_IN_FLIGHT {
                state.in_flight += 1;
                Turn::Now(key, options)
            } else {
                let (reply, answer) = oneshot::channel();
                state.queue.push_back(Waiter {
                    key,
                    options,
                    reply,
                });
                Turn::Queued(answer)
            }
        };
        match turn {
            Turn::Now(key, options) => {
                let _slot = InFlightPermit(self.clone());
                self.range(key, options).await
            }
            Turn::Queued(answer) => match tokio::time::timeout_at(deadline, answer).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(Error::unavailable(NAME, "the batched read was dropped")),
                Err(_) => Err(timeout_error(timeout)),
            },
        }
    }

    /// One Range request.
    async fn range(&self, key: Vec<u8>, options: Option<GetOptions>) -> Result<GetResponse> {
        request!(self, kv => kv.get(key, options), clone key, options).await
    }

    /// Answers queued reads: one Range for one read, else one read-only Txn. A Txn
    /// that fails other than by unavailability (a permission on one key, a server with
    /// a smaller `--max-txn-ops`) is re-sent as one Range per read, so each read gets
    /// its own answer.
    async fn send_batch(&self, waiters: Vec<Waiter>) {
        let waiters = match <[Waiter; 1]>::try_from(waiters) {
            Ok([waiter]) => {
                let _ = waiter
                    .reply
                    .send(self.range(waiter.key, waiter.options).await);
                return;
            }
            Err(waiters) => waiters,
        };
        let ops: Vec<TxnOp> = waiters
            .iter()
            .map(|waiter| TxnOp::get(waiter.key.clone(), waiter.options.clone()))
            .collect();
        let txn = Txn::new().and_then(ops);
        match request!(self, kv => kv.txn(txn), clone txn).await {
            Ok(resp) => {
                // `op_responses` copies each response: moving them out would need
                // etcd-client's `pub-response-field` feature; small next to a request.
                let mut responses = resp.op_responses().into_iter();
                for waiter in waiters {
                    let result = match responses.next() {
                        Some(TxnOpResponse::Get(get)) => Ok(get),
                        _ => Err(Error::backend(NAME, "the Txn did not answer every read")),
                    };
                    let _ = waiter.reply.send(result);
                }
            }
            Err(Error::Unavailable { source, .. }) => {
                // The same outage for every read: each gets a copy sharing the cause.
                let source = Arc::new(source);
                for waiter in waiters {
                    let err = Error::unavailable(NAME, SharedSource(source.clone()));
                    let _ = waiter.reply.send(Err(err));
                }
            }
            Err(Error::Closed) => {
                for waiter in waiters {
                    let _ = waiter.reply.send(Err(Error::Closed));
                }
            }
            Err(_) => {
                let singles = waiters.into_iter().map(|waiter| async move {
                    let _ = waiter
                        .reply
                        .send(self.range(waiter.key, waiter.options).await);
                });
                futures::future::join_all(singles).await;
            }
        }
    }
}

/// Whether a read goes out now or waits for the next Txn.
enum Turn {
    Now(Vec<u8>, Option<GetOptions>),
    Queued(oneshot::Receiver<Result<GetResponse>>),
}

/// A cause shared by several errors.
#[derive(Debug)]
struct SharedSource(Arc<BoxError>);

impl std::fmt::Display for SharedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedSource {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}
