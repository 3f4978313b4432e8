//! Exit codes (stable, documented in `kvkit --help` and the README) and the one-line
//! error messages that say what to do.

use std::fmt;

use kvkit::error::source_chain;
use kvkit::{Error, ErrorKind};

/// The exit codes of kvkit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// 1: not found, or a condition (create-only, compare-and-swap) failed.
    NotFound = 1,
    /// 2: bad arguments, URL, duration, key or input, or a command the store cannot serve.
    Usage = 2,
    /// 3: the store could not be reached or did not answer in time.
    Unavailable = 3,
    /// 4: the store refused the credentials.
    PermissionDenied = 4,
    /// 5: anything else.
    Other = 5,
    /// 6: `lock` / `elect` lost the lock or the leadership and stopped the command.
    Lost = 6,
}

/// An error to report on stderr as `kvkit: message`, exiting with `code`.
#[derive(Debug)]
pub struct CliError {
    pub code: Code,
    pub message: String,
    /// The error is a closed stdout (`kvkit ls | head`): not a failure.
    pub broken_pipe: bool,
}

impl CliError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        CliError {
            code,
            message: message.into(),
            broken_pipe: false,
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Code::Usage, message)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The exit code of a kvkit error.
pub fn code_of(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::NotFound | ErrorKind::KeyExists | ErrorKind::KeyModified => Code::NotFound,
        ErrorKind::InvalidKey | ErrorKind::ValueTooLarge | ErrorKind::Config => Code::Usage,
        ErrorKind::Unavailable | ErrorKind::Closed => Code::Unavailable,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::LockLost => Code::Lost,
        _ => Code::Other,
    }
}

/// What to do about an error of this kind, appended to its message.
fn advice(kind: ErrorKind) -> Option<&'static str> {
    Some(match kind {
        ErrorKind::NotFound => "check the key with `kvkit ls`",
        ErrorKind::KeyExists => "drop --create to overwrite it",
        ErrorKind::KeyModified => {
            "someone wrote it since; read the current index with `kvkit get --json` and retry"
        }
        ErrorKind::InvalidKey => "keys are '/'-separated paths without control characters",
        ErrorKind::Unavailable => "check that the server runs and the URL is right, or retry later",
        ErrorKind::PermissionDenied => {
            "check the credentials (KVKIT_ETCD_USERNAME/KVKIT_ETCD_PASSWORD, KVKIT_CONSUL_TOKEN, \
             KVKIT_ZK_DIGEST, or the URL's TLS options)"
        }
        ErrorKind::Config => "see `kvkit --help` for the store URL forms",
        _ => return None,
    })
}

impl From<Error> for CliError {
    fn from(err: Error) -> Self {
        let kind = err.kind();
        // The chain of sources, on one line: transport errors say the most at the end.
        let mut message = err.to_string();
        for cause in source_chain(&err).skip(1) {
            let text = cause.to_string();
            // A cause many errors already quote in their own text is printed once.
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
        }
        let message = message.replace('\n', " ");
        let message = match advice(kind) {
            Some(advice) => format!("{message} ({advice})"),
            None => message,
        };
        CliError::new(code_of(kind), message)
    }
}

impl From<std::io::Error> for CliError {
    fn from(err: std::io::Error) -> Self {
        CliError {
            broken_pipe: err.kind() == std::io::ErrorKind::BrokenPipe,
            ..CliError::new(Code::Other, format!("I/O error: {err}"))
        }
    }
}

/// `Result` with a [`CliError`].
pub type CliResult<T = ()> = Result<T, CliError>;
