//! [`MemoryConfig`]: the in-memory store's (empty) configuration and its `memory://`
//! URL form.

use serde::{Deserialize, Serialize};

use crate::config::error::config_error;
use crate::config::url::UrlParts;
use crate::error::Result;

/// The in-memory store has nothing to configure.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {}

impl MemoryConfig {
    /// Reads a `memory://` URL split by the shared grammar: it takes nothing.
    pub(crate) fn from_url(parts: UrlParts) -> Result<Self> {
        if !parts.hosts.is_empty() || !parts.path.is_empty() || parts.userinfo.is_some() {
            return Err(config_error("memory:// takes no host or path"));
        }
        parts.query.finish("memory", &[])?;
        Ok(MemoryConfig {})
    }

    /// The URL form.
    pub(crate) fn to_url(&self) -> String {
        "memory://".to_owned()
    }
}
