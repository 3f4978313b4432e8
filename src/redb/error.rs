//! The mapping of redb's errors into [`Error`].

use super::NAME;
use crate::error::Error;

/// Maps a redb error; a file held by another process gets a message that says so.
pub(super) fn storage(err: impl Into<::redb::Error>) -> Error {
    let err: ::redb::Error = err.into();
    match err {
        ::redb::Error::DatabaseAlreadyOpen => Error::backend(
            NAME,
            "the database file is already open in another process (redb stores are process-local)",
        ),
        other => Error::backend(NAME, other),
    }
}
