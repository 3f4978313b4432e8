//! The actors of a run: clients, watchers and lock contenders, each recording what it saw.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::time::Instant;

use super::workload::{CONCURRENT_LOCK_ROOT, ConcurrentConfig};
use super::workload::{Clock, KEY_SPACE, Record, Reply, Rng, Seen, full, random_op, run_op};
use crate::backend::{Backend, KvPair, LockGuard, LockOptions, PutOptions};
use crate::error::{Error, ErrorKind};
use crate::kv::Kv;
use crate::testing::linearizability::Time;
use crate::testing::rules::Rule;

pub(super) struct Shared {
    pub(super) clock: Clock,
    pub(super) progress: AtomicUsize,
    /// Set when the fault is injected; stays set (errors after the heal are still
    /// treated as indeterminate while the store recovers).
    pub(super) faulted: AtomicBool,
    /// Set once the fault is in force.
    pub(super) injected: AtomicBool,
    /// Watchers whose first watch is live.
    pub(super) watchers_live: AtomicUsize,
    /// A fault will be injected: clients wait for it a third of the way through.
    pub(super) fault_planned: bool,
    /// Lines the lock contenders up at the start of each round.
    pub(super) lock_gate: RoundGate,
}

/// Starts each lock round only when every contender has reached it, so contenders
/// ask for the lock together and a lock that ignores contention shows overlapping
/// holds on every run, not only when the scheduler happens to interleave them.
pub(super) struct RoundGate {
    pub(super) arrived: AtomicUsize,
    pub(super) parties: usize,
    pub(super) notify: tokio::sync::Notify,
}

impl RoundGate {
    /// Longest wait for the others: a contender that failed or is stuck in a
    /// fault must not hold up the rest.
    const PATIENCE: Duration = Duration::from_millis(250);

    pub(super) fn new(parties: usize) -> Self {
        Self {
            arrived: AtomicUsize::new(0),
            parties,
            notify: tokio::sync::Notify::new(),
        }
    }

    pub(super) async fn pass(&self, round: usize) {
        let target = (round + 1) * self.parties;
        if self.arrived.fetch_add(1, Ordering::SeqCst) + 1 >= target {
            self.notify.notify_waiters();
            return;
        }
        let deadline = Instant::now() + Self::PATIENCE;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.arrived.load(Ordering::SeqCst) >= target
                || tokio::time::timeout_at(deadline, notified).await.is_err()
            {
                return;
            }
        }
    }
}

