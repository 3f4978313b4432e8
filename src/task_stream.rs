//! [`TaskStream`]: the stream of every watch that a background task feeds.
//!
//! A network watch (etcd, ZooKeeper, Consul) and a polled watch ([`crate::poll`]) are a
//! background task that reads the store and feeds a bounded channel; the consumer reads
//! the channel. [`TaskStream`] owns both ends and keeps the rules they all share
//! (docs/design.md, "Watches"):
//!
//! * dropping the stream aborts the task, which drops its server-side watch;
//! * an `Err` item that retrying cannot fix (every error but `Unavailable`, see
//!   [`Error::is_retryable`]) is the last item: the stream ends after it and the task
//!   is stopped;
//! * closing the store stops the task, and the stream then yields one `Err(Closed)`
//!   after whatever was already queued, and ends. A task never has to report the close
//!   itself, and never ends a stream silently.
//!
//! The backends name it through aliases (`EtcdWatch`, `ZookeeperWatchTree`,
//! `PollWatch<B>`, ...), so their `Backend::Watch` types stay concrete and nameable.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// A watch stream of `Result<T>` items fed by a background task; see the module docs.
///
/// `Source` only tags the type with what feeds it, where a public alias must name it
/// (the backend of [`crate::poll::PollWatch`]); it is `()` everywhere else and holds
/// no value.
pub struct TaskStream<T, Source = ()> {
    rx: mpsc::Receiver<Result<T>>,
    task: AbortHandle,
    closed: CancellationToken,
    done: bool,
    _source: PhantomData<fn() -> Source>,
}

impl<T: Send + 'static, Source> TaskStream<T, Source> {
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
            _source: PhantomData,
        }
    }
}

impl<T, Source> Stream for TaskStream<T, Source> {
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

impl<T, Source> fmt::Debug for TaskStream<T, Source> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskStream")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<T, Source> Drop for TaskStream<T, Source> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn close_yields_one_closed_error_after_the_queued_items_then_ends() {
        let closed = CancellationToken::new();
        let mut stream: TaskStream<i32> = TaskStream::spawn(4, closed.clone(), |tx| async move {
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
        let mut stream: TaskStream<i32> =
            TaskStream::spawn(4, CancellationToken::new(), |tx| async move {
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
}
