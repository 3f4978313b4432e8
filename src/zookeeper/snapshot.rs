//! Reading a tree as one atomic snapshot (`list`, and each state of `watch_tree`), and
//! [`Reads`], where one traversal's reads go (the bulk reader or the main session).
//! The quiet case is bracketed by reply zxids; otherwise a double collect validated by
//! zxids (docs/zookeeper.md, "Lists are snapshots").

use std::collections::BTreeMap;

use zookeeper_async::{Stat, ZkError};

use super::Zookeeper;
use super::multiread::{self, MultiReader};
use super::nodes::{Node, ZkResultData, ZkResultVec};
use super::session::Inner;
use crate::backend::KvPair;

/// Most validation rounds of one snapshot read before it gives up (it gives up sooner
/// when the request timeout has passed).
const SNAPSHOT_ROUNDS: usize = 1_000;

/// One kvkit znode of a snapshot read: its path, data and stat.
pub(crate) type SnapshotNode = (String, Vec<u8>, Stat);

/// The marker read behind a bracketed wave: `getChildren` of `/zookeeper`, a tiny
/// answer (or a tiny error under a chroot: either way a reply with a header).
const MARKER_PATH: &str = "/zookeeper";

/// The znodes read, in path order, without the data they were read with.
fn into_nodes(known: BTreeMap<String, (Vec<u8>, Stat)>) -> Vec<SnapshotNode> {
    known
        .into_iter()
        .map(|(path, (data, stat))| (path, data, stat))
        .collect()
}

/// What identifies one state of a znode: created at `czxid`, data last written at
/// `mzxid`, children last created or deleted at `pzxid`.
fn stat_version(stat: &Stat) -> (i64, i64, i64) {
    (stat.czxid, stat.mzxid, stat.pzxid)
}

/// Drops `path` and everything known below it.
fn forget_subtree(known: &mut BTreeMap<String, (Vec<u8>, Stat)>, path: &str) {
    let below = format!("{path}/");
    known.remove(path);
    let doomed: Vec<String> = known
        .range(below.clone()..)
        .take_while(|(known, _)| known.starts_with(&below))
        .map(|(known, _)| known.clone())
        .collect();
    for path in doomed {
        known.remove(&path);
    }
}

impl Zookeeper {
    /// The pairs of a snapshot read (what `list` returns and `watch_tree` yields) and
    /// the earliest TTL deadline among them (server clock, ms); expired values met on
    /// the way are collected.
    pub(crate) fn snapshot_pairs(&self, nodes: Vec<SnapshotNode>) -> (Vec<KvPair>, Option<i64>) {
        let inner = &self.inner;
        let mut out = Vec::new();
        let mut deadline: Option<i64> = None;
        for (path, data, stat) in nodes {
            let Some(key) = inner.key_of(&path) else {
                continue;
            };
            match inner.decode_node(key, data, stat) {
                Node::Value {
                    pair, deadline_ms, ..
                } => {
                    if let Some(d) = deadline_ms {
                        deadline = Some(deadline.map_or(d, |old: i64| old.min(d)));
                    }
                    out.push(pair);
                }
                Node::Empty {
                    expired_mzxid: Some(version),
                    ..
                } => self.collect_expired(path, version),
                _ => {}
            }
        }
        (out, deadline)
    }

