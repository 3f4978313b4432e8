//! The verdicts: the recorded history turned into events and checked, watches and lock holds checked.

use std::collections::HashMap;
use std::fmt::Write as _;

use bytes::Bytes;

use super::actors::{Hold, WatchLog};
use super::workload::{ClientOp, KEY_SPACE, Record, Reply, full, keys_under, label};
use crate::backend::KvPair;
use crate::testing::linearizability::{self, Event, KeyOp, Outcome, Time};
use crate::testing::rules::Rule;

/// Turns client records into single-key events (plus list snapshots), checking the
/// shape of each reply on the way.
/// A list that returned: (origin, label, call, return).
pub(super) type ListCall = (usize, String, Time, Time);

pub(super) fn to_events(records: &[Record]) -> Result<(Vec<Event>, Vec<ListCall>), String> {
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

pub(super) fn check_locks(holds: &[Hold], faulted: bool) -> Result<(), String> {
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
        // Under a fault a fencing read or write may fail; a conflict never may.
        if let Err(e) = &a.fence
            && (!faulted || e.is_conflict())
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

pub(super) fn check_watches(
    logs: &[WatchLog],
    events: &[Event],
    finals: &HashMap<&'static str, Option<KvPair>>,
    every_write: bool,
) -> Result<usize, (Rule, String)> {
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
                    return Err((
                        Rule::WatchFilter,
                        format!(
                            "a watch of {:?} yielded key {:?}\n{}",
                            log.key,
                            p.key,
                            history()
                        ),
                    ));
                }
                if last.is_some_and(|l| p.last_index <= l) {
                    return Err((
                        Rule::WatchOrder,
                        format!(
                            "a watch went back or repeated: @{} after @{}\n{}",
                            p.last_index,
                            last.unwrap_or(0),
                            history()
                        ),
                    ));
                }
                last = Some(p.last_index);
                match linearizability::state_lifetime(events, log.key, &p.value, p.last_index) {
                    None => {
                        return Err((
                            Rule::WatchUnknown,
                            format!(
                                "a watch yielded {}, a value never written to {:?}\n{}",
                                show(state),
                                log.key,
                                history()
                            ),
                        ));
                    }
                    Some((start, end)) => {
                        if start > *at || end < log.call {
                            return Err((
                                Rule::WatchInWindow,
                                format!(
                                    "a watch yielded {} at {:.3}ms, a state that did not exist between the watch call and then (it existed at most from {:.3}ms to {:.3}ms)\n{}",
                                    show(state),
                                    *at as f64 / 1e6,
                                    start as f64 / 1e6,
                                    end as f64 / 1e6,
                                    history()
                                ),
                            ));
                        }
                    }
                }
            } else if every_write && previous.is_some_and(|p| p.is_none()) {
                return Err((
                    Rule::WatchRepeat,
                    format!("a watch repeated an absent state\n{}", history()),
                ));
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
                            return Err((
                                Rule::WatchEvery,
                                format!(
                                    "a watch skipped a write although the backend claims watch_sees_every_write: {e}\n{}",
                                    history()
                                ),
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
                return Err((Rule::WatchConverges, h));
            }
        }
    }
    Ok(items)
}
