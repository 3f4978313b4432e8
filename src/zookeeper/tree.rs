//! Scans and tree deletes of the ZooKeeper backend: `scan_below` as one snapshot read,
//! and `delete_below`/`delete_tree` as pipelined waves of deletes, deepest level first.

use zookeeper_async::ZkError;

use super::nodes::ancestors;
use super::snapshot::Reads;
use super::{NAME, Zookeeper, codec};
use crate::backend::KvPair;
use crate::error::{Error, Result};
use crate::key::Dir;

impl Zookeeper {
    /// Every znode path strictly below `base` (values or not), deepest last, one wave of
    /// `getChildren` per level. A znode whose name does not make a kvkit key (written by
    /// another tool, e.g. a path longer than `MAX_KEY_LEN`) is left out with its subtree,
    /// and the znodes above it are marked `true`: they cannot be deleted, only emptied.
    async fn all_paths_below(&self, base: &str) -> Result<Vec<(usize, String, bool)>> {
        let mut reads = Reads::new(&self.inner);
        let mut out = Vec::new();
        let mut keep = std::collections::HashSet::new();
        let mut frontier = vec![base.to_owned()];
        let mut depth = 0;
        while !frontier.is_empty() {
            depth += 1;
            let lists = reads.children(frontier).await;
            frontier = Vec::new();
            for (parent, result) in lists {
                match result {
                    Ok(children) => {
                        for child in children {
                            let path = format!("{parent}/{child}");
                            if self.inner.key_of(&path).is_none() {
                                keep.extend(
                                    ancestors(&path)
                                        .into_iter()
                                        .filter(|a| a.len() > base.len()),
                                );
                                continue;
                            }
                            out.push((depth, path.clone(), false));
                            frontier.push(path);
                        }
                    }
                    Err(ZkError::NoNode) => {}
                    Err(e) => return Err(self.map_err(e)),
                }
            }
        }
        for entry in &mut out {
            entry.2 = keep.contains(&entry.1);
        }
        Ok(out)
    }
}

/// Every live pair strictly below `dir`, read as one snapshot.
pub(super) async fn scan_below(backend: &Zookeeper, dir: &Dir) -> Result<Vec<KvPair>> {
    let base = backend.inner.dir_path(dir);
    let nodes = backend
        .read_snapshot(&base)
        .await
        .map_err(|e| backend.map_err(e))?
        .ok_or_else(|| {
            Error::unavailable(
                NAME,
                format!(
                    "the tree below {base:?} kept changing: no two reads of it in a \
                         row agreed within the request timeout"
                ),
            )
        })?;
    Ok(backend.snapshot_pairs(nodes).0)
}

/// Deletes every znode strictly below `dir` that one scan found, deepest level first; a
/// znode above a foreign one is emptied of its value. Each key is deleted at most once:
/// a znode that a concurrent write made a parent after the scan is emptied, not
/// deleted again after another scan, so the key it held is deleted once and the
/// concurrent write (linearized after this delete) survives.
pub(super) async fn delete_below(backend: &Zookeeper, dir: &Dir) -> Result<()> {
    let inner = &backend.inner;
    let base = inner.dir_path(dir);
    let mut paths = backend.all_paths_below(&base).await?;
    // Deepest first; each depth in one pipelined wave.
    paths.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    let mut start = 0;
    while start < paths.len() {
        let depth = paths[start].0;
        let end = paths[start..]
            .iter()
            .position(|(d, _, _)| *d != depth)
            .map_or(paths.len(), |p| start + p);
        let batch: Vec<(String, bool)> = paths[start..end]
            .iter()
            .map(|e| (e.1.clone(), e.2))
            .collect();
        let results = inner
            .wave(batch, |(path, keep): (String, bool)| async move {
                if keep {
                    // Above a foreign znode: only its value goes.
                    empty(inner, &path).await
                } else {
                    inner.zk.delete(&path, None).await
                }
            })
            .await;
        let mut became_parents = Vec::new();
        for ((path, _), result) in results {
            match result {
                Ok(()) | Err(ZkError::NoNode) => {}
                // A concurrent write created a child after the scan.
                Err(ZkError::NotEmpty) => became_parents.push(path),
                Err(e) => return Err(backend.map_err(e)),
            }
        }
        if !became_parents.is_empty() {
            let emptied = inner
                .wave(became_parents, |path: String| async move {
                    empty(inner, &path).await
                })
                .await;
            for (_, result) in emptied {
                match result {
                    Ok(()) | Err(ZkError::NoNode) => {}
                    Err(e) => return Err(backend.map_err(e)),
                }
            }
        }
        start = end;
    }
    Ok(())
}

/// Removes a znode's value and keeps the znode (a parent of other znodes).
async fn empty(inner: &super::session::Inner, path: &str) -> std::result::Result<(), ZkError> {
    inner
        .zk
        .set_data(path, codec::no_value(), None)
        .await
        .map(|_| ())
}

/// Deletes `dir` and every znode below it.
pub(super) async fn delete_tree(backend: &Zookeeper, dir: &Dir) -> Result<()> {
    delete_below(backend, dir).await?;
    backend.inner.wrote_on_main();
    if let Some(key) = dir.as_key() {
        // The directory's own znode: deleted outright (or emptied if a concurrent
        // writer put a child below it meanwhile).
        let inner = &backend.inner;
        let path = inner.key_path(key.as_str());
        match inner.call(|| inner.zk.delete(&path, None)).await {
            Ok(()) => inner.prune_ancestors(&path).await,
            Err(ZkError::NoNode) => {}
            Err(ZkError::NotEmpty) => {
                match inner
                    .call(|| inner.zk.set_data(&path, codec::no_value(), None))
                    .await
                {
                    Ok(_) | Err(ZkError::NoNode) => {}
                    Err(e) => return Err(backend.map_err(e)),
                }
            }
            Err(e) => return Err(backend.map_err(e)),
        }
    }
    Ok(())
}
