//! The stream type of the network backends' watches, and their retry backoff.
//!
//! A network watch is a background task that talks to the server and feeds a bounded
//! channel; the consumer reads the channel. [`TaskStream`] owns both ends and keeps
//! the rules every backend shares (docs/design.md, "Watches"):
//!
//! * dropping the stream aborts the task, which drops its server-side watch;
//! * an `Err` item that retrying cannot fix (`PermissionDenied`, `Closed`, ...) is the
//!   last item: the stream ends after it and the task is stopped;
//! * closing the store stops the task, and the stream then yields one `Err(Closed)`
//!   after whatever was already queued, and ends. A task never has to report the close
//!   itself, and never ends a stream silently.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// A watch stream fed by a background task; see the module docs.
#[derive(Debug)]
pub(crate) struct TaskStream<T> {
    rx: mpsc::Receiver<Result<T>>,
    task: AbortHandle,
    closed: CancellationToken,
    done: bool,
}

impl<T: Send + 'static> TaskStream<T> {
    /// Spawns `run(sender)` as the watch task, stopped when `closed` is cancelled or
    /// the stream is dropped. `capacity` items are buffered for a slow consumer.
    pub(crate) fn spawn<F>(
        capacity: usize,
        closed: CancellationToken,
        run: impl FnOnce(mpsc::Sender<Result<T>>) -> F,
    ) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(capacity);
        let work = run(tx);
        let stop = closed.clone();
        let task = tokio::spawn(async move {
            tokio::select! {
                biased;
                () = stop.cancelled() => {}
                () = work => {}
            }
        });
        TaskStream {
            rx,
            task: task.abort_handle(),
            closed,
            done: false,
        }
    }
}

impl<T> Stream for TaskStream<T> {
    type Item = Result<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match std::task::ready!(self.rx.poll_recv(cx)) {
            Some(Ok(item)) => Poll::Ready(Some(Ok(item))),
            Some(Err(err)) => {
                if !err.is_retryable() {
                    self.done = true;
                    self.task.abort();
                }
                Poll::Ready(Some(Err(err)))
            }
            None => {
                self.done = true;
                if self.closed.is_cancelled() {
                    Poll::Ready(Some(Err(Error::Closed)))
                } else {
                    Poll::Ready(None)
                }
            }
        }
    }
}

impl<T> Drop for TaskStream<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Capped exponential backoff with up to 25 % jitter, shared by the network
/// backends' retry loops (watches, lock waiters, keep-alives).
#[derive(Debug)]
pub(crate) struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `first`, doubles per failure, never above `max`.
    pub(crate) fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            next: first,
            max,
        }
    }

    /// Back to the first delay (after a success).
    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        // Jitter so that many watchers do not retry in lockstep.
        let random = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            delay,
        );
        let quarter = u64::try_from(delay.as_nanos() / 4).unwrap_or(u64::MAX);
        delay + Duration::from_nanos(random % quarter.saturating_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn close_yields_one_closed_error_after_the_queued_items_then_ends() {
        let closed = CancellationToken::new();
        let mut stream = TaskStream::spawn(4, closed.clone(), |tx| async move {
            let _ = tx.send(Ok(1)).await;
            std::future::pending::<()>().await;
        });
        assert_eq!(stream.next().await.unwrap().unwrap(), 1);
        closed.cancel();
        assert!(matches!(stream.next().await, Some(Err(Error::Closed))));
        assert!(stream.next().await.is_none());
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_permanent_error_is_the_last_item_and_a_retryable_one_is_not() {
        let mut stream = TaskStream::spawn(4, CancellationToken::new(), |tx| async move {
            let _ = tx.send(Err(Error::unavailable("t", "down"))).await;
            let _ = tx.send(Ok(2)).await;
            let _ = tx
                .send(Err(Error::PermissionDenied {
                    backend: "t",
                    source: "no".into(),
                }))
                .await;
            let _ = tx.send(Ok(3)).await;
            std::future::pending::<()>().await;
        });
        assert!(stream.next().await.unwrap().unwrap_err().is_retryable());
        assert_eq!(stream.next().await.unwrap().unwrap(), 2);
        assert!(matches!(
            stream.next().await,
            Some(Err(Error::PermissionDenied { .. }))
        ));
        assert!(
            stream.next().await.is_none(),
            "nothing after a permanent error"
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_bounded_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(300));
        let delays: Vec<Duration> = (0..4).map(|_| backoff.next_delay()).collect();
        for (delay, base) in delays.iter().zip([100, 200, 300, 300]) {
            let base = Duration::from_millis(base);
            assert!(
                *delay >= base && *delay <= base + base / 4,
                "{delay:?} vs {base:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() < Duration::from_millis(126));
    }
}
