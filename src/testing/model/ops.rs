//! The model's configuration and its operations, and the strategy that generates random sequences of them.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use proptest::prelude::*;

use crate::backend::{Backend, LockOptions};
use crate::error::Result;
use crate::kv::Kv;
use crate::testing::concurrent::ConcurrentConfig;
use crate::testing::failure::hex;
use crate::testing::fault::SharedFault;

/// Every data key of a case lives below this directory, wiped before each case.
pub const MODEL_ROOT: &str = "kvkit-model";

/// The lock keys of a case live below this directory: a prefix-sibling of
/// [`MODEL_ROOT`], so a backend whose `list(MODEL_ROOT)` leaks siblings shows it.
pub const MODEL_LOCK_ROOT: &str = "kvkit-model-locks";

/// How long a step waits for something that must happen "promptly" (a watch item, a
/// lock freed by a dropped guard).
pub const PROMPTLY: Duration = crate::testing::conformance::PROMPTLY;

/// Opens one more independent handle on the same store (a separate connection or
/// session on a network backend).
pub type OpenHandle<B> = Arc<dyn Fn() -> BoxFuture<'static, Result<Kv<B>>> + Send + Sync>;

/// What [`check_backend`](crate::testing::check_backend) and
/// [`check_against_memory`](super::check_against_memory) run.
///
/// `ModelConfig::default()` turns on everything that needs no extra setup; change
/// single fields with `ModelConfig { cases: 16, ..ModelConfig::default() }`.
pub struct ModelConfig<B: Backend> {
    /// Number of random sequences (cases).
    pub cases: u32,
    /// Longest sequence (steps per case).
    pub max_ops: usize,
    /// Seed of the generator: the same cases every run. `None`: a random seed, which a
    /// failure reports so it can be replayed.
    pub seed: Option<[u8; 32]>,
    /// Handles the sequential steps are spread over (at least 1). Each is kept for the
    /// whole run.
    pub handles: usize,
    /// Opens extra handles. `None`: extra handles are clones of the given `kv` (a
    /// backend whose clones are independent clients is then checked as such).
    pub open_handle: Option<OpenHandle<B>>,
    /// The concurrent phase of [`check_backend`](crate::testing::check_backend): `clients`
    /// (default 4) handles issue random operations at once, with watchers and lock
    /// contenders, and the history is checked for linearizability (see
    /// [`crate::testing::concurrent`]). Its handles come from `open_handle` like the
    /// sequential ones. When [`ModelConfig::seed`] is set, the phase's seed is derived from
    /// it (otherwise a random one, reported on failure), so `concurrent.seed` is not used
    /// here. `None`: no concurrent phase.
    pub concurrent: Option<ConcurrentConfig>,
    /// A fault injected while the concurrent phase runs.
    pub fault: Option<SharedFault>,
    /// Steps with TTLs: puts and atomic puts with a TTL, waiting for them to expire,
    /// abandoned TTL locks.
    pub ttl: bool,
    /// Watch and watch_tree steps.
    pub watches: bool,
    /// Lock steps.
    pub locks: bool,
    /// Most real time the TTL steps of one run may sleep (shrinking a failure gets the
    /// same again). Once spent, new TTL steps are skipped. Under a paused tokio clock
    /// sleeping costs no real time, so the budget is never spent.
    pub max_sleep: Duration,
    /// Most runs spent shrinking a failing sequence (0: report it unshrunk). Shrinking
    /// only shortens the report; it never decides whether a run fails.
    pub max_shrink_runs: u32,
}

impl<B: Backend> Default for ModelConfig<B> {
    fn default() -> Self {
        ModelConfig {
            cases: 64,
            max_ops: 40,
            seed: None,
            handles: 2,
            open_handle: None,
            concurrent: Some(ConcurrentConfig::default()),
            fault: None,
            ttl: true,
            watches: true,
            locks: true,
            max_sleep: Duration::from_secs(30),
            max_shrink_runs: 1024,
        }
    }
}

impl<B: Backend> Clone for ModelConfig<B> {
    fn clone(&self) -> Self {
        ModelConfig {
            cases: self.cases,
            max_ops: self.max_ops,
            seed: self.seed,
            handles: self.handles,
            open_handle: self.open_handle.clone(),
            concurrent: self.concurrent.clone(),
            fault: self.fault.clone(),
            ttl: self.ttl,
            watches: self.watches,
            locks: self.locks,
            max_sleep: self.max_sleep,
            max_shrink_runs: self.max_shrink_runs,
        }
    }
}

