//! Stream helpers every test file shares: the next item within a bound, the end of a
//! stream, a quiet stream, and pairs as comparable `(key, value)` strings.
#![allow(dead_code)] // each test crate uses some of them

use std::time::Duration;

use futures::{Stream, StreamExt};
use kvkit::KvPair;

/// How long a test waits for one stream item before it fails (real or paused time), so
/// a broken stream fails the test instead of hanging it.
pub const ITEM_WAIT: Duration = Duration::from_secs(30);

/// The next item of `stream`, or a panic naming `what` after [`ITEM_WAIT`] or when the
/// stream ends.
pub async fn next<S: Stream + Unpin>(stream: &mut S, what: &str) -> S::Item {
    tokio::time::timeout(ITEM_WAIT, stream.next())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("the stream ended while waiting for {what}"))
}

/// The next item of a stream of results, which must be `Ok`.
pub async fn next_ok<S, T>(stream: &mut S) -> T
where
    S: Stream<Item = kvkit::Result<T>> + Unpin,
{
    next(stream, "a stream item")
        .await
        .unwrap_or_else(|err| panic!("the stream yielded an error: {err}"))
}

/// The next item within `limit`; `None` when nothing came (a panic if the stream ends).
pub async fn next_within<S: Stream + Unpin>(stream: &mut S, limit: Duration) -> Option<S::Item> {
    match tokio::time::timeout(limit, stream.next()).await {
        Ok(Some(item)) => Some(item),
        Ok(None) => panic!("the stream ended"),
        Err(_) => None,
    }
}

/// True when the stream ends within [`ITEM_WAIT`] without another item.
pub async fn ended<S: Stream + Unpin>(stream: &mut S) -> bool {
    matches!(
        tokio::time::timeout(ITEM_WAIT, stream.next()).await,
        Ok(None)
    )
}

/// Asserts the stream yields nothing for `quiet`.
pub async fn assert_quiet<S>(stream: &mut S, quiet: Duration)
where
    S: Stream + Unpin,
    S::Item: std::fmt::Debug,
{
    if let Ok(item) = tokio::time::timeout(quiet, stream.next()).await {
        panic!("unexpected extra stream item: {item:?}");
    }
}

/// Pairs as `(key, value)` strings, for comparing with literals.
pub fn values(pairs: &[KvPair]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|p| {
            (
                p.key.clone(),
                String::from_utf8_lossy(&p.value).into_owned(),
            )
        })
        .collect()
}

/// Reads a stream of results until `done` holds for an item (skipping errors and
/// older states), for at most 40 s.
pub async fn watch_until<S, T>(stream: &mut S, what: &str, done: impl Fn(&T) -> bool) -> T
where
    S: Stream<Item = kvkit::Result<T>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let item = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("watch never converged to {what}"))
            .unwrap_or_else(|| panic!("watch ended before {what}"));
        if let Ok(state) = item
            && done(&state)
        {
            return state;
        }
    }
}

/// Reads a stream of results until its first error, which must be `Closed`, then
/// expects its end.
pub async fn ends_with_closed<S, T>(stream: &mut S, what: &str)
where
    S: Stream<Item = kvkit::Result<T>> + Unpin,
{
    loop {
        match next(stream, what).await {
            Ok(_) => continue,
            Err(e) => {
                assert_eq!(e.kind(), kvkit::ErrorKind::Closed, "{what}: {e}");
                break;
            }
        }
    }
    assert!(
        ended(stream).await,
        "{what}: an item, or no end, after Err(Closed)"
    );
}

/// The value of a point watch's state as a string; `None` for a missing key.
pub fn value(pair: &Option<KvPair>) -> Option<String> {
    pair.as_ref()
        .map(|p| String::from_utf8_lossy(&p.value).into_owned())
}

/// The next `Ok` item, counting the `Unavailable` errors a watch reports on the way
/// (one per outage).
pub async fn next_through_outage<S, T>(stream: &mut S, outages: &mut usize) -> T
where
    S: Stream<Item = kvkit::Result<T>> + Unpin,
{
    loop {
        match next(stream, "a stream item through an outage").await {
            Ok(item) => return item,
            Err(err) => {
                assert_eq!(err.kind(), kvkit::ErrorKind::Unavailable, "{err}");
                *outages += 1;
            }
        }
    }
}

/// The keys of `pairs`, in order.
pub fn keys(pairs: &[KvPair]) -> Vec<String> {
    pairs.iter().map(|p| p.key.clone()).collect()
}
