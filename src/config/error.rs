//! The one constructor of configuration errors, shared by every configuration file.

use crate::error::Error;

/// A [`crate::Error::Config`] with this reason.
pub(crate) fn config_error(reason: impl Into<String>) -> Error {
    Error::Config {
        reason: reason.into(),
    }
}
