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
use std::fmt::Write as _;

use bytes::Bytes;

mod history;
mod snapshots;
#[cfg(test)]
mod tests;
mod violation;

use history::show_value;
pub use history::{Conflict, Event, KeyOp, Outcome, Time};
pub use snapshots::{ListRead, check_snapshots, state_lifetime};
pub use violation::{HistoryRule, HistoryViolation};

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
pub fn check_history(
    events: &[Event],
    limits: &CheckLimits,
) -> Result<CheckStats, HistoryViolation> {
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
/// Why an event cannot apply to a state: the rule and the words.
type Refusal = (HistoryRule, String);

fn step(state: &State, p: &Prepared<'_>, names: &[Bytes]) -> Result<State, Refusal> {
    let mut s = *state;
    let e = p.event;
    let was = || describe(state, names);
    if !e.is_determinate() {
        // Only the "applied" variant: not applying it is "never linearized".
        match &e.op {
            KeyOp::Put(_) | KeyOp::Create(_) | KeyOp::Swap(..) => {
                if matches!(e.op, KeyOp::Create(_)) && s.current.is_some() {
                    return Err((
                        HistoryRule::CreateOnPresent,
                        "a create cannot apply to a present key".into(),
                    ));
                }
                if let KeyOp::Swap(_, expected) = e.op
                    && !index_matches(&mut s, expected)
                {
                    return Err((
                        HistoryRule::SwapOnOtherIndex,
                        "a swap cannot apply: index differs".into(),
                    ));
                }
                s.current = Some((p.written, 0));
            }
            KeyOp::CompareDelete(expected) => {
                if !index_matches(&mut s, *expected) {
                    return Err((
                        HistoryRule::CompareDeleteOnOtherIndex,
                        "a compare-delete cannot apply: index differs".into(),
                    ));
                }
                s.current = None;
            }
            KeyOp::Delete | KeyOp::TreeDelete => s.current = None,
            KeyOp::Read | KeyOp::Exists => {}
        }
        return Ok(s);
    }
    let written = |s: &mut State, index: u64, expected_floor: u64| -> Result<(), Refusal> {
        if index == 0 {
            return Err((
                HistoryRule::ZeroIndex,
                "a write returned index 0 (versions are nonzero)".into(),
            ));
        }
        if index <= expected_floor {
            return Err((
                HistoryRule::VersionWentBack,
                format!(
                    "version went back: the write returned index {index}, but the key already had index {expected_floor} (state before: {})",
                    describe(state, names)
                ),
            ));
        }
        s.current = Some((p.written, index));
        s.floor = index;
        Ok(())
    };
    match (&e.op, &e.outcome) {
        (KeyOp::Read, Outcome::Read(None)) => match s.current {
            None => Ok(s),
            Some(_) => Err((
                HistoryRule::ReadAbsent,
                format!("read returned absent, but the key held {}", was()),
            )),
        },
        (KeyOp::Read, Outcome::Read(Some((v, i)))) => {
            if p.read == u32::MAX {
                return Err((
                    HistoryRule::ReadNeverWritten,
                    format!(
                        "read returned {} @{i}, a value no operation ever wrote to this key",
                        show_value(v)
                    ),
                ));
            }
            let held = s.current.map(|(v, _)| v);
            match held {
                Some(held) if held == p.read && index_matches(&mut s, *i) => Ok(s),
                _ => Err((
                    HistoryRule::StaleRead,
                    format!(
                        "read returned {} @{i}, but the key held {}",
                        show_value(v),
                        was()
                    ),
                )),
            }
        }
        (KeyOp::Exists, Outcome::Exists(b)) => {
            if s.current.is_some() == *b {
                Ok(s)
            } else {
                Err((
                    HistoryRule::ExistsWrong,
                    format!("exists returned {b}, but the key held {}", was()),
                ))
            }
        }
        (KeyOp::Put(_), Outcome::Written(i)) => {
            let floor = s.floor;
            written(&mut s, *i, floor)?;
            Ok(s)
        }
        (KeyOp::Create(_), Outcome::Written(i)) => {
            if s.current.is_some() {
                return Err((
                    HistoryRule::CreateOnPresent,
                    format!("create succeeded (@{i}), but the key held {}", was()),
                ));
            }
            let floor = s.floor;
            written(&mut s, *i, floor)?;
            Ok(s)
        }
        (KeyOp::Create(_), Outcome::Conflict(Conflict::Exists)) => match s.current {
            Some(_) => Ok(s),
            None => Err((
                HistoryRule::UnjustifiedExists,
                "create failed with KeyExists, but the key was absent".into(),
            )),
        },
        (KeyOp::Swap(_, expected), Outcome::Written(i)) => {
            if !index_matches(&mut s, *expected) {
                return Err((
                    HistoryRule::SwapOnOtherIndex,
                    format!(
                        "swap expecting index {expected} succeeded (@{i}), but the key held {}",
                        was()
                    ),
                ));
            }
            let floor = s.floor.max(*expected);
            written(&mut s, *i, floor)?;
            Ok(s)
        }
        (KeyOp::CompareDelete(expected), Outcome::Done) => {
            if !index_matches(&mut s, *expected) {
                return Err((
                    HistoryRule::CompareDeleteOnOtherIndex,
                    format!(
                        "compare_delete expecting index {expected} succeeded, but the key held {}",
                        was()
                    ),
                ));
            }
            s.current = None;
            Ok(s)
        }
        (KeyOp::Swap(_, expected) | KeyOp::CompareDelete(expected), Outcome::Conflict(c)) => {
            match (c, s.current) {
                (Conflict::Absent, None) => Ok(s),
                (Conflict::Modified, Some((_, i))) if i != *expected => Ok(s),
                _ => Err((
                    HistoryRule::UnjustifiedConflict,
                    format!(
                        "conditional operation expecting index {expected} failed with {c:?}, but the key held {}",
                        was()
                    ),
                )),
            }
        }
        (KeyOp::Delete, Outcome::Deleted(b)) => {
            if s.current.is_some() != *b {
                return Err((
                    HistoryRule::DeleteExistedWrong,
                    format!("delete reported existed={b}, but the key held {}", was()),
                ));
            }
            s.current = None;
            Ok(s)
        }
        (KeyOp::TreeDelete, Outcome::Done) => {
            s.current = None;
            Ok(s)
        }
        (op, outcome) => Err((
            HistoryRule::ImpossibleReply,
            format!("{op:?} cannot return {outcome:?}"),
        )),
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
fn check_key(
    key: &str,
    events: &[&Event],
    limits: &CheckLimits,
) -> Result<usize, HistoryViolation> {
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
            return Err(HistoryViolation {
                key: Some(key.to_owned()),
                rule: HistoryRule::Undecided,
                detail: format!(
                    "the linearizability search visited {} states without deciding; raise the bound or shorten the run",
                    limits.max_states_per_key
                ),
                history: String::new(),
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
) -> HistoryViolation {
    let pending: Vec<usize> = (first..prepared.len())
        .filter(|&i| !lin.get(i) && prepared[i].event.is_determinate())
        .collect();
    let blocker = pending
        .iter()
        .copied()
        .min_by_key(|&i| prepared[i].event.ret_or_never())
        .unwrap_or(first.min(prepared.len().saturating_sub(1)));
    let (rule, why) = match step(state, &prepared[blocker], names) {
        Err(refusal) => refusal,
        Ok(_) => (
            HistoryRule::NoOrderFits,
            format!(
                "no order of the concurrent operations fits the model (state {} before them)",
                describe(state, names)
            ),
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
    HistoryViolation {
        key: Some(key.to_owned()),
        rule,
        detail: format!("not linearizable: {why}"),
        history,
    }
}
