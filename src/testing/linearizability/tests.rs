//! Unit tests of the linearizability checker: hand-written and simulated histories.

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
fn check(events: &[Event]) -> Result<CheckStats, HistoryViolation> {
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
    assert!(!v.undecided());
    assert!(v.rule == HistoryRule::StaleRead, "{v}");
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
    assert!(v.rule == HistoryRule::SwapOnOtherIndex, "{v}");
}

#[test]
fn cas_double_create_fails() {
    let h = [
        ev(0, 0, Some(5), KeyOp::Create(b("a")), Outcome::Written(1)),
        ev(1, 1, Some(6), KeyOp::Create(b("b")), Outcome::Written(2)),
    ];
    assert!(check(&h).unwrap_err().rule == HistoryRule::CreateOnPresent);
}

#[test]
fn read_of_a_value_never_written_fails() {
    let h = [put(0, (0, 1), "x", 1), read(1, (2, 3), Some(("ghost", 1)))];
    let v = check(&h).unwrap_err();
    assert!(v.rule == HistoryRule::ReadNeverWritten, "{v}");
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
    assert!(v.rule == HistoryRule::VersionWentBack, "{v}");
}

#[test]
fn unjustified_conflict_fails() {
    let h = [
        put(0, (0, 1), "x", 1),
        swap(1, (2, 3), "y", 1, Outcome::Conflict(Conflict::Modified)),
    ];
    assert!(check(&h).unwrap_err().rule == HistoryRule::UnjustifiedConflict);
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
    for (n, (call, _, ret, client, key, kind, unknown, applied)) in planned.into_iter().enumerate()
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
    let snap = ListRead {
        label: "list".into(),
        call: 0,
        ret: 10,
        present: vec![("a", b("a1"), 1), ("b", b("b1"), 4)],
    };
    let v = check_snapshots(&h, &[snap]).unwrap_err();
    assert!(v.rule == HistoryRule::NotASnapshot, "{v}");
    let ok = ListRead {
        label: "list".into(),
        call: 0,
        ret: 10,
        present: vec![("a", b("a2"), 3), ("b", b("b1"), 4)],
    };
    check_snapshots(&h, &[ok]).unwrap();
}
