//! The mapping of the ZooKeeper client's errors into [`Error`]: transient session and
//! connection failures are retryable, refused credentials and ACLs are permission
//! errors, and a closed handle answers [`Error::Closed`].

use std::sync::atomic::Ordering;

use zookeeper_async::ZkError;

use super::{MAX_ATTEMPTS, NAME, Zookeeper};
use crate::error::Error;

impl Zookeeper {
    /// Maps a client error; every error of a closed handle is [`Error::Closed`].
    pub(crate) fn map_err(&self, e: ZkError) -> Error {
        if self.inner.closed.load(Ordering::Relaxed) {
            return Error::Closed;
        }
        map_zk_error(e)
    }
}

/// True for the failures a new connection or session may cure.
pub(super) fn is_transient(e: ZkError) -> bool {
    matches!(
        e,
        ZkError::ConnectionLoss
            | ZkError::OperationTimeout
            | ZkError::SessionExpired
            | ZkError::SessionMoved
            | ZkError::MarshallingError
    )
}

/// Maps a client error whatever the handle's state.
pub(super) fn map_zk_error(e: ZkError) -> Error {
    match e {
        e if is_transient(e) => Error::unavailable(NAME, e),
        ZkError::NoAuth | ZkError::AuthFailed | ZkError::InvalidACL => Error::PermissionDenied {
            backend: NAME,
            source: Box::new(e),
        },
        e => Error::backend(NAME, e),
    }
}

/// The error of an optimistic loop that lost to concurrent writers [`MAX_ATTEMPTS`] times.
pub(super) fn contention(key: &str) -> Error {
    Error::unavailable(
        NAME,
        format!("gave up on {key:?} after {MAX_ATTEMPTS} conflicting concurrent changes"),
    )
}
