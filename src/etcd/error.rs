//! The mapping of `etcd-client`'s errors into [`Error`], by gRPC code and by the
//! types in the source chain, never by message text.

use std::time::Duration;

use super::NAME;
use crate::error::{Error, source_chain};

/// The error of a request that got no answer within `after`.
pub(crate) fn timeout_error(after: Duration) -> Error {
    Error::unavailable(NAME, format!("no answer within {after:?}"))
}

/// The gRPC status behind an error, if the error came from one.
pub(super) fn status_of(err: &Error) -> Option<&tonic::Status> {
    match err {
        Error::Backend { source, .. }
        | Error::Unavailable { source, .. }
        | Error::PermissionDenied { source, .. } => source.downcast_ref::<tonic::Status>(),
        _ => None,
    }
}

/// True when the error says a lease does not exist (expired or revoked): etcd answers
/// `NotFound` only for a missing lease (a missing key is an empty answer).
pub(crate) fn is_lease_not_found(err: &Error) -> bool {
    status_of(err).is_some_and(|status| status.code() == tonic::Code::NotFound)
}

/// Maps an `etcd-client` error to a kvkit error from its gRPC code and typed sources,
/// never from message text: transport failures and timeouts are retryable
/// `Unavailable`, refused credentials `PermissionDenied`, the rest `Backend`.
pub(crate) fn map_error(err: etcd_client::Error) -> Error {
    use etcd_client::Error as E;
    use tonic::Code;
    match err {
        E::GRpcStatus(status) => match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => Error::PermissionDenied {
                backend: NAME,
                source: Box::new(status),
            },
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::ResourceExhausted => Error::unavailable(NAME, status),
            // A status made on this side from a transport failure carries that failure
            // as its source; one sent by the server carries none.
            Code::Unknown | Code::Internal if std::error::Error::source(&status).is_some() => {
                Error::unavailable(NAME, status)
            }
            _ => Error::backend(NAME, status),
        },
        E::TransportError(err) => Error::unavailable(NAME, err),
        E::IoError(err) => Error::unavailable(NAME, err),
        E::WatchError(err) => Error::unavailable(NAME, err),
        E::LeaseKeepAliveError(err) => Error::unavailable(NAME, err),
        other => Error::backend(NAME, other),
    }
}

/// At connect, the requests are fixed and valid (the authentication with credentials,
/// then the probe): etcd answers a wrong user or password, or missing credentials on a
/// server with auth on, with `InvalidArgument` or `FailedPrecondition`, which there
/// means refused credentials.
pub(super) fn refused_credentials(err: Error, at_connect: bool) -> Error {
    let refused = at_connect
        && status_of(&err).is_some_and(|status| {
            matches!(
                status.code(),
                tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
            )
        });
    match err {
        Error::Backend { backend, source } if refused => {
            Error::PermissionDenied { backend, source }
        }
        err => err,
    }
}

/// True for a request that failed before reaching any server: the connection could not
/// be made (tonic's `ConnectError`, or a refused TCP connection), so nothing was sent.
pub(super) fn is_connect_error(err: &Error) -> bool {
    let Error::Unavailable { source, .. } = err else {
        return false;
    };
    source_chain(source.as_ref()).any(|cause| {
        cause.is::<tonic::ConnectError>()
            || cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    })
}
