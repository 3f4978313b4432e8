//! What every store does through the CLI, run by each store's tests: the key/value
//! commands, the coordination commands, a lock lost while its command runs, and a copy
//! into a redb file.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::{
    Running, WAIT, check, code, eventually, expect, json, run, run_with_input, stderr, stdout,
};
use serde_json::Value;

/// Every key/value command against the store at `url` (a fresh prefix of it).
pub(crate) fn key_value_commands(url: &str) {
    let u = Some(url);
    // A key with a TTL, checked at the end so its expiry overlaps the other checks.
    expect(u, &["put", "ttl/short", "gone soon", "--ttl", "1s"], 0);
    expect(u, &["exists", "ttl/short"], 0);
    let started = Instant::now();

    // put / get, text and binary.
    let first = expect(u, &["put", "app/config", "v1"], 0);
    let first_index: u64 = stdout(&first).trim().parse().expect("put prints the index");
    let got = expect(u, &["get", "app/config"], 0);
    assert_eq!(
        got.stdout, b"v1",
        "get prints the raw value without a newline"
    );
    let got = json(&expect(u, &["get", "/app//config/", "--json"], 0));
    assert_eq!(got["key"], "app/config");
    assert_eq!(got["value"], "v1");
    assert_eq!(got["encoding"], "utf8");
    assert_eq!(got["index"], first_index);
    let binary: Vec<u8> = (0..=255u8).rev().collect();
    let put = run_with_input(u, &["put", "app/blob"], &binary);
    check(&put, &["put", "app/blob"], 0);
    assert_eq!(expect(u, &["get", "app/blob"], 0).stdout, binary);
    assert_eq!(
        json(&expect(u, &["get", "app/blob", "--json"], 0))["encoding"],
        "base64"
    );
    let missing = expect(u, &["get", "app/missing"], 1);
    assert!(
        stderr(&missing).contains("not found"),
        "{}",
        stderr(&missing)
    );

    // Create-only and compare-and-swap.
    expect(u, &["put", "app/config", "v0", "--create"], 1);
    expect(u, &["put", "app/new", "n", "--create"], 0);
    let stale = (first_index + 1000).to_string();
    let conflict = expect(u, &["put", "app/config", "v2", "--if-index", &stale], 1);
    assert!(
        stderr(&conflict).contains("modified"),
        "{}",
        stderr(&conflict)
    );
    let second = expect(
        u,
        &[
            "put",
            "app/config",
            "v2",
            "--if-index",
            &first_index.to_string(),
        ],
        0,
    );
    let second_index: u64 = stdout(&second).trim().parse().expect("index");
    assert!(second_index > first_index);
    assert_eq!(expect(u, &["get", "app/config"], 0).stdout, b"v2");

    // exists.
    assert_eq!(
        stdout(&expect(u, &["exists", "app/config"], 0)).trim(),
        "true"
    );
    assert_eq!(
        stdout(&expect(u, &["exists", "app/nope"], 1)).trim(),
        "false"
    );
    assert_eq!(
        json(&expect(u, &["exists", "app/nope", "--json"], 1))["exists"],
        false
    );

    // ls, plain, long and JSON; a sibling prefix is not listed.
    expect(u, &["put", "apple", "not below app"], 0);
    let listed = stdout(&expect(u, &["ls", "app"], 0));
    assert_eq!(listed, "app/blob\napp/config\napp/new\n");
    let long = stdout(&expect(u, &["ls", "-l", "app"], 0));
    let config_line = long
        .lines()
        .find(|line| line.starts_with("app/config"))
        .expect("app/config in ls -l");
    assert!(
        config_line.contains(&second_index.to_string()),
        "{config_line}"
    );
    assert!(config_line.ends_with(" v2"), "{config_line}");
    assert!(long.contains("<256 bytes, binary>"), "{long}");
    let items = json(&expect(u, &["ls", "app", "--json"], 0));
    let items = items.as_array().expect("array");
    assert_eq!(items.len(), 3);
    assert_eq!(items[1]["key"], "app/config");
    assert_eq!(items[1]["size"], 2);

    // export, then import into an emptied tree: the same bytes come back.
    let exported = expect(u, &["export", "app"], 0);
    let lines: Vec<Value> = stdout(&exported)
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["key"], "app/blob");
    assert_eq!(lines[0]["encoding"], "base64");
    expect(u, &["rm", "-r", "app"], 0);
    assert_eq!(stdout(&expect(u, &["ls", "app"], 0)), "");
    let dry = run_with_input(u, &["import", "--dry-run"], &exported.stdout);
    check(&dry, &["import", "--dry-run"], 0);
    assert_eq!(stdout(&dry).lines().count(), 3, "{}", stdout(&dry));
    assert_eq!(
        stdout(&expect(u, &["ls", "app"], 0)),
        "",
        "a dry run writes nothing"
    );
    let imported = run_with_input(u, &["import"], &exported.stdout);
    check(&imported, &["import"], 0);
    assert_eq!(expect(u, &["get", "app/blob"], 0).stdout, binary);
    assert_eq!(expect(u, &["get", "app/config"], 0).stdout, b"v2");
    // A bad line anywhere: nothing is written.
    let bad = b"{\"key\":\"imp/a\",\"value\":\"1\"}\n{\"key\":\"imp/b\",\"value\":\"!!\",\"encoding\":\"base64\"}\n";
    let refused = run_with_input(u, &["import"], bad);
    check(&refused, &["import"], 2);
    assert!(stderr(&refused).contains("line 2"), "{}", stderr(&refused));
    expect(u, &["exists", "imp/a"], 1);

    // rm: conditional, plain, missing, recursive.
    let index = json(&expect(u, &["get", "app/new", "--json"], 0))["index"]
        .as_u64()
        .expect("index");
    expect(
        u,
        &["rm", "app/new", "--if-index", &(index + 1000).to_string()],
        1,
    );
    expect(u, &["rm", "app/new", "--if-index", &index.to_string()], 0);
    expect(u, &["rm", "app/new"], 1);
    expect(u, &["rm", "app/config"], 0);
    expect(u, &["exists", "app/config"], 1);
    expect(u, &["rm", "-r", "app"], 0);
    expect(u, &["exists", "app/blob"], 1);
    expect(u, &["exists", "apple"], 0);

    // The TTL key expires (bounded by the slowest backend's expiry: Consul's sessions).
    eventually("the TTL key to expire", WAIT, || {
        code(&run(u, &["exists", "ttl/short"])) == 1
    });
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "expired before its TTL"
    );
}

