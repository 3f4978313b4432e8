//! The ZooKeeper backend's configuration: servers, prefix (the root znode), timeouts,
//! credentials and the encoding of values in znodes, and its `zk://` URL form.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::duration::DurationSettings;
use crate::config::env::{self, REDACTED};
use crate::config::error::config_error;
use crate::config::url::{QueryWriter, UrlParts, network_url};
use crate::config::validate::{check_durations, check_endpoints};
use crate::error::{Error, Result};

/// The URL options of `zk://`, as error messages list them.
const URL_OPTIONS: &[&str] = &[
    "connect_timeout",
    "request_timeout",
    "session_timeout",
    "encoding",
    "multi_read",
];

/// Digest credentials (`user:password`), sent after every (re)connect. `Debug` never
/// shows the password.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DigestAuth {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for DigestAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestAuth")
            .field("user", &self.user)
            .field("password", &REDACTED)
            .finish()
    }
}

/// How values are stored in znode data (see `docs/zookeeper.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ZookeeperEncoding {
    /// kvkit's one-byte header before the value: TTLs, and an empty value tells from
    /// an implicit parent. Data other tools wrote reads as no value.
    #[default]
    Kvkit,
    /// The znode's data is the value, as zkCli, Curator and docker/libkv see it. No
    /// TTLs (a put with a TTL is `Error::NotSupported`), and empty data is an implicit
    /// parent, so an empty value cannot be stored (`Error::NotSupported`).
    Raw,
}

/// How to reach a ZooKeeper ensemble (in a URL, `zk://host:port,.../prefix?option=value`),
/// with kvkit's configuration convention (see
/// [`crate::config`]): durations as `"10s"`, `"1500ms"`, unknown fields rejected,
/// every field defaulted. `Debug` never shows the digest password.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ZookeeperConfig {
    /// The ensemble's servers, `host:port` each (a comma-separated string is read
    /// too, and `connect` is an alias of this field). Default: `["127.0.0.1:2181"]`.
    #[serde(alias = "connect", deserialize_with = "endpoints_de")]
    pub endpoints: Vec<String>,
    /// The znode below which kvkit keeps everything (a chroot of sorts), e.g. `/kvkit`
    /// (`root` is an alias of this field). Default: `/kvkit`.
    #[serde(alias = "root")]
    pub prefix: String,
    /// How long the first connection (TCP connect and session handshake) may take; the
    /// handshake being a request, `request_timeout` bounds it too. Default: 10 s.
    #[serde(with = "crate::config::duration")]
    pub connect_timeout: Duration,
    /// How long one request may take before it fails with `Error::Unavailable`.
    /// Default: 10 s (at least 100 ms is used).
    #[serde(with = "crate::config::duration")]
    pub request_timeout: Duration,
    /// Session timeout (the server clamps it to its min/max; at least 2 s is used).
    /// Locks are lost this long after a holder vanished. Default: 10 s.
    #[serde(with = "crate::config::duration")]
    pub session_timeout: Duration,
    /// Digest credentials. When set, every znode kvkit creates gets the ACL
    /// `auth::` (all rights to these credentials only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<DigestAuth>,
    /// Read `list` and `delete_tree` scans with `multiRead` (ZooKeeper 3.6+) on a second
    /// session, one request per level instead of one per znode (default true). Off, or
    /// against a server without `multiRead`, they use pipelined single requests on the
    /// main session. See `docs/zookeeper.md`.
    pub multi_read: bool,
    /// How values are stored in znodes. Default: [`ZookeeperEncoding::Kvkit`].
    pub encoding: ZookeeperEncoding,
}

/// Reads `endpoints` from a list or from a comma-separated string.
fn endpoints_de<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Joined(String),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::List(list) => list,
        Raw::Joined(joined) => split_endpoints(&joined),
    })
}

