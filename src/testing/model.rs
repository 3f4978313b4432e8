//! The model harness: random operation sequences run against a backend and against
//! [`Memory`] side by side, requiring the same observable results.
//!
//! Keys come from a small nested space (segments `a`, `ab`, `b`, up to three deep, with
//! random extra slashes), so operations collide on the same keys, on parents and
//! children, and on siblings. Compared per step: values, error kinds, list results,
//! and the relative order of `last_index` between two observations of the same key.
//! Compare-and-swap uses the latest pair each world observed for the key, or an older
//! one, so both successful and stale swaps happen.
//!
//! Everything runs below [`ROOT`], which is wiped before each case. Failing sequences
//! are shrunk by proptest to a minimal one, which the error message shows.

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

use crate::backend::{Backend, KvPair, PutOptions};
use crate::error::{ErrorKind, Result};
use crate::kv::Kv;
use crate::memory::Memory;

/// Every case works below this directory.
pub const ROOT: &str = "kvkit-model";

/// How many cases and how long each is.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// Number of random sequences.
    pub cases: u32,
    /// Longest sequence.
    pub max_ops: usize,
    /// Seed the random generator deterministically (same cases every run) when set.
    pub seed: Option<[u8; 32]>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            cases: 64,
            max_ops: 40,
            seed: None,
        }
    }
}

/// A sequence on which a backend and the model disagreed, after shrinking.
#[derive(Debug)]
pub struct ModelFailure(pub String);

impl fmt::Display for ModelFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ModelFailure {}

/// Which previously observed pair a compare operation uses.
#[derive(Clone, Copy, Debug)]
pub enum Version {
    /// The pair most recently observed for the key.
    Latest,
    /// The pair observed before that (stale when the key was written since).
    Previous,
}

/// One step of a sequence. Keys are raw strings, normalised by `Kv`.
#[derive(Clone, Debug)]
pub enum Op {
    /// `put`
    Put(String, Bytes),
    /// `get`
    Get(String),
    /// `delete`
    Delete(String),
    /// `exists`
    Exists(String),
    /// `list`
    List(String),
    /// `delete_tree`
    DeleteTree(String),
    /// `atomic_put` with `previous = None`
    Create(String, Bytes),
    /// `atomic_put` with an observed pair
    Swap(String, Bytes, Version),
    /// `atomic_delete` with an observed pair
    CompareDelete(String, Version),
}

/// `a` and `ab` share a string prefix, so a raw-prefix list of `a` would leak `ab/...`.
fn segment() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("a"), Just("ab"), Just("b")]
}

fn slashes() -> impl Strategy<Value = &'static str> {
    prop_oneof![4 => Just(""), 1 => Just("/"), 1 => Just("//")]
}

/// A raw key from the small space, with random leading/trailing/repeated slashes.
fn raw_key() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec((segment(), slashes()), 1..=3),
        slashes(),
        slashes(),
    )
        .prop_map(|(segments, lead, trail)| {
            let mut key = String::from(lead);
            for (i, (seg, sep)) in segments.iter().enumerate() {
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

/// A raw directory: a key, or the root.
fn raw_dir() -> impl Strategy<Value = String> {
    prop_oneof![1 => Just(String::new()), 5 => raw_key()]
}

fn value() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        Just(Bytes::new()),
        Just(Bytes::from_static(b"x")),
        Just(Bytes::from_static(b"yy")),
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(Bytes::from),
    ]
}

fn version() -> impl Strategy<Value = Version> {
    prop_oneof![3 => Just(Version::Latest), 1 => Just(Version::Previous)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (raw_key(), value()).prop_map(|(k, v)| Op::Put(k, v)),
        3 => raw_key().prop_map(Op::Get),
        2 => raw_key().prop_map(Op::Delete),
        1 => raw_key().prop_map(Op::Exists),
        2 => raw_dir().prop_map(Op::List),
        1 => raw_dir().prop_map(Op::DeleteTree),
        2 => (raw_key(), value()).prop_map(|(k, v)| Op::Create(k, v)),
        3 => (raw_key(), value(), version()).prop_map(|(k, v, w)| Op::Swap(k, v, w)),
        2 => (raw_key(), version()).prop_map(|(k, w)| Op::CompareDelete(k, w)),
    ]
}

/// The strategy for whole sequences.
pub fn sequence(max_ops: usize) -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 1..=max_ops.max(1))
}

