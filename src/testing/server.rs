//! Helpers for tests that start real server processes (etcd, ZooKeeper) on loopback.
//!
//! Servers run on free loopback ports in temporary directories and are killed when
//! their guard drops. Under `scripts/test.sh` the variable `KVKIT_REQUIRE_SERVERS=1` is
//! set, and a missing server binary is a test failure; under a plain `cargo test` the
//! test prints a notice and is skipped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// Set to `1` (by `scripts/test.sh`) to turn a missing server into a failure.
pub const REQUIRE_SERVERS_VAR: &str = "KVKIT_REQUIRE_SERVERS";

/// True when a missing server must fail the test instead of skipping it.
pub fn servers_required() -> bool {
    std::env::var(REQUIRE_SERVERS_VAR).is_ok_and(|v| v == "1")
}

/// Finds an executable: the first of `candidates` (absolute paths or names looked up
/// on `PATH`) that exists. When none does, panics if servers are required, otherwise
/// prints a notice naming `what` and returns `None` so the caller can skip.
pub fn find_binary(what: &str, candidates: &[&str]) -> Option<PathBuf> {
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for candidate in candidates {
        let candidate = Path::new(candidate);
        if candidate.is_absolute() {
            if candidate.is_file() {
                return Some(candidate.to_path_buf());
            }
            continue;
        }
        if let Some(found) = path_dirs
            .iter()
            .map(|dir| dir.join(candidate))
            .find(|p| p.is_file())
        {
            return Some(found);
        }
    }
    assert!(
        !servers_required(),
        "{what} is not installed ({candidates:?}) but {REQUIRE_SERVERS_VAR}=1: run scripts/test.sh, which installs it"
    );
    eprintln!(
        "NOTICE: skipping {what} test: {candidates:?} not found (run scripts/test.sh to install it)"
    );
    None
}

/// A free TCP port on 127.0.0.1 (bound once, then released for the server to take),
/// never one this process handed out before: the kernel may give a just-released port
/// again, and a cluster's client and peer ports must differ.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1_000 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
        let port = listener.local_addr().expect("local addr").port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
    panic!("no fresh ephemeral loopback port in 1,000 tries");
}

/// Waits until something accepts TCP connections on `addr`, or `timeout` passes.
pub fn wait_for_tcp(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A child process killed (and reaped) when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    name: String,
    /// For a process tied to this one ([`ChildGuard::spawn_tied`]): the only write end
    /// of its watchdog's stdin; closing it ends the process.
    tie: Option<ChildStdin>,
}

/// Runs a command in the background and ends it when its own stdin reaches end of file,
/// then removes a directory. Arguments: the directory, the command and its arguments.
const WATCHDOG: &str = r#"dir=$1; shift
"$@" &
pid=$!
read -r _ || true
kill "$pid" 2>/dev/null
wait "$pid"
rm -rf "$dir""#;

/// How long a tied process may take to end once its tie is cut.
const TIED_STOP_TIMEOUT: Duration = Duration::from_secs(10);

impl ChildGuard {
    /// Spawns `command` with its output sent to `log` (a file in the server's dir).
    pub fn spawn(name: &str, command: Command, log: &Path) -> std::io::Result<Self> {
        Ok(ChildGuard {
            child: Some(start(command, log, Stdio::null())?),
            name: name.to_owned(),
            tie: None,
        })
    }

    /// Like [`ChildGuard::spawn`], for a process that must not outlive this one even
    /// when this guard is never dropped (a server in a `static`) or this process is
    /// killed: a `sh` watchdog runs `command` and kills it when its stdin, a pipe only
    /// this process holds, closes; then it removes `scratch` (the server's directory).
    /// [`ChildGuard::id`] is then the watchdog's id.
    pub fn spawn_tied(
        name: &str,
        command: Command,
        log: &Path,
        scratch: &Path,
    ) -> std::io::Result<Self> {
        let mut watchdog = Command::new("sh");
        watchdog
            .arg("-c")
            .arg(WATCHDOG)
            .arg("kvkit-watchdog")
            .arg(scratch)
            .arg(command.get_program())
            .args(command.get_args());
        let mut child = start(watchdog, log, Stdio::piped())?;
        let tie = child.stdin.take();
        Ok(ChildGuard {
            child: Some(child),
            name: name.to_owned(),
            tie,
        })
    }

    /// The process id, while running.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the process and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A tied process: its watchdog ends it once the tie is cut (killing the
            // watchdog itself would leave the process running).
            if self.tie.take().is_some() {
                let deadline = Instant::now() + TIED_STOP_TIMEOUT;
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            tracing::debug!(name = %self.name, "stopped test server");
        }
    }
}

/// Spawns `command` with `stdin` and its output sent to `log`.
fn start(mut command: Command, log: &Path, stdin: Stdio) -> std::io::Result<Child> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    command
        .stdin(stdin)
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_ports_are_never_handed_out_twice() {
        let mut ports: Vec<u16> = (0..300).map(|_| super::free_port()).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 300);
    }
}
