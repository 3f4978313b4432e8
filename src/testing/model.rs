//! The model harness: random operation sequences run against a backend and checked,
//! step by step, against a model of the rules in `docs/design.md` (the semantics
//! [`crate::memory::Memory`] implements). `docs/testing.md` lists every rule checked.
//!
//! A sequence mixes every operation: get, put (with and without TTL), delete, exists,
//! list, delete_tree, atomic_put (create and swap, with and without TTL),
//! atomic_delete, watches and tree watches that later steps check, lock, try_lock,
//! unlock, dropping a guard, abandoning a TTL lock, and waiting for TTLs to pass. Steps
//! are spread over several handles ([`ModelConfig::handles`]) kept for the whole run,
//! so stale reads across handles show. Keys come from a small nested space whose
//! segments sort before and after `/` (`a`, `ab`, `a-`, `a.b`, `a b`, `a~`, `é`), with
//! random extra slashes, so keys, parents, children and prefix-siblings collide.
//!
//! Time: TTL waits use `tokio::time::sleep`, so a backend on tokio's clock (memory)
//! can be checked under a paused clock (`#[tokio::test(start_paused = true)]`) and
//! never waits for real. Tolerances come from [`Capabilities`]: a TTL key is present
//! until its TTL passes and gone after `ttl * ttl_expiry_factor + ttl_granularity`.
//!
//! A failure is shrunk by proptest to a minimal sequence; [`ModelFailure`] shows the
//! seed, the rule broken, the step and the sequence.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use tokio::time::Instant;

use super::concurrent::{ConcurrentConfig, check_concurrent};
use super::fault::SharedFault;
use crate::backend::{Backend, Capabilities, KvPair, LockGuard, LockOptions, PutOptions};
use crate::error::{Error, ErrorKind, Result};
use crate::key::{Dir, Key};
use crate::kv::Kv;

/// Every data key of a case lives below this directory, wiped before each case.
pub const ROOT: &str = "kvkit-model";

/// The lock keys of a case live below this directory: a prefix-sibling of [`ROOT`], so
/// a backend whose `list(ROOT)` leaks siblings shows it.
pub const LOCK_ROOT: &str = "kvkit-model-locks";

/// How long a step waits for something that must happen "promptly" (a watch item, a
/// lock freed by a dropped guard).
pub const PROMPTLY: Duration = super::conformance::PROMPTLY;

/// Opens one more independent handle on the same store (a separate connection or
/// session on a network backend).
pub type OpenHandle<B> = Arc<dyn Fn() -> BoxFuture<'static, Result<Kv<B>>> + Send + Sync>;

/// What [`check_backend`] and [`check_against_memory`] run.
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
    /// The concurrent phase of [`check_backend`]: `clients` (default 4) handles issue
    /// random operations at once, with watchers and lock contenders, and the history is
    /// checked for linearizability (see [`crate::testing::concurrent`]). Its handles
    /// come from `open_handle` like the sequential ones. When [`ModelConfig::seed`] is
    /// set, the phase's seed is derived from it (otherwise a random one, reported on
    /// failure), so `concurrent.seed` is not used here. `None`: no concurrent phase.
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

/// A broken rule, for a person to read: the seed, the rule, the step and the minimal
/// sequence (or why the run could not go on).
#[derive(Debug)]
pub struct ModelFailure(pub String);

impl ModelFailure {
    /// The name of the rule broken (the text after `rule broken: `), when there is one.
    pub fn rule(&self) -> Option<&str> {
        self.0
            .lines()
            .find_map(|line| line.strip_prefix("rule broken: "))
    }
}

impl fmt::Display for ModelFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ModelFailure {}

fn hex(seed: [u8; 32]) -> String {
    seed.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
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
    fn options(self) -> LockOptions {
        match self {
            LockValue::Default => LockOptions::default(),
            LockValue::A => LockOptions::default().value("a"),
            LockValue::B => LockOptions::default().value("b"),
        }
    }
}

/// One step of a sequence. Keys and dirs are raw strings below [`ROOT`], normalised by
/// `Kv`; `handle` is taken modulo [`ModelConfig::handles`]; `lock` names one of two
/// lock keys below [`LOCK_ROOT`].
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
const LOCKS: usize = 2;
const MAX_WATCHES: usize = 3;

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

// ---------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------

/// A broken rule found by one step.
#[derive(Debug)]
struct Violation {
    rule: &'static str,
    detail: String,
}

fn violation(rule: &'static str, detail: impl Into<String>) -> Violation {
    Violation {
        rule,
        detail: detail.into(),
    }
}

type Checked<T = ()> = std::result::Result<T, Violation>;

const RULE_HEALTHY: &str = "operations succeed on a healthy store";
const RULE_NORMALISED: &str = "pairs carry the normalised key and the written value";
const RULE_VERSIONS: &str = "last_index is nonzero, changes on every write and never goes back (also across delete and re-create)";
const RULE_RYW: &str = "read your writes (a handle sees its own latest write)";
const RULE_MONOTONIC: &str = "monotonic reads across handles (never older than already seen)";
const RULE_LATEST: &str = "reads see the latest completed write (linearizable reads)";
const RULE_PARENT: &str = "implicit parents are not keys (get/exists of a parent is NotFound)";
const RULE_LOST_WRITE: &str = "a written key stays readable until deleted or expired";
const RULE_DELETED: &str = "a deleted key is gone";
const RULE_TTL_GONE: &str =
    "a key put with a TTL is gone after ttl × ttl_expiry_factor + ttl_granularity";
const RULE_TTL_KEPT: &str = "a key put with a TTL is readable until its TTL passes";
const RULE_LIST_SORTED: &str = "list is sorted by key (byte order)";
const RULE_LIST_BELOW: &str =
    "list returns only keys strictly below dir (never dir itself nor a sibling)";
const RULE_LIST_CONTENT: &str = "list returns exactly the live keys below dir";
const RULE_ERRORS: &str = "errors name the caller's decision (NotFound, KeyExists, KeyModified)";
const RULE_CAS: &str = "atomic_put/atomic_delete apply exactly when the version matches";
const RULE_DELETE_TREE: &str = "delete_tree deletes dir and everything below, nothing else";
const RULE_WATCH_FILTER: &str = "a watch yields only its key (watch_tree: keys strictly below dir)";
const RULE_WATCH_FIRST: &str =
    "a watch's first item is a state the key had between the call and the item";
const RULE_WATCH_ORDER: &str = "a watch yields states in order, never a stale one after a newer";
const RULE_WATCH_REPEAT: &str = "a watch never repeats an item";
const RULE_WATCH_UNKNOWN: &str = "a watch yields only states the store had";
const RULE_WATCH_EVERY: &str = "a watch yields every write once, in order (watch_sees_every_write)";
const RULE_WATCH_CONVERGES: &str = "a watch converges to the current state promptly";
const RULE_WATCH_ERROR: &str = "a watch yields no error on a healthy store";
const RULE_LOCK_FREE: &str = "lock/try_lock of a free lock is granted promptly";
const RULE_LOCK_EXCLUSION_SAME: &str =
    "mutual exclusion: try_lock of a held lock returns None (identical options)";
const RULE_LOCK_EXCLUSION_OTHER: &str =
    "mutual exclusion: try_lock of a held lock returns None (different options)";
const RULE_LOCK_VALUE: &str = "the lock key holds the lock's value while held (bookkeeping hidden)";
const RULE_UNLOCK: &str = "unlock of a held lock succeeds and frees the lock at once";
const RULE_LOCK_NOT_LOST: &str = "a lock nobody touches is not lost";
const RULE_DROP_FREES: &str = "dropping a guard frees the lock promptly";
const RULE_ABANDON_HELD: &str = "an abandoned TTL lock stays held until its TTL passes";
const RULE_ABANDON_FREES: &str =
    "an abandoned TTL lock is free within ttl × ttl_expiry_factor + ttl_granularity";

