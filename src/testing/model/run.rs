//! The drivers: random cases run one after another, a failure shrunk to a minimal sequence.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use tokio::time::Instant;

use super::harness::{Harness, Seen};
use super::ops::{MODEL_ROOT, ModelConfig, Op, sequence};
use crate::backend::{Backend, PutOptions};
use crate::kv::Kv;
use crate::testing::failure::{CheckFailure, Phase};

/// Whether tokio's clock is paused here: a paused clock does not move while this
/// thread sleeps.
fn clock_paused() -> bool {
    let before = Instant::now();
    std::thread::sleep(Duration::from_micros(200));
    Instant::now() == before
}

pub(crate) fn random_seed() -> [u8; 32] {
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

/// The sequence as a failure shows it: one operation per entry.
fn show_sequence(ops: &[Op]) -> Vec<String> {
    ops.iter().map(|op| format!("{op:?}")).collect()
}

/// Checks `kv` against the model on `config.cases` random sequences, shrinking a
/// failure to a minimal sequence: the sequential part of
/// [`check_backend`](crate::testing::check_backend).
///
/// Runs in the calling task (any tokio runtime, a paused current-thread one
/// included); nothing is spawned except the short-lived runtime of an abandoned lock.
pub async fn check_against_memory<B: Backend>(
    kv: &Kv<B>,
    config: ModelConfig<B>,
) -> std::result::Result<(), CheckFailure> {
    let seed = config.seed.unwrap_or_else(random_seed);
    let caps = kv.capabilities();
    let mut handles = vec![kv.clone()];
    let mut opened = Vec::new();
    for _ in 1..config.handles.max(1) {
        let handle = match &config.open_handle {
            Some(open) => {
                let handle = open()
                    .await
                    .map_err(|e| setup(format!("opening a handle failed: {e}")))?;
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
    let primer = format!("{MODEL_ROOT}/primer");
    let primed = async {
        kv.put(&primer, "", PutOptions::with_ttl(ttl)).await?;
        kv.delete(&primer).await
    };
    primed
        .await
        .map_err(|e| setup(format!("a first TTL write failed: {e}")))?;
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
    cleanup.map_err(setup)
}

async fn run_cases<B: Backend>(
    harness: &mut Harness<B>,
    config: &ModelConfig<B>,
    seed: [u8; 32],
) -> std::result::Result<(), CheckFailure> {
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
            .map_err(|e| setup(format!("generating a sequence failed: {e}")))?;
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
        let before = (original.1 != why).then_some(original);
        return Err(CheckFailure::model(
            why,
            seed,
            show_sequence(&ops),
            (case, iterations, harness.handles.len()),
            before,
        ));
    }
    Ok(())
}

/// A failure of the model phase that is no broken rule: the phase could not run.
fn setup(detail: String) -> CheckFailure {
    CheckFailure::new(Phase::Model, detail)
}
