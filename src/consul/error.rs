//! The mapping of the Consul agent's answers and transport failures into [`Error`], by
//! HTTP status and by the types in the source chain, never by message text.

use bytes::Bytes;
use hyper::StatusCode;

use crate::error::{Error, source_chain};

/// The backend's name in errors.
pub(crate) const NAME: &str = "consul";

/// The error of an answer with an unexpected `status`: 403 is PermissionDenied, 429
/// (rate limited) and 5xx (503 included) are Unavailable, anything else is a backend
/// error. The message quotes the start of the body.
pub(super) fn status_error(status: StatusCode, body: &Bytes) -> Error {
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
    let msg = format!("HTTP {}: {}", status.as_u16(), text.trim());
    match status {
        StatusCode::FORBIDDEN => Error::PermissionDenied {
            backend: NAME,
            source: msg.into(),
        },
        s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
            Error::unavailable(NAME, msg)
        }
        _ => Error::backend(NAME, msg),
    }
}

/// Classifies a transport failure from the typed errors in its source chain, never
/// from message text: an error that rustls itself raised (a certificate the CA does
/// not vouch for, a refused client certificate, a protocol mismatch) is a
/// configuration error, with the `rustls::Error` kept as its source; anything else
/// (refused or reset connections, a TLS connection closed without close_notify, an
/// agent restart, timeouts) is retryable.
pub(super) fn transport_error(e: hyper_util::client::legacy::Error) -> Error {
    let chain = source_chain(&e)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
    match raised_by_rustls(&e) {
        Some(cause) => Error::backend(NAME, TlsFailure { chain, cause }),
        None => Error::unavailable(NAME, chain),
    }
}

/// A TLS failure: reads as the whole transport chain that led to it, and keeps the
/// error rustls raised as its source, for callers to match on its type.
#[derive(Debug)]
struct TlsFailure {
    /// The transport error and its sources, joined with `": "`.
    chain: String,
    /// What rustls raised.
    cause: rustls::Error,
}

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS failure: {}", self.chain)
    }
}

impl std::error::Error for TlsFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.cause)
    }
}

/// The `rustls::Error` in `err`'s chain, if any. An `io::Error` wrapping another error
/// hides that error from `source()` (it reports the wrapped error's source), so the
/// wrapped error is looked into explicitly: hyper-rustls wraps tokio-rustls's
/// `io::Error`, which wraps the `rustls::Error`.
fn raised_by_rustls(err: &(dyn std::error::Error + 'static)) -> Option<rustls::Error> {
    source_chain(err).find_map(|cause| {
        cause.downcast_ref::<rustls::Error>().cloned().or_else(|| {
            cause
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .and_then(|wrapped| raised_by_rustls(wrapped))
        })
    })
}
