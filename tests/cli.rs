//! The `kvkit` binary, run as a user runs it, against a redb file, real etcd and
//! ZooKeeper servers and the Consul emulator: every command, the exit codes, a
//! ZooKeeper-to-etcd `copy` of 1,000 keys repeated without harm, a `lock -- COMMAND`
//! whose lock is lost while the command runs, and a table of bad inputs.
//!
//! Blocking process calls run under `block_in_place` so the in-process Consul emulator
//! keeps being served by the test's runtime.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kvkit::testing::consul_emulator::ConsulEmulator;
use kvkit::testing::etcd_server::EtcdServer;
use kvkit::testing::zookeeper_server::ZkServer;
use serde_json::Value;

/// The longest any single wait in these tests may take (the box is loaded).
const WAIT: Duration = Duration::from_secs(60);

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_kvkit")
}

/// `kvkit --store URL ARGS...`, without KVKIT_STORE from the environment.
fn command(url: Option<&str>, args: &[&str]) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::new(binary());
    cmd.env_remove("KVKIT_STORE").env_remove("RUST_BACKTRACE");
    if let Some(url) = url {
        cmd.args(["--store", url]);
    }
    cmd.args(args).timeout(WAIT);
    cmd
}

/// Runs kvkit and returns its output.
fn run(url: Option<&str>, args: &[&str]) -> Output {
    run_with_input(url, args, b"")
}

fn run_with_input(url: Option<&str>, args: &[&str], input: &[u8]) -> Output {
    let mut cmd = command(url, args);
    cmd.write_stdin(input.to_vec());
    tokio::task::block_in_place(|| cmd.output()).expect("run kvkit")
}

fn code(output: &Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs kvkit and checks its exit code, showing its output when it differs.
#[track_caller]
fn expect(url: Option<&str>, args: &[&str], expected: i32) -> Output {
    let output = run(url, args);
    check(&output, args, expected);
    output
}

#[track_caller]
fn check(output: &Output, args: &[&str], expected: i32) {
    assert_eq!(
        code(output),
        expected,
        "kvkit {args:?}: exit {:?}\nstdout: {}\nstderr: {}",
        output.status,
        stdout(output),
        stderr(output)
    );
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(output)))
}

/// Polls `done` until it holds, or panics after `limit`.
fn eventually(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return;
        }
        tokio::task::block_in_place(|| std::thread::sleep(Duration::from_millis(100)));
    }
    panic!("{what} did not happen within {limit:?}");
}

/// A long-running kvkit (watch, lock, elect) whose stdout lines are collected.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    errors: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Running {
    fn start(url: &str, args: &[&str]) -> Running {
        let mut child = std::process::Command::new(binary())
            .env_remove("KVKIT_STORE")
            .args(["--store", url])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kvkit");
        let (sender, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        // stderr is collected by a thread too: a grandchild left running by a killed
        // command may keep the pipe open long after kvkit exits.
        let errors = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let err = child.stderr.take().expect("stderr");
        let collected = errors.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut text = collected.lock().expect("stderr buffer");
                text.push_str(&line);
                text.push('\n');
            }
        });
        Running {
            child,
            lines,
            errors,
        }
    }

    /// The next stdout line.
    fn line(&self, what: &str) -> String {
        tokio::task::block_in_place(|| self.lines.recv_timeout(WAIT))
            .unwrap_or_else(|e| panic!("no line for {what}: {e}"))
    }

    /// Reads lines until one satisfies `done`.
    fn line_until(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = tokio::task::block_in_place(|| self.lines.recv_timeout(left))
                .unwrap_or_else(|e| panic!("no line for {what}: {e}"));
            if done(&line) {
                return line;
            }
        }
    }

    fn signal(&self, signal: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// Waits for the exit; returns the exit code and stderr.
    fn wait(mut self) -> (i32, String) {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("kvkit did not exit within {WAIT:?}");
            }
            tokio::task::block_in_place(|| std::thread::sleep(Duration::from_millis(50)));
        };
        // kvkit wrote its last words before exiting; give the reader a moment.
        tokio::task::block_in_place(|| std::thread::sleep(Duration::from_millis(300)));
        let err = self.errors.lock().expect("stderr buffer").clone();
        (status.code().unwrap_or(-1), err)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every key/value command against the store at `url` (a fresh prefix of it).
