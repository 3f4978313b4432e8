//! A linearizability checker for concurrent key/value histories.
//!
//! The algorithm is Wing & Gong's search as improved by Lowe and used by Knossos and
//! porcupine: operations are linearized one at a time, in an order consistent with
//! real time (an operation can go next only if it was invoked before every pending
//! operation returned), and each visited pair (set of linearized operations, model
//! state) is remembered so it is never explored twice. The history is split per key
//! first (P-compositionality: a history is linearizable iff each key's sub-history
//! is), so the search only ever sees one key's operations.
//!
//! # The model of one key
//!
//! The state is the key's current `(value, last_index)` or absent, plus the highest
//! version the key is known to have had. Versions are chosen by the backend, so the
//! model only requires what kvkit promises: a write returns an index greater than
//! every index the key had before (also across delete and re-create), a read returns
//! the current `(value, index)`, a compare-and-swap or compare-and-delete applies iff
//! the key currently has the expected index, a create applies iff the key is absent,
//! and every conflict must be justified by the state (`KeyExists` needs the key
//! present, `NotFound` absent, `KeyModified` present with another index).
//!
//! An operation whose outcome is unknown (`Unavailable`, a timeout) never returns: it
//! may be linearized at any point after its invocation, or not at all. When such a
//! write is linearized its new index is unknown until a later observation binds it.
//!
//! Multi-key operations are decomposed by the caller: a `list` into one read per key
//! of the key space below the listed directory, a `delete_tree` into one delete per
//! key (it is not atomic across keys). [`check_snapshots`] then checks each list as
//! an atomic snapshot across keys, see its documentation for exactly what it proves.

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write as _};

use bytes::Bytes;

/// Nanoseconds since the start of the history.
pub type Time = u64;

/// What one single-key operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyOp {
    /// `get`, or one key of a `list`.
    Read,
    /// `exists`.
    Exists,
    /// `put` of this value.
    Put(Bytes),
    /// `delete`.
    Delete,
    /// The part of a `delete_tree` that deletes this key (no result per key).
    TreeDelete,
    /// `atomic_put` with no previous pair (create only if absent).
    Create(Bytes),
    /// `atomic_put` expecting this index.
    Swap(Bytes, u64),
    /// `atomic_delete` expecting this index.
    CompareDelete(u64),
}

/// Why a conditional operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conflict {
    /// `KeyExists`: a create found the key present.
    Exists,
    /// `NotFound`: a swap or compare-delete found the key absent.
    Absent,
    /// `KeyModified`: a swap or compare-delete found another index.
    Modified,
}

/// What an operation returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A read: the pair, or `None` when absent.
    Read(Option<(Bytes, u64)>),
    /// `exists`.
    Exists(bool),
    /// A write was applied with this new index.
    Written(u64),
    /// `delete`: whether the key existed.
    Deleted(bool),
    /// Applied, nothing returned (compare-delete, a part of delete_tree).
    Done,
    /// A refused conditional operation.
    Conflict(Conflict),
    /// Unknown: the operation may or may not have taken effect.
    Unknown,
}

/// One single-key operation of a history.
#[derive(Clone, Debug)]
pub struct Event {
    /// The key (relative to the history's root).
    pub key: String,
    /// Which client issued it.
    pub client: usize,
    /// The operation of the client this event belongs to (a list or delete_tree gives
    /// several events with one origin).
    pub origin: usize,
    /// A short description of the client's operation, for failure reports.
    pub label: String,
    /// When it was invoked.
    pub call: Time,
    /// When it returned; `None` when its outcome is unknown.
    pub ret: Option<Time>,
    /// The operation.
    pub op: KeyOp,
    /// The result ([`Outcome::Unknown`] when `ret` is `None`).
    pub outcome: Outcome,
}

impl Event {
    fn ret_or_never(&self) -> Time {
        self.ret.unwrap_or(Time::MAX)
    }

    fn is_determinate(&self) -> bool {
        self.ret.is_some() && self.outcome != Outcome::Unknown
    }
}

fn ms(t: Time) -> String {
    if t == Time::MAX {
        "never".to_owned()
    } else {
        format!("{:.3}ms", t as f64 / 1e6)
    }
}

fn show_value(v: &Bytes) -> String {
    format!("{:?}", String::from_utf8_lossy(v))
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match &self.op {
            KeyOp::Read => "read".to_owned(),
            KeyOp::Exists => "exists".to_owned(),
            KeyOp::Put(v) => format!("put {}", show_value(v)),
            KeyOp::Delete => "delete".to_owned(),
            KeyOp::TreeDelete => "delete (by delete_tree)".to_owned(),
            KeyOp::Create(v) => format!("create {}", show_value(v)),
            KeyOp::Swap(v, i) => format!("swap {} if index {i}", show_value(v)),
            KeyOp::CompareDelete(i) => format!("compare_delete if index {i}"),
        };
        let outcome = match &self.outcome {
            Outcome::Read(None) => "absent".to_owned(),
            Outcome::Read(Some((v, i))) => format!("{} @{i}", show_value(v)),
            Outcome::Exists(b) => format!("{b}"),
            Outcome::Written(i) => format!("ok @{i}"),
            Outcome::Deleted(b) => format!("existed={b}"),
            Outcome::Done => "ok".to_owned(),
            Outcome::Conflict(c) => format!("conflict {c:?}"),
            Outcome::Unknown => "UNKNOWN (may or may not have applied)".to_owned(),
        };
        write!(
            f,
            "[{} .. {}] client {} {op} -> {outcome}   ({})",
            ms(self.call),
            ms(self.ret_or_never()),
            self.client,
            self.label
        )
    }
}

