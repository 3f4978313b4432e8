//! `lock` and `elect`: run a command while holding a lock or leadership, and stop it
//! (SIGTERM, then SIGKILL after a grace period) when that is lost.

use std::process::ExitStatus;
use std::time::Duration;

use futures::StreamExt;
use kvkit::election::Candidate;
use kvkit::{Backend, Kv, LockGuard, LockOptions};
use tokio::process::{Child, Command};

use crate::args::RunArgs;
use crate::exit::{CliError, CliResult, Code};

/// The status of kvkit when interrupted before the command started (as shells do).
pub const INTERRUPTED: i32 = 130;

/// Why the supervision of the command ended.
enum Outcome {
    /// The command exited by itself.
    Exited(ExitStatus),
    /// The lock or leadership was lost; the command was stopped.
    Lost,
    /// kvkit got Ctrl-C or SIGTERM; the command was stopped and exited so.
    Interrupted(ExitStatus),
}

/// Resolves on Ctrl-C or SIGTERM.
async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The exit status a shell would report for `status`: its code, or 128 + the signal.
pub fn status_code(status: ExitStatus) -> i32 {
    if let Some(code) = status.code() {
        return code;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return 128 + signal;
        }
    }
    Code::Other as i32
}

fn spawn(command: &[String]) -> CliResult<Child> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| CliError::usage("missing COMMAND after `--`"))?;
    Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                Code::Usage
            } else {
                Code::Other
            };
            CliError::new(code, format!("cannot run {program:?}: {e}"))
        })
}

/// Stops `child`: SIGTERM, then SIGKILL when it has not exited after `grace`.
async fn stop(child: &mut Child, grace: Duration) -> std::io::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    #[cfg(unix)]
    if let Some(pid) = child.id().and_then(|pid| libc::pid_t::try_from(pid).ok()) {
        // SAFETY: kill(2) with a pid we spawned and have not reaped yet; no memory is
        // touched.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
            return status;
        }
        eprintln!("kvkit: the command did not exit {grace:?} after SIGTERM; sending SIGKILL");
    }
    #[cfg(not(unix))]
    let _ = grace;
    child.kill().await?;
    child.wait().await
}

/// Runs `child` until it exits, `lost` resolves, or kvkit is interrupted.
async fn supervise(
    child: &mut Child,
    lost: impl std::future::Future<Output = ()>,
    grace: Duration,
) -> CliResult<Outcome> {
    tokio::select! {
        status = child.wait() => Ok(Outcome::Exited(status?)),
        () = lost => {
            stop(child, grace).await?;
            Ok(Outcome::Lost)
        }
        () = interrupted() => Ok(Outcome::Interrupted(stop(child, grace).await?)),
    }
}

/// The value written to a lock key while kvkit holds it.
fn holder() -> String {
    format!("kvkit pid {}", std::process::id())
}

/// `lock KEY -- COMMAND`: the exit status of kvkit.
pub async fn lock<B: Backend>(
    kv: &Kv<B>,
    key: &str,
    command: &[String],
    try_only: bool,
    run: &RunArgs,
) -> CliResult<i32> {
    let mut options = LockOptions::default().value(holder());
    options.ttl = run.ttl;
    let guard = if try_only {
        kv.try_lock(key, options).await?.ok_or_else(|| {
            CliError::new(
                Code::NotFound,
                format!("the lock {key} is held by someone else (drop --try to wait for it)"),
            )
        })?
    } else {
        tokio::select! {
            guard = kv.lock(key, options) => guard?,
            // The pending lock is withdrawn by dropping it and closing the store.
            () = interrupted() => return Ok(INTERRUPTED),
        }
    };
    let mut child = match spawn(command) {
        Ok(child) => child,
        Err(err) => {
            let _ = guard.unlock().await;
            return Err(err);
        }
    };
    let outcome = supervise(&mut child, guard.lost(), run.grace).await?;
    match outcome {
        Outcome::Lost => {
            // Released by dropping the guard and closing the store (`close` waits for
            // a release still running in the background).
            drop(guard);
            Err(lost_error(format!(
                "lost the lock {key} while the command ran; the command was stopped"
            )))
        }
        Outcome::Exited(status) | Outcome::Interrupted(status) => {
            if let Err(err) = guard.unlock().await {
                eprintln!("kvkit: releasing the lock {key}: {err}");
            }
            Ok(status_code(status))
        }
    }
}

fn lost_error(message: String) -> CliError {
    CliError::new(Code::Lost, message)
}

/// `elect NAME ID -- COMMAND`: the exit status of kvkit.
pub async fn elect<B: Backend>(
    kv: &Kv<B>,
    name: &str,
    id: &str,
    command: &[String],
    run: &RunArgs,
) -> CliResult<i32> {
    kvkit::Key::new(name)?;
    let caps = kv.capabilities();
    let ttl = run
        .ttl
        .or(caps.default_lock_ttl)
        .unwrap_or(Duration::from_secs(15));
    let candidate = Candidate::new(kv.clone(), name, id, ttl);
    let mut campaign = candidate.campaign();
    // Wait to be elected.
    loop {
        let event = tokio::select! {
            event = campaign.next() => event,
            () = interrupted() => {
                resign(&candidate, &mut campaign).await;
                return Ok(INTERRUPTED);
            }
        };
        match event {
            Some(true) => break,
            Some(false) => continue,
            None => {
                return Err(CliError::new(
                    Code::Other,
                    "the election ended unexpectedly",
                ));
            }
        }
    }
    let mut child = match spawn(command) {
        Ok(child) => child,
        Err(err) => {
            resign(&candidate, &mut campaign).await;
            return Err(err);
        }
    };
    let demoted = async {
        // The first `false` (or the end of the stream) is the loss of leadership.
        while let Some(true) = campaign.next().await {}
    };
    let outcome = supervise(&mut child, demoted, run.grace).await?;
    resign(&candidate, &mut campaign).await;
    match outcome {
        Outcome::Lost => Err(lost_error(format!(
            "{id} lost the leadership of {name} while the command ran; the command was stopped"
        ))),
        Outcome::Exited(status) | Outcome::Interrupted(status) => Ok(status_code(status)),
    }
}

/// Stops the campaign and waits (bounded) until it has released the lock, so the next
/// candidate need not wait for the lock's TTL.
async fn resign<B: Backend>(candidate: &Candidate<B>, campaign: &mut kvkit::election::Campaign) {
    candidate.stop();
    let drained = async { while campaign.next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(10), drained).await;
}
