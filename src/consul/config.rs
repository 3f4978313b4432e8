//! [`ConsulConfig`]: where the Consul agent is and how to talk to it.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// How to reach Consul. Deserializable (durations as `"10s"`, `"500ms"` or a number
/// of seconds); every field has a default, so `{}` is a local agent on
/// `127.0.0.1:8500`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsulConfig {
    /// Agent addresses (`host:port`, or a full `http://` / `https://` URL). Requests
    /// go to the first; after a connection failure the next request goes to the next.
    pub addresses: Vec<String>,
    /// The scheme for addresses written without one.
    pub scheme: Scheme,
    /// The ACL token, sent as `X-Consul-Token`.
    pub token: Option<String>,
    /// The datacenter (`?dc=`); `None`: the agent's own.
    pub datacenter: Option<String>,
    /// Every key lives below this prefix in Consul (`""`: none). Normalised like a key.
    pub prefix: String,
    /// Timeout of one request (blocking queries get their wait on top).
    #[serde(deserialize_with = "de_duration")]
    pub request_timeout: Duration,
    /// TLS settings for `https`.
    pub tls: TlsConfig,
    /// The server's smallest session TTL (`session_ttl_min`, 10 s by default in
    /// Consul). TTLs of puts and locks are raised to it.
    #[serde(deserialize_with = "de_duration")]
    pub min_session_ttl: Duration,
    /// The TTL of lock sessions when [`crate::LockOptions::ttl`] is `None`.
    #[serde(deserialize_with = "de_duration")]
    pub lock_ttl: Duration,
    /// The lock-delay of lock sessions: after a holder's session is invalidated (not
    /// after a clean unlock), nobody can take its lock for this long. Consul's own
    /// default is 15 s; kvkit's is 1 s so a lost lock is taken over quickly.
    #[serde(deserialize_with = "de_duration")]
    pub lock_delay: Duration,
    /// How long one blocking query of a watch or lock waiter may wait (Consul caps it
    /// at 10 min).
    #[serde(deserialize_with = "de_duration")]
    pub wait: Duration,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        ConsulConfig {
            addresses: vec!["127.0.0.1:8500".to_owned()],
            scheme: Scheme::Http,
            token: None,
            datacenter: None,
            prefix: String::new(),
            request_timeout: Duration::from_secs(10),
            tls: TlsConfig::default(),
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
            addresses: vec![address.into()],
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

    /// Sets the request timeout.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Trusts this CA (PEM) instead of the system roots.
    pub fn ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.tls.ca_pem = Some(pem.into());
        self
    }
}

/// The URL scheme.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Plain HTTP.
    #[default]
    Http,
    /// HTTPS (see [`TlsConfig`]).
    Https,
}

/// TLS settings. Without a CA the system's roots are trusted.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// A CA certificate (PEM text) to trust instead of the system roots.
    pub ca_pem: Option<String>,
    /// A CA certificate file (PEM) to trust instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain (PEM text), for servers that verify clients.
    pub client_cert_pem: Option<String>,
    /// A client certificate chain file (PEM).
    pub client_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM text).
    pub client_key_pem: Option<String>,
    /// The client certificate's private key file (PEM).
    pub client_key_file: Option<PathBuf>,
}

/// Parses `"10s"`, `"1.5s"`, `"500ms"`, `"1m30s"`, `"2h"` or `"0"`.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += Duration::try_from_secs_f64(number * seconds).ok()?;
    }
    Some(total)
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Seconds(f64),
    }
    match Raw::deserialize(d)? {
        Raw::Text(s) => parse_duration(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid duration {s:?}"))),
        Raw::Seconds(n) => Duration::try_from_secs_f64(n).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("ten"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn config_deserializes_with_defaults() {
        let config: ConsulConfig = serde_json::from_str(
            r#"{"addresses": ["https://consul:8501"], "token": "t", "prefix": "app",
                "request_timeout": "2s", "lock_delay": 0.5, "tls": {"ca_file": "/ca.pem"}}"#,
        )
        .unwrap();
        assert_eq!(config.addresses, ["https://consul:8501"]);
        assert_eq!(config.token.as_deref(), Some("t"));
        assert_eq!(config.request_timeout, Duration::from_secs(2));
        assert_eq!(config.lock_delay, Duration::from_millis(500));
        assert_eq!(config.min_session_ttl, Duration::from_secs(10));
        assert_eq!(config.tls.ca_file, Some(PathBuf::from("/ca.pem")));
        let empty: ConsulConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(empty.addresses, ["127.0.0.1:8500"]);
        assert!(serde_json::from_str::<ConsulConfig>(r#"{"wait": "soon"}"#).is_err());
        assert!(serde_json::from_str::<ConsulConfig>(r#"{"unknown": 1}"#).is_err());
    }
}
