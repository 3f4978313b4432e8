//! The one error type of kvkit.
//!
//! Each variant is a decision for the caller (retry, create instead, re-read and try
//! again, give up). Backends map their private errors into it; the original error is
//! kept as the `source` where there is one.

use std::error::Error as StdError;

/// A boxed backend error, kept as the source of [`Error::Unavailable`] and friends.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// `Result<T, kvkit::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in kvkit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key does not exist (or a CAS expected a key that is gone).
    #[error("key not found: {key}")]
    NotFound {
        /// The normalised key.
        key: String,
    },
    /// A create-only write found the key already present.
    #[error("key already exists: {key}")]
    KeyExists {
        /// The normalised key.
        key: String,
    },
    /// A compare-and-swap found a different `last_index` than expected.
    #[error("key modified since index {expected}: {key}")]
    KeyModified {
        /// The normalised key.
        key: String,
        /// The `last_index` the caller expected.
        expected: u64,
    },
    /// The key breaks a rule of [`crate::key`]; nothing was sent.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key as given (truncated when very long).
        key: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The value is larger than the backend accepts; nothing was sent.
    #[error("value of {size} bytes exceeds the backend's limit of {limit} bytes")]
    ValueTooLarge {
        /// The value's size in bytes.
        size: usize,
        /// The backend's limit in bytes.
        limit: usize,
    },
    /// The backend cannot do this at all (not a transient failure).
    #[error("{backend} does not support {operation}")]
    NotSupported {
        /// The backend's name.
        backend: &'static str,
        /// What was asked.
        operation: &'static str,
    },
    /// The server could not be reached or did not answer in time. Retryable.
    #[error("{backend} unavailable: {source}")]
    Unavailable {
        /// The backend's name.
        backend: &'static str,
        /// What the transport reported.
        #[source]
        source: BoxError,
    },
    /// The credentials were refused (wrong password, token or certificate).
    #[error("{backend} refused the credentials: {source}")]
    PermissionDenied {
        /// The backend's name.
        backend: &'static str,
        /// What the server reported.
        #[source]
        source: BoxError,
    },
    /// A held lock was lost (its lease or session expired, or its key was taken).
    #[error("lock lost: {key}")]
    LockLost {
        /// The lock's key.
        key: String,
    },
    /// The store was closed with `Kv::close`.
    #[error("store is closed")]
    Closed,
    /// A stored value could not be decoded into the requested type.
    #[error("cannot decode the value of {key}: {source}")]
    Decode {
        /// The key whose value failed to decode.
        key: String,
        /// The decoder's error.
        #[source]
        source: BoxError,
    },
    /// A value could not be encoded (serialised) before writing; nothing was sent.
    #[error("cannot encode the value for {key}: {source}")]
    Encode {
        /// The key the value was meant for.
        key: String,
        /// The encoder's error.
        #[source]
        source: BoxError,
    },
    /// A configuration or store URL is invalid (found before any I/O): fix it and
    /// try again. Never contains a secret.
    #[error("invalid configuration: {reason}")]
    Config {
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// Any other backend failure, with the backend's own error.
    #[error("{backend} error: {source}")]
    Backend {
        /// The backend's name.
        backend: &'static str,
        /// The backend's own error.
        #[source]
        source: BoxError,
    },
}

/// The kind of an [`Error`], without its payload: cheap to compare, for tests and
/// for code that only branches on what happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// [`Error::NotFound`]
    NotFound,
    /// [`Error::KeyExists`]
    KeyExists,
    /// [`Error::KeyModified`]
    KeyModified,
    /// [`Error::InvalidKey`]
    InvalidKey,
    /// [`Error::ValueTooLarge`]
    ValueTooLarge,
    /// [`Error::NotSupported`]
    NotSupported,
    /// [`Error::Unavailable`]
    Unavailable,
    /// [`Error::PermissionDenied`]
    PermissionDenied,
    /// [`Error::LockLost`]
    LockLost,
    /// [`Error::Closed`]
    Closed,
    /// [`Error::Decode`]
    Decode,
    /// [`Error::Backend`]
    Backend,
    /// [`Error::Encode`]
    Encode,
    /// [`Error::Config`]
    Config,
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::KeyExists { .. } => ErrorKind::KeyExists,
            Error::KeyModified { .. } => ErrorKind::KeyModified,
            Error::InvalidKey { .. } => ErrorKind::InvalidKey,
            Error::ValueTooLarge { .. } => ErrorKind::ValueTooLarge,
            Error::NotSupported { .. } => ErrorKind::NotSupported,
            Error::Unavailable { .. } => ErrorKind::Unavailable,
            Error::PermissionDenied { .. } => ErrorKind::PermissionDenied,
            Error::LockLost { .. } => ErrorKind::LockLost,
            Error::Closed => ErrorKind::Closed,
            Error::Decode { .. } => ErrorKind::Decode,
            Error::Backend { .. } => ErrorKind::Backend,
            Error::Encode { .. } => ErrorKind::Encode,
            Error::Config { .. } => ErrorKind::Config,
        }
    }

    /// True when retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// Wraps a backend's own error.
    pub fn backend(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            backend,
            source: source.into(),
        }
    }

    /// Wraps a transport failure as retryable [`Error::Unavailable`].
    pub fn unavailable(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Unavailable {
            backend,
            source: source.into(),
        }
    }

    pub(crate) fn not_found(key: &str) -> Self {
        Error::NotFound {
            key: key.to_owned(),
        }
    }
}

/// `err` followed by its sources, outermost first: the chain to walk when looking for
/// a typed cause (with `downcast_ref`) or printing every cause on one line.
///
/// ```
/// use kvkit::error::{Error, source_chain};
///
/// let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
/// let err = Error::unavailable("etcd", io);
/// let refused = source_chain(&err)
///     .filter_map(|e| e.downcast_ref::<std::io::Error>())
///     .any(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
/// assert!(refused);
/// assert_eq!(source_chain(&err).count(), 2);
/// ```
pub fn source_chain<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |&err| err.source())
}