/// What one world observed of a step, in a form comparable across backends.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Pair(String, Bytes),
    Pairs(Vec<(String, Bytes)>),
    Bool(bool),
    Done,
    Failed(ErrorKind),
}

/// One world: a store plus what it observed of each key's versions.
struct World<B: Backend> {
    kv: Kv<B>,
    /// Per normalised key: the last two observed pairs, newest last.
    observed: HashMap<String, Vec<KvPair>>,
}

impl<B: Backend> World<B> {
    fn new(kv: Kv<B>) -> Self {
        World {
            kv,
            observed: HashMap::new(),
        }
    }

    fn prefixed(raw: &str) -> String {
        format!("{ROOT}/{raw}")
    }

    fn strip(key: &str) -> String {
        key.strip_prefix(ROOT)
            .and_then(|k| k.strip_prefix('/'))
            .unwrap_or(key)
            .to_owned()
    }

    /// Records an observation; returns how its index compares with the previous
    /// observation of the same key (`None` for the first).
    fn observe(&mut self, pair: &KvPair) -> Option<std::cmp::Ordering> {
        let seen = self.observed.entry(pair.key.clone()).or_default();
        let order = seen
            .last()
            .map(|prev| pair.last_index.cmp(&prev.last_index));
        if seen.last().map(|p| p.last_index) != Some(pair.last_index) {
            seen.push(pair.clone());
            if seen.len() > 2 {
                seen.remove(0);
            }
        }
        order
    }

    fn pick(&self, raw: &str, version: Version) -> Option<KvPair> {
        let prefixed = Self::prefixed(raw);
        let key = crate::key::Key::new(&prefixed).ok()?;
        let seen = self.observed.get(key.as_str())?;
        match version {
            Version::Latest => seen.last().cloned(),
            Version::Previous => seen.first().cloned(),
        }
    }

    fn pair(
        &mut self,
        result: Result<KvPair>,
        orders: &mut Vec<Option<std::cmp::Ordering>>,
    ) -> Seen {
        match result {
            Ok(pair) => {
                orders.push(self.observe(&pair));
                Seen::Pair(Self::strip(&pair.key), pair.value)
            }
            Err(e) => Seen::Failed(e.kind()),
        }
    }

    fn unit(result: Result<()>) -> Seen {
        match result {
            Ok(()) => Seen::Done,
            Err(e) => Seen::Failed(e.kind()),
        }
    }

    async fn apply(&mut self, op: &Op) -> (Seen, Vec<Option<std::cmp::Ordering>>) {
        let mut orders = Vec::new();
        let kv = self.kv.clone();
        let seen = match op {
            Op::Put(k, v) => {
                let r = kv
                    .put(Self::prefixed(k), v.clone(), PutOptions::default())
                    .await;
                self.pair(r, &mut orders)
            }
            Op::Get(k) => {
                let r = kv.get(Self::prefixed(k)).await;
                self.pair(r, &mut orders)
            }
            Op::Delete(k) => Self::unit(kv.delete(Self::prefixed(k)).await),
            Op::Exists(k) => match kv.exists(Self::prefixed(k)).await {
                Ok(b) => Seen::Bool(b),
                Err(e) => Seen::Failed(e.kind()),
            },
            Op::List(d) => match kv.list(Self::prefixed(d)).await {
                Ok(pairs) => {
                    for pair in &pairs {
                        orders.push(self.observe(pair));
                    }
                    Seen::Pairs(
                        pairs
                            .into_iter()
                            .map(|p| (Self::strip(&p.key), p.value))
                            .collect(),
                    )
                }
                Err(e) => Seen::Failed(e.kind()),
            },
            Op::DeleteTree(d) => Self::unit(kv.delete_tree(Self::prefixed(d)).await),
            Op::Create(k, v) => {
                let r = kv
                    .atomic_put(Self::prefixed(k), v.clone(), None, PutOptions::default())
                    .await;
                self.pair(r, &mut orders)
            }
            Op::Swap(k, v, which) => match self.pick(k, *which) {
                // Nothing observed yet: a swap needs a previous pair, so read one.
                None => {
                    let r = kv.get(Self::prefixed(k)).await;
                    self.pair(r, &mut orders)
                }
                Some(prev) => {
                    let r = kv
                        .atomic_put(
                            Self::prefixed(k),
                            v.clone(),
                            Some(&prev),
                            PutOptions::default(),
                        )
                        .await;
                    self.pair(r, &mut orders)
                }
            },
            Op::CompareDelete(k, which) => match self.pick(k, *which) {
                None => {
                    let r = kv.get(Self::prefixed(k)).await;
                    self.pair(r, &mut orders)
                }
                Some(prev) => Self::unit(kv.atomic_delete(Self::prefixed(k), &prev).await),
            },
        };
        (seen, orders)
    }
}

