//! The lock probes of a run: a held lock whose key another handle takes away must
//! notice it, and a storm of `try_lock`s on a free lock grants one guard at most.
//!
//! Each probe uses a lock key in a directory of its own below
//! [`CONCURRENT_LOCK_ROOT`], with no siblings a put could touch, so it never meets
//! the lock contenders. A round that overlapped the fault is not judged: under a
//! partition a guard may rightly be lost, or a call fail, for reasons of its own.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::actors::{RoundGate, Shared};
use super::workload::{CONCURRENT_LOCK_ROOT, ConcurrentConfig};
use crate::backend::{Backend, LockGuard, LockOptions, PutOptions};
use crate::kv::Kv;
use crate::testing::conformance::PROMPTLY;
use crate::testing::rules::Rule;

/// Rounds of the key-taken probe: even rounds delete the key, odd rounds overwrite it.
const KEY_TAKEN_ROUNDS: usize = 4;
/// Rounds of the try_lock storm.
const STORM_ROUNDS: usize = 4;
/// How long a storm's guard, which nobody touches, must stay unlost once handed out.
const BIRTH: Duration = Duration::from_millis(50);

/// A broken rule, or a call that failed on a healthy store.
pub(super) type ProbeFailure = (Rule, String);

/// Runs both lock probes, one after the other, on `handles` (the caller at index `i`
/// uses `handles[i % len]`).
pub(super) async fn lock_probes<B: Backend>(
    handles: Vec<Kv<B>>,
    config: ConcurrentConfig,
    shared: Arc<Shared>,
) -> Result<(), ProbeFailure> {
    let probe = Probe {
        handles,
        config,
        shared,
    };
    for round in 0..KEY_TAKEN_ROUNDS {
        probe.judge(probe.key_taken(round).await)?;
    }
    for round in 0..STORM_ROUNDS {
        probe.judge(probe.storm(round).await)?;
    }
    Ok(())
}

struct Probe<B: Backend> {
    handles: Vec<Kv<B>>,
    config: ConcurrentConfig,
    shared: Arc<Shared>,
}

impl<B: Backend> Probe<B> {
    fn handle(&self, i: usize) -> &Kv<B> {
        &self.handles[i % self.handles.len()]
    }

