//! The workload: its shape (`ConcurrentConfig`), the key space, the random client
//! operations and how each is run and recorded.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::backend::{Backend, KvPair, PutOptions};
use crate::error::{Error, ErrorKind};
use crate::kv::Kv;
use crate::testing::linearizability::{CheckLimits, Conflict, Time};

/// The random operations work below this directory, which is wiped first.
pub const CONCURRENT_ROOT: &str = "kvkit-concurrent";
/// The lock and its fencing counter live below this directory.
pub const CONCURRENT_LOCK_ROOT: &str = "kvkit-concurrent-lock";

/// How a concurrent run is shaped.
#[derive(Clone, Debug)]
pub struct ConcurrentConfig {
    /// Clients issuing random operations at once (default 4).
    pub clients: usize,
    /// Operations per client (default 100).
    pub ops_per_client: usize,
    /// Seed of every random choice; the failure report repeats it.
    pub seed: u64,
    /// Single-key watchers started during the run (default 2).
    pub watchers: usize,
    /// Lock contenders (default 3: two with identical default options, one with its
    /// own value and TTL).
    pub lock_contenders: usize,
    /// Lock rounds per contender (default 6).
    pub lock_rounds: usize,
    /// Callers of each round of the try_lock storm on a free lock (default 8; at
    /// least 2). The lock probes run when there are lock contenders.
    pub lock_storm: usize,
    /// How many keys of [`KEY_SPACE`] the random operations use (default all; fewer
    /// keys means more collisions).
    pub max_key_space: usize,
    /// An operation still pending after this long is abandoned and treated as one
    /// that may or may not have taken effect (default 10 s).
    pub op_timeout: Duration,
    /// The longest a fault stays in force (default 3 s): it is healed when two
    /// thirds of the operations are done or after this long, whichever comes first.
    pub fault_duration: Duration,
    /// The bound for recovery after a fault and for watches to converge (default 30 s).
    pub settle: Duration,
    /// How hard the linearizability search may work per key.
    pub limits: CheckLimits,
    /// Check every list as an atomic snapshot across keys (default true).
    pub check_list_snapshots: bool,
}

impl Default for ConcurrentConfig {
    fn default() -> Self {
        ConcurrentConfig {
            clients: 4,
            ops_per_client: 100,
            seed: 1,
            watchers: 2,
            lock_contenders: 3,
            lock_rounds: 6,
            lock_storm: 8,
            max_key_space: KEY_SPACE.len(),
            op_timeout: Duration::from_secs(10),
            fault_duration: Duration::from_secs(3),
            settle: Duration::from_secs(30),
            limits: CheckLimits::default(),
            check_list_snapshots: true,
        }
    }
}

/// The key space, relative to [`CONCURRENT_ROOT`]: prefix-siblings that sort before and after
/// `/` (`-`, `.`, `~`), nested keys, and keys that are also directories of others.
pub const KEY_SPACE: &[&str] = &[
    "a", "ab", "a-", "a~", "a/b", "a/b/c", "a/ab", "a.x/y", "ab/c", "b",
];

/// Directories (relative to [`CONCURRENT_ROOT`]) that lists and delete_tree use; `""` is CONCURRENT_ROOT.
pub(super) const DIRS: &[&str] = &["", "a", "ab", "a/b", "a.x"];

