//! Concurrent histories checked for linearizability, with watchers and lock
//! contenders running alongside, optionally under a fault.
//!
//! [`check_concurrent`] runs [`ConcurrentConfig::clients`] clients at once, each on
//! its own handle for the whole run, issuing random operations on a small key space
//! below [`CONCURRENT_ROOT`] (keys and prefix-siblings such as `a`, `ab`, `a-`, `a~`, `a/b`, so
//! lists and deletes of trees collide with everything). Every invocation and response
//! is recorded with its time, and then:
//!
//! - the history must be linearizable per key (see [`super::linearizability`]; lists
//!   are decomposed into reads, `delete_tree` into deletes) and every list must be an
//!   atomic snapshot of the keys it returned ([`super::linearizability::check_snapshots`]);
//! - each watcher's items must be ordered by version, each must be a state of the key
//!   that existed between the watch call and the item, the last must converge to the
//!   final state, and where [`crate::Capabilities::watch_sees_every_write`] holds,
//!   every write of the key after the first item must appear exactly once;
//! - lock contenders (some with identical default options, some with their own value
//!   and TTL) take a lock, advance a fencing counter by compare-and-swap and release:
//!   the hold intervals (acquire response to release invocation) of guards that were
//!   not lost never overlap, and the fencing swap never conflicts while the lock is
//!   held;
//! - lock probes, on keys of their own: a held lock whose key another handle deletes
//!   or overwrites must see its `lost()` fire within
//!   [`PROMPTLY`](crate::testing::conformance::PROMPTLY) (else a second `try_lock`
//!   shows whether two holders coexist), and [`ConcurrentConfig::lock_storm`] callers
//!   on several handles, released together, `try_lock` a free lock: one guard at
//!   most, and that guard is not lost at birth. Rounds that meet the fault are not
//!   judged.
//!
//! What is not checked here: TTLs (no operation uses one; the sequential model
//! harness covers them), `watch_tree`, an absent (`None`) watch item against the
//! history (only its place in the order is checked), absent keys of a list across
//! keys (each is checked per key), and lock liveness beyond "acquired within three
//! operation timeouts".
//!
//! After the run, one final write per watched key (retried until the store serves
//! again, bounded by [`ConcurrentConfig::settle`]) marks the end of the history:
//! every watch must reach it.
//!
//! With a fault injector the fault is injected after a third of the operations and
//! healed after two thirds (or [`ConcurrentConfig::fault_duration`]); operations that fail with `Unavailable` or time out are
//! then treated as "may or may not have taken effect".

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

mod actors;
mod probes;
mod verdicts;
mod workload;

pub use workload::{CONCURRENT_LOCK_ROOT, CONCURRENT_ROOT, ConcurrentConfig, KEY_SPACE};

use self::actors::{RoundGate, Shared, WatchLog, client, contender, watcher, watcher_start};
use self::probes::lock_probes;
use self::verdicts::{check_locks, check_watches, to_events};
use self::workload::{ClientOp, Clock, HOT_KEYS, Record, Reply, run_op};
use crate::backend::Backend;
use crate::kv::Kv;
use crate::testing::failure::{CheckFailure, Phase};
use crate::testing::fault::SharedFault;
use crate::testing::linearizability::{self, HistoryRule, HistoryViolation, ListRead, Outcome};
use crate::testing::rules::Rule;

/// What a passing run did.
#[derive(Clone, Debug, Default)]
pub struct ConcurrentReport {
    /// Client operations issued (lists and delete_trees count once).
    pub operations: usize,
    /// Single-key events the linearizability checker checked.
    pub events: usize,
    /// Operations whose outcome was unknown (failed under the fault or timed out).
    pub indeterminate: usize,
    /// Model states the checker visited.
    pub states: usize,
    /// Time spent checking (linearizability, snapshots, watches, locks).
    pub check_time: Duration,
    /// Time spent running the operations.
    pub run_time: Duration,
    /// Time the random clients took (part of `run_time`).
    pub clients_time: Duration,
    /// Time from the end of the run until every watch converged on the final writes.
    pub settle_time: Duration,
    /// Watch items checked.
    pub watch_items: usize,
    /// Lock holds checked.
    pub lock_holds: usize,
}

/// A broken rule of the concurrent phase; `what` names the kind of check.
fn broken(seed: u64, rule: Rule, what: &str, detail: impl std::fmt::Display) -> CheckFailure {
    CheckFailure::concurrent(seed, Some(rule), what, detail)
}