    /// A round's failure counts only if the store was never faulted during it (the
    /// fault flag stays set once raised, so checking it at the end covers the round).
    fn judge(&self, round: Result<(), ProbeFailure>) -> Result<(), ProbeFailure> {
        match round {
            Err(failure) if !self.shared.faulted.load(Ordering::SeqCst) => Err(failure),
            Err((rule, detail)) => {
                tracing::debug!(
                    ?rule,
                    "lock probe round not judged, it met the fault: {detail}"
                );
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// Runs `call` within the operation timeout; a failure or timeout is unhealthy.
    async fn within<T, E: std::fmt::Display>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, ProbeFailure> {
        match tokio::time::timeout(self.config.op_timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err((Rule::Healthy, format!("{what} failed: {e}"))),
            Err(_) => Err((
                Rule::Healthy,
                format!("{what} did not return within {:?}", self.config.op_timeout),
            )),
        }
    }

    /// One handle holds the lock, another deletes or overwrites its key: the holder's
    /// `lost()` must fire within [`PROMPTLY`]. If it does not, a second `try_lock`
    /// shows whether two holders now coexist.
    async fn key_taken(&self, round: usize) -> Result<(), ProbeFailure> {
        let key = format!("{CONCURRENT_LOCK_ROOT}/taken/lock");
        let (holder, taker) = (self.handle(round), self.handle(round + 1));
        let options = LockOptions::default().value(format!("probe-holder-{round}"));
        let guard = self
            .within("lock of the probe's free lock", holder.lock(&key, options))
            .await?;
        let lost = guard.lost();
        let how = if round.is_multiple_of(2) {
            self.within(
                "another handle's delete of the lock key",
                taker.delete(&key),
            )
            .await?;
            "deleted"
        } else {
            let value = format!("taken-{round}");
            self.within(
                "another handle's put over the lock key",
                taker.put(&key, value, PutOptions::default()),
            )
            .await?;
            "overwritten"
        };
        let taken_at = Instant::now();
        let noticed = tokio::time::timeout(PROMPTLY, lost).await.is_ok();
        let outcome = if noticed {
            Ok(())
        } else {
            let options = LockOptions::default().value(format!("probe-second-{round}"));
            let second = self
                .within("a second try_lock", taker.try_lock(&key, options))
                .await;
            let coexist = match &second {
                Ok(Some(_)) => " and another handle's try_lock then got the lock too: two holders",
                _ => "",
            };
            Err((
                Rule::LockLossUnnoticed,
                format!(
                    "round {round}: the lock key {key} was {how} by another handle, and the holder's lost() had not fired {:?} later{coexist}",
                    taken_at.elapsed()
                ),
            ))
        };
        // Clean up for the next round: the guard is lost (or should be), the key may
        // hold the taker's value.
        let _ = tokio::time::timeout(self.config.op_timeout, guard.unlock()).await;
        let _ = tokio::time::timeout(self.config.op_timeout, taker.delete(&key)).await;
        outcome
    }

    /// [`ConcurrentConfig::lock_storm`] callers, released together by a gate, each
    /// `try_lock` the free lock: one guard at most, and none lost at birth.
    async fn storm(&self, round: usize) -> Result<(), ProbeFailure> {
        let key = format!("{CONCURRENT_LOCK_ROOT}/storm/lock");
        let callers = self.config.lock_storm.max(2);
        let gate = Arc::new(RoundGate::new(callers));
        let tasks: Vec<_> = (0..callers)
            .map(|i| {
                let (kv, gate, key) = (self.handle(round + i).clone(), gate.clone(), key.clone());
                let options = LockOptions::default().value(format!("storm-{round}-{i}"));
                let timeout = self.config.op_timeout;
                tokio::spawn(async move {
                    gate.pass(0).await;
                    let reply = tokio::time::timeout(timeout, kv.try_lock(&key, options)).await;
                    (reply, Instant::now())
                })
            })
            .collect();
        let mut granted = Vec::new();
        let mut trouble = None;
        for (i, task) in tasks.into_iter().enumerate() {
            match task.await {
                Ok((Ok(Ok(Some(guard))), at)) => granted.push((i, guard, at)),
                Ok((Ok(Ok(None)), _)) => {}
                Ok((Ok(Err(e)), _)) => {
                    trouble = trouble.or(Some(format!("caller {i}: try_lock failed: {e}")))
                }
                Ok((Err(_), _)) => {
                    trouble = trouble.or(Some(format!(
                        "caller {i}: try_lock did not return within {:?}",
                        self.config.op_timeout
                    )))
                }
                Err(e) => trouble = trouble.or(Some(format!("caller {i}: the task failed: {e}"))),
            }
        }
        let outcome = match (trouble, granted.as_slice()) {
            (Some(trouble), _) => Err((Rule::Healthy, format!("storm round {round}: {trouble}"))),
            (None, [_, _, ..]) => {
                let who: Vec<String> = granted
                    .iter()
                    .map(|(i, guard, _)| {
                        let lost = if guard.is_lost() {
                            " (lost by now)"
                        } else {
                            ""
                        };
                        format!("caller {i}{lost}")
                    })
                    .collect();
                Err((
                    Rule::TryLockNotExclusive,
                    format!(
                        "storm round {round}: {callers} callers asked for the free lock {key} at once and {} got a guard: {}",
                        granted.len(),
                        who.join(", ")
                    ),
                ))
            }
            (None, [(i, guard, at)]) => {
                let lost = guard.lost();
                match tokio::time::timeout_at(*at + BIRTH, lost).await {
                    Ok(()) => Err((
                        Rule::LockLostAtBirth,
                        format!(
                            "storm round {round}: caller {i}'s guard, the only one granted, was lost {:?} after try_lock returned it, and nobody touched the lock key {key}",
                            at.elapsed()
                        ),
                    )),
                    Err(_) => Ok(()),
                }
            }
            (None, []) => Ok(()),
        };
        let mut released = true;
        for (_, guard, _) in granted {
            released &= matches!(
                tokio::time::timeout(self.config.op_timeout, guard.unlock()).await,
                Ok(Ok(()))
            );
        }
        if !released {
            // A lost guard may have left the key behind: free it for the next round.
            let _ = tokio::time::timeout(self.config.op_timeout, self.handle(0).delete(&key)).await;
        }
        outcome
    }
}