/// A small deterministic generator (SplitMix64), so a seed replays the same choices.
#[derive(Clone, Debug)]
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A client's operation, with keys relative to [`CONCURRENT_ROOT`].
#[derive(Clone, Debug)]
pub(super) enum ClientOp {
    Get(&'static str),
    Exists(&'static str),
    Put(&'static str, Bytes),
    Delete(&'static str),
    Create(&'static str, Bytes),
    Swap(&'static str, Bytes, u64),
    CompareDelete(&'static str, u64),
    List(&'static str),
    DeleteTree(&'static str),
}

/// What came back.
#[derive(Clone, Debug)]
pub(super) enum Reply {
    Pair(Option<KvPair>),
    Bool(bool),
    Unit,
    Conflict(Conflict),
    List(Vec<KvPair>),
    /// Unavailable or timed out: may or may not have applied.
    Unknown(String),
}

pub(super) struct Record {
    pub(super) client: usize,
    pub(super) op: ClientOp,
    pub(super) call: Time,
    pub(super) ret: Time,
    pub(super) reply: Reply,
}

pub(super) fn full(key: &str) -> String {
    if key.is_empty() {
        CONCURRENT_ROOT.to_owned()
    } else {
        format!("{CONCURRENT_ROOT}/{key}")
    }
}

pub(super) fn label(op: &ClientOp) -> String {
    match op {
        ClientOp::Get(k) => format!("get {k}"),
        ClientOp::Exists(k) => format!("exists {k}"),
        ClientOp::Put(k, v) => format!("put {k} {:?}", String::from_utf8_lossy(v)),
        ClientOp::Delete(k) => format!("delete {k}"),
        ClientOp::Create(k, v) => format!("create {k} {:?}", String::from_utf8_lossy(v)),
        ClientOp::Swap(k, v, i) => format!("swap {k} {:?} if @{i}", String::from_utf8_lossy(v)),
        ClientOp::CompareDelete(k, i) => format!("compare_delete {k} if @{i}"),
        ClientOp::List(d) => format!("list {d:?}"),
        ClientOp::DeleteTree(d) => format!("delete_tree {d:?}"),
    }
}

/// Clock shared by every recorder: nanoseconds since the run started.
#[derive(Clone, Copy)]
pub(super) struct Clock(pub(super) Instant);

impl Clock {
    pub(super) fn now(&self) -> Time {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(Time::MAX - 1)
    }
}

/// Whether an error means "outcome unknown" rather than an answer.
pub(super) fn is_indeterminate(e: &Error, faulted: bool) -> bool {
    match e.kind() {
        ErrorKind::Unavailable => true,
        ErrorKind::Backend | ErrorKind::Closed => faulted,
        _ => false,
    }
}

pub(super) async fn run_op<B: Backend>(
    kv: &Kv<B>,
    op: &ClientOp,
    timeout: Duration,
    faulted: bool,
) -> Result<Reply, String> {
    let fut = async {
        let conflict = |e: Error| -> Result<Reply, Error> {
            match e.kind() {
                ErrorKind::KeyExists => Ok(Reply::Conflict(Conflict::Exists)),
                ErrorKind::NotFound => Ok(Reply::Conflict(Conflict::Absent)),
                ErrorKind::KeyModified => Ok(Reply::Conflict(Conflict::Modified)),
                _ => Err(e),
            }
        };
        let previous = |k: &str, i: u64| KvPair {
            key: full(k),
            value: Bytes::new(),
            last_index: i,
        };
        match op {
            ClientOp::Get(k) => match kv.get(full(k)).await {
                Ok(p) => Ok(Reply::Pair(Some(p))),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(Reply::Pair(None)),
                Err(e) => Err(e),
            },
            ClientOp::Exists(k) => kv.exists(full(k)).await.map(Reply::Bool),
            ClientOp::Put(k, v) => kv
                .put(full(k), v.clone(), PutOptions::default())
                .await
                .map(|p| Reply::Pair(Some(p))),
            ClientOp::Delete(k) => match kv.delete(full(k)).await {
                Ok(()) => Ok(Reply::Bool(true)),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(Reply::Bool(false)),
                Err(e) => Err(e),
            },
            ClientOp::Create(k, v) => match kv
                .atomic_put(full(k), v.clone(), None, PutOptions::default())
                .await
            {
                Ok(p) => Ok(Reply::Pair(Some(p))),
                Err(e) => conflict(e),
            },
            ClientOp::Swap(k, v, i) => match kv
                .atomic_put(
                    full(k),
                    v.clone(),
                    Some(&previous(k, *i)),
                    PutOptions::default(),
                )
                .await
            {
                Ok(p) => Ok(Reply::Pair(Some(p))),
                Err(e) => conflict(e),
            },
            ClientOp::CompareDelete(k, i) => {
                match kv.atomic_delete(full(k), &previous(k, *i)).await {
                    Ok(()) => Ok(Reply::Unit),
                    Err(e) => conflict(e),
                }
            }
            ClientOp::List(d) => kv.list(full(d)).await.map(Reply::List),
            ClientOp::DeleteTree(d) => kv.delete_tree(full(d)).await.map(|()| Reply::Unit),
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Ok(Reply::Unknown(format!("timed out after {timeout:?}"))),
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) if is_indeterminate(&e, faulted) => Ok(Reply::Unknown(e.to_string())),
        Ok(Err(e)) => Err(format!(
            "{} failed with an unexpected error: {e}",
            label(op)
        )),
    }
}

/// What one client remembers, to aim its swaps at real versions.
#[derive(Default)]
pub(super) struct Seen {
    pub(super) latest: HashMap<&'static str, u64>,
    pub(super) older: HashMap<&'static str, u64>,
}

impl Seen {
    pub(super) fn observe(&mut self, key: &'static str, index: u64) {
        if let Some(prev) = self.latest.insert(key, index)
            && prev != index
        {
            self.older.insert(key, prev);
        }
    }
    pub(super) fn pick(&self, key: &'static str, rng: &mut Rng) -> u64 {
        let stale = rng.below(4) == 0;
        let from = if stale { &self.older } else { &self.latest };
        from.get(key)
            .or_else(|| self.latest.get(key))
            .copied()
            .unwrap_or(1)
    }
}

/// Half the operations go to the first three keys ("hot": they are also the watched
/// ones), so writes, swaps and watches collide often.
pub(super) fn random_key(rng: &mut Rng, keys: &[&'static str]) -> &'static str {
    if rng.below(2) == 0 {
        keys[rng.below(keys.len().min(HOT_KEYS))]
    } else {
        keys[rng.below(keys.len())]
    }
}

pub(super) const HOT_KEYS: usize = 3;

pub(super) fn random_op(
    rng: &mut Rng,
    keys: &[&'static str],
    seen: &Seen,
    value: Bytes,
) -> ClientOp {
    let key = random_key(rng, keys);
    match rng.below(100) {
        0..18 => ClientOp::Get(key),
        18..22 => ClientOp::Exists(key),
        22..42 => ClientOp::Put(key, value),
        42..49 => ClientOp::Delete(key),
        49..59 => ClientOp::Create(key, value),
        59..76 => ClientOp::Swap(key, value, seen.pick(key, rng)),
        76..82 => ClientOp::CompareDelete(key, seen.pick(key, rng)),
        82..96 => ClientOp::List(DIRS[rng.below(DIRS.len())]),
        _ => ClientOp::DeleteTree(DIRS[1 + rng.below(DIRS.len() - 1)]),
    }
}

/// Keys of the space at or below `dir` (relative; `""` is the root).
pub(super) fn keys_under(dir: &str, strictly: bool) -> impl Iterator<Item = &'static str> + '_ {
    KEY_SPACE.iter().copied().filter(move |k| {
        if dir.is_empty() {
            true
        } else {
            (!strictly && *k == dir)
                || (k.len() > dir.len() + 1
                    && k.starts_with(dir)
                    && k.as_bytes()[dir.len()] == b'/')
        }
    })
}
