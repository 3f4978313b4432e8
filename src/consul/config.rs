//! [`ConsulConfig`]: where the Consul agent is and how to talk to it.

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

/// The URL options of `consul://`, as error messages list them.
const URL_OPTIONS: &[&str] = &[
    "connect_timeout",
    "request_timeout",
    "lock_ttl",
    "lock_delay",
    "min_session_ttl",
    "wait",
    "datacenter",
    "token",
    "ca",
    "cert",
    "key",
];

/// How to reach Consul (in a URL, `consul[+https]://host:port,.../prefix?option=value`),
/// with kvkit's configuration convention (see [`crate::config`]):
/// durations as `"10s"`, `"500ms"`, `"1m30s"` (or a number of seconds), unknown fields
/// rejected, every field defaulted, so `{}` is a local agent on `127.0.0.1:8500`.
/// `Debug` never shows the token.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ConsulConfig {
    /// Agent addresses (`host:port`, or a full `http://` / `https://` URL). Requests
    /// go to the first; after a connection failure the next request goes to the next.
    #[serde(alias = "addresses")]
    pub endpoints: Vec<String>,
    /// Every key lives below this prefix in Consul (`""`: none). Normalised like a key.
    pub prefix: String,
    /// How long establishing a connection may take. Default: 3 s.
    #[serde(with = "crate::config::duration")]
    pub connect_timeout: Duration,
    /// Timeout of one request (blocking queries get their wait on top).
    #[serde(with = "crate::config::duration")]
    pub request_timeout: Duration,
    /// The scheme for addresses written without one; `https` also when `tls` is set.
    pub scheme: Scheme,
    /// TLS settings for `https` (`None`: the system's roots, no client certificate).
    /// Setting it makes addresses without a scheme use `https`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// The ACL token, sent as `X-Consul-Token` (a secret: never shown by `Debug` or
    /// `Display`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The datacenter (`?dc=`); `None`: the agent's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datacenter: Option<String>,
    /// The server's smallest session TTL (`session_ttl_min`, 10 s by default in
    /// Consul). TTLs of puts and locks are raised to it.
    #[serde(with = "crate::config::duration")]
    pub min_session_ttl: Duration,
    /// The TTL of lock sessions when [`crate::LockOptions::ttl`] is `None`.
    #[serde(with = "crate::config::duration")]
    pub lock_ttl: Duration,
    /// The lock-delay of lock sessions: after a holder's session is invalidated (not
    /// after a clean unlock), nobody can take its lock for this long. Consul's own
    /// default is 15 s; kvkit's is 1 s so a lost lock is taken over quickly.
    #[serde(with = "crate::config::duration")]
    pub lock_delay: Duration,
    /// How long one blocking query of a watch or lock waiter may wait (Consul caps it
    /// at 10 min).
    #[serde(with = "crate::config::duration")]
    pub wait: Duration,
}

impl fmt::Debug for ConsulConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("scheme", &self.scheme)
            .field("tls", &self.tls)
            .field("token", &self.token.as_ref().map(|_| REDACTED))
            .field("datacenter", &self.datacenter)
            .field("min_session_ttl", &self.min_session_ttl)
            .field("lock_ttl", &self.lock_ttl)
            .field("lock_delay", &self.lock_delay)
            .field("wait", &self.wait)
            .finish()
    }
}

impl Default for ConsulConfig {
    fn default() -> Self {
        ConsulConfig {
            endpoints: vec!["127.0.0.1:8500".to_owned()],
            prefix: String::new(),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            scheme: Scheme::Http,
            tls: None,
            token: None,
            datacenter: None,
            min_session_ttl: Duration::from_secs(10),
            lock_ttl: Duration::from_secs(15),
            lock_delay: Duration::from_secs(1),
            wait: Duration::from_secs(60),
        }
    }
}

impl ConsulConfig {
    /// The defaults with one agent address (`host:port` or a URL).
    pub fn new(address: impl Into<String>) -> Self {
        ConsulConfig {
            endpoints: vec![address.into()],
            ..ConsulConfig::default()
        }
    }

    /// Sets the ACL token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sets the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the datacenter.
    pub fn datacenter(mut self, dc: impl Into<String>) -> Self {
        self.datacenter = Some(dc.into());
        self
    }

    /// Sets the server's minimum session TTL.
    pub fn min_session_ttl(mut self, ttl: Duration) -> Self {
        self.min_session_ttl = ttl;
        self
    }

