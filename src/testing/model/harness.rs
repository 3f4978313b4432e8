//! The harness state: the handles, the model of the store and the open watches and locks of a case, and how a case runs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::time::Instant;

use super::ops::{LOCKS, LockValue, MODEL_LOCK_ROOT, MODEL_ROOT, ModelConfig, Op};
use super::violation::{Checked, StepViolation, violation};
use crate::backend::{Backend, Capabilities, KvPair, LockGuard};
use crate::error::{Error, ErrorKind, Result};
use crate::key::{Dir, Key};
use crate::kv::Kv;
use crate::testing::failure::CaseFailure;
use crate::testing::rules::Rule;

/// A key's state in the model.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub(super) value: Bytes,
    pub(super) index: u64,
    pub(super) expiry: Option<Expiry>,
}

/// When a TTL key must still be there and when it must be gone.
#[derive(Clone, Copy, Debug)]
pub(super) struct Expiry {
    /// Present at least until then (the call's start + the TTL).
    pub(super) earliest: Instant,
    /// Gone at the latest then (the reply + ttl × factor + granularity).
    pub(super) latest: Instant,
}

/// Why a key the model knows as absent is absent.
#[derive(Clone, Copy, Debug)]
pub(super) enum Gone {
    Deleted { index: u64, handle: usize },
    Expired { index: u64 },
}

/// One state a watch may yield: sorted (key, value, index), plus keys that may be
/// missing (TTL keys expiring while the harness slept).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct WatchState {
    pub(super) pairs: Vec<(String, Bytes, u64)>,
    pub(super) may_lack: BTreeSet<String>,
}