fn split_endpoints(joined: &str) -> Vec<String> {
    joined
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Default for ZookeeperConfig {
    fn default() -> Self {
        ZookeeperConfig::new("127.0.0.1:2181")
    }
}

impl ZookeeperConfig {
    /// A configuration for `connect` (`host:port[,host:port...]`) with the defaults.
    pub fn new(connect: impl Into<String>) -> Self {
        ZookeeperConfig {
            endpoints: split_endpoints(&connect.into()),
            prefix: "/kvkit".to_owned(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            session_timeout: Duration::from_secs(10),
            digest: None,
            multi_read: true,
            encoding: ZookeeperEncoding::Kvkit,
        }
    }

    /// Turns the `multiRead` bulk reads of `list`/`delete_tree` on or off.
    pub fn multi_read(mut self, enabled: bool) -> Self {
        self.multi_read = enabled;
        self
    }

    /// Sets the prefix: the root znode below which kvkit keeps its data.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the session timeout.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// Sets the per-request timeout.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the timeout of the first connection.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets how values are stored in znodes.
    pub fn encoding(mut self, encoding: ZookeeperEncoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// Sets digest credentials.
    pub fn digest(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.digest = Some(DigestAuth {
            user: user.into(),
            password: password.into(),
        });
        self
    }

    /// The `host:port,host:port` connect string.
    pub fn connect_string(&self) -> String {
        self.endpoints.join(",")
    }

    /// Checks every setting without connecting (`Error::Config` on the first
    /// problem). [`super::Zookeeper::connect`] calls it first.
    pub fn validate(&self) -> Result<()> {
        check_endpoints("zookeeper", &self.endpoints)?;
        if let Some(bad) = self
            .endpoints
            .iter()
            .find(|e| e.contains('/') || e.contains(','))
        {
            return Err(config_error(format!(
                "zookeeper: endpoint {bad:?} is not host:port (use `prefix` for a chroot)"
            )));
        }
        check_durations("zookeeper", &self.durations())?;
        validate_root(&self.prefix)?;
        Ok(())
    }

    /// Reads a `zk://` (or `zookeeper://`) URL split by the shared grammar.
    pub(crate) fn from_url(mut parts: UrlParts) -> Result<Self> {
        parts.require_hosts("zk")?;
        let mut config = ZookeeperConfig::new(parts.hosts.join(","));
        if !parts.path.is_empty() {
            config = config.prefix(parts.path.clone());
        }
        if let Some((user, password)) = parts.userinfo.take() {
            let password = password.ok_or_else(|| {
                config_error("zk:// digest credentials are user:password@ (or KVKIT_ZK_DIGEST)")
            })?;
            config = config.digest(user, password);
        }
        let query = &mut parts.query;
        query.durations(&mut config)?;
        if let Some(encoding) = query.take("encoding") {
            config.encoding = match encoding.as_str() {
                "kvkit" => ZookeeperEncoding::Kvkit,
                "raw" => ZookeeperEncoding::Raw,
                other => {
                    return Err(config_error(format!(
                        "option encoding: expected kvkit or raw, got {other:?}"
                    )));
                }
            };
        }
        if let Some(multi_read) = query.bool("multi_read")? {
            config.multi_read = multi_read;
        }
        parts.query.finish("zookeeper", URL_OPTIONS)?;
        Ok(config)
    }

    /// The URL form. Digest credentials are one secret (`user:password`): left out
    /// entirely.
    pub(crate) fn to_url(&self) -> String {
        let defaults = ZookeeperConfig::default();
        let mut query = QueryWriter::default();
        query.durations(self, &defaults);
        if self.encoding != defaults.encoding {
            query.push("encoding", "raw");
        }
        if self.multi_read != defaults.multi_read {
            query.push("multi_read", &self.multi_read.to_string());
        }
        network_url("zk", false, None, &self.endpoints, &self.prefix, query)
    }

    /// Fills the digest credentials the configuration lacks from `lookup` (the
    /// variables of [`crate::config::env`]).
    pub(crate) fn with_secrets_from(
        self,
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        if self.digest.is_some() {
            return Ok(self);
        }
        let Some(text) = lookup(env::ZK_DIGEST) else {
            return Ok(self);
        };
        let (user, password) = text.split_once(':').ok_or_else(|| {
            config_error(format!(
                "{} must be user:password (the value is not shown)",
                env::ZK_DIGEST
            ))
        })?;
        Ok(self.digest(user, password))
    }
}

impl DurationSettings for ZookeeperConfig {
    fn durations_mut(&mut self) -> Vec<(&'static str, &mut Duration)> {
        vec![
            ("connect_timeout", &mut self.connect_timeout),
            ("request_timeout", &mut self.request_timeout),
            ("session_timeout", &mut self.session_timeout),
        ]
    }
}

pub(super) fn validate_root(root: &str) -> Result<String> {
    let trimmed: Vec<&str> = root.split('/').filter(|s| !s.is_empty()).collect();
    if trimmed.is_empty() {
        return Err(Error::InvalidKey {
            key: root.to_owned(),
            reason: "the ZooKeeper root must name a znode below /",
        });
    }
    for seg in &trimmed {
        if *seg == "." || *seg == ".." || seg.chars().any(char::is_control) {
            return Err(Error::InvalidKey {
                key: root.to_owned(),
                reason: "invalid ZooKeeper root",
            });
        }
    }
    if trimmed[0] == "zookeeper" {
        return Err(Error::InvalidKey {
            key: root.to_owned(),
            reason: "/zookeeper is reserved by the server",
        });
    }
    Ok(format!("/{}", trimmed.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_are_validated() {
        assert_eq!(validate_root("kvkit/").unwrap(), "/kvkit");
        assert_eq!(validate_root("//a//b").unwrap(), "/a/b");
        assert!(validate_root("/").is_err());
        assert!(validate_root("/zookeeper").is_err());
        assert!(validate_root("/a/../b").is_err());
    }

    #[test]
    fn config_deserialises_with_defaults() {
        // serde_json is not a dependency: deserialise from a map of strings.
        use serde::de::IntoDeserializer;
        use serde::de::value::{Error as DeError, MapDeserializer};
        let entries = vec![("connect", "127.0.0.1:2181"), ("root", "/app")];
        let de: MapDeserializer<'_, _, DeError> =
            MapDeserializer::new(entries.into_iter().map(|(k, v)| (k, v.into_deserializer())));
        let config = ZookeeperConfig::deserialize(de).unwrap();
        assert_eq!(
            config,
            ZookeeperConfig::new("127.0.0.1:2181").prefix("/app")
        );
        assert_eq!(config.session_timeout, Duration::from_secs(10));
        assert!(config.digest.is_none());
        assert!(config.multi_read, "bulk reads are on by default");
    }
}
