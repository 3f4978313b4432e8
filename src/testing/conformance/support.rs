//! Helpers the conformance checks share: fresh directories, prefix-siblings, typed
//! expectations and bounded waits on streams and conditions.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::{CONFORMANCE_ROOT, PROMPTLY};
use crate::backend::{Backend, KvPair, LockOptions};
use crate::error::{ErrorKind, Result};
use crate::kv::Kv;

/// Prefix-siblings of `dir` (sorting before and after `/`) and a multi-byte child:
/// `dir-x`, `dir.x`, `dir x`, `dir~` are outside `dir`, `dir/é` is inside.
pub fn siblings(dir: &str) -> ([String; 4], String) {
    (
        [
            format!("{dir}-x"),
            format!("{dir}.x"),
            format!("{dir} x"),
            format!("{dir}~"),
        ],
        format!("{dir}/é"),
    )
}

/// A fresh directory for one check: `CONFORMANCE_ROOT/name`, emptied.
pub async fn fresh_dir<B: Backend>(kv: &Kv<B>, name: &str) -> String {
    let dir = format!("{CONFORMANCE_ROOT}/{name}");
    kv.delete_tree(&dir)
        .await
        .unwrap_or_else(|e| panic!("delete_tree({dir}) before a check failed: {e}"));
    dir
}

/// The value of `result`, or a panic naming `what`.
pub(super) fn ok<T>(what: &str, result: Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{what}: unexpected error: {e:?}"))
}

/// Asserts `result` is an error of `kind`.
pub(super) fn expect_kind<T: std::fmt::Debug>(what: &str, result: Result<T>, kind: ErrorKind) {
    match result {
        Err(e) => assert_eq!(e.kind(), kind, "{what}: wrong error {e:?}"),
        Ok(v) => panic!("{what}: expected {kind:?}, got Ok({v:?})"),
    }
}

/// Pairs as `(key, value)`, for comparing with expected contents.
pub(super) fn keys_values(pairs: &[KvPair]) -> Vec<(String, Bytes)> {
    pairs
        .iter()
        .map(|p| (p.key.clone(), p.value.clone()))
        .collect()
}

/// The next item of a stream within [`PROMPTLY`].
pub async fn next_item<S: Stream + Unpin>(what: &str, stream: &mut S) -> S::Item {
    match tokio::time::timeout(PROMPTLY, stream.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("{what}: stream ended"),
        Err(_) => panic!("{what}: nothing within {PROMPTLY:?}"),
    }
}

/// Reads a stream until `done` holds for an item (bounded by [`PROMPTLY`]); returns all
/// items read. Watches may coalesce, so checks wait for the state they expect.
pub(super) async fn until<S, T>(what: &str, stream: &mut S, done: impl Fn(&T) -> bool) -> Vec<T>
where
    S: Stream<Item = Result<T>> + Unpin,
    T: std::fmt::Debug,
{
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        let item = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(item)) => ok(what, item),
            Ok(None) => panic!("{what}: stream ended; saw {seen:?}"),
            Err(_) => {
                panic!("{what}: expected state not reached within {PROMPTLY:?}; saw {seen:?}")
            }
        };
        let finished = done(&item);
        seen.push(item);
        if finished {
            return seen;
        }
    }
}

/// Polls `check` until it holds or `limit` passes (a bounded loop).
pub(super) async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Lock options carrying `value`.
pub(super) fn lock_options(value: &str) -> LockOptions {
    LockOptions::default().value(value)
}
