//! Scans and tree deletes of the etcd backend: `list` as one Range, and `delete_tree`
//! and `delete_below` that never delete keys other tools wrote in a form kvkit never
//! writes (`Key::is_normal`).
//!
//! One keys-only Range reads the subtree at revision R. The kvkit keys lie in runs
//! between the foreign keys (etcd keeps keys sorted), so one DeleteRange per run (one
//! in all when there is no foreign key) deletes exactly them, in a Txn guarded by
//! "no key in the subtree was written after R" (a `mod_revision` compare over the
//! whole range). Common case: 2 requests, atomic. A concurrent write makes the Txn
//! fail; its failure branch re-reads the subtree, so a retry costs no extra request.

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp, TxnOpResponse};

use super::{Etcd, header_revision, request};
use crate::backend::KvPair;
use crate::error::Result;
use crate::key::{Dir, Key};

/// Largest number of operations in one Txn: etcd's default `--max-txn-ops`.
const MAX_TXN_OPS: usize = 128;

/// Guarded attempts before falling back to exact per-key deletes, so a subtree that
/// someone writes to without pause cannot keep `delete_tree` retrying forever.
const MAX_ATTEMPTS: usize = 8;

/// The subtree's keys as read at one revision.
struct KeysAtRevision {
    revision: i64,
    keys: Vec<Vec<u8>>,
}

impl Etcd {
    /// Deletes every kvkit key strictly below `dir`, and `dir` itself when
    /// `with_dir` (and `dir` is not the root); keys below `dir` in a form kvkit never
    /// writes are left in place.
    pub(super) async fn delete_own_keys_below(&self, dir: &Dir, with_dir: bool) -> Result<()> {
        let (start, end) = self.dir_range(dir);
        let dir_key = dir
            .as_key()
            .filter(|_| with_dir)
            .map(|key| self.full(key.as_str()));
        let options = GetOptions::new().with_range(end.clone()).with_keys_only();
        let mut resp =
            request!(self, kv => kv.get(start, Some(options)), clone start, options).await?;
        let mut snapshot = KeysAtRevision {
            revision: header_revision(resp.header()),
            keys: resp
                .take_kvs()
                .into_iter()
                .map(|kv| kv.into_key_value().0)
                .collect(),
        };
        for _ in 0..MAX_ATTEMPTS {
            let mut ops: Vec<TxnOp> = dir_key
                .iter()
                .map(|key| TxnOp::delete(key.clone(), None))
                .collect();
            let runs = own_runs(&start, &end, &snapshot.keys, |key| self.is_own(key));
            ops.extend(
                runs.into_iter().map(|(from, to)| {
                    TxnOp::delete(from, Some(DeleteOptions::new().with_range(to)))
                }),
            );
            match self.guarded(&start, &end, snapshot.revision, ops).await? {
                None => return Ok(()),
                Some(fresh) => snapshot = fresh,
            }
        }
        // Written to without pause: delete exactly the kvkit keys last read, each on
        // its own (a key written meanwhile counts as written after the delete).
        tracing::debug!(
            dir = dir.as_str(),
            "delete_tree: the subtree kept changing; deleting the keys read one by one"
        );
        let ops: Vec<TxnOp> = dir_key
            .into_iter()
            .chain(snapshot.keys.into_iter().filter(|key| self.is_own(key)))
            .map(|key| TxnOp::delete(key, None))
            .collect();
        for chunk in ops.chunks(MAX_TXN_OPS) {
            let txn = Txn::new().and_then(chunk.to_vec());
            request!(self, kv => kv.txn(txn), clone txn).await?;
        }
        Ok(())
    }

    /// True when the etcd key `full` is a kvkit key of this handle in normal form.
    fn is_own(&self, full: &[u8]) -> bool {
        full.strip_prefix(self.inner.prefix.as_slice())
            .and_then(|key| std::str::from_utf8(key).ok())
            .is_some_and(Key::is_normal)
    }