pub(super) async fn client<B: Backend>(
    kv: Kv<B>,
    id: usize,
    config: ConcurrentConfig,
    shared: Arc<Shared>,
) -> Result<Vec<Record>, String> {
    let mut rng = Rng(config.seed ^ (id as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
    let keys = &KEY_SPACE[..config.max_key_space.clamp(1, KEY_SPACE.len())];
    let mut seen = Seen::default();
    let mut out = Vec::with_capacity(config.ops_per_client);
    for n in 0..config.ops_per_client {
        if shared.fault_planned && n == config.ops_per_client / 3 {
            // Make sure the fault is in force for the middle third on any store speed.
            let deadline = Instant::now() + config.settle;
            while !shared.injected.load(Ordering::SeqCst) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        // Each watcher starts at a fixed point of every client: wait until it is live
        // so that it sees the rest of the run however fast the store is.
        let due = (0..config.watchers)
            .filter(|&w| watcher_start(w, &config) <= n)
            .count();
        let deadline = Instant::now() + config.settle;
        while shared.watchers_live.load(Ordering::SeqCst) < due && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let value = Bytes::from(format!("c{id}-{n}"));
        let op = random_op(&mut rng, keys, &seen, value);
        let call = shared.clock.now();
        let faulted = shared.faulted.load(Ordering::SeqCst);
        let reply = run_op(&kv, &op, config.op_timeout, faulted).await;
        let ret = shared.clock.now();
        let faulted = faulted || shared.faulted.load(Ordering::SeqCst);
        let reply = match reply {
            Err(_) if faulted => Reply::Unknown("error during the fault".into()),
            Err(e) => return Err(e),
            Ok(r) => r,
        };
        match &reply {
            Reply::Pair(Some(p)) => {
                if let Some(k) = keys.iter().find(|k| full(k) == p.key) {
                    seen.observe(k, p.last_index);
                }
            }
            Reply::List(pairs) => {
                for p in pairs {
                    if let Some(k) = KEY_SPACE.iter().find(|k| full(k) == p.key) {
                        seen.observe(k, p.last_index);
                    }
                }
            }
            _ => {}
        }
        out.push(Record {
            client: id,
            op,
            call,
            ret,
            reply,
        });
        shared.progress.fetch_add(1, Ordering::SeqCst);
    }
    Ok(out)
}

/// One watch session: when it was called and what it yielded when.
#[derive(Clone, Debug)]
pub(super) struct WatchLog {
    pub(super) key: &'static str,
    pub(super) call: Time,
    pub(super) items: Vec<(Time, Option<KvPair>)>,
    pub(super) error: Option<String>,
}

pub(super) async fn watcher<B: Backend>(
    kv: Kv<B>,
    key: &'static str,
    shared: Arc<Shared>,
    logs: Arc<Mutex<Vec<WatchLog>>>,
    stop: tokio_util::sync::CancellationToken,
    slot: usize,
) {
    // Counted once, when the first session is live (first item, or failed).
    let mut announced = false;
    let mut announce = |shared: &Shared| {
        if !announced {
            announced = true;
            shared.watchers_live.fetch_add(1, Ordering::SeqCst);
        }
    };
    while !stop.is_cancelled() {
        let call = shared.clock.now();
        let session = {
            let mut logs = logs.lock().unwrap_or_else(|e| e.into_inner());
            logs.push(WatchLog {
                key,
                call,
                items: Vec::new(),
                error: None,
            });
            logs.len() - 1
        };
        let _ = slot;
        let stream = tokio::select! {
            s = kv.watch(full(key)) => s,
            () = stop.cancelled() => return,
        };
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                logs.lock().unwrap_or_else(|e| e.into_inner())[session].error = Some(e.to_string());
                announce(&shared);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                item = stream.next() => {
                    let at = shared.clock.now();
                    let mut logs = logs.lock().unwrap_or_else(|e| e.into_inner());
                    announce(&shared);
                    match item {
                        Some(Ok(state)) => logs[session].items.push((at, state)),
                        Some(Err(e)) => { logs[session].error = Some(e.to_string()); break; }
                        None => { logs[session].error = Some("the stream ended".into()); break; }
                    }
                }
                () = stop.cancelled() => return,
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The operation index (of every client) at which watcher `w` starts: spread over
/// the first half of the run.
pub(super) fn watcher_start(w: usize, config: &ConcurrentConfig) -> usize {
    config.ops_per_client * w / (2 * config.watchers.max(1))
}

/// One lock hold.
#[derive(Clone, Debug)]
pub(super) struct Hold {
    pub(super) contender: usize,
    pub(super) acquired: Time,
    pub(super) released: Time,
    pub(super) lost: bool,
    pub(super) fence: Result<u64, FenceError>,
}

pub(super) async fn contender<B: Backend>(
    kv: Kv<B>,
    id: usize,
    config: ConcurrentConfig,
    shared: Arc<Shared>,
) -> Result<Vec<Hold>, (Rule, String)> {
    let caps = kv.capabilities();
    // Two contenders share the default options; the others use their own.
    let options = if id < 2 {
        LockOptions::default()
    } else {
        LockOptions::default()
            .value(format!("contender-{id}"))
            .ttl(caps.effective_ttl(Duration::from_secs(3)))
    };
    let lock_key = format!("{CONCURRENT_LOCK_ROOT}/lock");
    let fence_key = format!("{CONCURRENT_LOCK_ROOT}/fence");
    let mut rng = Rng(config.seed ^ 0x5151 ^ id as u64);
    let mut holds = Vec::new();
    let wait = config.op_timeout * 3;
    for round in 0..config.lock_rounds {
        shared.lock_gate.pass(round).await;
        let guard = match tokio::time::timeout(wait, kv.lock(&lock_key, options.clone())).await {
            Ok(Ok(g)) => g,
            Ok(Err(e)) if shared.faulted.load(Ordering::SeqCst) => {
                tracing::debug!("lock failed during the fault: {e}");
                continue;
            }
            Ok(Err(e)) => return Err((Rule::Healthy, format!("contender {id}: lock failed: {e}"))),
            Err(_) if shared.faulted.load(Ordering::SeqCst) => continue,
            Err(_) => {
                return Err((
                    Rule::LockGranted,
                    format!(
                        "contender {id}: the lock was not acquired within {wait:?} although every holder releases it within milliseconds"
                    ),
                ));
            }
        };
        let acquired = shared.clock.now();
        let fence = async {
            let current = match kv.get(&fence_key).await {
                Ok(p) => Some(p),
                Err(e) if e.kind() == ErrorKind::NotFound => None,
                Err(e) => return Err(FenceError::new("read failed", &e)),
            };
            let n = current
                .as_ref()
                .and_then(|p| std::str::from_utf8(&p.value).ok()?.parse::<u64>().ok())
                .unwrap_or(0);
            kv.atomic_put(
                &fence_key,
                (n + 1).to_string(),
                current.as_ref(),
                PutOptions::default(),
            )
            .await
            .map(|_| n + 1)
            .map_err(|e| FenceError::new("fencing swap failed", &e))
        };
        let fence = tokio::time::timeout(config.op_timeout, fence)
            .await
            .unwrap_or_else(|_| Err(FenceError::timed_out()));
        // Hold for a while: the others, released by the same gate, are asking now.
        tokio::time::sleep(Duration::from_millis(1 + rng.below(4) as u64)).await;
        let released = shared.clock.now();
        let mut lost = guard.is_lost();
        if round % 2 == 0 {
            if let Err(e) = guard.unlock().await {
                lost |= e.kind() == ErrorKind::LockLost;
            }
        } else {
            drop(guard);
        }
        holds.push(Hold {
            contender: id,
            acquired,
            released,
            lost,
            fence,
        });
    }
    Ok(holds)
}

/// Why advancing the fencing counter failed: the error's kind (`None`: it timed
/// out) and its words.
#[derive(Clone, Debug)]
pub(super) struct FenceError {
    kind: Option<ErrorKind>,
    message: String,
}

impl FenceError {
    fn new(what: &str, e: &Error) -> Self {
        FenceError {
            kind: Some(e.kind()),
            message: format!("{what}: {e}"),
        }
    }

    fn timed_out() -> Self {
        FenceError {
            kind: None,
            message: "fencing swap timed out".into(),
        }
    }

    /// The swap met another writer: the lock did not exclude it.
    pub(super) fn is_conflict(&self) -> bool {
        matches!(
            self.kind,
            Some(ErrorKind::KeyModified | ErrorKind::KeyExists)
        )
    }
}

impl std::fmt::Display for FenceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