fn key_value_commands(url: &str) {
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
fn coordination_commands(url: &str) {
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
fn lock_lost(url: &str, scratch: &Path) {
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
fn copy_to_redb(src: &str, scratch: &Path) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redb_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("redb://{}", dir.path().join("data.redb").display());
    key_value_commands(&url);
    // Commands that need another process to share the store are refused, saying why.
    for args in [
        &["watch", "k"][..],
        &["lock", "k", "--", "true"],
        &["elect", "e", "id", "--", "true"],
        &["leader", "e"],
    ] {
        let refused = expect(Some(&url), args, 2);
        assert!(
            stderr(&refused).contains("one process at a time"),
            "{}",
            stderr(&refused)
        );
    }
    // --config with a TOML file, at the top level and under [store]; JSON too.
    let toml_path = dir.path().join("store.toml");
    let other = dir.path().join("other.redb");
    std::fs::write(
        &toml_path,
        format!(
            "[store]\nbackend = \"redb\"\npath = {:?}\n",
            other.display().to_string()
        ),
    )
    .expect("write config");
    let config = toml_path.to_str().expect("utf8 path");
    expect(None, &["--config", config, "put", "c", "from config"], 0);
    let json_path = dir.path().join("store.json");
    std::fs::write(
        &json_path,
        format!(
            "{{\"backend\":\"redb\",\"path\":{:?}}}",
            other.display().to_string()
        ),
    )
    .expect("write config");
    let got = expect(
        None,
        &["--config", json_path.to_str().expect("utf8"), "get", "c"],
        0,
    );
    assert_eq!(got.stdout, b"from config");
    // KVKIT_STORE.
    let mut cmd = command(None, &["get", "c"]);
    cmd.env("KVKIT_STORE", format!("redb://{}", other.display()));
    cmd.assert().code(0).stdout("from config");
    // --config wins over KVKIT_STORE (which names an empty store here).
    let mut cmd = command(None, &["--config", config, "get", "c"]);
    cmd.env(
        "KVKIT_STORE",
        format!("redb://{}", dir.path().join("empty.redb").display()),
    );
    cmd.assert().code(0).stdout("from config");
    // memory:// is refused where pointless, allowed for import.
    let refused = expect(Some("memory://"), &["get", "k"], 2);
    assert!(
        stderr(&refused).contains("memory://"),
        "{}",
        stderr(&refused)
    );
    let check = run_with_input(
        Some("memory://"),
        &["import"],
        b"{\"key\":\"a\",\"value\":\"1\"}\n",
    );
    check_ok(&check);
}

#[track_caller]
fn check_ok(output: &Output) {
    check(output, &[], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_server() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let scratch = tempfile::tempdir().expect("temp dir");
    let host = server.endpoint().replace("http://", "");
    let url = format!("etcd://{host}/cli-test");
    key_value_commands(&url);
    coordination_commands(&url);
    lock_lost(&url, scratch.path());
    copy_to_redb(&url, scratch.path());
    // The prefix isolates: another prefix on the same server sees nothing.
    assert_eq!(
        stdout(&expect(Some(&format!("etcd://{host}/other")), &["ls"], 0)),
        ""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consul_emulator() {
    let emulator = ConsulEmulator::start_default()
        .await
        .expect("start the Consul emulator");
    let scratch = tempfile::tempdir().expect("temp dir");
    let url = format!("consul://{}/cli-test", emulator.addr());
    key_value_commands(&url);
    coordination_commands(&url);
    copy_to_redb(&url, scratch.path());
}

/// ZooKeeper: every command, then a copy of 1,000 keys to etcd, repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zookeeper_server_and_copy_to_etcd() {
    let Some(zk) = ZkServer::start() else {
        return;
    };
    let scratch = tempfile::tempdir().expect("temp dir");
    let zk_url = format!("zk://{}/cli-test", zk.connect_string());
    key_value_commands(&zk_url);
    coordination_commands(&zk_url);
    copy_to_redb(&zk_url, scratch.path());

    let Some(etcd) = EtcdServer::start().await else {
        return;
    };
    let etcd_url = format!("etcd://{}/migrated", etcd.endpoint().replace("http://", ""));
    // 1,000 keys, some binary, imported into ZooKeeper.
    let mut input = Vec::new();
    for i in 0..1000 {
        if i % 10 == 0 {
            writeln!(
                input,
                "{{\"key\":\"data/bin/{i:04}\",\"value\":\"AAEC/w==\",\"encoding\":\"base64\"}}"
            )
        } else {
            writeln!(
                input,
                "{{\"key\":\"data/k{:02}/{i:04}\",\"value\":\"value {i}\"}}",
                i % 7
            )
        }
        .expect("write");
    }
    check(
        &run_with_input(Some(&zk_url), &["import"], &input),
        &["import"],
        0,
    );

    let first = json(&expect(
        None,
        &["copy", &zk_url, &etcd_url, "data", "--json"],
        0,
    ));
    assert_eq!(
        (
            first["copied"].as_u64(),
            first["unchanged"].as_u64(),
            first["failed"].as_u64()
        ),
        (Some(1000), Some(0), Some(0)),
        "{first}"
    );
    let source = stdout(&expect(Some(&zk_url), &["export", "data"], 0));
    let copied = stdout(&expect(Some(&etcd_url), &["export", "data"], 0));
    assert_eq!(keys_and_values(&source), keys_and_values(&copied));
    assert_eq!(keys_and_values(&copied).len(), 1000);

    // Repeating the copy changes nothing; after one change it copies just that key.
    let second = json(&expect(
        None,
        &["copy", &zk_url, &etcd_url, "data", "--json"],
        0,
    ));
    assert_eq!(
        (
            second["copied"].as_u64(),
            second["unchanged"].as_u64(),
            second["failed"].as_u64()
        ),
        (Some(0), Some(1000), Some(0)),
        "{second}"
    );
    let untouched = json(&expect(
        Some(&etcd_url),
        &["get", "data/k01/0001", "--json"],
        0,
    ));
    expect(Some(&zk_url), &["put", "data/k01/0008", "changed"], 0);
    let third = json(&expect(
        None,
        &["copy", &zk_url, &etcd_url, "data", "--json"],
        0,
    ));
    assert_eq!(
        (third["copied"].as_u64(), third["unchanged"].as_u64()),
        (Some(1), Some(999))
    );
    assert_eq!(
        expect(Some(&etcd_url), &["get", "data/k01/0008"], 0).stdout,
        b"changed"
    );
    let after = json(&expect(
        Some(&etcd_url),
        &["get", "data/k01/0001", "--json"],
        0,
    ));
    assert_eq!(
        after["index"], untouched["index"],
        "an unchanged key is not rewritten"
    );
    // The destination unreachable: exit 3 and a message saying what to do.
    let down = expect(
        None,
        &[
            "copy",
            &zk_url,
            "etcd://127.0.0.1:1/x?connect_timeout=1s",
            "data",
        ],
        3,
    );
    assert!(stderr(&down).contains("unavailable"), "{}", stderr(&down));
}

/// (key, value, encoding) of every line of an export.
fn keys_and_values(export: &str) -> Vec<(String, String, String)> {
    export
        .lines()
        .map(|line| {
            let item: Value = serde_json::from_str(line).expect("JSON line");
            (
                item["key"].as_str().expect("key").to_owned(),
                item["value"].as_str().expect("value").to_owned(),
                item["encoding"].as_str().expect("encoding").to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_one_line_and_exit_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("redb://{}", dir.path().join("bad.redb").display());
    let bad_config = dir.path().join("bad.toml");
    std::fs::write(&bad_config, "backend = \"etcd\"\nendpointz = [\"x:1\"]\n").expect("write");
    let bad_config = bad_config.to_str().expect("utf8").to_owned();
    let u = Some(url.as_str());
    let table: &[(Option<&str>, &[&str], &str)] = &[
        (u, &["frobnicate"], "unrecognized subcommand"),
        (u, &[], "missing a command"),
        (u, &["get"], "<KEY>"),
        (u, &["put"], "<KEY>"),
        (u, &["put", "k", "v", "--ttl"], "--ttl"),
        (
            u,
            &["put", "k", "v", "--ttl", "3parsecs"],
            "invalid duration",
        ),
        (u, &["put", "k", "v", "--ttl", "-5s"], "-5"),
        (u, &["put", "k", "v", "--if-index", "abc"], "--if-index"),
        (
            u,
            &["put", "k", "v", "--create", "--if-index", "1"],
            "cannot be used with",
        ),
        (
            u,
            &["rm", "-r", "k", "--if-index", "1"],
            "cannot be used with",
        ),
        (u, &["get", "a/../b"], "invalid key"),
        (u, &["put", "a\u{1}b", "v"], "invalid key"),
        (u, &["get", ""], "invalid key"),
        (u, &["rm", "-r", ""], "invalid key"),
        (u, &["ls", "a/./b"], "invalid key"),
        (u, &["lock", "k"], "COMMAND"),
        (
            u,
            &["lock", "k", "--grace", "soon", "--", "true"],
            "--grace",
        ),
        (u, &["elect", "e", "--", "true"], "<ID>"),
        (u, &["import", "--concurrency", "0"], "--concurrency"),
        (Some("foo://x"), &["get", "k"], "foo"),
        (Some("etcd://"), &["get", "k"], ""),
        (Some("not a url"), &["get", "k"], ""),
        (Some("memory://"), &["ls"], "memory://"),
        (None, &["get", "k"], "no store given"),
        (
            None,
            &["--config", "/nonexistent/kvkit.toml", "get", "k"],
            "cannot read",
        ),
        (None, &["--config", &bad_config, "get", "k"], "endpointz"),
        (None, &["copy", "bogus://", &url], "bogus"),
        (u, &["import"], "line 1"),
    ];
    for (store, args, needle) in table {
        let input: &[u8] = if args == &["import"] {
            b"not json\n"
        } else {
            b""
        };
        let output = run_with_input(*store, args, input);
        let err = stderr(&output);
        assert_eq!(code(&output), 2, "kvkit {store:?} {args:?}: {err}");
        assert!(
            err.contains(needle),
            "kvkit {store:?} {args:?}: {err:?} lacks {needle:?}"
        );
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "kvkit {store:?} {args:?}: not one line: {err:?}"
        );
        assert!(lines[0].starts_with("kvkit: "), "{err:?}");
        assert!(output.stdout.is_empty(), "{:?}", stdout(&output));
    }
}

#[test]
fn help_is_complete() {
    let help = command(None, &["--help"])
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let help = String::from_utf8(help).expect("utf8");
    for needle in [
        "get",
        "put",
        "rm",
        "ls",
        "exists",
        "watch",
        "lock",
        "elect",
        "leader",
        "export",
        "import",
        "copy",
        "--store",
        "--config",
        "KVKIT_STORE",
        "Exit status",
        "etcd://",
        "zk://",
        "consul://",
        "redb://",
        "memory://",
        "6  `lock`",
    ] {
        assert!(
            help.contains(needle),
            "kvkit --help lacks {needle:?}:\n{help}"
        );
    }
    for (sub, needles) in [
        ("get", &["--json", "raw" as &str][..]),
        ("put", &["--ttl", "--create", "--if-index", "stdin"]),
        ("rm", &["-r", "--if-index"]),
        ("ls", &["-l", "--json"]),
        ("exists", &["--json"]),
        ("watch", &["-r", "--json"]),
        (
            "lock",
            &[
                "--grace", "--ttl", "--try", "SIGTERM", "SIGKILL", "status 6",
            ],
        ),
        ("elect", &["--grace", "<ID>", "status 6"]),
        ("leader", &["--json"]),
        ("export", &["JSON lines", "base64", "ttl"]),
        ("import", &["--dry-run", "stdin"]),
        ("copy", &["SRC_URL", "DST_URL", "--concurrency", "report"]),
    ] {
        let output = command(None, &[sub, "--help"])
            .assert()
            .code(0)
            .get_output()
            .stdout
            .clone();
        let text = String::from_utf8(output).expect("utf8");
        for needle in needles {
            assert!(
                text.contains(needle),
                "kvkit {sub} --help lacks {needle:?}:\n{text}"
            );
        }
    }
    command(None, &["--version"]).assert().code(0);
}

/// `kvkit export | head -1`: the closed pipe ends the command quietly, with status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_the_command_quietly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("redb://{}", dir.path().join("data.redb").display());
    // Far more output than a pipe buffers (64 KiB on Linux).
    let value = "v".repeat(200);
    let input: String = (0..2000)
        .map(|i| format!("{{\"key\":\"k{i:05}\",\"value\":\"{value}\"}}\n"))
        .collect();
    check_ok(&run_with_input(Some(&url), &["import"], input.as_bytes()));
    let mut child = std::process::Command::new(binary())
        .env_remove("KVKIT_STORE")
        .args(["--store", &url, "export"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvkit");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("read a line");
    assert!(first.contains("k00000"), "{first}");
    // The reader is gone now: the next writes fail with EPIPE.
    let output = tokio::task::block_in_place(|| child.wait_with_output()).expect("wait");
    assert_eq!(code(&output), 0, "stderr: {}", stderr(&output));
    assert_eq!(stderr(&output), "");
}