    /// Sets the default lock TTL.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl;
        self
    }

    /// Sets the lock-delay of lock sessions.
    pub fn lock_delay(mut self, delay: Duration) -> Self {
        self.lock_delay = delay;
        self
    }

    /// Sets the longest wait of one blocking query.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the request timeout.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the TLS settings.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Trusts this CA (PEM) instead of the system roots.
    pub fn ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.tls.get_or_insert_with(TlsConfig::default).ca_pem = Some(pem.into());
        self
    }

    /// The TLS settings in effect (the defaults when `tls` is `None`).
    pub(crate) fn tls_or_default(&self) -> TlsConfig {
        self.tls.clone().unwrap_or_default()
    }

    /// Checks every setting without connecting (`Error::Config` on the first
    /// problem). [`super::Consul::connect`] calls it first.
    pub fn validate(&self) -> Result<()> {
        check_endpoints("consul", &self.endpoints)?;
        check_durations("consul", &self.durations())?;
        check_positive("consul", "request_timeout", self.request_timeout)?;
        if let Some(tls) = &self.tls {
            tls.validate()?;
            if tls.server_name.is_some() {
                return Err(config_error(
                    "consul: tls.server_name is not supported (address the agent by the name \
                     in its certificate)",
                ));
            }
        }
        Ok(())
    }

    /// Reads a `consul://` URL split by the shared grammar.
    pub(crate) fn from_url(mut parts: UrlParts) -> Result<Self> {
        parts.require_hosts("consul")?;
        if parts.userinfo.is_some() {
            return Err(config_error(
                "consul:// takes no user name: give the ACL token as KVKIT_CONSUL_TOKEN",
            ));
        }
        let mut config = ConsulConfig::default().prefix(parts.prefix());
        config.endpoints = parts.hosts.clone();
        let query = &mut parts.query;
        query.durations(&mut config)?;
        config.datacenter = query.take("datacenter");
        config.token = query.take("token");
        if let Some(tls) = query.tls(parts.tls, "consul", "ca, cert, key")? {
            config.scheme = Scheme::Https;
            config.tls = Some(tls);
        }
        parts.query.finish("consul", URL_OPTIONS)?;
        Ok(config)
    }

    /// The URL form, without the token.
    pub(crate) fn to_url(&self) -> String {
        let mut query = QueryWriter::default();
        query.durations(self, &ConsulConfig::default());
        if let Some(dc) = &self.datacenter {
            query.push("datacenter", dc);
        }
        query.tls(&self.tls);
        let https = self.tls.is_some() || self.scheme == Scheme::Https;
        network_url("consul", https, None, &self.endpoints, &self.prefix, query)
    }

    /// Fills the token the configuration lacks from `lookup` (the variables of
    /// [`crate::config::env`]).
    pub(crate) fn with_secrets_from(mut self, lookup: &impl Fn(&str) -> Option<String>) -> Self {
        if self.token.is_none() {
            self.token = lookup(env::CONSUL_TOKEN).or_else(|| lookup(env::CONSUL_HTTP_TOKEN));
        }
        self
    }
}

impl DurationSettings for ConsulConfig {
    fn durations_mut(&mut self) -> Vec<(&'static str, &mut Duration)> {
        vec![
            ("connect_timeout", &mut self.connect_timeout),
            ("request_timeout", &mut self.request_timeout),
            ("lock_ttl", &mut self.lock_ttl),
            ("lock_delay", &mut self.lock_delay),
            ("min_session_ttl", &mut self.min_session_ttl),
            ("wait", &mut self.wait),
        ]
    }
}

/// The URL scheme.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Plain HTTP.
    #[default]
    Http,
    /// HTTPS (see [`TlsConfig`]).
    Https,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_deserializes_with_defaults() {
        let config: ConsulConfig = serde_json::from_str(
            r#"{"addresses": ["https://consul:8501"], "token": "t", "prefix": "app",
                "request_timeout": "2s", "lock_delay": 0.5, "tls": {"ca_file": "/ca.pem"}}"#,
        )
        .unwrap();
        assert_eq!(config.endpoints, ["https://consul:8501"]);
        assert_eq!(config.token.as_deref(), Some("t"));
        assert_eq!(config.request_timeout, Duration::from_secs(2));
        assert_eq!(config.lock_delay, Duration::from_millis(500));
        assert_eq!(config.min_session_ttl, Duration::from_secs(10));
        assert_eq!(
            config.tls.and_then(|t| t.ca_file),
            Some(std::path::PathBuf::from("/ca.pem"))
        );
        let empty: ConsulConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(empty.endpoints, ["127.0.0.1:8500"]);
        assert!(serde_json::from_str::<ConsulConfig>(r#"{"wait": "soon"}"#).is_err());
        assert!(serde_json::from_str::<ConsulConfig>(r#"{"unknown": 1}"#).is_err());
    }
}