/// How hard to search.
#[derive(Clone, Debug)]
pub struct CheckLimits {
    /// Model states visited per key before the key is reported undecided.
    pub max_states_per_key: usize,
}

impl Default for CheckLimits {
    fn default() -> Self {
        CheckLimits {
            max_states_per_key: 2_000_000,
        }
    }
}

/// A broken rule, with a shortened history around it.
#[derive(Clone, Debug)]
pub struct Violation {
    /// The key whose sub-history broke a rule (`None` for multi-key checks).
    pub key: Option<String>,
    /// The rule that was broken, in words.
    pub rule: String,
    /// The operations around the problem, one per line, with their times.
    pub history: String,
    /// True when the search gave up (bounded) instead of proving a violation.
    pub undecided: bool,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.undecided {
            write!(f, "UNDECIDED (search bound reached, no violation proven): ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "key {key:?}: ")?;
        }
        writeln!(f, "{}", self.rule)?;
        write!(f, "{}", self.history)
    }
}

/// Numbers about one check.
#[derive(Clone, Debug, Default)]
pub struct CheckStats {
    /// Single-key events checked.
    pub events: usize,
    /// Keys checked.
    pub keys: usize,
    /// Model states visited in total.
    pub states: usize,
}

/// Checks every key's sub-history; the first key that is not linearizable (or that
/// could not be decided within `limits`) is the error.
pub fn check_history(events: &[Event], limits: &CheckLimits) -> Result<CheckStats, Violation> {
    let mut by_key: HashMap<&str, Vec<&Event>> = HashMap::new();
    for e in events {
        by_key.entry(e.key.as_str()).or_default().push(e);
    }
    let mut keys: Vec<&str> = by_key.keys().copied().collect();
    keys.sort_unstable();
    let mut stats = CheckStats {
        events: events.len(),
        keys: keys.len(),
        states: 0,
    };
    for key in keys {
        let events = &by_key[key];
        stats.states += check_key(key, events, limits)?;
    }
    Ok(stats)
}

/// The model state of one key. Index 0 means "written, index not yet observed"
/// (real versions are nonzero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct State {
    /// (value id, index)
    current: Option<(u32, u64)>,
    /// The highest index the key is known to have had.
    floor: u64,
}

/// An event with its value interned.
struct Prepared<'a> {
    event: &'a Event,
    /// The written value's id, for writes.
    written: u32,
    /// The read value's id (`u32::MAX` when no write wrote it).
    read: u32,
    /// For an event of unknown outcome: its effect, shared by every such event with
    /// the same effect (see [`Effect`]); `None` for determinate events.
    effect: Option<Effect>,
}

/// The effect of applying an event of unknown outcome. Two pending such events with
/// the same effect are interchangeable once both are invoked (they never return, so
/// they stay available forever): the search tries only the earliest of them, which
/// keeps many failed writes from multiplying the search space.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Effect {
    Put(u32),
    Create(u32),
    Swap(u32, u64),
    Delete,
    CompareDelete(u64),
}

fn values_of(events: &[&Event]) -> HashMap<Bytes, u32> {
    let mut ids = HashMap::new();
    for e in events {
        if let KeyOp::Put(v) | KeyOp::Create(v) | KeyOp::Swap(v, _) = &e.op {
            let next = u32::try_from(ids.len()).unwrap_or(u32::MAX - 1);
            ids.entry(v.clone()).or_insert(next);
        }
    }
    ids
}

fn describe(state: &State, names: &[Bytes]) -> String {
    match state.current {
        None => "absent".to_owned(),
        Some((v, 0)) => format!(
            "{} (written by an operation with unknown outcome, index not observed yet)",
            show_value(&names[v as usize])
        ),
        Some((v, i)) => format!("{} @{i}", show_value(&names[v as usize])),
    }
}

/// True when the key's current index may be `expected`; binds an unknown index.
fn index_matches(state: &mut State, expected: u64) -> bool {
    match state.current {
        Some((v, 0)) if expected > state.floor => {
            state.current = Some((v, expected));
            state.floor = expected;
            true
        }
        Some((_, i)) => i == expected,
        None => false,
    }
}

