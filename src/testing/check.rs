//! `check_backend`: the conformance suite, the model harness and the concurrent phase
//! run against one backend, each in a task of its own so a panic becomes a failure.

use super::concurrent::check_concurrent;
use super::failure::{CheckFailure, Phase};
use super::model::ops::ModelConfig;
use super::model::run::{check_against_memory, random_seed};
use crate::backend::Backend;
use crate::kv::Kv;

/// Runs the conformance suite (each check in a task of its own, so a failed check
/// becomes an `Err` naming it) and then the model harness against `kv`: one call to
/// check any backend, including your own. Never panics on a broken backend.
pub async fn check_backend<B: Backend>(
    kv: &Kv<B>,
    config: ModelConfig<B>,
) -> std::result::Result<(), CheckFailure> {
    for (name, check) in super::conformance::checks::<B>() {
        let kv = kv.clone();
        let outcome = tokio::spawn(async move { check(kv).await }).await;
        if let Err(e) = outcome {
            let message = if e.is_panic() {
                panic_message(e.into_panic())
            } else {
                e.to_string()
            };
            return Err(CheckFailure::conformance(name, message));
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
    spawned(Phase::Model, "the model harness", async move {
        check_against_memory(&sequential, config).await
    })
    .await?;
    let Some(concurrent) = concurrent else {
        return Ok(());
    };
    let mut handles = vec![kv.clone()];
    // One handle per client, and per caller of the lock probes' try_lock storm.
    let storm = if concurrent.lock_contenders > 0 {
        concurrent.lock_storm
    } else {
        0
    };
    for _ in 1..concurrent.clients.max(storm).max(1) {
        handles.push(match &open_handle {
            Some(open) => open().await.map_err(|e| {
                CheckFailure::new(
                    Phase::Concurrent,
                    format!("opening a handle for the concurrent phase failed: {e}"),
                )
            })?,
            None => kv.clone(),
        });
    }
    let opened = handles[1..].to_vec();
    let outcome = spawned(Phase::Concurrent, "the concurrent phase", async move {
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
    phase: Phase,
    what: &'static str,
    check: impl Future<Output = std::result::Result<(), CheckFailure>> + Send + 'static,
) -> std::result::Result<(), CheckFailure> {
    match tokio::spawn(check).await {
        Ok(outcome) => outcome,
        Err(e) => Err(CheckFailure::panicked(
            phase,
            what,
            if e.is_panic() {
                panic_message(e.into_panic())
            } else {
                e.to_string()
            },
        )),
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