/// `watch`, `watch -r`, `lock` and `elect`/`leader` against a server store.
pub(crate) fn coordination_commands(url: &str) {
    let u = Some(url);
    // watch KEY: the current state first, then each change; Ctrl-C exits 0.
    expect(u, &["put", "w/key", "one"], 0);
    let watch = Running::start(url, &["watch", "w/key", "--json"]);
    let first: Value = serde_json::from_str(&watch.line("the current state")).expect("JSON");
    assert_eq!(first["event"], "put");
    assert_eq!(first["value"], "one");
    expect(u, &["put", "w/key", "two"], 0);
    let changed = watch.line_until("the change", |line| line.contains("two"));
    assert!(changed.contains("\"event\":\"put\""), "{changed}");
    expect(u, &["rm", "w/key"], 0);
    watch.line_until("the delete", |line| line.contains("\"delete\""));
    watch.signal(libc::SIGINT);
    let (status, err) = watch.wait();
    // A key missing at the start is shown as absent, then its creation.
    let fresh = Running::start(url, &["watch", "w/fresh"]);
    assert_eq!(fresh.line("the current state"), "absent w/fresh");
    expect(u, &["put", "w/fresh", "hello"], 0);
    let created = fresh.line("the creation");
    assert!(
        created.starts_with("put w/fresh index=") && created.ends_with(" hello"),
        "{created}"
    );
    fresh.signal(libc::SIGINT);
    assert_eq!(fresh.wait().0, 0);
    assert_eq!(status, 0, "Ctrl-C ends watch cleanly: {err}");
    assert!(!err.contains("panicked"), "{err}");

    // watch -r DIR: one line per changed key, human format.
    expect(u, &["put", "wt/a", "1"], 0);
    let tree = Running::start(url, &["watch", "-r", "wt"]);
    assert_eq!(tree.line("the current tree").split(' ').next(), Some("put"));
    expect(u, &["put", "wt/b", "2"], 0);
    let added = tree.line_until("wt/b", |line| line.contains("wt/b"));
    assert!(added.starts_with("put wt/b"), "{added}");
    expect(u, &["rm", "wt/a"], 0);
    assert_eq!(
        tree.line_until("wt/a deleted", |line| line.contains("wt/a")),
        "delete wt/a"
    );
    tree.signal(libc::SIGINT);
    assert_eq!(tree.wait().0, 0);

    // lock -- COMMAND: exits with the command's status, holds the lock meanwhile.
    expect(u, &["lock", "locks/job", "--", "sh", "-c", "exit 7"], 7);
    let holder = Running::start(
        url,
        &[
            "lock",
            "locks/held",
            "--",
            "sh",
            "-c",
            "echo running; exec sleep 30",
        ],
    );
    assert_eq!(holder.line("the command to start"), "running");
    let busy = expect(u, &["lock", "locks/held", "--try", "--", "true"], 1);
    assert!(
        stderr(&busy).contains("held by someone else"),
        "{}",
        stderr(&busy)
    );
    assert!(stdout(&expect(u, &["get", "locks/held"], 0)).starts_with("kvkit pid"));
    // Interrupted while waiting for the held lock: exit 130, the command never ran.
    let queued = Running::start(url, &["lock", "locks/held", "--", "echo", "ran"]);
    tokio::task::block_in_place(|| std::thread::sleep(Duration::from_millis(500)));
    queued.signal(libc::SIGINT);
    assert!(
        queued.lines.try_recv().is_err(),
        "the command ran without the lock"
    );
    assert_eq!(queued.wait().0, 130);
    // Interrupting kvkit stops the command (SIGTERM) and releases the lock.
    holder.signal(libc::SIGTERM);
    let (status, _) = holder.wait();
    assert_eq!(
        status,
        128 + libc::SIGTERM,
        "the command's status: killed by SIGTERM"
    );
    expect(u, &["lock", "locks/held", "--try", "--", "true"], 0);

    // elect / leader.
    expect(u, &["leader", "elections/web"], 1);
    let elected = Running::start(
        url,
        &[
            "elect",
            "elections/web",
            "node-1",
            "--",
            "sh",
            "-c",
            "echo leading; exec sleep 30",
        ],
    );
    assert_eq!(elected.line("the command to run once elected"), "leading");
    assert_eq!(
        stdout(&expect(u, &["leader", "elections/web"], 0)).trim(),
        "node-1"
    );
    let leader = json(&expect(u, &["leader", "elections/web", "--json"], 0));
    assert_eq!(leader["leader"], "node-1");
    // A second candidate does not run its command while node-1 leads.
    let waiting = Running::start(
        url,
        &[
            "elect",
            "elections/web",
            "node-2",
            "--",
            "sh",
            "-c",
            "echo second; exit 4",
        ],
    );
    tokio::task::block_in_place(|| std::thread::sleep(Duration::from_secs(1)));
    assert!(
        waiting.lines.try_recv().is_err(),
        "node-2 ran while node-1 led"
    );
    elected.signal(libc::SIGTERM);
    assert_eq!(elected.wait().0, 128 + libc::SIGTERM);
    // node-1 resigned: node-2 is elected and runs its command, whose status it returns.
    assert_eq!(waiting.line("node-2 to lead"), "second");
    assert_eq!(waiting.wait().0, 4);
    eventually("the election to have no leader", WAIT, || {
        code(&run(u, &["leader", "elections/web"])) == 1
    });
}

