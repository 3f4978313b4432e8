//! The configuration of the etcd backend.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// How to reach and authenticate to an etcd cluster.
///
/// Deserialises from any serde format; durations are written as seconds (`1.5`) or as
/// strings with a unit (`"500ms"`, `"2s"`, `"1m"`). Every field has a default:
///
/// ```
/// # use kvkit::etcd::EtcdConfig;
/// let config = EtcdConfig::new(["127.0.0.1:2379"]).prefix("myapp");
/// assert_eq!(config.endpoints.len(), 1);
/// ```
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the cluster's members: `host:port`, `http://host:port` or
    /// `https://host:port`. Requests are balanced over them and fail over between them.
    /// Default: `["127.0.0.1:2379"]`.
    pub endpoints: Vec<String>,
    /// How long establishing a connection may take. Default: 3 s.
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// How long one request may take before it fails with `Error::Unavailable`.
    /// Default: 5 s.
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// TLS settings; `None` for plain HTTP/2. With TLS, endpoints without a scheme
    /// use `https`.
    pub tls: Option<EtcdTls>,
    /// User name for etcd's authentication (with `password`).
    pub username: Option<String>,
    /// Password of `username`.
    pub password: Option<String>,
    /// A prefix under which every kvkit key lives, so several applications can share
    /// a cluster. Normalised to end with `/` when not empty. Default: none.
    pub prefix: String,
}

/// TLS settings: a CA to verify the servers, and optionally a client certificate.
/// Each PEM may be given inline (`*_pem`) or as a file path (`*_file`); inline wins.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdTls {
    /// PEM of the CA certificate(s) that signed the servers' certificates.
    pub ca_pem: Option<String>,
    /// Path of a PEM file with the CA certificate(s).
    pub ca_file: Option<PathBuf>,
    /// PEM of the client certificate, for servers started with `--client-cert-auth`.
    pub cert_pem: Option<String>,
    /// Path of a PEM file with the client certificate.
    pub cert_file: Option<PathBuf>,
    /// PEM of the client certificate's private key.
    pub key_pem: Option<String>,
    /// Path of a PEM file with the client's private key.
    pub key_file: Option<PathBuf>,
    /// The name to verify in the servers' certificates, when it is not the host of
    /// the endpoint URL.
    pub domain_name: Option<String>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["127.0.0.1:2379".to_owned()],
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            tls: None,
            username: None,
            password: None,
            prefix: String::new(),
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

    /// Sets the TLS settings.
    pub fn tls(mut self, tls: EtcdTls) -> Self {
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
}

impl EtcdTls {
    /// TLS verifying the servers with this CA (PEM).
    pub fn with_ca_pem(ca_pem: impl Into<String>) -> Self {
        EtcdTls {
            ca_pem: Some(ca_pem.into()),
            ..EtcdTls::default()
        }
    }

    /// Adds a client certificate and key (PEM).
    pub fn identity_pem(mut self, cert_pem: impl Into<String>, key_pem: impl Into<String>) -> Self {
        self.cert_pem = Some(cert_pem.into());
        self.key_pem = Some(key_pem.into());
        self
    }
}

/// Deserialises a duration from seconds (a number) or a string with a unit.
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(f64),
        Text(String),
    }
    let invalid = |what: &str| serde::de::Error::custom(format!("invalid duration: {what}"));
    let seconds = match Raw::deserialize(deserializer)? {
        Raw::Seconds(s) => s,
        Raw::Text(text) => {
            let text = text.trim();
            let split = text
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(text.len());
            let (number, unit) = text.split_at(split);
            let number: f64 = number.parse().map_err(|_| invalid(text))?;
            let scale = match unit.trim() {
                "ms" => 0.001,
                "" | "s" => 1.0,
                "m" => 60.0,
                _ => return Err(invalid(text)),
            };
            number * scale
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| invalid(&seconds.to_string()))
}