/// Applies one event to a state; `Err` says which rule it breaks there.
fn step(state: &State, p: &Prepared<'_>, names: &[Bytes]) -> Result<State, String> {
    let mut s = *state;
    let e = p.event;
    let was = || describe(state, names);
    if !e.is_determinate() {
        // Only the "applied" variant: not applying it is "never linearized".
        match &e.op {
            KeyOp::Put(_) | KeyOp::Create(_) | KeyOp::Swap(..) => {
                if matches!(e.op, KeyOp::Create(_)) && s.current.is_some() {
                    return Err("a create cannot apply to a present key".into());
                }
                if let KeyOp::Swap(_, expected) = e.op
                    && !index_matches(&mut s, expected)
                {
                    return Err("a swap cannot apply: index differs".into());
                }
                s.current = Some((p.written, 0));
            }
            KeyOp::CompareDelete(expected) => {
                if !index_matches(&mut s, *expected) {
                    return Err("a compare-delete cannot apply: index differs".into());
                }
                s.current = None;
            }
            KeyOp::Delete | KeyOp::TreeDelete => s.current = None,
            KeyOp::Read | KeyOp::Exists => {}
        }
        return Ok(s);
    }
    let written = |s: &mut State, index: u64, expected_floor: u64| -> Result<(), String> {
        if index == 0 {
            return Err("a write returned index 0 (versions are nonzero)".into());
        }
        if index <= expected_floor {
            return Err(format!(
                "version went back: the write returned index {index}, but the key already had index {expected_floor} (state before: {})",
                describe(state, names)
            ));
        }
        s.current = Some((p.written, index));
        s.floor = index;
        Ok(())
    };
    match (&e.op, &e.outcome) {
        (KeyOp::Read, Outcome::Read(None)) => match s.current {
            None => Ok(s),
            Some(_) => Err(format!("read returned absent, but the key held {}", was())),
        },
        (KeyOp::Read, Outcome::Read(Some((v, i)))) => {
            if p.read == u32::MAX {
                return Err(format!(
                    "read returned {} @{i}, a value no operation ever wrote to this key",
                    show_value(v)
                ));
            }
            let held = s.current.map(|(v, _)| v);
            match held {
                Some(held) if held == p.read && index_matches(&mut s, *i) => Ok(s),
                _ => Err(format!(
                    "read returned {} @{i}, but the key held {}",
                    show_value(v),
                    was()
                )),
            }
        }
        (KeyOp::Exists, Outcome::Exists(b)) => {
            if s.current.is_some() == *b {
                Ok(s)
            } else {
                Err(format!("exists returned {b}, but the key held {}", was()))
            }
        }
        (KeyOp::Put(_), Outcome::Written(i)) => {
            let floor = s.floor;
            written(&mut s, *i, floor)?;
            Ok(s)
        }
        (KeyOp::Create(_), Outcome::Written(i)) => {
            if s.current.is_some() {
                return Err(format!(
                    "create succeeded (@{i}), but the key held {}",
                    was()
                ));
            }
            let floor = s.floor;
            written(&mut s, *i, floor)?;
            Ok(s)
        }
        (KeyOp::Create(_), Outcome::Conflict(Conflict::Exists)) => match s.current {
            Some(_) => Ok(s),
            None => Err("create failed with KeyExists, but the key was absent".into()),
        },
        (KeyOp::Swap(_, expected), Outcome::Written(i)) => {
            if !index_matches(&mut s, *expected) {
                return Err(format!(
                    "swap expecting index {expected} succeeded (@{i}), but the key held {}",
                    was()
                ));
            }
            let floor = s.floor.max(*expected);
            written(&mut s, *i, floor)?;
            Ok(s)
        }
        (KeyOp::CompareDelete(expected), Outcome::Done) => {
            if !index_matches(&mut s, *expected) {
                return Err(format!(
                    "compare_delete expecting index {expected} succeeded, but the key held {}",
                    was()
                ));
            }
            s.current = None;
            Ok(s)
        }
        (KeyOp::Swap(_, expected) | KeyOp::CompareDelete(expected), Outcome::Conflict(c)) => {
            match (c, s.current) {
                (Conflict::Absent, None) => Ok(s),
                (Conflict::Modified, Some((_, i))) if i != *expected => Ok(s),
                _ => Err(format!(
                    "conditional operation expecting index {expected} failed with {c:?}, but the key held {}",
                    was()
                )),
            }
        }
        (KeyOp::Delete, Outcome::Deleted(b)) => {
            if s.current.is_some() != *b {
                return Err(format!(
                    "delete reported existed={b}, but the key held {}",
                    was()
                ));
            }
            s.current = None;
            Ok(s)
        }
        (KeyOp::TreeDelete, Outcome::Done) => {
            s.current = None;
            Ok(s)
        }
        (op, outcome) => Err(format!("{op:?} cannot return {outcome:?}")),
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Box<[u64]>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)].into_boxed_slice())
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn with(&self, i: usize) -> Self {
        let mut b = self.clone();
        b.0[i / 64] |= 1 << (i % 64);
        b
    }
}

struct Frame {
    lin: Bits,
    /// Linearized determinate events.
    done: usize,
    /// First event (in call order) not linearized.
    first: usize,
    candidates: Vec<(usize, State)>,
    next: usize,
}