/// A key's state in the model.
#[derive(Clone, Debug)]
struct Entry {
    value: Bytes,
    index: u64,
    expiry: Option<Expiry>,
}

/// When a TTL key must still be there and when it must be gone.
#[derive(Clone, Copy, Debug)]
struct Expiry {
    /// Present at least until then (the call's start + the TTL).
    earliest: Instant,
    /// Gone at the latest then (the reply + ttl × factor + granularity).
    latest: Instant,
}

/// Why a key the model knows as absent is absent.
#[derive(Clone, Copy, Debug)]
enum Gone {
    Deleted { index: u64, handle: usize },
    Expired { index: u64 },
}

/// One state a watch may yield: sorted (key, value, index), plus keys that may be
/// missing (TTL keys expiring while the harness slept).
#[derive(Clone, Debug, PartialEq)]
struct Snapshot {
    pairs: Vec<(String, Bytes, u64)>,
    may_lack: BTreeSet<String>,
}

impl Snapshot {
    fn matches(&self, item: &[(String, Bytes, u64)]) -> bool {
        if self.may_lack.is_empty() {
            return self.pairs == item;
        }
        let mut it = item.iter().peekable();
        for pair in &self.pairs {
            match it.peek() {
                Some(&next) if next == pair => {
                    it.next();
                }
                _ if self.may_lack.contains(&pair.0) => {}
                _ => return false,
            }
        }
        it.next().is_none()
    }
}

enum Filter {
    Key(String),
    Tree(Dir),
}

impl Filter {
    fn contains(&self, key: &str) -> bool {
        match self {
            Filter::Key(k) => k == key,
            Filter::Tree(dir) => dir.contains(key),
        }
    }
}

enum Stream<B: Backend> {
    Key(B::Watch),
    Tree(B::WatchTree),
}

struct OpenWatch<B: Backend> {
    step: usize,
    handle: usize,
    filter: Filter,
    stream: Stream<B>,
    history: Vec<Snapshot>,
    /// History position the first item may start from (the state at the call).
    open_pos: usize,
    /// History position of the last item.
    pos: Option<usize>,
    last_item: Option<Vec<(String, Bytes, u64)>>,
}

enum LockSlot<B: Backend> {
    Free,
    Held {
        handle: usize,
        value: LockValue,
        guard: B::Lock,
    },
}

/// What one handle has seen per key: the highest index, and whether it wrote it.
#[derive(Default)]
struct Seen(HashMap<String, (u64, bool)>);

/// One run: the handles, the model and the open watches and locks of a case.
struct Harness<B: Backend> {
    handles: Arc<[Kv<B>]>,
    caps: Capabilities,
    config: ModelConfig<B>,
    /// The TTL written by TTL steps, and the bound after which its key must be gone.
    ttl: Duration,
    ttl_bound: Duration,
    /// Whether tokio's clock is paused (abandoned locks then run on a paused clock too).
    paused: bool,
    /// Real time the TTL steps may still sleep.
    sleep_left: Duration,
    data: BTreeMap<String, Entry>,
    gone: HashMap<String, Gone>,
    max_index: HashMap<String, u64>,
    observed: HashMap<String, Vec<KvPair>>,
    seen: Vec<Seen>,
    watches: Vec<OpenWatch<B>>,
    locks: Vec<LockSlot<B>>,
    /// The step running now (for failure messages).
    step: usize,
}

fn prefixed(raw: &str) -> String {
    format!("{ROOT}/{raw}")
}

fn lock_key(lock: usize) -> String {
    format!("{LOCK_ROOT}/l{lock}")
}

fn triple(pair: &KvPair) -> (String, Bytes, u64) {
    (pair.key.clone(), pair.value.clone(), pair.last_index)
}

fn unexpected_error(what: &str, e: &Error) -> Violation {
    violation(RULE_HEALTHY, format!("{what}: unexpected error {e:?}"))
}

/// One of the run's handles, borrowed without cloning the `Kv` (a clone may be a new
/// client with its own state, and each handle must stay the same one all run).
struct Handle<B: Backend> {
    all: Arc<[Kv<B>]>,
    index: usize,
}

impl<B: Backend> std::ops::Deref for Handle<B> {
    type Target = Kv<B>;

    fn deref(&self) -> &Kv<B> {
        &self.all[self.index]
    }
}

impl<B: Backend> Harness<B> {
    fn handle(&self, h: usize) -> (usize, Handle<B>) {
        let index = h % self.handles.len();
        let handle = Handle {
            all: self.handles.clone(),
            index,
        };
        (index, handle)
    }

    fn other_handle(&self, h: usize) -> (usize, Handle<B>) {
        self.handle(h + 1)
    }

    fn reset(&mut self) {
        self.data.clear();
        self.gone.clear();
        self.max_index.clear();
        // `observed` is kept: pairs from earlier cases are stale after the wipe, and a
        // compare operation with one must fail.
        for seen in &mut self.seen {
            seen.0.clear();
        }
        self.watches.clear();
        self.locks = (0..LOCKS).map(|_| LockSlot::Free).collect();
    }

    // -- model bookkeeping ----------------------------------------------------------

    /// Pushes the new state of every watch that covers one of `keys`.
    fn record(&mut self, keys: &[String]) {
        for i in 0..self.watches.len() {
            if keys.iter().any(|k| self.watches[i].filter.contains(k)) {
                let snapshot = Snapshot {
                    pairs: self.snapshot(&self.watches[i].filter),
                    may_lack: BTreeSet::new(),
                };
                let watch = &mut self.watches[i];
                if watch.history.last() != Some(&snapshot) {
                    watch.history.push(snapshot);
                }
            }
        }
    }

    fn snapshot(&self, filter: &Filter) -> Vec<(String, Bytes, u64)> {
        match filter {
            Filter::Key(k) => self
                .data
                .get(k)
                .map(|e| (k.clone(), e.value.clone(), e.index))
                .into_iter()
                .collect(),
            Filter::Tree(dir) => self
                .data
                .iter()
                .filter(|(k, _)| dir.contains(k))
                .map(|(k, e)| (k.clone(), e.value.clone(), e.index))
                .collect(),
        }
    }

    /// Checks and records a pair a handle read.
    fn saw(&mut self, h: usize, pair: &KvPair) {
        let entry = self.seen[h].0.entry(pair.key.clone()).or_insert((0, false));
        if pair.last_index > entry.0 {
            *entry = (pair.last_index, false);
        }
        let observed = self.observed.entry(pair.key.clone()).or_default();
        if observed.last().map(|p| p.last_index) != Some(pair.last_index) {
            observed.push(pair.clone());
            if observed.len() > 4 {
                observed.remove(0);
            }
        }
    }

    /// Checks and applies a write that returned `pair`.
    fn wrote(
        &mut self,
        h: usize,
        key: &str,
        value: &Bytes,
        pair: &KvPair,
        expiry: Option<Expiry>,
    ) -> Checked {
        if pair.key != key || pair.value != value {
            return Err(violation(
                RULE_NORMALISED,
                format!("wrote {key:?} = {value:?}, the reply is {pair:?}"),
            ));
        }
        let before = self.max_index.get(key).copied().unwrap_or(0);
        if pair.last_index == 0 || pair.last_index <= before {
            return Err(violation(
                RULE_VERSIONS,
                format!(
                    "{key}: a write returned last_index {} after {before} was seen",
                    pair.last_index
                ),
            ));
        }
        self.max_index.insert(key.to_owned(), pair.last_index);
        self.seen[h]
            .0
            .insert(key.to_owned(), (pair.last_index, true));
        self.data.insert(
            key.to_owned(),
            Entry {
                value: value.clone(),
                index: pair.last_index,
                expiry,
            },
        );
        self.gone.remove(key);
        self.saw(h, pair);
        self.record(&[key.to_owned()]);
        Ok(())
    }