/// The linearizability checker's verdict as a failure (undecided: no rule proven).
fn violation(seed: u64, v: &HistoryViolation) -> CheckFailure {
    let rule = match v.rule {
        HistoryRule::Undecided => None,
        HistoryRule::NotASnapshot => Some(Rule::ListSnapshot),
        _ => Some(Rule::Linearizable),
    };
    let what = if v.undecided() {
        "undecided"
    } else {
        "linearizability"
    };
    CheckFailure::concurrent(seed, rule, what, v)
}

/// Runs concurrent clients, watchers and lock contenders against the store behind
/// `handles` (client `i` uses `handles[i % len]` for the whole run) and checks the
/// recorded history. See the module documentation for every rule checked.
pub async fn check_concurrent<B: Backend>(
    handles: Vec<Kv<B>>,
    config: ConcurrentConfig,
    fault: Option<SharedFault>,
) -> Result<ConcurrentReport, CheckFailure> {
    let seed = config.seed;
    if handles.is_empty() {
        return Err(CheckFailure::new(
            Phase::Concurrent,
            "check_concurrent needs at least one handle",
        ));
    }
    let handle = |i: usize| handles[i % handles.len()].clone();
    let kv = handle(0);
    for dir in [CONCURRENT_ROOT, CONCURRENT_LOCK_ROOT] {
        kv.delete_tree(dir)
            .await
            .map_err(|e| broken(seed, Rule::Healthy, &format!("wiping {dir} failed"), e))?;
    }
    let shared = Arc::new(Shared {
        clock: Clock(Instant::now()),
        progress: AtomicUsize::new(0),
        faulted: AtomicBool::new(false),
        injected: AtomicBool::new(false),
        watchers_live: AtomicUsize::new(0),
        fault_planned: fault.is_some(),
        lock_gate: RoundGate::new(config.lock_contenders),
    });
    let total = config.clients * config.ops_per_client;
    let keys = &KEY_SPACE[..config.max_key_space.clamp(1, KEY_SPACE.len())];

    // Watchers: started during the run.
    let stop = tokio_util::sync::CancellationToken::new();
    // Whatever way the run ends, the watchers stop with it.
    let _stop_watchers = stop.clone().drop_guard();
    let logs: Arc<Mutex<Vec<WatchLog>>> = Arc::default();
    let mut watch_tasks = Vec::new();
    let mut watched = Vec::new();
    for w in 0..config.watchers {
        let key = keys[w % keys.len().min(HOT_KEYS)];
        watched.push(key);
        let (kv, shared, logs, stop) = (
            handle(config.clients + w),
            shared.clone(),
            logs.clone(),
            stop.clone(),
        );
        let start_at = config.clients * watcher_start(w, &config);
        watch_tasks.push(tokio::spawn(async move {
            while shared.progress.load(Ordering::SeqCst) < start_at && !stop.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            watcher(kv, key, shared, logs, stop, w).await;
        }));
    }
    let started = Instant::now();
    let clients: Vec<_> = (0..config.clients)
        .map(|c| tokio::spawn(client(handle(c), c, config.clone(), shared.clone())))
        .collect();
    let contenders: Vec<_> = (0..config.lock_contenders)
        .map(|c| tokio::spawn(contender(handle(c + 1), c, config.clone(), shared.clone())))
        .collect();
    let probes = (config.lock_contenders > 0)
        .then(|| tokio::spawn(lock_probes(handles.clone(), config.clone(), shared.clone())));
    let fault_duration = config.fault_duration;
    let inject_at = config.clients * (config.ops_per_client / 3);
    let fault_task = fault.clone().map(|fault| {
        let shared = shared.clone();
        tokio::spawn(async move {
            // Exactly where every client waits for the fault (see `client`).
            while shared.progress.load(Ordering::SeqCst) < inject_at {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            shared.faulted.store(true, Ordering::SeqCst);
            fault.inject().await;
            shared.injected.store(true, Ordering::SeqCst);
            let injected_at = Instant::now();
            while shared.progress.load(Ordering::SeqCst) < total * 2 / 3
                && injected_at.elapsed() < fault_duration
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            fault.heal().await;
        })
    });

    let mut records = Vec::new();
    let mut first_error = None;
    for c in clients {
        match c.await {
            Ok(Ok(r)) => records.extend(r),
            Ok(Err(e)) => first_error = first_error.or(Some(e)),
            Err(e) => first_error = first_error.or(Some(format!("a client panicked: {e}"))),
        }
    }
    let clients_time = started.elapsed();
    let mut holds = Vec::new();
    for c in contenders {
        let outcome = c
            .await
            .map_err(|e| broken(seed, Rule::Healthy, "a lock contender panicked", e))?;
        holds.extend(outcome.map_err(|(rule, e)| broken(seed, rule, "lock", e))?);
    }
    if let Some(probes) = probes {
        probes
            .await
            .map_err(|e| broken(seed, Rule::Healthy, "a lock probe panicked", e))?
            .map_err(|(rule, e)| broken(seed, rule, "lock probe", e))?;
    }
    if let Some(task) = fault_task {
        // All clients are done, so the heal has been reached (progress >= 2/3).
        let _ = task.await;
    }
    let faulted = shared.faulted.load(Ordering::SeqCst);
    if let Some(e) = first_error {
        stop.cancel();
        return Err(broken(seed, Rule::Healthy, "an operation failed", e));
    }
    let run_time = started.elapsed();
    let run_time_end = Instant::now();

    // A final write to every watched key (retried until the store has recovered,
    // bounded): the history's last state of the key, which every watch must reach.
    let mut finals = HashMap::new();
    let deadline = Instant::now() + config.settle;
    let finisher = config.clients;
    let mut dedup = watched.clone();
    dedup.sort_unstable();
    dedup.dedup();
    for (k, key) in dedup.iter().copied().enumerate() {
        for attempt in 0.. {
            let op = ClientOp::Put(key, Bytes::from(format!("final-{k}-{attempt}")));
            let call = shared.clock.now();
            let reply = run_op(&kv, &op, config.op_timeout, true).await;
            let ret = shared.clock.now();
            let reply = reply.unwrap_or_else(Reply::Unknown);
            let done = match &reply {
                Reply::Pair(Some(p)) => Some(p.clone()),
                _ => None,
            };
            records.push(Record {
                client: finisher,
                op,
                call,
                ret,
                reply,
            });
            if let Some(p) = done {
                finals.insert(key, Some(p));
                break;
            }
            if Instant::now() > deadline {
                stop.cancel();
                return Err(broken(
                    seed,
                    Rule::Recovers,
                    "the store did not recover after the fault",
                    format!(
                        "the final write to {key} kept failing for {:?}",
                        config.settle
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let converged = |logs: &[WatchLog]| {
        finals.iter().all(|(key, want)| {
            let want = want.as_ref().map(|p| p.last_index);
            logs.iter()
                .rev()
                .find(|l| l.key == *key && !l.items.is_empty())
                .is_some_and(|l| {
                    l.items
                        .last()
                        .and_then(|(_, s)| s.as_ref())
                        .map(|p| p.last_index)
                        == want
                })
        })
    };
    while Instant::now() < deadline && !converged(&logs.lock().unwrap_or_else(|e| e.into_inner())) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let settle_time = run_time_end.elapsed();
    stop.cancel();
    for t in watch_tasks {
        let _ = t.await;
    }
    let logs = std::mem::take(&mut *logs.lock().unwrap_or_else(|e| e.into_inner()));

    // Check.
    let check_started = std::time::Instant::now();
    let indeterminate = records
        .iter()
        .filter(|r| matches!(r.reply, Reply::Unknown(_)))
        .count();
    let operations = records.len();
    records.sort_by_key(|r| (r.call, r.client));
    let (events, lists) =
        to_events(&records).map_err(|e| broken(seed, Rule::ReplyShape, "malformed reply", e))?;
    let stats =
        linearizability::check_history(&events, &config.limits).map_err(|v| violation(seed, &v))?;
    if config.check_list_snapshots {
        let snapshots: Vec<ListRead<'_>> = lists
            .iter()
            .map(|(origin, label, call, ret)| ListRead {
                label: label.clone(),
                call: *call,
                ret: *ret,
                present: events
                    .iter()
                    .filter(|e| e.origin == *origin)
                    .filter_map(|e| match &e.outcome {
                        Outcome::Read(Some((v, i))) => Some((e.key.as_str(), v.clone(), *i)),
                        _ => None,
                    })
                    .collect(),
            })
            .collect();
        linearizability::check_snapshots(&events, &snapshots).map_err(|v| violation(seed, &v))?;
    }
    let every_write = kv.capabilities().watch_sees_every_write;
    let watch_items = check_watches(&logs, &events, &finals, every_write && !faulted)
        .map_err(|(rule, e)| broken(seed, rule, "watch", e))?;
    check_locks(&holds, faulted).map_err(|e| broken(seed, Rule::LockExclusion, "lock", e))?;
    let check_time = check_started.elapsed();
    let _ = kv.delete_tree(CONCURRENT_ROOT).await;
    let _ = kv.delete_tree(CONCURRENT_LOCK_ROOT).await;
    Ok(ConcurrentReport {
        operations,
        events: stats.events,
        indeterminate,
        states: stats.states,
        check_time,
        run_time,
        clients_time,
        settle_time,
        watch_items,
        lock_holds: holds.len(),
    })
}
