//! The `kvkit` binary, run as a user runs it, against a redb file, real etcd and
//! ZooKeeper servers and the Consul emulator: every command, the exit codes, a
//! ZooKeeper-to-etcd `copy` of 1,000 keys repeated without harm, a `lock -- COMMAND`
//! whose lock is lost while the command runs, and a table of bad inputs.
//!
//! Blocking process calls run under `block_in_place` so the in-process Consul emulator
//! keeps being served by the test's runtime.

use std::io::{BufRead, BufReader};
use std::process::{Child, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

mod consul;
mod etcd;
mod redb;
mod scenarios;
mod usage;
mod zookeeper;

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

#[track_caller]
fn check_ok(output: &Output) {
    check(output, &[], 0);
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
