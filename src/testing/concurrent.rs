//! Concurrent histories checked for linearizability, with watchers and lock
//! contenders running alongside, optionally under a fault.
//!
//! [`check_concurrent`] runs [`ConcurrentConfig::clients`] clients at once, each on
//! its own handle for the whole run, issuing random operations on a small key space
//! below [`ROOT`] (keys and prefix-siblings such as `a`, `ab`, `a-`, `a~`, `a/b`, so
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
//!   held.
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
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::time::Instant;

use super::fault::SharedFault;
use super::linearizability::{
    self, CheckLimits, Conflict, Event, KeyOp, Outcome, Snapshot, Time, Violation,
};
use super::model::ModelFailure;
use crate::backend::{Backend, KvPair, LockGuard, LockOptions, PutOptions};
use crate::error::{Error, ErrorKind};
use crate::kv::Kv;

/// The random operations work below this directory, which is wiped first.
pub const ROOT: &str = "kvkit-concurrent";
/// The lock and its fencing counter live below this directory.
pub const LOCK_ROOT: &str = "kvkit-concurrent-lock";

/// The key space, relative to [`ROOT`]: prefix-siblings that sort before and after
/// `/` (`-`, `.`, `~`), nested keys, and keys that are also directories of others.
pub const KEY_SPACE: &[&str] = &[
    "a", "ab", "a-", "a~", "a/b", "a/b/c", "a/ab", "a.x/y", "ab/c", "b",
];

/// Directories (relative to [`ROOT`]) that lists and delete_tree use; `""` is ROOT.
const DIRS: &[&str] = &["", "a", "ab", "a/b", "a.x"];

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
            max_key_space: KEY_SPACE.len(),
            op_timeout: Duration::from_secs(10),
            fault_duration: Duration::from_secs(3),
            settle: Duration::from_secs(30),
            limits: CheckLimits::default(),
            check_list_snapshots: true,
        }
    }
}

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

