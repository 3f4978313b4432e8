//! State lifetimes across a whole history, and lists checked as atomic snapshots
//! across keys.

use std::collections::HashMap;
use std::fmt::Write as _;

use bytes::Bytes;

use super::history::{Conflict, Event, KeyOp, Outcome, Time, ms, show_value};
use super::violation::{HistoryRule, HistoryViolation};

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
pub struct ListRead<'a> {
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
/// [`check_history`](super::check_history) through the per-key reads), not across keys.
pub fn check_snapshots(
    events: &[Event],
    snapshots: &[ListRead<'_>],
) -> Result<(), HistoryViolation> {
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
            let detail = format!(
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
            return Err(HistoryViolation {
                key: None,
                rule: HistoryRule::NotASnapshot,
                detail,
                history,
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