/// Checks one key; returns the number of states visited.
fn check_key(key: &str, events: &[&Event], limits: &CheckLimits) -> Result<usize, Violation> {
    // Reads with unknown outcome tell nothing.
    let mut events: Vec<&Event> = events
        .iter()
        .copied()
        .filter(|e| e.is_determinate() || !matches!(e.op, KeyOp::Read | KeyOp::Exists))
        .collect();
    events.sort_by_key(|e| (e.call, e.ret_or_never()));
    let ids = values_of(&events);
    let mut names = vec![Bytes::new(); ids.len()];
    for (v, &id) in &ids {
        names[id as usize] = v.clone();
    }
    // Values nobody read back: a write of one is indistinguishable from a write of
    // another, so all of them share one id.
    let read_back: HashSet<&Bytes> = events
        .iter()
        .filter_map(|e| match &e.outcome {
            Outcome::Read(Some((v, _))) => Some(v),
            _ => None,
        })
        .collect();
    let unread = u32::try_from(names.len()).unwrap_or(u32::MAX - 1);
    names.push(Bytes::from_static(b"<a value never read back>"));
    let prepared: Vec<Prepared<'_>> = events
        .iter()
        .map(|&event| {
            let written = match &event.op {
                KeyOp::Put(v) | KeyOp::Create(v) | KeyOp::Swap(v, _) if read_back.contains(v) => {
                    ids[v]
                }
                KeyOp::Put(_) | KeyOp::Create(_) | KeyOp::Swap(..) => unread,
                _ => u32::MAX,
            };
            let effect = (!event.is_determinate()).then_some(match &event.op {
                KeyOp::Put(_) => Effect::Put(written),
                KeyOp::Create(_) => Effect::Create(written),
                KeyOp::Swap(_, i) => Effect::Swap(written, *i),
                KeyOp::CompareDelete(i) => Effect::CompareDelete(*i),
                KeyOp::Delete | KeyOp::TreeDelete | KeyOp::Read | KeyOp::Exists => Effect::Delete,
            });
            Prepared {
                event,
                written,
                effect,
                read: match &event.outcome {
                    Outcome::Read(Some((v, _))) => ids.get(v).copied().unwrap_or(u32::MAX),
                    _ => u32::MAX,
                },
            }
        })
        .collect();
    let n = prepared.len();
    let determinate = prepared.iter().filter(|p| p.event.is_determinate()).count();

    // The events that may be linearized next, with their successor states.
    let candidates = |lin: &Bits, state: &State, first: usize| -> Vec<(usize, State)> {
        let mut out = Vec::new();
        let mut min_ret = Time::MAX;
        let mut effects_tried: Vec<Effect> = Vec::new();
        for (i, p) in prepared.iter().enumerate().skip(first) {
            if lin.get(i) {
                continue;
            }
            if p.event.call > min_ret {
                break;
            }
            min_ret = min_ret.min(p.event.ret_or_never());
            if let Some(effect) = p.effect {
                if effects_tried.contains(&effect) {
                    continue;
                }
                effects_tried.push(effect);
            }
            if let Ok(next) = step(state, p, &names) {
                out.push((i, next));
            }
        }
        out
    };
    let first_unlinearized =
        |lin: &Bits, from: usize| (from..n).find(|&i| !lin.get(i)).unwrap_or(n);

    let start = State {
        current: None,
        floor: 0,
    };
    let lin = Bits::new(n);
    let mut seen: HashSet<(Bits, State)> = HashSet::new();
    let mut stack = vec![Frame {
        candidates: candidates(&lin, &start, 0),
        lin,
        done: 0,
        first: 0,
        next: 0,
    }];
    // The deepest point reached, for the report: (done, lin, state, first).
    let mut best: (usize, Bits, State, usize) = (0, Bits::new(n), start, 0);
    let mut visited = 1usize;
    if determinate == 0 {
        return Ok(visited);
    }
    while let Some(frame) = stack.last_mut() {
        if frame.next >= frame.candidates.len() {
            stack.pop();
            continue;
        }
        let (i, next_state) = frame.candidates[frame.next];
        frame.next += 1;
        let lin = frame.lin.with(i);
        if !seen.insert((lin.clone(), next_state)) {
            continue;
        }
        visited += 1;
        if visited > limits.max_states_per_key {
            return Err(Violation {
                key: Some(key.to_owned()),
                rule: format!(
                    "the linearizability search visited {} states without deciding; raise the bound or shorten the run",
                    limits.max_states_per_key
                ),
                history: String::new(),
                undecided: true,
            });
        }
        let done = frame.done + usize::from(prepared[i].event.is_determinate());
        if done == determinate {
            return Ok(visited);
        }
        let first = first_unlinearized(&lin, frame.first);
        if done > best.0 {
            best = (done, lin.clone(), next_state, first);
        }
        stack.push(Frame {
            candidates: candidates(&lin, &next_state, first),
            lin,
            done,
            first,
            next: 0,
        });
    }
    Err(explain(key, &prepared, &names, &best.1, &best.2, best.3))
}