impl<B: Backend> fmt::Debug for ModelConfig<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelConfig")
            .field("cases", &self.cases)
            .field("max_ops", &self.max_ops)
            .field("seed", &self.seed.map(hex))
            .field("handles", &self.handles)
            .field("open_handle", &self.open_handle.is_some())
            .field("concurrent", &self.concurrent)
            .field("fault", &self.fault)
            .field("ttl", &self.ttl)
            .field("watches", &self.watches)
            .field("locks", &self.locks)
            .field("max_sleep", &self.max_sleep)
            .field("max_shrink_runs", &self.max_shrink_runs)
            .finish()
    }
}

// ---------------------------------------------------------------------------------
// Operations and their generation
// ---------------------------------------------------------------------------------

/// Which previously observed pair a compare operation uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// The pair most recently observed for the key.
    Latest,
    /// The oldest of the last four pairs observed (stale when the key was written
    /// since).
    Previous,
}

/// The options of a lock step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockValue {
    /// `LockOptions::default()`: the options most callers use, so two contenders
    /// often have identical ones.
    Default,
    /// The value `"a"`.
    A,
    /// The value `"b"`.
    B,
}

impl LockValue {
    pub(super) fn options(self) -> LockOptions {
        match self {
            LockValue::Default => LockOptions::default(),
            LockValue::A => LockOptions::default().value("a"),
            LockValue::B => LockOptions::default().value("b"),
        }
    }
}

/// One step of a sequence. Keys and dirs are raw strings below [`MODEL_ROOT`], normalised by
/// `Kv`; `handle` is taken modulo [`ModelConfig::handles`]; `lock` names one of two
/// lock keys below [`MODEL_LOCK_ROOT`].
#[derive(Clone, Debug)]
#[allow(missing_docs)] // the variants name the call they make
pub enum Op {
    Put {
        handle: usize,
        key: String,
        value: Bytes,
        ttl: bool,
    },
    Get {
        handle: usize,
        key: String,
    },
    Delete {
        handle: usize,
        key: String,
    },
    Exists {
        handle: usize,
        key: String,
    },
    List {
        handle: usize,
        dir: String,
    },
    DeleteTree {
        handle: usize,
        dir: String,
    },
    /// `atomic_put` with `previous = None`.
    Create {
        handle: usize,
        key: String,
        value: Bytes,
        ttl: bool,
    },
    /// `atomic_put` with an observed pair (a `get` when none was observed yet).
    Swap {
        handle: usize,
        key: String,
        value: Bytes,
        version: Version,
        ttl: bool,
    },
    /// `atomic_delete` with an observed pair (a `get` when none was observed yet).
    CompareDelete {
        handle: usize,
        key: String,
        version: Version,
    },
    /// Opens a watch of a key; later steps check what it yields.
    Watch {
        handle: usize,
        key: String,
    },
    /// Opens a watch of a subtree.
    WatchTree {
        handle: usize,
        dir: String,
    },
    /// Checks every item the open watches have yielded so far.
    Observe,
    /// Sleeps until every TTL written so far must have expired.
    Elapse,
    /// `lock` (a `try_lock` when the model says the lock is held: it would wait).
    Lock {
        handle: usize,
        lock: usize,
        value: LockValue,
    },
    TryLock {
        handle: usize,
        lock: usize,
        value: LockValue,
    },
    Unlock {
        lock: usize,
    },
    /// Drops the guard; the lock must be free promptly.
    DropGuard {
        lock: usize,
    },
    /// Takes a TTL lock from a holder that then stops renewing (its runtime ends); the
    /// lock must stay held until its TTL and be free within the TTL bound.
    Abandon {
        handle: usize,
        lock: usize,
    },
}

const HANDLE_CHOICES: usize = 4;
pub(super) const LOCKS: usize = 2;
pub(super) const MAX_WATCHES: usize = 3;

/// Segments that sort before `/` (`-`, `.`, space) and after it (`~`, `é`, `b`), all
/// string-prefix-siblings of `a`, which comes half of the time so keys collide.
const SEGMENTS: [&str; 12] = [
    "a", "a", "a", "a", "a", "a", "ab", "a-", "a.b", "a b", "a~", "é",
];

// Strategies pick from tables (`select`) rather than `prop_oneof`: proptest's unions
// keep a lazily generated tree per alternative, which made generating a case cost more
// than running it.

/// A raw key from the small space, with random leading/trailing/repeated slashes.
fn raw_key() -> impl Strategy<Value = String, Tree: Send> {
    let slashes = || proptest::sample::select(vec!["", "", "", "", "/", "//"]);
    (
        // Depth 1 half of the time, 2 a third, 3 a sixth.
        proptest::sample::select(vec![1, 1, 1, 2, 2, 3]),
        proptest::collection::vec((proptest::sample::select(SEGMENTS.to_vec()), slashes()), 3),
        slashes(),
        slashes(),
    )
        .prop_map(|(depth, segments, lead, trail)| {
            let mut key = String::from(lead);
            for (i, (seg, sep)) in segments.iter().take(depth).enumerate() {
                if i > 0 {
                    key.push('/');
                    key.push_str(sep);
                }
                key.push_str(seg);
            }
            key.push_str(trail);
            key
        })
}