/// A command runs under a lock; another client deletes the lock key: the command gets
/// SIGTERM (or SIGKILL after the grace period) and kvkit exits 6.
pub(crate) fn lock_lost(url: &str, scratch: &Path) {
    let u = Some(url);
    let marker = scratch.join("terminated");
    let script = format!(
        "trap 'echo term > {}; kill $!; exit 0' TERM; echo running; sleep 60 & wait",
        marker.display()
    );
    let held = Running::start(url, &["lock", "locks/lost", "--", "sh", "-c", &script]);
    assert_eq!(held.line("the command to start"), "running");
    expect(u, &["rm", "locks/lost"], 0);
    let (status, err) = held.wait();
    assert_eq!(status, 6, "lock lost: {err}");
    assert!(err.contains("lost the lock"), "{err}");
    assert!(marker.exists(), "the command got SIGTERM");

    // A command that ignores SIGTERM is killed after the grace period.
    let stubborn = Running::start(
        url,
        &[
            "lock",
            "locks/lost",
            "--grace",
            "1s",
            "--",
            "sh",
            "-c",
            "trap '' TERM; echo running; exec sleep 60",
        ],
    );
    assert_eq!(stubborn.line("the command to start"), "running");
    let started = Instant::now();
    expect(u, &["put", "locks/lost", "taken over"], 0);
    let (status, err) = stubborn.wait();
    assert_eq!(status, 6, "lock lost: {err}");
    assert!(err.contains("SIGKILL"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "killed, not waited out"
    );

    // Leadership lost while the command runs: the command is stopped, exit 6.
    let leading = Running::start(
        url,
        &[
            "elect",
            "elections/lost",
            "node-9",
            "--",
            "sh",
            "-c",
            "echo leading; exec sleep 60",
        ],
    );
    assert_eq!(leading.line("the command to start"), "leading");
    expect(u, &["rm", "elections/lost"], 0);
    let (status, err) = leading.wait();
    assert_eq!(status, 6, "leadership lost: {err}");
    assert!(err.contains("lost the leadership"), "{err}");
}

/// `copy` from `src` into a fresh redb file; the copy's content equals the source's.
pub(crate) fn copy_to_redb(src: &str, scratch: &Path) {
    expect(Some(src), &["put", "cp/a", "1"], 0);
    expect(Some(src), &["put", "cp/b/c", "2"], 0);
    let dst = format!("redb://{}", scratch.join("copy.redb").display());
    let report = json(&expect(None, &["copy", src, &dst, "cp", "--json"], 0));
    assert_eq!(report["copied"], 2);
    assert_eq!(report["failed"], 0);
    assert_eq!(expect(Some(&dst), &["get", "cp/b/c"], 0).stdout, b"2");
    let again = json(&expect(None, &["copy", src, &dst, "cp", "--json"], 0));
    assert_eq!(
        (again["copied"].as_u64(), again["unchanged"].as_u64()),
        (Some(0), Some(2))
    );
}
