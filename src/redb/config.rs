//! [`RedbConfig`]: where the embedded redb store keeps its file, and its `redb://` URL
//! form.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::error::config_error;
use crate::config::url::{UrlParts, encode_path};
use crate::error::Result;

/// Where the embedded redb store keeps its file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedbConfig {
    /// The database file, created when missing (relative paths are relative to the
    /// working directory).
    pub path: PathBuf,
}

impl RedbConfig {
    /// A configuration for this file.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RedbConfig { path: path.into() }
    }

    /// Errors for an empty path.
    pub fn validate(&self) -> Result<()> {
        if self.path.as_os_str().is_empty() {
            return Err(config_error("redb: the path is empty"));
        }
        Ok(())
    }

    /// Reads a `redb:///absolute/path` or `redb://relative/path` URL split by the shared
    /// grammar.
    pub(crate) fn from_url(parts: UrlParts) -> Result<Self> {
        if parts.userinfo.is_some() {
            return Err(config_error("redb:// takes no user name"));
        }
        // `redb:///abs` has no host; `redb://rel/path` reads its first segment as one.
        let path = match parts.hosts.as_slice() {
            [] => parts.path.clone(),
            [first] => format!("{first}{}", parts.path),
            _ => return Err(config_error("a redb path cannot contain ','")),
        };
        if path.is_empty() || path == "/" {
            return Err(config_error(
                "redb:// needs a file: redb:///absolute/path.redb or redb://relative/path.redb",
            ));
        }
        parts.query.finish("redb", &[])?;
        Ok(RedbConfig::new(path))
    }

    /// The URL form.
    pub(crate) fn to_url(&self) -> String {
        format!("redb://{}", encode_path(&self.path.to_string_lossy()))
    }
}
