//! `delete_tree` and `delete_range` that never delete keys other tools wrote in a form
//! kvkit never writes (`Key::is_normal`).
//!
//! One keys-only Range reads the subtree at revision R. The kvkit keys lie in runs
//! between the foreign keys (etcd keeps keys sorted), so one DeleteRange per run (one
//! in all when there is no foreign key) deletes exactly them, in a Txn guarded by
//! "no key in the subtree was written after R" (a `mod_revision` compare over the
//! whole range). Common case: 2 requests, atomic. A concurrent write makes the Txn
//! fail; its failure branch re-reads the subtree, so a retry costs no extra request.

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp, TxnOpResponse};

use super::{Etcd, header_revision, request};
use crate::error::Result;
use crate::key::{Dir, Key};

/// Largest number of operations in one Txn: etcd's default `--max-txn-ops`.
const MAX_TXN_OPS: usize = 128;

/// Guarded attempts before falling back to exact per-key deletes, so a subtree that
/// someone writes to without pause cannot keep `delete_tree` retrying forever.
const MAX_ATTEMPTS: usize = 8;

/// The subtree's keys as read at one revision.
struct Snapshot {
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
        let options = GetOptions::new()
            .with_range(end.clone())
            .with_keys_only();
        let mut resp =
            request!(self, kv => kv.get(start, Some(options)), clone start, options).await?;
        let mut snapshot = Snapshot {
            revision: header_revision(resp.header()),
            keys: resp.take_kvs().into_iter().map(|kv| kv.into_key_value().0).collect(),
        };
        for _ in 0..MAX_ATTEMPTS {
            let mut ops: Vec<TxnOp> = dir_key
                .iter()
                .map(|key| TxnOp::delete(key.clone(), None))
                .collect();
            ops.extend(self.run_deletes(&start, &end, &snapshot.keys));
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

    /// One DeleteRange per run of kvkit keys in `keys` (sorted, all in
    /// `[start, end)`): each run ends just before the next foreign key, so only
    /// foreign keys written later could fall into one (the guard rules that out).
    fn run_deletes(&self, start: &[u8], end: &[u8], keys: &[Vec<u8>]) -> Vec<TxnOp> {
        let mut ops = Vec::new();
        let mut run_start = start.to_vec();
        let mut run_has_keys = false;
        for key in keys {
            if self.is_own(key) {
                run_has_keys = true;
                continue;
            }
            if run_has_keys {
                let options = DeleteOptions::new().with_range(key.clone());
                ops.push(TxnOp::delete(run_start, Some(options)));
            }
            // The smallest key after the foreign one.
            run_start = key.clone();
            run_start.push(0);
            run_has_keys = false;
        }
        if run_has_keys {
            let options = DeleteOptions::new().with_range(end.to_vec());
            ops.push(TxnOp::delete(run_start, Some(options)));
        }
        ops
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
    ) -> Result<Option<Snapshot>> {
        let unchanged = Compare::mod_revision(
            start.to_vec(),
            CompareOp::Less,
            revision.saturating_add(1),
        )
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
            return Ok(Some(Snapshot {
                revision: header_revision(resp.header()),
                keys,
            }));
        }
        Ok(None)
    }
}