    /// Every kvkit znode strictly below `base` with its data and stat, in path order,
    /// as one atomic snapshot of the tree: the state it had at one instant during the
    /// call. ZooKeeper has no snapshot read across requests (and does not promise that
    /// a multiRead is atomic).
    ///
    /// The quiet case first, on the bulk reader: the tree is read level by level as
    /// before, with a marker read behind each `getData` wave (see [`Reads::quiet`]).
    /// When the zxid of the first read's reply equals the last marker's, the server
    /// applied no write in between, so every read saw one state and that walk is the
    /// snapshot: no more waves than a plain walk, and one tiny request per level.
    ///
    /// Otherwise (a write anywhere on the ensemble meanwhile, a reconnect, or no bulk
    /// reader) it is a double collect validated by zxids: the tree
    /// is read level by level (a directory's stat before its `getChildren`), then every
    /// visited znode is read again. A znode's `mzxid` changes with every write of its
    /// data (a delete and re-create too) and its `pzxid` with every child created or
    /// deleted; when none changed, every znode stayed as first read until it was read
    /// again, so the collect is the tree as it was between the collect's last read and
    /// the validation's first (all reads on one session, whose requests are served in
    /// order and whose view never goes back).
    ///
    /// When something changed, the validation's reads (values included) are the new
    /// collect: only the directories whose children changed are listed again (and
    /// their new children read), then everything is validated again at once: a pause
    /// between two rounds would widen the window that has to be free of writes (tried:
    /// under a writer that never pauses, far fewer lists succeeded). Under such a writer
    /// this may not settle: after the request timeout (or [`SNAPSHOT_ROUNDS`] rounds) it
    /// gives up (`list` then fails with a retryable `Error::Unavailable`).
    ///
    /// The validation reads the last level again too: a level's reads are several
    /// operations (a multiRead is not promised atomic), so a znode read early in the
    /// last level may have changed before a later one was read, which only a read
    /// after all of them shows. Its cost when nothing changes during it: one wave for
    /// the base's stat and one for the validation, on top of the level-by-level reads.
    ///
    /// `None`: the tree kept changing through every round.
    pub(crate) async fn read_snapshot(
        &self,
        base: &str,
    ) -> std::result::Result<Option<Vec<SnapshotNode>>, ZkError> {
        let inner = &self.inner;
        let mut reads = Reads::new(inner);
        if reads.begin_bracketed() {
            let mut known = BTreeMap::new();
            self.read_changed_children(&mut reads, &mut known, vec![base.to_owned()])
                .await?;
            if !reads.one_wave() {
                reads.close_bracket().await;
            }
            if reads.one_wave() || reads.quiet() {
                return Ok(Some(into_nodes(known)));
            }
        }
        // Every znode read (the base included) with its latest data and stat; the
        // children of one with children were listed after a read of that stat's
        // `pzxid` (and `czxid`).
        let mut known: BTreeMap<String, (Vec<u8>, Stat)> = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + inner.request_timeout;
        for round in 0..SNAPSHOT_ROUNDS {
            if round > 0 && tokio::time::Instant::now() >= deadline {
                break;
            }
            let first = known.is_empty();
            let paths: Vec<String> = if first {
                reads.begin();
                vec![base.to_owned()]
            } else {
                known.keys().cloned().collect()
            };
            let mut changed = first;
            let mut relist = Vec::new();
            for (path, result) in reads.data(paths).await {
                let (data, stat) = match result {
                    Ok(found) => found,
                    // One read saw no base: nothing was below it then.
                    Err(ZkError::NoNode) if path == base => return Ok(Some(Vec::new())),
                    Err(ZkError::NoNode) => {
                        // Its parent's `pzxid` changed: the parent is listed again.
                        changed = true;
                        forget_subtree(&mut known, &path);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if path == base && stat.num_children == 0 {
                    // One read saw the base without children.
                    return Ok(Some(Vec::new()));
                }
                let before = known.get(&path).map(|(_, old)| stat_version(old));
                if before != Some(stat_version(&stat)) {
                    changed = true;
                    let children_changed = before
                        .is_none_or(|(czxid, _, pzxid)| (czxid, pzxid) != (stat.czxid, stat.pzxid));
                    if children_changed {
                        if stat.num_children > 0 {
                            relist.push(path.clone());
                        } else {
                            // No children now: none of those known are left.
                            forget_subtree(&mut known, &path);
                        }
                    }
                }
                known.insert(path, (data, stat));
            }
            if !reads.one_session() {
                // A read of another session (which may lag behind) was mixed in.
                known.clear();
                continue;
            }
            if !changed {
                known.remove(base);
                return Ok(Some(into_nodes(known)));
            }
            self.read_changed_children(&mut reads, &mut known, relist)
                .await?;
        }
        Ok(None)
    }

    /// Lists the children of `relist` again, level by level down to the leaves: gone
    /// ones are forgotten with their subtrees, new ones read (and listed when they have
    /// children). Foreign znodes (not kvkit keys) are skipped with their subtrees.
    async fn read_changed_children(
        &self,
        reads: &mut Reads<'_>,
        known: &mut BTreeMap<String, (Vec<u8>, Stat)>,
        mut relist: Vec<String>,
    ) -> std::result::Result<(), ZkError> {
        let inner = &self.inner;
        while !relist.is_empty() {
            let mut new = Vec::new();
            for (parent, result) in reads.children(relist).await {
                let children = match result {
                    Ok(children) => children,
                    // Deleted since its stat was read: the next round sees it gone.
                    Err(ZkError::NoNode) => continue,
                    Err(e) => return Err(e),
                };
                let listed: std::collections::HashSet<String> = children
                    .into_iter()
                    .map(|child| format!("{parent}/{child}"))
                    .filter(|path| inner.key_of(path).is_some())
                    .collect();
                let below = format!("{parent}/");
                let gone: Vec<String> = known
                    .range(below.clone()..)
                    .take_while(|(path, _)| path.starts_with(&below))
                    .filter(|(path, _)| !path[below.len()..].contains('/'))
                    .filter(|(path, _)| !listed.contains(*path))
                    .map(|(path, _)| path.clone())
                    .collect();
                for path in gone {
                    forget_subtree(known, &path);
                }
                new.extend(listed.into_iter().filter(|path| !known.contains_key(path)));
            }
            relist = Vec::new();
            if new.is_empty() {
                break;
            }
            new.sort();
            for (path, result) in reads.data(new).await {
                match result {
                    Ok((data, stat)) => {
                        if stat.num_children > 0 {
                            relist.push(path.clone());
                        }
                        known.insert(path, (data, stat));
                    }
                    // Listed, then deleted: its parent's `pzxid` changed.
                    Err(ZkError::NoNode) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

/// Where one traversal (`list`, the scan of `delete_tree`) reads: through the bulk
/// reader while it works (a `sync` ahead of the first multiRead of each reader session,
/// see `multiread`), else with pipelined single requests on the main session (switch
/// off, a server without multiRead, the reader down: then for the rest of the
/// traversal, as a later multiRead would lack the `sync`). Each call is one counted
/// wave. It also tells whether the reads since [`Reads::begin`] were all served by one
/// session, whose view never goes back (what a snapshot's validation relies on).
pub(super) struct Reads<'a> {
    inner: &'a Inner,
    reader: Option<&'a MultiReader>,
    /// The reader session generation a `sync` was answered in.
    synced: Option<u64>,
    /// The session that served the reads since `begin` (`None`: the main session).
    served: Option<Option<u64>>,
    /// More than one session served them (or it cannot be told).
    mixed: bool,
    /// Set by [`Reads::begin_bracketed`]: every `getData` wave carries a marker read.
    bracketed: bool,
    /// The header zxid of the first request since `begin_bracketed`.
    first_zxid: Option<i64>,
    /// The marker zxid of the last wave (`None` once a wave went without one).
    last_marker_zxid: Option<i64>,
    /// Waves through the bulk reader since `begin`.
    bracketed_waves: usize,
}

impl<'a> Reads<'a> {
    pub(super) fn new(inner: &'a Inner) -> Self {
        let reader = inner
            .reader
            .as_ref()
            .filter(|r| r.usable() && !inner.is_closed());
        Reads {
            inner,
            reader,
            synced: None,
            served: None,
            mixed: false,
            bracketed: false,
            first_zxid: None,
            last_marker_zxid: None,
            bracketed_waves: 0,
        }
    }

    /// Starts a new run of reads for [`Reads::one_session`].
    fn begin(&mut self) {
        self.served = None;
        self.mixed = false;
        self.bracketed = false;
        self.first_zxid = None;
        self.last_marker_zxid = None;
        self.bracketed_waves = 0;
    }

    /// Starts a run of reads bracketed by zxids: each `getData` wave carries a marker
    /// read ([`MARKER_PATH`]) behind its reads, so that [`Reads::quiet`] can tell
    /// whether the server applied any write during the run. Only the bulk reader
    /// reports zxids; `false` (nothing started) without it.
    fn begin_bracketed(&mut self) -> bool {
        self.begin();
        self.bracketed = self.reader.is_some();
        self.bracketed
    }

    /// True when the server applied no write between the first read since
    /// [`Reads::begin_bracketed`] and the last wave's marker, all on one session: every
    /// read of the run saw one and the same state.
    fn quiet(&self) -> bool {
        self.all_on_reader()
            && self.first_zxid.is_some()
            && self.first_zxid == self.last_marker_zxid
    }

    /// Every read since `begin` went through one session of the bulk reader.
    fn all_on_reader(&self) -> bool {
        !self.mixed && self.served.is_some_and(|s| s.is_some())
    }

    /// Notes a wave's zxids.
    fn bracket<T>(&mut self, wave: &multiread::Wave<T>) {
        if self.first_zxid.is_none() {
            self.first_zxid = wave.first_zxid;
        }
        self.last_marker_zxid = wave.marker_zxid;
        self.bracketed_waves += 1;
    }

    /// True when the run since [`Reads::begin_bracketed`] was one wave: a single
    /// `getChildren` of the base (it had no kvkit children), atomic on its own.
    fn one_wave(&self) -> bool {
        self.bracketed_waves == 1 && self.all_on_reader()
    }

    /// Sends a marker on its own when the run's last wave went without one (it was a
    /// `getChildren` wave), so that [`Reads::quiet`] can decide.
    async fn close_bracket(&mut self) {
        if !self.bracketed || self.last_marker_zxid.is_some() || self.mixed {
            return;
        }
        let read = async |reader: &MultiReader, sync: Option<&str>, marker: Option<&str>| {
            reader.data_wave(sync, &[], marker).await
        };
        if self.via_reader(read).await.is_none() {
            self.mixed = true;
        }
    }

    /// True when every read since `begin` was served by one session.
    fn one_session(&self) -> bool {
        !self.mixed
    }

    /// Notes which session served a read (`None`: the main session).
    fn served_by(&mut self, session: Option<u64>) {
        match self.served {
            None => self.served = Some(session),
            Some(previous) if previous != session => self.mixed = true,
            Some(_) => {}
        }
    }

    fn fall_back(&mut self, e: &multiread::ReadError) {
        tracing::debug!(error = %e, "this traversal reads through the main session");
        self.reader = None;
    }

    /// The bulk reader's answers, or `None` when this traversal reads through the main
    /// session (no reader, or it just failed).
    async fn via_reader<T>(
        &mut self,
        read: impl AsyncFnOnce(
            &'a MultiReader,
            Option<&'a str>,
            Option<&'static str>,
        ) -> Result<multiread::Wave<T>, multiread::ReadError>,
    ) -> Option<Vec<std::result::Result<T, ZkError>>> {
        let reader = self.reader?;
        // A session's first read syncs (a new session may lag behind the last one).
        let before = reader.generation();
        let sync = (self.synced != Some(before)).then_some(self.inner.kv_root.as_str());
        match read(reader, sync, self.bracketed.then_some(MARKER_PATH)).await {
            Ok(wave) => {
                self.bracket(&wave);
                let results = wave.results;
                let after = reader.generation();
                // The session that served is known when none opened meanwhile, or when
                // this read opened the reader's first one.
                if before == after || (before, after) == (0, 1) {
                    if sync.is_some() {
                        self.synced = Some(after);
                    }
                } else {
                    self.mixed = true;
                }
                self.served_by(Some(after));
                Some(results)
            }
            Err(e) => {
                self.fall_back(&e);
                None
            }
        }
    }

    pub(super) async fn children(&mut self, paths: Vec<String>) -> Vec<(String, ZkResultVec)> {
        // No marker: a walk rarely ends on a getChildren wave (`close_bracket` then).
        let read = async |reader: &MultiReader, sync: Option<&str>, _marker: Option<&str>| {
            reader.children_wave(sync, &paths, None).await
        };
        if let Some(results) = self.via_reader(read).await {
            return paths.into_iter().zip(results).collect();
        }
        self.served_by(None);
        let inner = self.inner;
        inner
            .wave(paths, |parent: String| async move {
                inner.zk.get_children(&parent, false).await
            })
            .await
    }

    pub(super) async fn data(&mut self, paths: Vec<String>) -> Vec<(String, ZkResultData)> {
        let read = async |reader: &MultiReader, sync: Option<&str>, marker: Option<&str>| {
            reader.data_wave(sync, &paths, marker).await
        };
        let inner = self.inner;
        if let Some(results) = self.via_reader(read).await {
            if let Some(reader) = self.reader {
                let generation = reader.generation();
                for (_, stat) in results.iter().flatten() {
                    inner.saw_on_reader(stat, generation);
                }
            }
            return paths.into_iter().zip(results).collect();
        }
        self.served_by(None);
        let results = inner
            .wave(paths, |path: String| async move {
                inner.zk.get_data(&path, false).await
            })
            .await;
        for (_, stat) in results.iter().filter_map(|(_, r)| r.as_ref().ok()) {
            inner.saw_on_main(stat);
        }
        results
    }
}