/// Runs one sequence against `kv` and a fresh [`Memory`]; `Err` describes the first
/// difference.
pub async fn run_sequence<B: Backend>(kv: &Kv<B>, ops: &[Op]) -> std::result::Result<(), String> {
    kv.delete_tree(ROOT)
        .await
        .map_err(|e| format!("wiping {ROOT} failed: {e}"))?;
    let mut model = World::new(Kv::new(Memory::new()));
    let mut real = World::new(kv.clone());
    for (step, op) in ops.iter().enumerate() {
        let (want, want_orders) = model.apply(op).await;
        let (got, got_orders) = real.apply(op).await;
        if want != got {
            return Err(format!(
                "step {step} {op:?}: model {want:?}, backend {got:?}"
            ));
        }
        if want_orders != got_orders {
            return Err(format!(
                "step {step} {op:?}: last_index order vs the previous observation of the same key: model {want_orders:?}, backend {got_orders:?}"
            ));
        }
    }
    // Finally the whole state must agree.
    let (want, _) = model.apply(&Op::List(String::new())).await;
    let (got, _) = real.apply(&Op::List(String::new())).await;
    if want != got {
        return Err(format!("final state: model {want:?}, backend {got:?}"));
    }
    Ok(())
}

/// Checks `kv` against [`Memory`] on `config.cases` random sequences, shrinking a
/// failure to a minimal sequence. Must be called inside a tokio runtime (a
/// multi-thread one is best: the generator runs on a blocking thread and drives the
/// backend's futures through the runtime's handle).
pub async fn check_against_memory<B: Backend>(
    kv: &Kv<B>,
    config: ModelConfig,
) -> std::result::Result<(), ModelFailure> {
    let kv = kv.clone();
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let proptest_config = Config {
            cases: config.cases,
            failure_persistence: None,
            max_shrink_iters: 512,
            ..Config::default()
        };
        let mut runner = match config.seed {
            Some(seed) => TestRunner::new_with_rng(
                proptest_config,
                proptest::test_runner::TestRng::from_seed(
                    proptest::test_runner::RngAlgorithm::ChaCha,
                    &seed,
                ),
            ),
            None => TestRunner::new(proptest_config),
        };
        let outcome = runner.run(&sequence(config.max_ops), |ops| {
            handle
                .block_on(run_sequence(&kv, &ops))
                .map_err(TestCaseError::fail)
        });
        let cleanup = handle.block_on(kv.delete_tree(ROOT));
        match outcome {
            Ok(()) => cleanup.map_err(|e| ModelFailure(format!("cleanup failed: {e}"))),
            Err(TestError::Fail(why, ops)) => Err(ModelFailure(format!(
                "backend differs from the memory model: {why}\nminimal sequence: {ops:#?}"
            ))),
            Err(TestError::Abort(why)) => Err(ModelFailure(format!("model run aborted: {why}"))),
        }
    })
    .await
    .map_err(|e| ModelFailure(format!("model runner panicked: {e}")))?
}

/// Runs the conformance suite and then the model harness against `kv`: one call to
/// check any backend, including your own.
pub async fn check_backend<B: Backend>(
    kv: &Kv<B>,
    config: ModelConfig,
) -> std::result::Result<(), ModelFailure> {
    super::conformance::run_all(kv).await;
    check_against_memory(kv, config).await
}