impl WatchState {
    pub(super) fn matches(&self, item: &[(String, Bytes, u64)]) -> bool {
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

pub(super) enum Filter {
    Key(String),
    Tree(Dir),
}

impl Filter {
    pub(super) fn contains(&self, key: &str) -> bool {
        match self {
            Filter::Key(k) => k == key,
            Filter::Tree(dir) => dir.contains(key),
        }
    }
}

pub(super) enum WatchStream<B: Backend> {
    Key(B::Watch),
    Tree(B::WatchTree),
}

pub(super) struct OpenWatch<B: Backend> {
    pub(super) step: usize,
    pub(super) handle: usize,
    pub(super) filter: Filter,
    pub(super) stream: WatchStream<B>,
    pub(super) history: Vec<WatchState>,
    /// History position the first item may start from (the state at the call).
    pub(super) open_pos: usize,
    /// History position of the last item.
    pub(super) pos: Option<usize>,
    pub(super) last_item: Option<Vec<(String, Bytes, u64)>>,
}

pub(super) enum LockSlot<B: Backend> {
    Free,
    Held {
        handle: usize,
        value: LockValue,
        guard: B::Lock,
    },
}

/// What one handle has seen per key: the highest index, and whether it wrote it.
#[derive(Default)]
pub(super) struct Seen(pub(super) HashMap<String, (u64, bool)>);

/// One run: the handles, the model and the open watches and locks of a case.
pub(super) struct Harness<B: Backend> {
    pub(super) handles: Arc<[Kv<B>]>,
    pub(super) caps: Capabilities,
    pub(super) config: ModelConfig<B>,
    /// The TTL written by TTL steps, and the bound after which its key must be gone.
    pub(super) ttl: Duration,
    pub(super) ttl_bound: Duration,
    /// Whether tokio's clock is paused (abandoned locks then run on a paused clock too).
    pub(super) paused: bool,
    /// Real time the TTL steps may still sleep.
    pub(super) sleep_left: Duration,
    pub(super) data: BTreeMap<String, Entry>,
    pub(super) gone: HashMap<String, Gone>,
    pub(super) max_index: HashMap<String, u64>,
    pub(super) observed: HashMap<String, Vec<KvPair>>,
    pub(super) seen: Vec<Seen>,
    pub(super) watches: Vec<OpenWatch<B>>,
    pub(super) locks: Vec<LockSlot<B>>,
    /// The step running now (for failure messages).
    pub(super) step: usize,
}

pub(super) fn prefixed(raw: &str) -> String {
    format!("{MODEL_ROOT}/{raw}")
}

pub(super) fn lock_key(lock: usize) -> String {
    format!("{MODEL_LOCK_ROOT}/l{lock}")
}

pub(super) fn triple(pair: &KvPair) -> (String, Bytes, u64) {
    (pair.key.clone(), pair.value.clone(), pair.last_index)
}

pub(super) fn unexpected_error(what: &str, e: &Error) -> StepViolation {
    violation(Rule::Healthy, format!("{what}: unexpected error {e:?}"))
}

/// One of the run's handles, borrowed without cloning the `Kv` (a clone may be a new
/// client with its own state, and each handle must stay the same one all run).
pub(super) struct Handle<B: Backend> {
    pub(super) all: Arc<[Kv<B>]>,
    pub(super) index: usize,
}

impl<B: Backend> std::ops::Deref for Handle<B> {
    type Target = Kv<B>;

    fn deref(&self) -> &Kv<B> {
        &self.all[self.index]
    }
}

impl<B: Backend> Harness<B> {
    pub(super) fn handle(&self, h: usize) -> (usize, Handle<B>) {
        let index = h % self.handles.len();
        let handle = Handle {
            all: self.handles.clone(),
            index,
        };
        (index, handle)
    }

    pub(super) fn other_handle(&self, h: usize) -> (usize, Handle<B>) {
        self.handle(h + 1)
    }

    pub(super) fn reset(&mut self) {
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
    pub(super) fn record(&mut self, keys: &[String]) {
        for i in 0..self.watches.len() {
            if keys.iter().any(|k| self.watches[i].filter.contains(k)) {
                let snapshot = WatchState {
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

    pub(super) fn snapshot(&self, filter: &Filter) -> Vec<(String, Bytes, u64)> {
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
    pub(super) fn saw(&mut self, h: usize, pair: &KvPair) {
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
    pub(super) fn wrote(
        &mut self,
        h: usize,
        key: &str,
        value: &Bytes,
        pair: &KvPair,
        expiry: Option<Expiry>,
    ) -> Checked {
        if pair.key != key || pair.value != value {
            return Err(violation(
                Rule::Normalised,
                format!("wrote {key:?} = {value:?}, the reply is {pair:?}"),
            ));
        }
        let before = self.max_index.get(key).copied().unwrap_or(0);
        if pair.last_index == 0 || pair.last_index <= before {
            return Err(violation(
                Rule::Versions,
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
    pub(super) fn may_see_part_of(&mut self, doomed: &[String]) {
        for i in 0..self.watches.len() {
            let lacking: BTreeSet<String> = doomed
                .iter()
                .filter(|k| self.watches[i].filter.contains(k))
                .cloned()
                .collect();
            if lacking.len() > 1 {
                let pairs = self.snapshot(&self.watches[i].filter);
                self.watches[i].history.push(WatchState {
                    pairs,
                    may_lack: lacking,
                });
            }
        }
    }

    pub(super) fn removed(&mut self, h: usize, keys: Vec<String>) {
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

    // -- a case ---------------------------------------------------------------------

    pub(super) async fn wipe(&mut self) -> std::result::Result<(), String> {
        let (_, kv) = self.handle(0);
        for dir in [MODEL_ROOT, MODEL_LOCK_ROOT] {
            kv.delete_tree(dir)
                .await
                .map_err(|e| format!("wiping {dir} failed: {e}"))?;
        }
        Ok(())
    }

    /// Runs one sequence; `Err` names the step and the rule.
    pub(super) async fn run(&mut self, ops: &[Op]) -> std::result::Result<(), CaseFailure> {
        self.wipe().await.map_err(|detail| CaseFailure {
            rule: None,
            step: None,
            detail,
        })?;
        self.reset();
        let outcome = self.run_steps(ops).await;
        self.watches.clear();
        let slots = std::mem::take(&mut self.locks);
        for slot in slots {
            if let LockSlot::Held { guard, .. } = slot {
                let _ = guard.unlock().await;
            }
        }
        outcome.map_err(|(step, v)| CaseFailure {
            rule: Some(v.rule),
            step,
            detail: v.detail,
        })
    }

    pub(super) async fn run_steps(
        &mut self,
        ops: &[Op],
    ) -> std::result::Result<(), (Option<usize>, StepViolation)> {
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
        match kv.list(MODEL_ROOT).await {
            Ok(pairs) => self
                .check_list(0, MODEL_ROOT, &pairs)
                .map_err(|v| (None, v))?,
            Err(e) => return Err((None, unexpected_error("list", &e))),
        }
        Ok(())
    }
}

/// The next item of a watch of either kind, as a list of pairs.
pub(super) async fn next_item<B: Backend>(
    stream: &mut WatchStream<B>,
) -> Option<Result<Vec<KvPair>>> {
    match stream {
        WatchStream::Key(s) => s.next().await.map(|r| r.map(|p| p.into_iter().collect())),
        WatchStream::Tree(s) => s.next().await,
    }
}

/// The next item if one is ready now.
pub(super) fn next_ready<B: Backend>(stream: &mut WatchStream<B>) -> Option<Result<Vec<KvPair>>> {
    next_item(stream).now_or_never().flatten()
}

pub(super) fn normal(raw: &str) -> String {
    Key::new(raw).expect("model keys are valid").into_string()
}

pub(super) fn strip(key: &str) -> String {
    key.strip_prefix(MODEL_ROOT)
        .and_then(|k| k.strip_prefix('/'))
        .unwrap_or(key)
        .to_owned()
}

pub(super) fn show_kind(kind: Option<ErrorKind>) -> String {
    kind.map_or("Ok".to_owned(), |k| format!("{k:?}"))
}