    /// Sends `ops` in Txns of at most [`MAX_TXN_OPS`], each applied only if no key in
    /// `[start, end)` was written after `revision`. `None` when all were applied;
    /// otherwise the subtree as the failed Txn re-read it.
    async fn guarded(
        &self,
        start: &[u8],
        end: &[u8],
        revision: i64,
        ops: Vec<TxnOp>,
    ) -> Result<Option<KeysAtRevision>> {
        let unchanged =
            Compare::mod_revision(start.to_vec(), CompareOp::Less, revision.saturating_add(1))
                .with_range(end.to_vec());
        let reread = TxnOp::get(
            start.to_vec(),
            Some(GetOptions::new().with_range(end.to_vec()).with_keys_only()),
        );
        for chunk in ops.chunks(MAX_TXN_OPS) {
            let txn = Txn::new()
                .when([unchanged.clone()])
                .and_then(chunk.to_vec())
                .or_else([reread.clone()]);
            let resp = request!(self, kv => kv.txn(txn), clone txn).await?;
            if resp.succeeded() {
                continue;
            }
            let keys = resp
                .op_responses()
                .into_iter()
                .find_map(|op| match op {
                    TxnOpResponse::Get(mut get) => Some(get.take_kvs()),
                    _ => None,
                })
                .unwrap_or_default()
                .into_iter()
                .map(|kv| kv.into_key_value().0)
                .collect();
            return Ok(Some(KeysAtRevision {
                revision: header_revision(resp.header()),
                keys,
            }));
        }
        Ok(None)
    }
}

/// The ranges `[from, to)` holding the runs of own keys in `keys` (sorted, all in
/// `[start, end)`): each run ends just before the next foreign key, so no foreign key
/// of `keys` falls in one (and the guard rules out foreign keys written later).
fn own_runs(
    start: &[u8],
    end: &[u8],
    keys: &[Vec<u8>],
    is_own: impl Fn(&[u8]) -> bool,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut runs = Vec::new();
    let mut run_start = start.to_vec();
    let mut run_has_keys = false;
    for key in keys {
        if is_own(key) {
            run_has_keys = true;
            continue;
        }
        let mut after = key.clone();
        after.push(0); // the smallest key after the foreign one
        let run_start = std::mem::replace(&mut run_start, after);
        if run_has_keys {
            runs.push((run_start, key.clone()));
        }
        run_has_keys = false;
    }
    if run_has_keys {
        runs.push((run_start, end.to_vec()));
    }
    runs
}

/// Every kvkit pair strictly below `dir`, in key order: one Range request.
pub(super) async fn list(etcd: &Etcd, dir: &Dir) -> Result<Vec<KvPair>> {
    let (start, end) = etcd.dir_range(dir);
    // etcd returns ranges sorted by key bytes, which is the order of `String`.
    let options = GetOptions::new().with_range(end);
    let mut resp = request!(etcd, kv => kv.get(start, Some(options)), clone start, options).await?;
    let kvs = resp.take_kvs();
    // Sized up front: `filter_map` would grow the Vec by doubling and copying.
    let mut pairs = Vec::with_capacity(kvs.len());
    pairs.extend(kvs.into_iter().filter_map(|kv| etcd.owned_pair(kv)));
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::own_runs;

    fn runs(keys: &[&str]) -> Vec<(String, String)> {
        let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.as_bytes().to_vec()).collect();
        let own = |key: &[u8]| !key.contains(&b'!');
        own_runs(b"d/", b"d0", &keys, own)
            .into_iter()
            .map(|(from, to)| {
                (
                    String::from_utf8(from).unwrap(),
                    String::from_utf8(to).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn runs_cover_every_own_key_and_no_foreign_one() {
        let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(runs(&[]), []);
        assert_eq!(runs(&["d/a", "d/b"]), [pair("d/", "d0")]);
        assert_eq!(runs(&["d/!x", "d/!y"]), []);
        assert_eq!(
            runs(&["d/!a", "d/b", "d/c", "d/!d", "d/!e", "d/f"]),
            [pair("d/!a\0", "d/!d"), pair("d/!e\0", "d0")]
        );
        assert_eq!(runs(&["d/a", "d/!b"]), [pair("d/", "d/!b")]);
    }
}