    /// `delete_tree` is not promised atomic (the derived one is two operations, and
    /// ZooKeeper deletes znode by znode), so a watch may see the tree part-deleted: one
    /// flexible state before the end state, in which any of `doomed` may be missing.
    fn may_see_part_of(&mut self, doomed: &[String]) {
        for i in 0..self.watches.len() {
            let lacking: BTreeSet<String> = doomed
                .iter()
                .filter(|k| self.watches[i].filter.contains(k))
                .cloned()
                .collect();
            if lacking.len() > 1 {
                let pairs = self.snapshot(&self.watches[i].filter);
                self.watches[i].history.push(Snapshot {
                    pairs,
                    may_lack: lacking,
                });
            }
        }
    }

    fn removed(&mut self, h: usize, keys: Vec<String>) {
        for key in &keys {
            if let Some(entry) = self.data.remove(key) {
                self.gone.insert(
                    key.clone(),
                    Gone::Deleted {
                        index: entry.index,
                        handle: h,
                    },
                );
            }
        }
        self.record(&keys);
    }

    /// Why a read by handle `h` of `key` returning `got` instead of the model's state is
    /// wrong: the most specific rule.
    fn stale_rule(&self, h: usize, key: &str, got: u64) -> &'static str {
        if let Some(&(seen, wrote)) = self.seen[h].0.get(key)
            && got < seen
        {
            return if wrote { RULE_RYW } else { RULE_MONOTONIC };
        }
        RULE_LATEST
    }

    /// Checks what a read of one key returned against the model.
    fn check_read(&mut self, h: usize, key: &str, got: Option<&KvPair>, what: &str) -> Checked {
        let want = self.data.get(key).cloned();
        match (want, got) {
            (Some(e), Some(pair)) => {
                if pair.key != key {
                    return Err(violation(
                        RULE_NORMALISED,
                        format!("{what} of {key:?} returned {pair:?}"),
                    ));
                }
                if pair.last_index == e.index && pair.value == e.value {
                    self.saw(h, pair);
                    return Ok(());
                }
                let rule = if pair.last_index < e.index {
                    self.stale_rule(h, key, pair.last_index)
                } else if pair.last_index == e.index {
                    RULE_NORMALISED
                } else {
                    RULE_LATEST
                };
                Err(violation(
                    rule,
                    format!(
                        "{what} via handle {h} of {key:?}: expected value {:?} at last_index {}, got {pair:?}",
                        e.value, e.index
                    ),
                ))
            }
            (Some(e), None) => Err(violation(
                if e.expiry.is_some() {
                    RULE_TTL_KEPT
                } else {
                    RULE_LOST_WRITE
                },
                format!(
                    "{what} via handle {h} of {key:?}: expected value {:?} at last_index {}, got NotFound",
                    e.value, e.index
                ),
            )),
            (None, None) => Ok(()),
            (None, Some(pair)) => {
                let rule = match self.gone.get(key) {
                    Some(Gone::Expired { index }) if *index == pair.last_index => RULE_TTL_GONE,
                    Some(Gone::Deleted { index, handle }) if *index == pair.last_index => {
                        if *handle == h { RULE_RYW } else { RULE_DELETED }
                    }
                    _ if self
                        .data
                        .keys()
                        .any(|k| Dir::new(key).is_ok_and(|d| d.contains(k))) =>
                    {
                        RULE_PARENT
                    }
                    _ => RULE_LATEST,
                };
                Err(violation(
                    rule,
                    format!("{what} via handle {h} of {key:?}: expected NotFound, got {pair:?}"),
                ))
            }
        }
    }

    fn check_kind(&self, what: &str, got: Option<&Error>, want: Option<ErrorKind>) -> Checked {
        let got_kind = got.map(Error::kind);
        if got_kind == want {
            return Ok(());
        }
        if let Some(e) = got
            && !matches!(
                e.kind(),
                ErrorKind::NotFound | ErrorKind::KeyExists | ErrorKind::KeyModified
            )
        {
            return Err(unexpected_error(what, e));
        }
        Err(violation(
            RULE_ERRORS,
            format!(
                "{what}: expected {}, got {}",
                show_kind(want),
                show_kind(got_kind)
            ),
        ))
    }

    fn expiry_for(&self, ttl: bool, t0: Instant, t1: Instant) -> Option<Expiry> {
        ttl.then(|| Expiry {
            earliest: t0 + self.ttl,
            latest: t1 + self.ttl_bound,
        })
    }

    fn put_options(&self, ttl: bool) -> PutOptions {
        PutOptions {
            ttl: ttl.then_some(self.ttl),
        }
    }

    /// Whether a TTL step may run: TTLs on and sleeping budget left.
    fn ttl_allowed(&self) -> bool {
        self.config.ttl && !self.sleep_left.is_zero()
    }

    async fn sleep_until(&mut self, deadline: Instant) {
        let started = std::time::Instant::now();
        tokio::time::sleep_until(deadline).await;
        self.sleep_left = self.sleep_left.saturating_sub(started.elapsed());
    }

    // -- steps ----------------------------------------------------------------------

    async fn apply(&mut self, op: &Op) -> Checked {
        self.expire_if_due().await?;
        match op {
            Op::Put {
                handle,
                key,
                value,
                ttl,
            } => {
                let ttl = *ttl && self.ttl_allowed();
                let (h, kv) = self.handle(*handle);
                let key = normal(&prefixed(key));
                let t0 = Instant::now();
                let got = kv.put(&key, value.clone(), self.put_options(ttl)).await;
                let expiry = self.expiry_for(ttl, t0, Instant::now());
                match got {
                    Ok(pair) => self.wrote(h, &key, value, &pair, expiry),
                    Err(e) => Err(unexpected_error("put", &e)),
                }
            }
            Op::Get { handle, key } => {
                let (h, kv) = self.handle(*handle);
                let key = normal(&prefixed(key));
                match kv.get(&key).await {
                    Ok(pair) => self.check_read(h, &key, Some(&pair), "get"),
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        self.check_read(h, &key, None, "get")
                    }
                    Err(e) => Err(unexpected_error("get", &e)),
                }
            }
            Op::Exists { handle, key } => {
                let (h, kv) = self.handle(*handle);
                let key = normal(&prefixed(key));
                match kv.exists(&key).await {
                    Ok(found) => {
                        let want = self.data.contains_key(&key);
                        if found == want {
                            return Ok(());
                        }
                        let rule = if found
                            && self
                                .data
                                .keys()
                                .any(|k| Dir::new(&key).is_ok_and(|d| d.contains(k)))
                        {
                            RULE_PARENT
                        } else if found {
                            match self.gone.get(&key) {
                                Some(Gone::Expired { .. }) => RULE_TTL_GONE,
                                Some(Gone::Deleted { .. }) => RULE_DELETED,
                                None => RULE_LATEST,
                            }
                        } else {
                            RULE_LOST_WRITE
                        };
                        Err(violation(
                            rule,
                            format!(
                                "exists via handle {h} of {key:?}: expected {want}, got {found}"
                            ),
                        ))
                    }
                    Err(e) => Err(unexpected_error("exists", &e)),
                }
            }
            Op::Delete { handle, key } => {
                let (h, kv) = self.handle(*handle);
                let key = normal(&prefixed(key));
                let want = (!self.data.contains_key(&key)).then_some(ErrorKind::NotFound);
                let got = kv.delete(&key).await;
                self.check_kind(&format!("delete {key:?}"), got.as_ref().err(), want)?;
                self.removed(h, vec![key]);
                Ok(())
            }
            Op::List { handle, dir } => {
                let (h, kv) = self.handle(*handle);
                let dir = prefixed(dir);
                match kv.list(&dir).await {
                    Ok(pairs) => self.check_list(h, &dir, &pairs),
                    Err(e) => Err(unexpected_error("list", &e)),
                }
            }
            Op::DeleteTree { handle, dir } => {
                let (h, kv) = self.handle(*handle);
                let dir = Dir::new(&prefixed(dir)).expect("model dirs are valid");
                if let Err(e) = kv.delete_tree(dir.as_str()).await {
                    return Err(unexpected_error("delete_tree", &e));
                }
                let doomed: Vec<String> = self
                    .data
                    .keys()
                    .filter(|k| dir.contains(k) || dir.as_str() == k.as_str())
                    .cloned()
                    .collect();
                self.may_see_part_of(&doomed);
                self.removed(h, doomed);
                // Siblings of dir must survive: read one back when there is one.
                let survivor = self
                    .data
                    .keys()
                    .find(|k| {
                        k.starts_with(dir.as_str())
                            && !dir.contains(k)
                            && k.as_str() != dir.as_str()
                    })
                    .cloned();
                if let Some(key) = survivor {
                    match kv.get(&key).await {
                        Ok(pair) => {
                            self.check_read(h, &key, Some(&pair), "get after delete_tree")?
                        }
                        Err(e) if e.kind() == ErrorKind::NotFound => {
                            return Err(violation(
                                RULE_DELETE_TREE,
                                format!(
                                    "delete_tree({:?}) deleted the sibling {key:?}",
                                    dir.as_str()
                                ),
                            ));
                        }
                        Err(e) => return Err(unexpected_error("get", &e)),
                    }
                }
                Ok(())
            }
            Op::Create {
                handle,
                key,
                value,
                ttl,
            } => {
                let ttl = *ttl && self.ttl_allowed();
                let (h, kv) = self.handle(*handle);
                let key = normal(&prefixed(key));
                let want = self.data.contains_key(&key).then_some(ErrorKind::KeyExists);
                let t0 = Instant::now();
                let got = kv
                    .atomic_put(&key, value.clone(), None, self.put_options(ttl))
                    .await;
                let expiry = self.expiry_for(ttl, t0, Instant::now());
                self.check_kind(
                    &format!("atomic_put({key:?}, None)"),
                    got.as_ref().err(),
                    want,
                )?;
                match got {
                    Ok(pair) => self.wrote(h, &key, value, &pair, expiry),
                    Err(_) => Ok(()),
                }
            }
            Op::Swap {
                handle,
                key,
                value,
                version,
                ttl,
            } => {
                let ttl = *ttl && self.ttl_allowed();
                let key = normal(&prefixed(key));
                let Some(prev) = self.pick(&key, *version) else {
                    return Box::pin(self.apply(&Op::Get {
                        handle: *handle,
                        key: strip(&key),
                    }))
                    .await;
                };
                let (h, kv) = self.handle(*handle);
                let want = self.cas_expect(&key, prev.last_index);
                let t0 = Instant::now();
                let got = kv
                    .atomic_put(&key, value.clone(), Some(&prev), self.put_options(ttl))
                    .await;
                let expiry = self.expiry_for(ttl, t0, Instant::now());
                self.check_cas(
                    &format!("atomic_put({key:?}, last_index {})", prev.last_index),
                    got.as_ref().err(),
                    want,
                )?;
                match got {
                    Ok(pair) => self.wrote(h, &key, value, &pair, expiry),
                    Err(_) => Ok(()),
                }
            }
            Op::CompareDelete {
                handle,
                key,
                version,
            } => {
                let key = normal(&prefixed(key));
                let Some(prev) = self.pick(&key, *version) else {
                    return Box::pin(self.apply(&Op::Get {
                        handle: *handle,
                        key: strip(&key),
                    }))
                    .await;
                };
                let (h, kv) = self.handle(*handle);
                let want = self.cas_expect(&key, prev.last_index);
                let got = kv.atomic_delete(&key, &prev).await;
                self.check_cas(
                    &format!("atomic_delete({key:?}, last_index {})", prev.last_index),
                    got.as_ref().err(),
                    want,
                )?;
                if got.is_ok() {
                    self.removed(h, vec![key]);
                }
                Ok(())
            }
            Op::Watch { handle, key } if self.config.watches => {
                let key = normal(&prefixed(key));
                self.open_watch(*handle, Filter::Key(key)).await
            }
            Op::WatchTree { handle, dir } if self.config.watches => {
                let dir = Dir::new(&prefixed(dir)).expect("model dirs are valid");
                self.open_watch(*handle, Filter::Tree(dir)).await
            }
            Op::Observe => self.observe_all().await,
            Op::Elapse if self.ttl_allowed() => self.elapse().await,
            Op::Lock {
                handle,
                lock,
                value,
            } if self.config.locks => self.lock(*handle, *lock, *value, true).await,
            Op::TryLock {
                handle,
                lock,
                value,
            } if self.config.locks => self.lock(*handle, *lock, *value, false).await,
            Op::Unlock { lock } if self.config.locks => self.unlock(*lock).await,
            Op::DropGuard { lock } if self.config.locks => self.drop_guard(*lock).await,
            Op::Abandon { handle, lock } if self.config.locks && self.ttl_allowed() => {
                self.abandon(*handle, *lock).await
            }
            // A step whose switch is off does nothing.
            _ => Ok(()),
        }
    }

    fn pick(&self, key: &str, version: Version) -> Option<KvPair> {
        let seen = self.observed.get(key)?;
        match version {
            Version::Latest => seen.last().cloned(),
            Version::Previous => seen.first().cloned(),
        }
    }

    fn cas_expect(&self, key: &str, index: u64) -> Option<ErrorKind> {
        match self.data.get(key) {
            None => Some(ErrorKind::NotFound),
            Some(e) if e.index == index => None,
            Some(_) => Some(ErrorKind::KeyModified),
        }
    }

    fn check_cas(&self, what: &str, got: Option<&Error>, want: Option<ErrorKind>) -> Checked {
        self.check_kind(what, got, want).map_err(|mut v| {
            if v.rule == RULE_ERRORS && (want.is_none() || got.is_none()) {
                v.rule = RULE_CAS;
            }
            v
        })
    }

    fn check_list(&mut self, h: usize, dir: &str, pairs: &[KvPair]) -> Checked {
        let dir = Dir::new(dir).expect("model dirs are valid");
        let shown = || pairs.iter().map(|p| p.key.as_str()).collect::<Vec<_>>();
        if let Some(p) = pairs.iter().find(|p| !dir.contains(&p.key)) {
            return Err(violation(
                RULE_LIST_BELOW,
                format!(
                    "list({:?}) via handle {h} returned {:?}; keys: {:?}",
                    dir.as_str(),
                    p.key,
                    shown()
                ),
            ));
        }
        if pairs.windows(2).any(|w| w[0].key >= w[1].key) {
            return Err(violation(
                RULE_LIST_SORTED,
                format!(
                    "list({:?}) via handle {h} returned keys {:?}",
                    dir.as_str(),
                    shown()
                ),
            ));
        }
        let want: Vec<(String, Entry)> = self
            .data
            .iter()
            .filter(|(k, _)| dir.contains(k))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        let want_keys: BTreeSet<&str> = want.iter().map(|(k, _)| k.as_str()).collect();
        for pair in pairs {
            if want_keys.contains(pair.key.as_str()) {
                self.check_read(
                    h,
                    &pair.key.clone(),
                    Some(pair),
                    &format!("list({:?})", dir.as_str()),
                )?;
            } else {
                let mut v = self
                    .check_read(
                        h,
                        &pair.key.clone(),
                        Some(pair),
                        &format!("list({:?})", dir.as_str()),
                    )
                    .expect_err("the model has no such key");
                if v.rule == RULE_LATEST {
                    v.rule = RULE_LIST_CONTENT;
                }
                return Err(v);
            }
        }
        let got_keys: BTreeSet<&str> = pairs.iter().map(|p| p.key.as_str()).collect();
        if let Some((key, e)) = want.iter().find(|(k, _)| !got_keys.contains(k.as_str())) {
            return Err(violation(
                if e.expiry.is_some() {
                    RULE_TTL_KEPT
                } else {
                    RULE_LIST_CONTENT
                },
                format!(
                    "list({:?}) via handle {h} misses {key:?}; keys: {:?}",
                    dir.as_str(),
                    shown()
                ),
            ));
        }
        Ok(())
    }

    // -- time -----------------------------------------------------------------------

    /// When a TTL key is close to its TTL, sleeps past every TTL bound first, so every
    /// step sees TTL keys either certainly present or certainly gone.
    async fn expire_if_due(&mut self) -> Checked {
        let margin = self.ttl / 2;
        let now = Instant::now();
        if self
            .data
            .values()
            .filter_map(|e| e.expiry)
            .any(|x| x.earliest <= now + margin)
        {
            self.elapse().await?;
        }
        Ok(())
    }

    /// Sleeps until every TTL key written so far must be gone, then checks it is.
    async fn elapse(&mut self) -> Checked {
        let expiring: Vec<(String, Expiry)> = self
            .data
            .iter()
            .filter_map(|(k, e)| e.expiry.map(|x| (k.clone(), x)))
            .collect();
        let Some(deadline) = expiring.iter().map(|(_, x)| x.latest).max() else {
            return Ok(());
        };
        self.sleep_until(deadline).await;
        // Watches may see the expiries in any order: one flexible state, then the end.
        let keys: Vec<String> = expiring.iter().map(|(k, _)| k.clone()).collect();
        for i in 0..self.watches.len() {
            let lacking: BTreeSet<String> = keys
                .iter()
                .filter(|k| self.watches[i].filter.contains(k))
                .cloned()
                .collect();
            if !lacking.is_empty() {
                let pairs = self.snapshot(&self.watches[i].filter);
                self.watches[i].history.push(Snapshot {
                    pairs,
                    may_lack: lacking,
                });
            }
        }
        for key in &keys {
            if let Some(entry) = self.data.remove(key) {
                self.gone
                    .insert(key.clone(), Gone::Expired { index: entry.index });
            }
        }
        self.record(&keys);
        // Every expired key must be gone, whichever handle reads it.
        for (i, key) in keys.iter().enumerate() {
            let (h, kv) = self.handle(i);
            match kv.get(key).await {
                Ok(pair) => self.check_read(h, key, Some(&pair), "get after its TTL")?,
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(unexpected_error("get", &e)),
            }
        }
        Ok(())
    }

    // -- watches --------------------------------------------------------------------

    async fn open_watch(&mut self, handle: usize, filter: Filter) -> Checked {
        if self.watches.len() >= MAX_WATCHES {
            self.watches.remove(0);
        }
        let (h, kv) = self.handle(handle);
        let stream = match &filter {
            Filter::Key(key) => kv.watch(key).await.map(Stream::Key),
            Filter::Tree(dir) => kv.watch_tree(dir.as_str()).await.map(Stream::Tree),
        };
        let stream = stream.map_err(|e| unexpected_error("watch", &e))?;
        let pairs = self.snapshot(&filter);
        self.watches.push(OpenWatch {
            step: self.step,
            handle: h,
            filter,
            stream,
            history: vec![Snapshot {
                pairs,
                may_lack: BTreeSet::new(),
            }],
            open_pos: 0,
            pos: None,
            last_item: None,
        });
        Ok(())
    }

    /// Checks the items every open watch has ready now.
    async fn observe_all(&mut self) -> Checked {
        tokio::task::yield_now().await;
        for i in 0..self.watches.len() {
            while let Some(item) = next_ready(&mut self.watches[i].stream) {
                self.check_item(i, item)?;
            }
        }
        Ok(())
    }

    /// Reads every watch until it yields the current state (bounded by [`PROMPTLY`]).
    async fn converge_all(&mut self) -> Checked {
        for i in 0..self.watches.len() {
            loop {
                let watch = &self.watches[i];
                let last = watch.history.len() - 1;
                // Converged when the last item shows the current state (a coalescing
                // watch may skip from one absent state to another, equal one).
                let current = &watch.history[last];
                if current.may_lack.is_empty() && watch.last_item.as_ref() == Some(&current.pairs) {
                    // Converged; anything ready now is one item too many.
                    tokio::task::yield_now().await;
                    if let Some(item) = next_ready(&mut self.watches[i].stream) {
                        self.check_item(i, item)?;
                    }
                    break;
                }
                let next =
                    tokio::time::timeout(PROMPTLY, next_item(&mut self.watches[i].stream)).await;
                match next {
                    Ok(Some(item)) => self.check_item(i, item)?,
                    Ok(None) => {
                        return Err(self.watch_violation(
                            i,
                            RULE_WATCH_CONVERGES,
                            "the stream ended".into(),
                        ));
                    }
                    Err(_) => {
                        let want = &self.watches[i].history[last].pairs;
                        return Err(self.watch_violation(
                            i,
                            RULE_WATCH_CONVERGES,
                            format!("no item equal to the current state {want:?} within {PROMPTLY:?}; last item {:?}", self.watches[i].last_item),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn watch_violation(&self, i: usize, rule: &'static str, detail: String) -> Violation {
        let watch = &self.watches[i];
        let what = match &watch.filter {
            Filter::Key(k) => format!("watch({k:?})"),
            Filter::Tree(d) => format!("watch_tree({:?})", d.as_str()),
        };
        violation(
            rule,
            format!(
                "{what} opened at step {} via handle {}: {detail}",
                watch.step, watch.handle
            ),
        )
    }

    fn check_item(&mut self, i: usize, item: Result<Vec<KvPair>>) -> Checked {
        let pairs = match item {
            Ok(pairs) => pairs,
            Err(e) => {
                return Err(self.watch_violation(i, RULE_WATCH_ERROR, format!("yielded {e:?}")));
            }
        };
        let watch = &self.watches[i];
        if let Some(p) = pairs.iter().find(|p| !watch.filter.contains(&p.key)) {
            return Err(self.watch_violation(i, RULE_WATCH_FILTER, format!("yielded {p:?}")));
        }
        if pairs.windows(2).any(|w| w[0].key >= w[1].key) {
            return Err(self.watch_violation(i, RULE_LIST_SORTED, format!("yielded {pairs:?}")));
        }
        let item: Vec<(String, Bytes, u64)> = pairs.iter().map(triple).collect();
        let start = match watch.pos {
            None => watch.open_pos,
            // A flexible state may match again (one more expiry seen).
            Some(p)
                if !watch.history[p].may_lack.is_empty()
                    && watch.last_item.as_ref() != Some(&item) =>
            {
                p
            }
            Some(p) => p + 1,
        };
        let found = (start..watch.history.len()).find(|&q| watch.history[q].matches(&item));
        match found {
            Some(q) => {
                let every = self.caps.watch_sees_every_write;
                let strict = watch.history[start..q]
                    .iter()
                    .all(|s| s.may_lack.is_empty())
                    && watch.history[q].may_lack.is_empty();
                if every && watch.pos.is_some() && strict && q != start {
                    return Err(self.watch_violation(
                        i,
                        RULE_WATCH_EVERY,
                        format!(
                            "yielded {item:?}, skipping {:?}",
                            watch.history[start].pairs
                        ),
                    ));
                }
                let h = watch.handle;
                let watch = &mut self.watches[i];
                watch.pos = Some(q);
                watch.last_item = Some(item);
                for pair in &pairs {
                    self.saw(h, pair);
                }
                Ok(())
            }
            None => {
                let earlier = (0..start).rev().find(|&q| watch.history[q].matches(&item));
                let (rule, detail) = match (watch.pos, earlier) {
                    (Some(p), Some(q)) if q == p => {
                        (RULE_WATCH_REPEAT, format!("yielded {item:?} again"))
                    }
                    (None, Some(_)) => (
                        RULE_WATCH_FIRST,
                        format!(
                            "first item {item:?}, but the state at the call was {:?}",
                            watch.history[watch.open_pos].pairs
                        ),
                    ),
                    (Some(_), Some(_)) => (
                        RULE_WATCH_ORDER,
                        format!("yielded the stale {item:?} after {:?}", watch.last_item),
                    ),
                    (_, None) => (
                        RULE_WATCH_UNKNOWN,
                        format!(
                            "yielded {item:?}; the states since the call: {:?}",
                            watch.history.iter().map(|s| &s.pairs).collect::<Vec<_>>()
                        ),
                    ),
                };
                Err(self.watch_violation(i, rule, detail))
            }
        }
    }

    // -- locks ----------------------------------------------------------------------

    async fn lock(&mut self, handle: usize, lock: usize, value: LockValue, wait: bool) -> Checked {
        let (h, kv) = self.handle(handle);
        let key = lock_key(lock);
        let options = value.options();
        match &self.locks[lock] {
            LockSlot::Held {
                handle: holder,
                value: held,
                ..
            } => {
                let holder = *holder;
                let held = *held;
                let got = kv.try_lock(&key, options).await;
                match got {
                    Ok(None) => {}
                    Ok(Some(_stolen)) => {
                        let rule = if held == value {
                            RULE_LOCK_EXCLUSION_SAME
                        } else {
                            RULE_LOCK_EXCLUSION_OTHER
                        };
                        return Err(violation(
                            rule,
                            format!(
                                "try_lock({key:?}, {value:?}) via handle {h} returned a guard while handle {holder} holds it with {held:?}"
                            ),
                        ));
                    }
                    Err(e) => return Err(unexpected_error("try_lock", &e)),
                }
                self.check_locks(h).await
            }
            LockSlot::Free => {
                let got = if wait {
                    match tokio::time::timeout(PROMPTLY, kv.lock(&key, options)).await {
                        Ok(got) => got.map(Some),
                        Err(_) => {
                            return Err(violation(
                                RULE_LOCK_FREE,
                                format!("lock({key:?}) of a free lock waited {PROMPTLY:?}"),
                            ));
                        }
                    }
                } else {
                    kv.try_lock(&key, options).await
                };
                match got {
                    Ok(Some(guard)) => {
                        self.locks[lock] = LockSlot::Held {
                            handle: h,
                            value,
                            guard,
                        };
                        self.check_locks(h).await
                    }
                    Ok(None) => Err(violation(
                        RULE_LOCK_FREE,
                        format!("try_lock({key:?}) via handle {h} of a free lock returned None"),
                    )),
                    Err(e) => Err(unexpected_error("lock", &e)),
                }
            }
        }
    }

    /// The lock keys hold the values of the held locks, and nothing else shows.
    async fn check_locks(&mut self, h: usize) -> Checked {
        let (_, kv) = self.handle(h);
        let want: Vec<(String, Bytes)> = (0..LOCKS)
            .filter_map(|l| match &self.locks[l] {
                LockSlot::Held { value, .. } => Some((lock_key(l), value.options().value)),
                LockSlot::Free => None,
            })
            .collect();
        let listed = kv
            .list(LOCK_ROOT)
            .await
            .map_err(|e| unexpected_error("list", &e))?;
        let got: Vec<(String, Bytes)> = listed
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect();
        if got != want {
            return Err(violation(
                RULE_LOCK_VALUE,
                format!("list({LOCK_ROOT:?}) via handle {h}: expected {want:?}, got {got:?}"),
            ));
        }
        for l in 0..LOCKS {
            if let LockSlot::Held { guard, handle, .. } = &self.locks[l]
                && guard.is_lost()
            {
                return Err(violation(
                    RULE_LOCK_NOT_LOST,
                    format!(
                        "the lock {:?} held via handle {handle} says it is lost",
                        lock_key(l)
                    ),
                ));
            }
        }
        Ok(())
    }

    async fn unlock(&mut self, lock: usize) -> Checked {
        let slot = std::mem::replace(&mut self.locks[lock], LockSlot::Free);
        let LockSlot::Held { handle, guard, .. } = slot else {
            return Ok(());
        };
        let key = lock_key(lock);
        if guard.is_lost() {
            return Err(violation(
                RULE_LOCK_NOT_LOST,
                format!("the lock {key:?} held via handle {handle} says it is lost"),
            ));
        }
        if let Err(e) = guard.unlock().await {
            return Err(violation(RULE_UNLOCK, format!("unlock of {key:?}: {e:?}")));
        }
        let (h, kv) = self.other_handle(handle);
        match kv.try_lock(&key, LockOptions::default()).await {
            Ok(Some(again)) => again.unlock().await.map_err(|e| {
                violation(
                    RULE_UNLOCK,
                    format!("unlock of {key:?} retaken via handle {h}: {e:?}"),
                )
            }),
            Ok(None) => Err(violation(
                RULE_UNLOCK,
                format!("try_lock({key:?}) via handle {h} right after unlock returned None"),
            )),
            Err(e) => Err(unexpected_error("try_lock", &e)),
        }
    }

    async fn drop_guard(&mut self, lock: usize) -> Checked {
        let slot = std::mem::replace(&mut self.locks[lock], LockSlot::Free);
        let LockSlot::Held { handle, guard, .. } = slot else {
            return Ok(());
        };
        drop(guard);
        let key = lock_key(lock);
        let (h, kv) = self.other_handle(handle);
        match tokio::time::timeout(PROMPTLY, kv.lock(&key, LockOptions::default())).await {
            Ok(Ok(again)) => again.unlock().await.map_err(|e| {
                violation(
                    RULE_UNLOCK,
                    format!("unlock of {key:?} retaken via handle {h}: {e:?}"),
                )
            }),
            Ok(Err(e)) => Err(unexpected_error("lock", &e)),
            Err(_) => Err(violation(
                RULE_DROP_FREES,
                format!(
                    "lock({key:?}) via handle {h} waited {PROMPTLY:?} after the guard was dropped"
                ),
            )),
        }
    }

    /// Takes a TTL lock in a runtime of its own that then ends: its holder stops
    /// renewing without releasing, as in a crashed process. The handle is opened there
    /// with [`ModelConfig::open_handle`] (so its connection dies too) or is a clone.
    async fn abandon(&mut self, handle: usize, lock: usize) -> Checked {
        if matches!(self.locks[lock], LockSlot::Held { .. }) {
            return Ok(());
        }
        let key = lock_key(lock);
        let ttl = self.ttl;
        let options = LockOptions::default().value("abandoned").ttl(ttl);
        let (h, kv) = self.handle(handle);
        // On a paused clock the doomed runtime's paused clock is set to ours; it starts
        // at the real time, so ours first moves ahead of that (free when paused).
        let paused = self.paused;
        if paused {
            let ahead = std::time::Instant::now() + Duration::from_millis(500);
            tokio::time::sleep_until(Instant::from_std(ahead)).await;
        }
        let target = Instant::now().into_std();
        let open = self.config.open_handle.clone();
        let holder = Kv::clone(&kv);
        let t0 = Instant::now();
        let taken = tokio::task::spawn_blocking(move || {
            std::thread::spawn(move || doomed_lock(holder, open, key, options, paused, target))
                .join()
                .unwrap_or_else(|_| Err(Error::Closed))
        })
        .await
        .unwrap_or(Err(Error::Closed));
        let t1 = Instant::now();
        let key = lock_key(lock);
        match taken {
            Ok(true) => {}
            Ok(false) => {
                return Err(violation(
                    RULE_LOCK_FREE,
                    format!("try_lock({key:?}) of a free lock returned None"),
                ));
            }
            Err(e) => return Err(unexpected_error("try_lock with a TTL", &e)),
        }
        let (h2, other) = self.other_handle(h);
        if Instant::now() + ttl / 2 < t0 + ttl {
            match other.try_lock(&key, LockOptions::default()).await {
                Ok(None) => {}
                Ok(Some(_)) => {
                    return Err(violation(
                        RULE_ABANDON_HELD,
                        format!(
                            "try_lock({key:?}) via handle {h2} succeeded right after the TTL lock ({ttl:?}) was abandoned"
                        ),
                    ));
                }
                Err(e) => return Err(unexpected_error("try_lock", &e)),
            }
        }
        let bound = t1 + self.ttl_bound;
        self.sleep_until(bound).await;
        match other.try_lock(&key, LockOptions::default()).await {
            Ok(Some(guard)) => guard
                .unlock()
                .await
                .map_err(|e| violation(RULE_UNLOCK, format!("unlock of {key:?}: {e:?}"))),
            Ok(None) => Err(violation(
                RULE_ABANDON_FREES,
                format!(
                    "try_lock({key:?}) via handle {h2} returned None {:?} after a lock with TTL {ttl:?} was abandoned",
                    self.ttl_bound
                ),
            )),
            Err(e) => Err(unexpected_error("try_lock", &e)),
        }
    }

    // -- a case ---------------------------------------------------------------------

    async fn wipe(&mut self) -> std::result::Result<(), String> {
        let (_, kv) = self.handle(0);
        for dir in [ROOT, LOCK_ROOT] {
            kv.delete_tree(dir)
                .await
                .map_err(|e| format!("wiping {dir} failed: {e}"))?;
        }
        Ok(())
    }

    /// Runs one sequence; `Err` names the step and the rule.
    async fn run(&mut self, ops: &[Op]) -> std::result::Result<(), String> {
        self.wipe().await?;
        self.reset();
        let outcome = self.run_steps(ops).await;
        self.watches.clear();
        let slots = std::mem::take(&mut self.locks);
        for slot in slots {
            if let LockSlot::Held { guard, .. } = slot {
                let _ = guard.unlock().await;
            }
        }
        outcome.map_err(|(step, v)| {
            let at = step.map_or("at the end".to_owned(), |s| format!("at step {s}"));
            format!("rule broken: {}\n{at}: {}", v.rule, v.detail)
        })
    }

    async fn run_steps(
        &mut self,
        ops: &[Op],
    ) -> std::result::Result<(), (Option<usize>, Violation)> {
        for (step, op) in ops.iter().enumerate() {
            self.step = step;
            self.apply(op).await.map_err(|v| (Some(step), v))?;
        }
        // TTL keys still pending are waited for, so every TTL written is checked.
        if self.data.values().any(|e| e.expiry.is_some()) {
            self.elapse().await.map_err(|v| (None, v))?;
        }
        self.converge_all().await.map_err(|v| (None, v))?;
        // Finally the whole state must agree.
        let (_, kv) = self.handle(0);
        match kv.list(ROOT).await {
            Ok(pairs) => self.check_list(0, ROOT, &pairs).map_err(|v| (None, v))?,
            Err(e) => return Err((None, unexpected_error("list", &e))),
        }
        Ok(())
    }
}

/// The next item of a watch of either kind, as a list of pairs.
async fn next_item<B: Backend>(stream: &mut Stream<B>) -> Option<Result<Vec<KvPair>>> {
    match stream {
        Stream::Key(s) => s.next().await.map(|r| r.map(|p| p.into_iter().collect())),
        Stream::Tree(s) => s.next().await,
    }
}

/// The next item if one is ready now.
fn next_ready<B: Backend>(stream: &mut Stream<B>) -> Option<Result<Vec<KvPair>>> {
    next_item(stream).now_or_never().flatten()
}

fn normal(raw: &str) -> String {
    Key::new(raw).expect("model keys are valid").into_string()
}

fn strip(key: &str) -> String {
    key.strip_prefix(ROOT)
        .and_then(|k| k.strip_prefix('/'))
        .unwrap_or(key)
        .to_owned()
}

fn show_kind(kind: Option<ErrorKind>) -> String {
    kind.map_or("Ok".to_owned(), |k| format!("{k:?}"))
}

/// Takes the lock in a runtime of its own, then ends that runtime with the guard
/// alive: its keep-alive task dies without releasing. `Ok(true)`: the lock was taken.
fn doomed_lock<B: Backend>(
    kv: Kv<B>,
    open: Option<OpenHandle<B>>,
    key: String,
    options: LockOptions,
    paused: bool,
    target: std::time::Instant,
) -> Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(paused)
        .build()
        .map_err(|e| Error::Backend {
            backend: "model",
            source: Box::new(e),
        })?;
    let outcome = runtime.block_on(async move {
        if paused {
            let behind = target.saturating_duration_since(Instant::now().into_std());
            tokio::time::advance(behind).await;
        }
        let kv = match open {
            Some(open) => open().await?,
            None => kv,
        };
        let guard = kv.try_lock(&key, options).await?;
        Ok::<_, Error>((guard, kv))
    });
    // The runtime ends first, so neither the guard's drop nor the handle's reaches the
    // store.
    drop(runtime);
    let (guard, kv) = outcome?;
    let taken = guard.is_some();
    drop(guard);
    drop(kv);
    Ok(taken)
}

/// Whether tokio's clock is paused here: a paused clock does not move while this
/// thread sleeps.
fn clock_paused() -> bool {
    let before = Instant::now();
    std::thread::sleep(Duration::from_micros(200));
    Instant::now() == before
}

fn random_seed() -> [u8; 32] {
    use std::hash::{BuildHasher, Hasher};
    let mut seed = [0u8; 32];
    for (i, chunk) in seed.chunks_mut(8).enumerate() {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_usize(i);
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        chunk.copy_from_slice(&hasher.finish().to_le_bytes());
    }
    seed
}

fn show_sequence(ops: &[Op]) -> String {
    ops.iter()
        .enumerate()
        .fold(String::new(), |mut s, (i, op)| {
            let _ = writeln!(s, "  {i:>2}: {op:?}");
            s
        })
}

/// Checks `kv` against the model on `config.cases` random sequences, shrinking a
/// failure to a minimal sequence: the sequential part of [`check_backend`].
///
/// Runs in the calling task (any tokio runtime, a paused current-thread one
/// included); nothing is spawned except the short-lived runtime of an abandoned lock.
pub async fn check_against_memory<B: Backend>(
    kv: &Kv<B>,
    config: ModelConfig<B>,
) -> std::result::Result<(), ModelFailure> {
    let seed = config.seed.unwrap_or_else(random_seed);
    let caps = kv.capabilities();
    let mut handles = vec![kv.clone()];
    let mut opened = Vec::new();
    for _ in 1..config.handles.max(1) {
        let handle = match &config.open_handle {
            Some(open) => {
                let handle = open()
                    .await
                    .map_err(|e| ModelFailure(format!("opening a handle failed: {e}")))?;
                opened.push(handle.clone());
                handle
            }
            None => kv.clone(),
        };
        handles.push(handle);
    }
    // Long enough that a step on a loaded machine rarely runs into the uncertain
    // window (the harness sleeps past it first), short enough to be cheap.
    let ttl = caps.effective_ttl(Duration::from_millis(500).max(caps.min_ttl));
    let ttl_bound = ttl * caps.ttl_expiry_factor.max(1) + caps.ttl_granularity;
    // A TTL write from this runtime first, so a store's lazily started background work
    // (memory's expiry task) lives here and not in an abandoned lock's runtime.
    let primer = format!("{ROOT}/primer");
    let primed = async {
        kv.put(&primer, "", PutOptions::with_ttl(ttl)).await?;
        kv.delete(&primer).await
    };
    primed
        .await
        .map_err(|e| ModelFailure(format!("a first TTL write failed: {e}")))?;
    let mut harness = Harness {
        seen: (0..handles.len()).map(|_| Seen::default()).collect(),
        handles: handles.into(),
        caps,
        ttl,
        ttl_bound,
        paused: clock_paused(),
        sleep_left: config.max_sleep,
        config: config.clone(),
        data: BTreeMap::new(),
        gone: HashMap::new(),
        max_index: HashMap::new(),
        observed: HashMap::new(),
        watches: Vec::new(),
        locks: Vec::new(),
        step: 0,
    };
    let outcome = run_cases(&mut harness, &config, seed).await;
    let cleanup = harness.wipe().await;
    for handle in opened {
        let _ = handle.close().await;
    }
    outcome?;
    cleanup.map_err(ModelFailure)
}

async fn run_cases<B: Backend>(
    harness: &mut Harness<B>,
    config: &ModelConfig<B>,
    seed: [u8; 32],
) -> std::result::Result<(), ModelFailure> {
    let proptest_config = Config {
        cases: config.cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        proptest_config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
    );
    let strategy = sequence(config.max_ops);
    for case in 0..config.cases {
        let mut tree = strategy
            .new_tree(&mut runner)
            .map_err(|e| ModelFailure(format!("generating a sequence failed: {e}")))?;
        let Err(first) = harness.run(&tree.current()).await else {
            continue;
        };
        // Shrink: simplify while it still fails, complicate back when it passes.
        harness.sleep_left = config.max_sleep;
        let original = (tree.current().len(), first.clone());
        let mut best = (tree.current(), first);
        let mut iterations = 0;
        let shrink_started = std::time::Instant::now();
        if config.max_shrink_runs > 0 && tree.simplify() {
            while iterations < config.max_shrink_runs
                && shrink_started.elapsed() < Duration::from_secs(120)
            {
                iterations += 1;
                let candidate = tree.current();
                match harness.run(&candidate).await {
                    Err(why) => {
                        best = (candidate, why);
                        if !tree.simplify() {
                            break;
                        }
                    }
                    Ok(()) => {
                        if !tree.complicate() {
                            break;
                        }
                    }
                }
            }
        }
        let (ops, why) = best;
        // What the case saw before shrinking, when shrinking changed it (a store that
        // keeps state across cases, such as a stuck lock, can make them differ).
        let before = if original.1 == why {
            String::new()
        } else {
            format!(
                "\nbefore shrinking ({} steps):\n{}",
                original.0,
                original.1.replace("rule broken: ", "rule: ")
            )
        };
        return Err(ModelFailure(format!(
            "the backend broke a rule of the model\n{why}\nseed: {} (case {case}, shrunk in {iterations} runs)\nhandles: {}\nminimal sequence:\n{}{before}",
            hex(seed),
            harness.handles.len(),
            show_sequence(&ops)
        )));
    }
    Ok(())
}

/// Runs the conformance suite (each check in a task of its own, so a failed check
/// becomes an `Err` naming it) and then the model harness against `kv`: one call to
/// check any backend, including your own. Never panics on a broken backend.
pub async fn check_backend<B: Backend>(
    kv: &Kv<B>,
    config: ModelConfig<B>,
) -> std::result::Result<(), ModelFailure> {
    for (name, check) in super::conformance::checks::<B>() {
        let kv = kv.clone();
        let outcome = tokio::spawn(async move { check(kv).await }).await;
        if let Err(e) = outcome {
            let message = if e.is_panic() {
                panic_message(e.into_panic())
            } else {
                e.to_string()
            };
            return Err(ModelFailure(format!(
                "the conformance check `{name}` failed\nrule broken: {name}\n{message}"
            )));
        }
    }
    // The model runs in a task too, so a backend that panics is reported, not raised.
    let concurrent = config.concurrent.clone().map(|mut concurrent| {
        concurrent.seed = concurrent_seed(config.seed);
        if !config.watches {
            concurrent.watchers = 0;
        }
        if !config.locks {
            concurrent.lock_contenders = 0;
        }
        concurrent
    });
    let open_handle = config.open_handle.clone();
    let fault = config.fault.clone();
    let sequential = kv.clone();
    spawned("the model harness", async move {
        check_against_memory(&sequential, config).await
    })
    .await?;
    let Some(concurrent) = concurrent else {
        return Ok(());
    };
    let mut handles = vec![kv.clone()];
    for _ in 1..concurrent.clients.max(1) {
        handles.push(match &open_handle {
            Some(open) => open().await.map_err(|e| {
                ModelFailure(format!(
                    "opening a handle for the concurrent phase failed: {e}"
                ))
            })?,
            None => kv.clone(),
        });
    }
    let opened = handles[1..].to_vec();
    let outcome = spawned("the concurrent phase", async move {
        check_concurrent(handles, concurrent, fault).await.map(drop)
    })
    .await;
    if open_handle.is_some() {
        for handle in opened {
            // Best effort: the handles this phase opened are its own to close.
            let _ = handle.close().await;
        }
    }
    outcome
}

/// Runs `check` in a task, so a backend that panics is reported as a failure.
async fn spawned(
    what: &str,
    check: impl Future<Output = std::result::Result<(), ModelFailure>> + Send + 'static,
) -> std::result::Result<(), ModelFailure> {
    match tokio::spawn(check).await {
        Ok(outcome) => outcome,
        Err(e) => Err(ModelFailure(format!(
            "{what} stopped: the backend panicked\nrule broken: operations succeed on a healthy store\n{}",
            if e.is_panic() {
                panic_message(e.into_panic())
            } else {
                e.to_string()
            }
        ))),
    }
}

/// The concurrent phase's seed: derived from the model's seed when it is fixed, so one
/// seed replays the whole check; random otherwise (a failure reports it).
fn concurrent_seed(seed: Option<[u8; 32]>) -> u64 {
    let seed = seed.unwrap_or_else(random_seed);
    let mut first = [0u8; 8];
    first.copy_from_slice(&seed[..8]);
    u64::from_le_bytes(first)
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload.downcast::<&'static str>().map_or_else(
            |_| "a panic without a message".to_owned(),
            |s| (*s).to_owned(),
        ),
    }
}
