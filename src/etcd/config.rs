//! The configuration of the etcd backend.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::duration::DurationSettings;
use crate::config::env::{self, REDACTED};
use crate::config::error::config_error;
use crate::config::tls::TlsConfig;
use crate::config::url::{QueryWriter, UrlParts, network_url};
use crate::config::validate::{check_durations, check_endpoints, check_positive};
use crate::error::Result;

/// The lock TTL used when [`crate::LockOptions::ttl`] is `None`.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(15);

/// The URL options of `etcd://`, as error messages list them.
const URL_OPTIONS: &[&str] = &[
    "connect_timeout",
    "request_timeout",
    "lock_ttl",
    "ca",
    "cert",
    "key",
    "server_name",
];

/// How to reach and authenticate to an etcd cluster; in a URL,
/// `etcd[+https]://[user[:password]@]host:port,.../prefix?option=value`.
///
/// Deserialises from any serde format with kvkit's configuration convention (see
/// [`crate::config`]): durations as `"500ms"`, `"2s"`, `"1m30s"` (or a number of
/// seconds), unknown fields rejected. Every field has a default:
///
/// ```
/// # use kvkit::etcd::EtcdConfig;
/// let config = EtcdConfig::new(["127.0.0.1:2379"]).prefix("myapp");
/// assert_eq!(config.endpoints.len(), 1);
/// ```
///
/// `Debug` never shows the password.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the cluster's members: `host:port`, `http://host:port` or
    /// `https://host:port`. Requests are balanced over them and fail over between them.
    /// Default: `["127.0.0.1:2379"]`.
    pub endpoints: Vec<String>,
    /// A prefix under which every kvkit key lives, so several applications can share
    /// a cluster. Normalised to end with `/` when not empty. Default: none.
    pub prefix: String,
    /// How long establishing a connection may take. Default: 3 s.
    #[serde(with = "crate::config::duration")]
    pub connect_timeout: Duration,
    /// How long one request may take before it fails with `Error::Unavailable`.
    /// Default: 5 s.
    #[serde(with = "crate::config::duration")]
    pub request_timeout: Duration,
    /// The TTL of a lock's lease when [`crate::LockOptions::ttl`] is `None`.
    /// Default: 15 s.
    #[serde(with = "crate::config::duration")]
    pub lock_ttl: Duration,
    /// TLS settings; `None` for plain HTTP/2. With TLS, endpoints without a scheme
    /// use `https`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// User name for etcd's authentication (with `password`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password of `username` (a secret: never shown by `Debug` or `Display`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("lock_ttl", &self.lock_ttl)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .finish()
    }
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["127.0.0.1:2379".to_owned()],
            prefix: String::new(),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            lock_ttl: DEFAULT_LOCK_TTL,
            tls: None,
            username: None,
            password: None,
        }
    }
}

impl EtcdConfig {
    /// A configuration for these endpoints, with defaults for everything else.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ..EtcdConfig::default()
        }
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the per-request timeout.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the default lock TTL.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl;
        self
    }

    /// Sets the TLS settings.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the user name and password.
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }

    /// Sets the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Checks every setting without connecting (`Error::Config` on the first
    /// problem). [`super::Etcd::connect`] calls it first.
    pub fn validate(&self) -> Result<()> {
        check_endpoints("etcd", &self.endpoints)?;
        check_durations("etcd", &self.durations())?;
        check_positive("etcd", "request_timeout", self.request_timeout)?;
        if self.username.is_some() != self.password.is_some() {
            return Err(config_error(
                "etcd: username and password must be given together (the password may come \
                 from KVKIT_ETCD_PASSWORD)",
            ));
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        Ok(())
    }

    /// Reads an `etcd://` URL split by the shared grammar.
    pub(crate) fn from_url(mut parts: UrlParts) -> Result<Self> {
        parts.require_hosts("etcd")?;
        let mut config = EtcdConfig::new(parts.hosts.clone()).prefix(parts.prefix());
        if let Some((user, password)) = parts.userinfo.take() {
            config.username = Some(user);
            config.password = password;
        }
        parts.query.durations(&mut config)?;
        config.tls = parts
            .query
            .tls(parts.tls, "etcd", "ca, cert, key, server_name")?;
        parts.query.finish("etcd", URL_OPTIONS)?;
        Ok(config)
    }

    /// The URL form, without the password.
    pub(crate) fn to_url(&self) -> String {
        let mut query = QueryWriter::default();
        query.durations(self, &EtcdConfig::default());
        query.tls(&self.tls);
        network_url(
            "etcd",
            self.tls.is_some(),
            self.username.as_deref(),
            &self.endpoints,
            &self.prefix,
            query,
        )
    }

    /// Fills the user name and password the configuration lacks from `lookup` (the
    /// variables of [`crate::config::env`]).
    pub(crate) fn with_secrets_from(mut self, lookup: &impl Fn(&str) -> Option<String>) -> Self {
        if self.username.is_none() {
            self.username = lookup(env::ETCD_USERNAME);
        }
        if self.password.is_none() && self.username.is_some() {
            self.password = lookup(env::ETCD_PASSWORD);
        }
        self
    }
}

impl DurationSettings for EtcdConfig {
    fn durations_mut(&mut self) -> Vec<(&'static str, &mut Duration)> {
        vec![
            ("connect_timeout", &mut self.connect_timeout),
            ("request_timeout", &mut self.request_timeout),
            ("lock_ttl", &mut self.lock_ttl),
        ]
    }
}