fn value() -> impl Strategy<Value = Bytes, Tree: Send> {
    (0..4u8, proptest::collection::vec(any::<u8>(), 0..16)).prop_map(|(pick, bytes)| match pick {
        0 => Bytes::new(),
        1 => Bytes::from_static(b"x"),
        2 => Bytes::from_static(b"yy"),
        _ => Bytes::from(bytes),
    })
}

/// The kinds of step and how often each comes (out of 36).
#[derive(Clone, Copy, Debug)]
enum Kind {
    Put,
    Get,
    Delete,
    Exists,
    List,
    DeleteTree,
    Create,
    Swap,
    CompareDelete,
    Watch,
    WatchTree,
    Observe,
    Elapse,
    Lock,
    TryLock,
    Unlock,
    DropGuard,
    Abandon,
}

const KINDS: [(Kind, usize); 18] = [
    (Kind::Put, 4),
    (Kind::Get, 3),
    (Kind::Delete, 2),
    (Kind::Exists, 1),
    (Kind::List, 3),
    (Kind::DeleteTree, 1),
    (Kind::Create, 2),
    (Kind::Swap, 4),
    (Kind::CompareDelete, 2),
    (Kind::Watch, 2),
    (Kind::WatchTree, 2),
    (Kind::Observe, 2),
    (Kind::Elapse, 1),
    (Kind::Lock, 2),
    (Kind::TryLock, 2),
    (Kind::Unlock, 1),
    (Kind::DropGuard, 1),
    (Kind::Abandon, 1),
];

fn op() -> impl Strategy<Value = Op, Tree: Send> {
    let kinds: Vec<Kind> = KINDS
        .iter()
        .flat_map(|&(kind, weight)| std::iter::repeat_n(kind, weight))
        .collect();
    let versions = vec![
        Version::Latest,
        Version::Latest,
        Version::Latest,
        Version::Previous,
    ];
    let lock_values = vec![
        LockValue::Default,
        LockValue::Default,
        LockValue::Default,
        LockValue::A,
        LockValue::B,
    ];
    (
        proptest::sample::select(kinds),
        0..HANDLE_CHOICES,
        raw_key(),
        // The dir of a list/delete_tree/watch_tree step: the key, or (one time in six)
        // the root of the case.
        0..6u8,
        value(),
        proptest::sample::select(versions),
        proptest::sample::select(vec![false, false, false, true]),
        0..LOCKS,
        proptest::sample::select(lock_values),
    )
        .prop_map(
            |(kind, handle, key, root, value, version, ttl, lock, lock_value)| {
                let dir = if root == 5 {
                    String::new()
                } else {
                    key.clone()
                };
                match kind {
                    Kind::Put => Op::Put {
                        handle,
                        key,
                        value,
                        ttl,
                    },
                    Kind::Get => Op::Get { handle, key },
                    Kind::Delete => Op::Delete { handle, key },
                    Kind::Exists => Op::Exists { handle, key },
                    Kind::List => Op::List { handle, dir },
                    Kind::DeleteTree => Op::DeleteTree { handle, dir },
                    Kind::Create => Op::Create {
                        handle,
                        key,
                        value,
                        ttl,
                    },
                    Kind::Swap => Op::Swap {
                        handle,
                        key,
                        value,
                        version,
                        ttl,
                    },
                    Kind::CompareDelete => Op::CompareDelete {
                        handle,
                        key,
                        version,
                    },
                    Kind::Watch => Op::Watch { handle, key },
                    Kind::WatchTree => Op::WatchTree { handle, dir },
                    Kind::Observe => Op::Observe,
                    Kind::Elapse => Op::Elapse,
                    Kind::Lock => Op::Lock {
                        handle,
                        lock,
                        value: lock_value,
                    },
                    Kind::TryLock => Op::TryLock {
                        handle,
                        lock,
                        value: lock_value,
                    },
                    Kind::Unlock => Op::Unlock { lock },
                    Kind::DropGuard => Op::DropGuard { lock },
                    Kind::Abandon => Op::Abandon { handle, lock },
                }
            },
        )
}

/// The strategy for whole sequences.
pub fn sequence(max_ops: usize) -> impl Strategy<Value = Vec<Op>, Tree: Send> {
    proptest::collection::vec(op(), 1..=max_ops.max(1))
}