/// A small deterministic generator (SplitMix64), so a seed replays the same choices.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A client's operation, with keys relative to [`ROOT`].
#[derive(Clone, Debug)]
enum ClientOp {
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
enum Reply {
    Pair(Option<KvPair>),
    Bool(bool),
    Unit,
    Conflict(Conflict),
    List(Vec<KvPair>),
    /// Unavailable or timed out: may or may not have applied.
    Unknown(String),
}

struct Record {
    client: usize,
    op: ClientOp,
    call: Time,
    ret: Time,
    reply: Reply,
}

fn full(key: &str) -> String {
    if key.is_empty() {
        ROOT.to_owned()
    } else {
        format!("{ROOT}/{key}")
    }
}

fn label(op: &ClientOp) -> String {
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
struct Clock(Instant);

impl Clock {
    fn now(&self) -> Time {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(Time::MAX - 1)
    }
}

/// Whether an error means "outcome unknown" rather than an answer.
fn is_indeterminate(e: &Error, faulted: bool) -> bool {
    match e.kind() {
        ErrorKind::Unavailable => true,
        ErrorKind::Backend | ErrorKind::Closed => faulted,
        _ => false,
    }
}

async fn run_op<B: Backend>(
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
struct Seen {
    latest: HashMap<&'static str, u64>,
    older: HashMap<&'static str, u64>,
}

impl Seen {
    fn observe(&mut self, key: &'static str, index: u64) {
        if let Some(prev) = self.latest.insert(key, index)
            && prev != index
        {
            self.older.insert(key, prev);
        }
    }
    fn pick(&self, key: &'static str, rng: &mut Rng) -> u64 {
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
fn random_key(rng: &mut Rng, keys: &[&'static str]) -> &'static str {
    if rng.below(2) == 0 {
        keys[rng.below(keys.len().min(HOT_KEYS))]
    } else {
        keys[rng.below(keys.len())]
    }
}

const HOT_KEYS: usize = 3;

fn random_op(rng: &mut Rng, keys: &[&'static str], seen: &Seen, value: Bytes) -> ClientOp {
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

struct Shared {
    clock: Clock,
    progress: AtomicUsize,
    /// Set when the fault is injected; stays set (errors after the heal are still
    /// treated as indeterminate while the store recovers).
    faulted: AtomicBool,
    /// Set once the fault is in force.
    injected: AtomicBool,
    /// Watchers whose first watch is live.
    watchers_live: AtomicUsize,
    /// A fault will be injected: clients wait for it a third of the way through.
    fault_planned: bool,
    /// Lines the lock contenders up at the start of each round.
    lock_gate: RoundGate,
}

/// Starts each lock round only when every contender has reached it, so contenders
/// ask for the lock together and a lock that ignores contention shows overlapping
/// holds on every run, not only when the scheduler happens to interleave them.
struct RoundGate {
    arrived: AtomicUsize,
    parties: usize,
    notify: tokio::sync::Notify,
}

impl RoundGate {
    /// Longest wait for the others: a contender that failed or is stuck in a
    /// fault must not hold up the rest.
    const PATIENCE: Duration = Duration::from_millis(250);

    fn new(parties: usize) -> Self {
        Self {
            arrived: AtomicUsize::new(0),
            parties,
            notify: tokio::sync::Notify::new(),
        }
    }

    async fn pass(&self, round: usize) {
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

async fn client<B: Backend>(
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

/// Keys of the space at or below `dir` (relative; `""` is the root).
fn keys_under(dir: &str, strictly: bool) -> impl Iterator<Item = &'static str> + '_ {
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

/// Turns client records into single-key events (plus list snapshots), checking the
/// shape of each reply on the way.
/// A list that returned: (origin, label, call, return).
type ListCall = (usize, String, Time, Time);

fn to_events(records: &[Record]) -> Result<(Vec<Event>, Vec<ListCall>), String> {
    let mut events = Vec::new();
    let mut lists = Vec::new();
    for (origin, r) in records.iter().enumerate() {
        let unknown = matches!(r.reply, Reply::Unknown(_));
        let lbl = match &r.reply {
            Reply::Unknown(why) => format!("{}; outcome unknown: {why}", label(&r.op)),
            _ => label(&r.op),
        };
        let mut push = |key: &str, op: KeyOp, outcome: Outcome| {
            events.push(Event {
                key: key.to_owned(),
                client: r.client,
                origin,
                label: lbl.clone(),
                call: r.call,
                ret: (!unknown).then_some(r.ret),
                op,
                outcome: if unknown { Outcome::Unknown } else { outcome },
            });
        };
        let bad = |what: &str| format!("client {} {lbl}: {what} (reply {:?})", r.client, r.reply);
        let check_pair = |k: &str, p: &KvPair, v: Option<&Bytes>| -> Result<(), String> {
            if p.key != full(k) {
                return Err(bad(&format!("returned the pair of key {:?}", p.key)));
            }
            if let Some(v) = v
                && p.value != *v
            {
                return Err(bad("returned a pair with another value than it wrote"));
            }
            Ok(())
        };
        let written = |k: &str, v: &Bytes| -> Result<Outcome, String> {
            match &r.reply {
                Reply::Pair(Some(p)) => {
                    check_pair(k, p, Some(v))?;
                    Ok(Outcome::Written(p.last_index))
                }
                Reply::Conflict(c) => Ok(Outcome::Conflict(*c)),
                Reply::Unknown(_) => Ok(Outcome::Unknown),
                _ => Err(bad("unexpected reply")),
            }
        };
        match &r.op {
            ClientOp::Get(k) => {
                let outcome = match &r.reply {
                    Reply::Pair(p) => {
                        if let Some(p) = p {
                            check_pair(k, p, None)?;
                        }
                        Outcome::Read(p.as_ref().map(|p| (p.value.clone(), p.last_index)))
                    }
                    _ => Outcome::Unknown,
                };
                push(k, KeyOp::Read, outcome);
            }
            ClientOp::Exists(k) => {
                let outcome = match r.reply {
                    Reply::Bool(b) => Outcome::Exists(b),
                    _ => Outcome::Unknown,
                };
                push(k, KeyOp::Exists, outcome);
            }
            ClientOp::Put(k, v) => {
                let o = written(k, v)?;
                push(k, KeyOp::Put(v.clone()), o);
            }
            ClientOp::Create(k, v) => {
                let o = written(k, v)?;
                push(k, KeyOp::Create(v.clone()), o);
            }
            ClientOp::Swap(k, v, i) => {
                let o = written(k, v)?;
                push(k, KeyOp::Swap(v.clone(), *i), o);
            }
            ClientOp::Delete(k) => {
                let outcome = match r.reply {
                    Reply::Bool(b) => Outcome::Deleted(b),
                    _ => Outcome::Unknown,
                };
                push(k, KeyOp::Delete, outcome);
            }
            ClientOp::CompareDelete(k, i) => {
                let outcome = match r.reply {
                    Reply::Unit => Outcome::Done,
                    Reply::Conflict(c) => Outcome::Conflict(c),
                    _ => Outcome::Unknown,
                };
                push(k, KeyOp::CompareDelete(*i), outcome);
            }
            ClientOp::DeleteTree(d) => {
                for k in keys_under(d, false) {
                    push(k, KeyOp::TreeDelete, Outcome::Done);
                }
            }
            ClientOp::List(d) => {
                if let Reply::List(pairs) = &r.reply {
                    let dir_full = full(d);
                    let mut previous: Option<&str> = None;
                    let mut found: HashMap<&str, &KvPair> = HashMap::new();
                    for p in pairs {
                        if previous.is_some_and(|prev| prev >= p.key.as_str()) {
                            return Err(bad("list is not sorted by key, or repeats a key"));
                        }
                        previous = Some(&p.key);
                        let Some(k) = KEY_SPACE.iter().find(|k| full(k) == p.key) else {
                            return Err(bad(&format!(
                                "list returned {:?}, a key never written",
                                p.key
                            )));
                        };
                        if !keys_under(d, true).any(|u| u == *k) {
                            return Err(bad(&format!(
                                "list of {dir_full:?} returned {:?}, which is not strictly below it",
                                p.key
                            )));
                        }
                        found.insert(k, p);
                    }
                    for k in keys_under(d, true) {
                        let got = found.get(k).map(|p| (p.value.clone(), p.last_index));
                        push(k, KeyOp::Read, Outcome::Read(got));
                    }
                    lists.push((origin, lbl.clone(), r.call, r.ret));
                } // an unknown list tells nothing
            }
        }
    }
    Ok((events, lists))
}

/// One watch session: when it was called and what it yielded when.
#[derive(Clone, Debug)]
struct WatchLog {
    key: &'static str,
    call: Time,
    items: Vec<(Time, Option<KvPair>)>,
    error: Option<String>,
}

async fn watcher<B: Backend>(
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
fn watcher_start(w: usize, config: &ConcurrentConfig) -> usize {
    config.ops_per_client * w / (2 * config.watchers.max(1))
}

/// One lock hold.
#[derive(Clone, Debug)]
struct Hold {
    contender: usize,
    acquired: Time,
    released: Time,
    lost: bool,
    fence: Result<u64, String>,
}

async fn contender<B: Backend>(
    kv: Kv<B>,
    id: usize,
    config: ConcurrentConfig,
    shared: Arc<Shared>,
) -> Result<Vec<Hold>, String> {
    let caps = kv.capabilities();
    // Two contenders share the default options; the others use their own.
    let options = if id < 2 {
        LockOptions::default()
    } else {
        LockOptions::default()
            .value(format!("contender-{id}"))
            .ttl(caps.effective_ttl(Duration::from_secs(3)))
    };
    let lock_key = format!("{LOCK_ROOT}/lock");
    let fence_key = format!("{LOCK_ROOT}/fence");
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
            Ok(Err(e)) => return Err(format!("contender {id}: lock failed: {e}")),
            Err(_) if shared.faulted.load(Ordering::SeqCst) => continue,
            Err(_) => {
                return Err(format!(
                    "contender {id}: the lock was not acquired within {wait:?} although every holder releases it within milliseconds"
                ));
            }
        };
        let acquired = shared.clock.now();
        let fence = async {
            let current = match kv.get(&fence_key).await {
                Ok(p) => Some(p),
                Err(e) if e.kind() == ErrorKind::NotFound => None,
                Err(e) => return Err(format!("read failed: {e}")),
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
            .map_err(|e| format!("fencing swap failed: {e}"))
        };
        let fence = tokio::time::timeout(config.op_timeout, fence)
            .await
            .unwrap_or_else(|_| Err("fencing swap timed out".into()));
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

fn check_locks(holds: &[Hold], faulted: bool) -> Result<(), String> {
    let safe: Vec<&Hold> = holds.iter().filter(|h| !h.lost).collect();
    for (i, a) in safe.iter().enumerate() {
        for b in &safe[i + 1..] {
            if a.acquired < b.released && b.acquired < a.released {
                return Err(format!(
                    "lock exclusion broken: contender {} held the lock from {:.3}ms to {:.3}ms and contender {} from {:.3}ms to {:.3}ms, neither lost",
                    a.contender,
                    a.acquired as f64 / 1e6,
                    a.released as f64 / 1e6,
                    b.contender,
                    b.acquired as f64 / 1e6,
                    b.released as f64 / 1e6
                ));
            }
        }
        if let Err(e) = &a.fence
            && (!faulted || e.contains("modified") || e.contains("exists"))
        {
            return Err(format!(
                "the fencing counter's swap under the lock failed while the lock was held (contender {}, held {:.3}ms..{:.3}ms): {e}",
                a.contender,
                a.acquired as f64 / 1e6,
                a.released as f64 / 1e6
            ));
        }
    }
    let mut values: Vec<u64> = safe
        .iter()
        .filter_map(|h| h.fence.as_ref().ok().copied())
        .collect();
    values.sort_unstable();
    if let Some(w) = values.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!(
            "two lock holders both advanced the fencing counter to {}",
            w[0]
        ));
    }
    Ok(())
}

fn check_watches(
    logs: &[WatchLog],
    events: &[Event],
    finals: &HashMap<&'static str, Option<KvPair>>,
    every_write: bool,
) -> Result<usize, String> {
    let mut items = 0;
    for log in logs {
        items += log.items.len();
        let show = |s: &Option<KvPair>| match s {
            None => "absent".to_owned(),
            Some(p) => format!("{:?} @{}", String::from_utf8_lossy(&p.value), p.last_index),
        };
        let history = || {
            let mut h = format!(
                "  watch of {:?} called at {:.3}ms, items:\n",
                log.key,
                log.call as f64 / 1e6
            );
            for (t, s) in &log.items {
                let _ = writeln!(h, "    at {:.3}ms: {}", *t as f64 / 1e6, show(s));
            }
            h
        };
        let mut last: Option<u64> = None;
        let mut previous: Option<&Option<KvPair>> = None;
        for (at, state) in &log.items {
            if let Some(p) = state {
                if p.key != full(log.key) {
                    return Err(format!(
                        "a watch of {:?} yielded key {:?}\n{}",
                        log.key,
                        p.key,
                        history()
                    ));
                }
                if last.is_some_and(|l| p.last_index <= l) {
                    return Err(format!(
                        "a watch went back or repeated: @{} after @{}\n{}",
                        p.last_index,
                        last.unwrap_or(0),
                        history()
                    ));
                }
                last = Some(p.last_index);
                match linearizability::state_lifetime(events, log.key, &p.value, p.last_index) {
                    None => {
                        return Err(format!(
                            "a watch yielded {}, a value never written to {:?}\n{}",
                            show(state),
                            log.key,
                            history()
                        ));
                    }
                    Some((start, end)) => {
                        if start > *at || end < log.call {
                            return Err(format!(
                                "a watch yielded {} at {:.3}ms, a state that did not exist between the watch call and then (it existed at most from {:.3}ms to {:.3}ms)\n{}",
                                show(state),
                                *at as f64 / 1e6,
                                start as f64 / 1e6,
                                end as f64 / 1e6,
                                history()
                            ));
                        }
                    }
                }
            } else if every_write && previous.is_some_and(|p| p.is_none()) {
                return Err(format!("a watch repeated an absent state\n{}", history()));
            }
            previous = Some(state);
        }
        if every_write
            && log.error.is_none()
            && let Some((first_at, first)) = log.items.first()
        {
            {
                let yielded: Vec<u64> = log
                    .items
                    .iter()
                    .filter_map(|(_, s)| s.as_ref().map(|p| p.last_index))
                    .collect();
                let upto = yielded.iter().copied().max().unwrap_or(0);
                for e in events.iter().filter(|e| e.key == log.key) {
                    if let Outcome::Written(j) = e.outcome {
                        let after_first = match first {
                            Some(p) => j > p.last_index,
                            None => e.call > *first_at,
                        };
                        if after_first && j <= upto && !yielded.contains(&j) {
                            return Err(format!(
                                "a watch skipped a write although the backend claims watch_sees_every_write: {e}\n{}",
                                history()
                            ));
                        }
                    }
                }
            }
        }
    }
    // Convergence: the last session of each key that yielded anything ends on the
    // final write.
    for (key, want) in finals {
        let last = logs
            .iter()
            .rev()
            .find(|l| l.key == *key && !l.items.is_empty());
        let last = last.or_else(|| logs.iter().rev().find(|l| l.key == *key));
        if let Some(log) = last {
            let got = log.items.last().map(|(_, s)| s);
            let same = match (got, want) {
                (Some(None), None) => true,
                (Some(Some(a)), Some(b)) => a.value == b.value && a.last_index == b.last_index,
                _ => false,
            };
            if !same {
                let mut h = format!(
                    "a watch of {key:?} did not converge: its last item is {:?}, the key holds {:?}\n  watch called at {:.3}ms, {} sessions of this key; items:\n",
                    got,
                    want,
                    log.call as f64 / 1e6,
                    logs.iter().filter(|l| l.key == *key).count()
                );
                for (t, s) in log.items.iter().rev().take(6).rev() {
                    let _ = writeln!(h, "    at {:.3}ms: {s:?}", *t as f64 / 1e6);
                }
                let _ = writeln!(h, "  last operations on the key:");
                let on_key: Vec<&Event> = events.iter().filter(|e| e.key == *key).collect();
                for e in on_key.iter().rev().take(8).rev() {
                    let _ = writeln!(h, "    {e}");
                }
                return Err(h);
            }
        }
    }
    Ok(items)
}

fn failure(seed: u64, what: &str, detail: impl std::fmt::Display) -> ModelFailure {
    ModelFailure(format!(
        "concurrent check failed (seed {seed}): {what}\n{detail}\nreplay with ConcurrentConfig {{ seed: {seed}, .. }}"
    ))
}

fn violation(seed: u64, v: &Violation) -> ModelFailure {
    failure(
        seed,
        if v.undecided {
            "undecided"
        } else {
            "linearizability"
        },
        v,
    )
}

/// Runs concurrent clients, watchers and lock contenders against the store behind
/// `handles` (client `i` uses `handles[i % len]` for the whole run) and checks the
/// recorded history. See the module documentation for every rule checked.
pub async fn check_concurrent<B: Backend>(
    handles: Vec<Kv<B>>,
    config: ConcurrentConfig,
    fault: Option<SharedFault>,
) -> Result<ConcurrentReport, ModelFailure> {
    let seed = config.seed;
    if handles.is_empty() {
        return Err(ModelFailure(
            "check_concurrent needs at least one handle".into(),
        ));
    }
    let handle = |i: usize| handles[i % handles.len()].clone();
    let kv = handle(0);
    for dir in [ROOT, LOCK_ROOT] {
        kv.delete_tree(dir)
            .await
            .map_err(|e| failure(seed, &format!("wiping {dir} failed"), e))?;
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
            .map_err(|e| failure(seed, "a lock contender panicked", e))?;
        holds.extend(outcome.map_err(|e| failure(seed, "lock", e))?);
    }
    if let Some(task) = fault_task {
        // All clients are done, so the heal has been reached (progress >= 2/3).
        let _ = task.await;
    }
    let faulted = shared.faulted.load(Ordering::SeqCst);
    if let Some(e) = first_error {
        stop.cancel();
        return Err(failure(seed, "an operation failed", e));
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
                return Err(failure(
                    seed,
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
    let (events, lists) = to_events(&records).map_err(|e| failure(seed, "malformed reply", e))?;
    let stats =
        linearizability::check_history(&events, &config.limits).map_err(|v| violation(seed, &v))?;
    if config.check_list_snapshots {
        let snapshots: Vec<Snapshot<'_>> = lists
            .iter()
            .map(|(origin, label, call, ret)| Snapshot {
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
        .map_err(|e| failure(seed, "watch", e))?;
    check_locks(&holds, faulted).map_err(|e| failure(seed, "lock", e))?;
    let check_time = check_started.elapsed();
    let _ = kv.delete_tree(ROOT).await;
    let _ = kv.delete_tree(LOCK_ROOT).await;
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