/// Builds the report from the deepest point the search reached: the pending event
/// that had to go next (the one returning first) and why it could not.
fn explain(
    key: &str,
    prepared: &[Prepared<'_>],
    names: &[Bytes],
    lin: &Bits,
    state: &State,
    first: usize,
) -> Violation {
    let pending: Vec<usize> = (first..prepared.len())
        .filter(|&i| !lin.get(i) && prepared[i].event.is_determinate())
        .collect();
    let blocker = pending
        .iter()
        .copied()
        .min_by_key(|&i| prepared[i].event.ret_or_never())
        .unwrap_or(first.min(prepared.len().saturating_sub(1)));
    let rule = match step(state, &prepared[blocker], names) {
        Err(why) => why,
        Ok(_) => format!(
            "no order of the concurrent operations fits the model (state {} before them)",
            describe(state, names)
        ),
    };
    let lo = blocker.saturating_sub(12);
    let hi = (blocker + 6).min(prepared.len());
    let mut history = String::new();
    let _ = writeln!(
        history,
        "  state after the longest linearizable prefix: {}",
        describe(state, names)
    );
    let _ = writeln!(
        history,
        "  operations on this key around the conflict (=> is the one that cannot be placed, * = linearized in that prefix):"
    );
    for (i, p) in prepared.iter().enumerate().take(hi).skip(lo) {
        let mark = if i == blocker {
            "=>"
        } else if lin.get(i) {
            " *"
        } else {
            "  "
        };
        let _ = writeln!(history, "  {mark} {}", p.event);
    }
    Violation {
        key: Some(key.to_owned()),
        rule: format!("not linearizable: {rule}"),
        history,
        undecided: false,
    }
}

/// The time window in which the state `(value, index)` of `key` can have existed:
/// from the invocation of the write that wrote `value`, to the earliest return of an
/// operation that observed or wrote a higher index of the key (that state is newer,
/// so `(value, index)` was gone by then), or of an operation invoked after that
/// write returned that changed the key or saw another state of it. `None` when no
/// write wrote `value`.
fn lifetime(events: &[&Event], value: &Bytes, index: u64) -> Option<(Time, Time)> {
    let writes = || {
        events.iter().filter(
            |e| matches!(&e.op, KeyOp::Put(v) | KeyOp::Create(v) | KeyOp::Swap(v, _) if v == value),
        )
    };
    let start = writes().map(|e| e.call).min()?;
    // Once the write of `value` has returned, any later-invoked operation that
    // changed the key or saw another state proves the state gone by its return.
    let written_by = writes().filter_map(|e| e.ret).max();
    let end = events
        .iter()
        .filter(|e| e.is_determinate())
        .filter(|e| {
            let newer = match &e.outcome {
                Outcome::Read(Some((_, j))) | Outcome::Written(j) => *j > index,
                _ => false,
            };
            let after = written_by.is_some_and(|w| e.call > w)
                && match &e.outcome {
                    Outcome::Read(Some((v, j))) => v != value || *j != index,
                    Outcome::Exists(present) => !present,
                    Outcome::Conflict(c) => *c == Conflict::Absent,
                    Outcome::Read(None)
                    | Outcome::Written(_)
                    | Outcome::Deleted(_)
                    | Outcome::Done => true,
                    Outcome::Unknown => false,
                };
            newer || after
        })
        .filter_map(|e| e.ret)
        .min()
        .unwrap_or(Time::MAX);
    Some((start, end))
}

/// A group of reads that one client operation made at once (a list).
pub struct Snapshot<'a> {
    /// A description of the operation.
    pub label: String,
    /// When it was invoked.
    pub call: Time,
    /// When it returned.
    pub ret: Time,
    /// The `(key, value, index)` of every present key it returned.
    pub present: Vec<(&'a str, Bytes, u64)>,
}

/// Checks multi-key reads as atomic snapshots.
///
/// Exactly what is proven: for each snapshot, there is one instant, within the
/// snapshot's call and return, at which every key it returned present could have
/// held the returned `(value, index)` at once. Each such state is bounded by
/// windows computed from the whole history: from the invocation of the write of
/// that value, to the first return of an operation that saw or wrote a higher index
/// of the key, or that was invoked after that write returned and changed the key or
/// saw it in another state. Absent keys are checked per key only (by
/// [`check_history`] through the per-key reads), not across keys.
pub fn check_snapshots(events: &[Event], snapshots: &[Snapshot<'_>]) -> Result<(), Violation> {
    let mut by_key: HashMap<&str, Vec<&Event>> = HashMap::new();
    for e in events {
        by_key.entry(e.key.as_str()).or_default().push(e);
    }
    for snap in snapshots {
        // (start, key) of the latest-starting state and (end, key) of the earliest end.
        let mut latest_start = (snap.call, None);
        let mut earliest_end = (snap.ret, None);
        for (key, value, index) in &snap.present {
            let Some(key_events) = by_key.get(key) else {
                continue;
            };
            let Some((start, end)) = lifetime(key_events, value, *index) else {
                continue; // a never-written value: the per-key check reports it
            };
            if start > latest_start.0 {
                latest_start = (start, Some((*key, value, *index)));
            }
            if end < earliest_end.0 {
                earliest_end = (end, Some((*key, value, *index)));
            }
        }
        if latest_start.0 > earliest_end.0 {
            let show = |s: Option<(&str, &Bytes, u64)>| match s {
                Some((k, v, i)) => format!("{k:?} = {} @{i}", show_value(v)),
                None => "the list's own interval".to_owned(),
            };
            let rule = format!(
                "a list is not an atomic snapshot: it returned {} which was replaced by a newer version that returned at {}, together with {} which was only written from {} on ({})",
                show(earliest_end.1),
                ms(earliest_end.0),
                show(latest_start.1),
                ms(latest_start.0),
                snap.label
            );
            let mut history = String::new();
            for key in [earliest_end.1, latest_start.1]
                .into_iter()
                .flatten()
                .map(|s| s.0)
            {
                if let Some(key_events) = by_key.get(key) {
                    let _ = writeln!(history, "  operations on {key:?} near the list:");
                    for e in key_events
                        .iter()
                        .filter(|e| {
                            e.call <= snap.ret.saturating_add(1)
                                && e.ret_or_never()
                                    >= earliest_end.0.min(snap.call).saturating_sub(1)
                        })
                        .take(16)
                    {
                        let _ = writeln!(history, "    {e}");
                    }
                }
            }
            return Err(Violation {
                key: None,
                rule,
                history,
                undecided: false,
            });
        }
    }
    Ok(())
}

/// The window in which `key` held `(value, index)`, from the whole history; `None`
/// when no operation wrote `value` to `key`.
pub fn state_lifetime(
    events: &[Event],
    key: &str,
    value: &Bytes,
    index: u64,
) -> Option<(Time, Time)> {
    let key_events: Vec<&Event> = events.iter().filter(|e| e.key == key).collect();
    lifetime(&key_events, value, index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(client: usize, call: u64, ret: Option<u64>, op: KeyOp, outcome: Outcome) -> Event {
        Event {
            key: "k".into(),
            client,
            origin: 0,
            label: String::new(),
            call,
            ret,
            op,
            outcome,
        }
    }
    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }
    fn put(c: usize, t: (u64, u64), v: &'static str, i: u64) -> Event {
        ev(c, t.0, Some(t.1), KeyOp::Put(b(v)), Outcome::Written(i))
    }
    fn read(c: usize, t: (u64, u64), got: Option<(&'static str, u64)>) -> Event {
        ev(
            c,
            t.0,
            Some(t.1),
            KeyOp::Read,
            Outcome::Read(got.map(|(v, i)| (b(v), i))),
        )
    }
    fn swap(c: usize, t: (u64, u64), v: &'static str, exp: u64, out: Outcome) -> Event {
        ev(c, t.0, Some(t.1), KeyOp::Swap(b(v), exp), out)
    }
    fn check(events: &[Event]) -> Result<CheckStats, Violation> {
        check_history(events, &CheckLimits::default())
    }

    #[test]
    fn sequential_history_passes() {
        let h = [
            read(0, (0, 1), None),
            put(0, (2, 3), "x", 5),
            read(1, (4, 5), Some(("x", 5))),
            swap(0, (6, 7), "y", 5, Outcome::Written(9)),
            read(1, (8, 9), Some(("y", 9))),
            ev(1, 10, Some(11), KeyOp::Delete, Outcome::Deleted(true)),
            ev(0, 12, Some(13), KeyOp::Create(b("z")), Outcome::Written(12)),
            ev(
                0,
                14,
                Some(15),
                KeyOp::Create(b("w")),
                Outcome::Conflict(Conflict::Exists),
            ),
        ];
        check(&h).unwrap();
    }

    #[test]
    fn overlapping_operations_may_take_either_order() {
        // Two concurrent puts; readers overlapping both see them in opposite orders
        // that are still consistent with a single order (x then y).
        let h = [
            put(0, (0, 10), "x", 3),
            put(1, (1, 11), "y", 4),
            read(2, (2, 12), Some(("x", 3))),
            read(3, (12, 13), Some(("y", 4))),
        ];
        check(&h).unwrap();
        // The higher index must be the later write, even if it returned first.
        let h = [
            put(0, (0, 10), "x", 4),
            put(1, (1, 5), "y", 3),
            read(2, (11, 12), Some(("x", 4))),
        ];
        check(&h).unwrap();
    }

    #[test]
    fn stale_read_fails() {
        let h = [
            put(0, (0, 1), "x", 1),
            put(0, (2, 3), "y", 2),
            read(1, (4, 5), Some(("x", 1))),
        ];
        let v = check(&h).unwrap_err();
        assert!(!v.undecided);
        assert!(v.rule.contains("read returned \"x\" @1"), "{v}");
        assert!(v.history.contains("=>"), "{v}");
    }

    #[test]
    fn lost_update_fails() {
        // Both read index 1; both swaps "succeed" against index 1.
        let h = [
            put(0, (0, 1), "x", 1),
            swap(0, (2, 6), "a", 1, Outcome::Written(2)),
            swap(1, (3, 7), "b", 1, Outcome::Written(3)),
        ];
        let v = check(&h).unwrap_err();
        assert!(v.rule.contains("swap expecting index 1 succeeded"), "{v}");
    }

    #[test]
    fn cas_double_create_fails() {
        let h = [
            ev(0, 0, Some(5), KeyOp::Create(b("a")), Outcome::Written(1)),
            ev(1, 1, Some(6), KeyOp::Create(b("b")), Outcome::Written(2)),
        ];
        assert!(check(&h).unwrap_err().rule.contains("create succeeded"));
    }

    #[test]
    fn read_of_a_value_never_written_fails() {
        let h = [put(0, (0, 1), "x", 1), read(1, (2, 3), Some(("ghost", 1)))];
        let v = check(&h).unwrap_err();
        assert!(v.rule.contains("no operation ever wrote"), "{v}");
    }

    #[test]
    fn version_going_back_fails() {
        // Across delete and re-create too.
        let h = [
            put(0, (0, 1), "x", 7),
            ev(0, 2, Some(3), KeyOp::Delete, Outcome::Deleted(true)),
            ev(0, 4, Some(5), KeyOp::Create(b("y")), Outcome::Written(3)),
        ];
        let v = check(&h).unwrap_err();
        assert!(v.rule.contains("version went back"), "{v}");
    }

    #[test]
    fn unjustified_conflict_fails() {
        let h = [
            put(0, (0, 1), "x", 1),
            swap(1, (2, 3), "y", 1, Outcome::Conflict(Conflict::Modified)),
        ];
        assert!(check(&h).unwrap_err().rule.contains("failed with Modified"));
        let h = [ev(
            0,
            0,
            Some(1),
            KeyOp::Create(b("a")),
            Outcome::Conflict(Conflict::Exists),
        )];
        assert!(check(&h).is_err());
    }

    #[test]
    fn indeterminate_write_may_have_applied() {
        // The put timed out, yet a later read sees it: it must be assumed applied.
        let h = [
            ev(0, 0, None, KeyOp::Put(b("x")), Outcome::Unknown),
            read(1, (5, 6), Some(("x", 8))),
            swap(1, (7, 8), "y", 8, Outcome::Written(9)),
        ];
        check(&h).unwrap();
    }

    #[test]
    fn indeterminate_write_may_not_have_applied() {
        let h = [
            put(0, (0, 1), "a", 1),
            ev(0, 2, None, KeyOp::Put(b("x")), Outcome::Unknown),
            read(1, (5, 6), Some(("a", 1))),
            read(1, (7, 8), Some(("a", 1))),
        ];
        check(&h).unwrap();
    }

    #[test]
    fn indeterminate_write_cannot_apply_before_its_call_or_twice() {
        // Seen, then the old value again: it would have to apply twice.
        let h = [
            put(0, (0, 1), "a", 1),
            ev(0, 2, None, KeyOp::Put(b("x")), Outcome::Unknown),
            read(1, (3, 4), Some(("x", 5))),
            read(1, (5, 6), Some(("a", 1))),
        ];
        assert!(check(&h).is_err());
        // A read before the invocation cannot see it.
        let h = [
            read(1, (0, 1), Some(("x", 5))),
            ev(0, 2, None, KeyOp::Put(b("x")), Outcome::Unknown),
        ];
        assert!(check(&h).is_err());
    }

    /// A random history of a linearizable store: each operation takes effect at a
    /// random instant inside its interval, results computed at that instant. Some
    /// writes get an unknown outcome (applied or not).
    fn simulated(ops: usize, clients: usize, keys: usize, seed: u64) -> Vec<Event> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n.max(1)
        };
        // (call, effect, ret, client, key, kind, unknown, applied)
        let mut planned = Vec::new();
        for c in 0..clients {
            let mut t = rnd(50);
            for _ in 0..ops / clients {
                let effect = t + 1 + rnd(40);
                let ret = effect + 1 + rnd(40);
                let unknown = rnd(40) == 0;
                let applied = !unknown || rnd(2) == 0;
                planned.push((
                    t,
                    effect,
                    ret,
                    c,
                    rnd(keys as u64) as usize,
                    rnd(7),
                    unknown,
                    applied,
                ));
                t = ret + 1 + rnd(10);
            }
        }
        planned.sort_by_key(|p| p.1);
        let mut store: HashMap<usize, (Bytes, u64)> = HashMap::new();
        let mut versions: HashMap<usize, Vec<u64>> = HashMap::new();
        let mut clock = 0u64;
        let mut out = Vec::new();
        for (n, (call, _, ret, client, key, kind, unknown, applied)) in
            planned.into_iter().enumerate()
        {
            let cur = store.get(&key).cloned();
            let value = Bytes::from(format!("v{n}"));
            let seen = versions.entry(key).or_default();
            let expected = if rnd(2) == 0 {
                cur.as_ref().map_or(1, |c| c.1)
            } else {
                seen.get(rnd(seen.len() as u64) as usize)
                    .copied()
                    .unwrap_or(1)
            };
            let mut write = |store: &mut HashMap<usize, (Bytes, u64)>| {
                clock += 1 + rnd(3);
                if applied {
                    store.insert(key, (value.clone(), clock));
                    versions.entry(key).or_default().push(clock);
                }
                Outcome::Written(clock)
            };
            let (op, outcome) = match kind {
                0 | 1 => (KeyOp::Read, Outcome::Read(cur.clone())),
                2 => (KeyOp::Put(value.clone()), write(&mut store)),
                3 => (
                    KeyOp::Create(value.clone()),
                    if cur.is_some() {
                        Outcome::Conflict(Conflict::Exists)
                    } else {
                        write(&mut store)
                    },
                ),
                4 => (
                    KeyOp::Swap(value.clone(), expected),
                    match &cur {
                        None => Outcome::Conflict(Conflict::Absent),
                        Some((_, i)) if *i != expected => Outcome::Conflict(Conflict::Modified),
                        Some(_) => write(&mut store),
                    },
                ),
                5 => {
                    if applied {
                        store.remove(&key);
                    }
                    (KeyOp::Delete, Outcome::Deleted(cur.is_some()))
                }
                _ => (
                    KeyOp::CompareDelete(expected),
                    match &cur {
                        None => Outcome::Conflict(Conflict::Absent),
                        Some((_, i)) if *i != expected => Outcome::Conflict(Conflict::Modified),
                        Some(_) => {
                            if applied {
                                store.remove(&key);
                            }
                            Outcome::Done
                        }
                    },
                ),
            };
            let unknown = unknown && !matches!(op, KeyOp::Read);
            if !unknown && !applied {
                continue;
            }
            out.push(Event {
                key: format!("k{key}"),
                client,
                origin: n,
                label: String::new(),
                call,
                ret: (!unknown).then_some(ret),
                op,
                outcome: if unknown { Outcome::Unknown } else { outcome },
            });
        }
        out
    }

    #[test]
    fn simulated_linearizable_histories_pass() {
        for seed in 0..50 {
            let h = simulated(400, 4, 3, seed);
            if let Err(v) = check(&h) {
                panic!("seed {seed}: {v}");
            }
        }
    }

    #[test]
    fn simulated_histories_with_one_stale_read_fail() {
        let mut caught = 0;
        for seed in 0..50 {
            let mut h = simulated(400, 4, 3, seed);
            // Make one late read return an older state of its key, written and
            // overwritten long before the read was invoked.
            let Some(r) = h
                .iter()
                .rposition(|e| matches!(e.outcome, Outcome::Read(Some(_))) && e.call > 2000)
            else {
                continue;
            };
            let key = h[r].key.clone();
            let call = h[r].call;
            let Outcome::Read(Some((_, now))) = h[r].outcome.clone() else {
                continue;
            };
            let old = h.iter().find_map(|e| match (&e.op, &e.outcome) {
                (KeyOp::Put(v), Outcome::Written(i))
                    if e.key == key && *i < now && e.ret.is_some_and(|t| t + 200 < call) =>
                {
                    Some((v.clone(), *i))
                }
                _ => None,
            });
            let Some(old) = old else { continue };
            h[r].outcome = Outcome::Read(Some(old));
            assert!(check(&h).is_err(), "seed {seed}: a stale read passed");
            caught += 1;
        }
        assert!(caught > 20, "only {caught} histories could be mutated");
    }

    /// The checker's cost on a 2,000-operation history (printed, not asserted:
    /// `cargo test --features testing --lib checker_time -- --nocapture`).
    #[test]
    fn checker_time_on_2000_operations() {
        let h = simulated(2000, 4, 10, 7);
        let started = std::time::Instant::now();
        let stats = check(&h).unwrap();
        let took = started.elapsed();
        eprintln!(
            "linearizability checker: {} events on {} keys, {} states, {:?} ({:.0} events/s)",
            stats.events,
            stats.keys,
            stats.states,
            took,
            stats.events as f64 / took.as_secs_f64()
        );
        assert!(stats.events > 1900);
    }

    #[test]
    fn many_writes_of_unknown_outcome_are_decided_quickly() {
        // 4 clients; every other write fails with an unknown outcome; the known
        // writes are read back. Unread unknown writes are interchangeable, so the
        // search stays small.
        let mut h = Vec::new();
        let mut index = 0;
        let vals: Vec<&'static str> = (0..400)
            .map(|i| &*Box::leak(format!("v{i}").into_boxed_str()))
            .collect();
        for round in 0..100u64 {
            let t = round * 100;
            for c in 0..4u64 {
                let n = (round * 4 + c) as usize;
                if c % 2 == 0 {
                    h.push(ev(
                        c as usize,
                        t + c,
                        None,
                        KeyOp::Put(b(vals[n])),
                        Outcome::Unknown,
                    ));
                } else {
                    index += 10;
                    h.push(put(c as usize, (t + c, t + 50 + c), vals[n], index));
                }
            }
            h.push(read(
                9,
                (t + 60, t + 61),
                Some((vals[(round * 4 + 3) as usize], index)),
            ));
        }
        let stats = check(&h).unwrap();
        assert!(stats.states < 100_000, "{stats:?}");
        // A conflict that only an unknown write can justify.
        let h = [
            ev(0, 0, None, KeyOp::Put(b("x")), Outcome::Unknown),
            ev(
                1,
                5,
                Some(6),
                KeyOp::Create(b("y")),
                Outcome::Conflict(Conflict::Exists),
            ),
        ];
        check(&h).unwrap();
    }

    #[test]
    fn list_not_a_snapshot_fails() {
        let mut a = put(0, (0, 1), "a1", 1);
        a.key = "a".into();
        let mut a2 = put(0, (2, 3), "a2", 3);
        a2.key = "a".into();
        let mut bb = put(0, (4, 5), "b1", 4);
        bb.key = "b".into();
        let h = vec![a, a2, bb];
        let snap = Snapshot {
            label: "list".into(),
            call: 0,
            ret: 10,
            present: vec![("a", b("a1"), 1), ("b", b("b1"), 4)],
        };
        let v = check_snapshots(&h, &[snap]).unwrap_err();
        assert!(v.rule.contains("not an atomic snapshot"), "{v}");
        let ok = Snapshot {
            label: "list".into(),
            call: 0,
            ret: 10,
            present: vec![("a", b("a2"), 3), ("b", b("b1"), 4)],
        };
        check_snapshots(&h, &[ok]).unwrap();
    }
}
