//! Choosing a store at run time: [`StoreConfig`] (from a config file or a URL) and the
//! pieces every backend's configuration shares (durations, [`TlsConfig`]).
//!
//! Every backend configuration follows one convention: `Default` where it makes sense,
//! unknown fields rejected, the same names for the same things (`endpoints`, `prefix`,
//! `connect_timeout`, `request_timeout`, `tls`), and durations written as
//! `"1500ms"`, `"2s"` or `"1m30s"` (a bare number is read as seconds). Durations longer
//! than [`MAX_DURATION`] are refused when parsed and again at `connect`, so no timer
//! arithmetic can overflow.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kvkit::Result<()> {
//! use kvkit::StoreConfig;
//!
//! let config = StoreConfig::from_url("memory://")?;
//! assert_eq!(config.to_string(), "memory://");
//! let kv = config.connect().await?;
//! kv.put("a", "1", kvkit::PutOptions::default()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! URL forms (query options after `?`, `&`-separated, percent-encoded):
//!
//! | URL | store |
//! | --- | --- |
//! | `memory://` | [`crate::memory::Memory`] |
//! | `redb:///abs/path.redb`, `redb://rel/path.redb` | `Redb` (feature `redb`) |
//! | `etcd://h1:2379,h2:2379/prefix`, `etcd+https://...` | `Etcd` (feature `etcd`) |
//! | `zk://h1:2181,h2:2181/root`, `zookeeper://...` | `Zookeeper` (feature `zookeeper`) |
//! | `consul://host:8500/prefix`, `consul+https://...` | `Consul` (feature `consul`) |
//!
//! Secrets need not be in the URL: [`StoreConfig::connect`] fills unset ones from the
//! environment (see [`StoreConfig::with_secrets_from`] for the variable names).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::any::AnyBackend;
use crate::error::{Error, Result};
use crate::kv::Kv;

/// The longest duration any configuration accepts (one year): longer values are an
/// error, never a panic or an overflow in `Instant + Duration`.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The longest duration string accepted, in bytes.
const MAX_DURATION_TEXT: usize = 64;

/// A [`crate::Error::Config`] with this reason.
pub(crate) fn config_error(reason: impl Into<String>) -> Error {
    Error::Config {
        reason: reason.into(),
    }
}

/// Parses a duration written as `"1500ms"`, `"2s"`, `"1m30s"`, `"1h 5m"` (humantime's
/// format) or a bare number of seconds (`"1.5"`). Errors for an empty, unparsable,
/// overlong or negative value, and for more than [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    if text.len() > MAX_DURATION_TEXT {
        return Err(config_error(format!(
            "duration of {} characters is too long (at most {MAX_DURATION_TEXT})",
            text.len()
        )));
    }
    let parsed = if text.is_empty() {
        return Err(config_error(
            "empty duration (write e.g. \"2s\" or \"1500ms\")",
        ));
    } else if text == "0" {
        Duration::ZERO
    } else if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let seconds: f64 = text
            .parse()
            .map_err(|_| config_error(format!("invalid duration {text:?}")))?;
        seconds_to_duration(seconds)?
    } else {
        match humantime::parse_duration(text) {
            Ok(parsed) => parsed,
            // Go's fractional form (`"1.5s"`, `"0.5h"`), common in etcd and Consul configs.
            Err(_)
                if text.contains('.')
                    && let Some(parsed) = parse_go_duration(text) =>
            {
                parsed
            }
            Err(e) => {
                return Err(config_error(format!(
                    "invalid duration {text:?}: {e} (write e.g. \"2s\", \"1500ms\", \"1m30s\")"
                )));
            }
        }
    };
    check_duration("duration", parsed)
}

/// Parses Go's `time.ParseDuration` form (`"10s"`, `"1.5s"`, `"1m0.5s"`, `"0"`), as
/// etcd and Consul write durations (also the Consul emulator's parser); `None` when it
/// is not one or does not fit.
pub(crate) fn parse_go_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    if text.is_empty() {
        return None;
    }
    let mut rest = text;
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&end| end > 0)?;
        let number: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total = total.checked_add(Duration::try_from_secs_f64(number * scale).ok()?)?;
    }
    Some(total)
}

fn seconds_to_duration(seconds: f64) -> Result<Duration> {
    let duration = Duration::try_from_secs_f64(seconds)
        .map_err(|_| config_error(format!("invalid duration of {seconds} seconds")))?;
    check_duration("duration", duration)
}

/// Writes a duration the way [`parse_duration`] reads it, without spaces: `"1m30s"`,
/// `"1s500ms"`, `"0s"`.
pub fn format_duration(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".to_owned();
    }
    humantime::format_duration(duration)
        .to_string()
        .replace(' ', "")
}

/// Errors when `duration` (the setting `what`) exceeds [`MAX_DURATION`].
pub fn check_duration(what: &str, duration: Duration) -> Result<Duration> {
    if duration > MAX_DURATION {
        Err(config_error(format!(
            "{what} of {}s is too long (at most {}s)",
            duration.as_secs(),
            MAX_DURATION.as_secs()
        )))
    } else {
        Ok(duration)
    }
}

/// Serde of a [`Duration`] as a human-readable string (`"1m30s"`); reads a string or a
/// number of seconds. Use with `#[serde(with = "kvkit::config::duration")]`.
pub mod duration {
    use super::*;

    /// Writes `"1m30s"`.
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    /// Reads `"1m30s"`, `"1500ms"` or a number of seconds.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Seconds(f64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(text) => parse_duration(&text),
            Raw::Seconds(seconds) => seconds_to_duration(seconds),
        }
        .map_err(|e| serde::de::Error::custom(reason_of(e)))
    }

    fn reason_of(e: Error) -> String {
        match e {
            Error::Config { reason } => reason,
            other => other.to_string(),
        }
    }
}

/// TLS settings shared by every network backend: the CA that signed the servers'
/// certificates, an optional client certificate and key, and the name to verify.
/// Each PEM is given inline (`*_pem`) or as a file path (`*_file`), not both.
/// `Debug` never shows the private key.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM of the CA certificate(s); `None` with no `ca_file`: the system's roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Path of a PEM file with the CA certificate(s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM of the client certificate chain, for servers that verify clients.
    #[serde(skip_serializing_if = "Option::is_none", alias = "client_cert_pem")]
    pub cert_pem: Option<String>,
    /// Path of a PEM file with the client certificate chain.
    #[serde(skip_serializing_if = "Option::is_none", alias = "client_cert_file")]
    pub cert_file: Option<PathBuf>,
    /// PEM of the client certificate's private key (a secret).
    #[serde(skip_serializing_if = "Option::is_none", alias = "client_key_pem")]
    pub key_pem: Option<String>,
    /// Path of a PEM file with the client's private key.
    #[serde(skip_serializing_if = "Option::is_none", alias = "client_key_file")]
    pub key_file: Option<PathBuf>,
    /// The name to verify in the servers' certificates, when it is not the host of
    /// the endpoint.
    #[serde(skip_serializing_if = "Option::is_none", alias = "domain_name")]
    pub server_name: Option<String>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_pem", &self.ca_pem.as_ref().map(|p| pem_summary(p)))
            .field("ca_file", &self.ca_file)
            .field("cert_pem", &self.cert_pem.as_ref().map(|p| pem_summary(p)))
            .field("cert_file", &self.cert_file)
            .field("key_pem", &self.key_pem.as_ref().map(|_| REDACTED))
            .field("key_file", &self.key_file)
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// What `Debug` shows in place of a secret.
pub(crate) const REDACTED: &str = "<redacted>";

fn pem_summary(pem: &str) -> String {
    format!("<{} bytes of PEM>", pem.len())
}

/// PEM material read by [`TlsConfig::load`]. `Debug` never shows the key.
#[derive(Clone, Default)]
pub struct TlsMaterial {
    /// The CA certificate(s), PEM.
    pub ca: Option<Vec<u8>>,
    /// The client certificate chain and its private key, PEM.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to verify in the servers' certificates.
    pub server_name: Option<String>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca", &self.ca.as_ref().map(Vec::len))
            .field("identity", &self.identity.as_ref().map(|_| REDACTED))
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl TlsConfig {
    /// TLS verifying the servers with this CA (PEM).
    pub fn with_ca_pem(ca_pem: impl Into<String>) -> Self {
        TlsConfig {
            ca_pem: Some(ca_pem.into()),
            ..TlsConfig::default()
        }
    }

    /// Adds a client certificate and key (PEM).
    pub fn identity_pem(mut self, cert_pem: impl Into<String>, key_pem: impl Into<String>) -> Self {
        self.cert_pem = Some(cert_pem.into());
        self.key_pem = Some(key_pem.into());
        self
    }

    /// Sets the name to verify in the servers' certificates.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Checks the settings without reading files: each PEM given once at most, a
    /// certificate only with its key.
    pub fn validate(&self) -> Result<()> {
        let pairs = [
            (
                "ca_pem",
                self.ca_pem.is_some(),
                "ca_file",
                self.ca_file.is_some(),
            ),
            (
                "cert_pem",
                self.cert_pem.is_some(),
                "cert_file",
                self.cert_file.is_some(),
            ),
            (
                "key_pem",
                self.key_pem.is_some(),
                "key_file",
                self.key_file.is_some(),
            ),
        ];
        for (inline, has_inline, file, has_file) in pairs {
            if has_inline && has_file {
                return Err(config_error(format!(
                    "tls: give either {inline} or {file}, not both"
                )));
            }
        }
        let has_cert = self.cert_pem.is_some() || self.cert_file.is_some();
        let has_key = self.key_pem.is_some() || self.key_file.is_some();
        if has_cert != has_key {
            return Err(config_error(
                "tls: a client certificate needs both the certificate and the key",
            ));
        }
        if self.server_name.as_deref().is_some_and(str::is_empty) {
            return Err(config_error("tls: server_name is empty"));
        }
        Ok(())
    }

    /// Validates and reads the PEMs (inline or from their files).
    pub fn load(&self) -> Result<TlsMaterial> {
        self.validate()?;
        let ca = read_pem(&self.ca_pem, &self.ca_file, "CA certificate")?;
        let cert = read_pem(&self.cert_pem, &self.cert_file, "client certificate")?;
        let key = read_pem(&self.key_pem, &self.key_file, "client key")?;
        Ok(TlsMaterial {
            ca,
            identity: cert.zip(key),
            server_name: self.server_name.clone(),
        })
    }
}

fn read_pem(
    inline: &Option<String>,
    file: &Option<PathBuf>,
    what: &str,
) -> Result<Option<Vec<u8>>> {
    if let Some(inline) = inline {
        return Ok(Some(inline.as_bytes().to_vec()));
    }
    match file {
        Some(path) => std::fs::read(path).map(Some).map_err(|e| {
            config_error(format!(
                "cannot read the {what} file {}: {e}",
                path.display()
            ))
        }),
        None => Ok(None),
    }
}

/// The in-memory store has nothing to configure.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {}

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
}

/// Which store to use and how to reach it: a serde enum tagged by `backend`, so a
/// service reads it from its own config file:
///
/// ```toml
/// [store]
/// backend = "etcd"
/// endpoints = ["10.0.0.1:2379", "10.0.0.2:2379"]
/// prefix = "myapp"
/// request_timeout = "2s"
/// ```
///
/// Variants exist for the backends compiled in; naming another one is an error that
/// says which cargo feature to enable. `Display` writes the URL form back, without
/// secrets (passwords, tokens, inline keys).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "backend",
    rename_all = "lowercase",
    try_from = "raw::RawStoreConfig"
)]
#[non_exhaustive]
// Read once at start-up: the size of a config is not worth boxing its variants (which
// would make users match on boxes). Only a partial feature set makes the sizes differ.
#[allow(clippy::large_enum_variant)]
pub enum StoreConfig {
    /// The in-memory store.
    Memory(MemoryConfig),
    /// The embedded redb store.
    #[cfg(feature = "redb")]
    Redb(RedbConfig),
    /// etcd v3.
    #[cfg(feature = "etcd")]
    Etcd(crate::etcd::EtcdConfig),
    /// ZooKeeper.
    #[cfg(feature = "zookeeper")]
    Zookeeper(crate::zookeeper::ZookeeperConfig),
    /// Consul.
    #[cfg(feature = "consul")]
    Consul(crate::consul::ConsulConfig),
}

/// The deserialisation form of [`StoreConfig`], knowing every backend name so that a
/// backend whose feature is off gets an error naming the feature.
mod raw {
    use super::*;

    #[derive(Deserialize)]
    #[serde(tag = "backend", rename_all = "lowercase")]
    #[allow(clippy::large_enum_variant)]
    pub(super) enum RawStoreConfig {
        Memory(MemoryConfig),
        #[cfg(feature = "redb")]
        Redb(RedbConfig),
        #[cfg(not(feature = "redb"))]
        Redb(serde::de::IgnoredAny),
        #[cfg(feature = "etcd")]
        Etcd(crate::etcd::EtcdConfig),
        #[cfg(not(feature = "etcd"))]
        Etcd(serde::de::IgnoredAny),
        #[cfg(feature = "zookeeper")]
        Zookeeper(crate::zookeeper::ZookeeperConfig),
        #[cfg(not(feature = "zookeeper"))]
        Zookeeper(serde::de::IgnoredAny),
        #[cfg(feature = "consul")]
        Consul(crate::consul::ConsulConfig),
        #[cfg(not(feature = "consul"))]
        Consul(serde::de::IgnoredAny),
    }

    impl TryFrom<RawStoreConfig> for StoreConfig {
        type Error = String;

        fn try_from(raw: RawStoreConfig) -> std::result::Result<Self, String> {
            #[allow(unreachable_patterns)]
            Ok(match raw {
                RawStoreConfig::Memory(c) => StoreConfig::Memory(c),
                #[cfg(feature = "redb")]
                RawStoreConfig::Redb(c) => StoreConfig::Redb(c),
                #[cfg(feature = "etcd")]
                RawStoreConfig::Etcd(c) => StoreConfig::Etcd(c),
                #[cfg(feature = "zookeeper")]
                RawStoreConfig::Zookeeper(c) => StoreConfig::Zookeeper(c),
                #[cfg(feature = "consul")]
                RawStoreConfig::Consul(c) => StoreConfig::Consul(c),
                #[cfg(not(feature = "redb"))]
                RawStoreConfig::Redb(_) => return Err(missing_feature_reason("redb", "redb")),
                #[cfg(not(feature = "etcd"))]
                RawStoreConfig::Etcd(_) => return Err(missing_feature_reason("etcd", "etcd")),
                #[cfg(not(feature = "zookeeper"))]
                RawStoreConfig::Zookeeper(_) => {
                    return Err(missing_feature_reason("zookeeper", "zookeeper"));
                }
                #[cfg(not(feature = "consul"))]
                RawStoreConfig::Consul(_) => {
                    return Err(missing_feature_reason("consul", "consul"));
                }
            })
        }
    }
}

#[allow(dead_code)] // unused when every backend is compiled in
fn missing_feature_reason(backend: &str, feature: &str) -> String {
    format!(
        "the {backend} backend is not compiled in: enable the cargo feature `{feature}` of kvkit"
    )
}

/// The environment variables [`StoreConfig::with_secrets_from_env`] reads.
pub mod env {
    /// etcd user name (when the config has none).
    pub const ETCD_USERNAME: &str = "KVKIT_ETCD_USERNAME";
    /// etcd password (when the config has none).
    pub const ETCD_PASSWORD: &str = "KVKIT_ETCD_PASSWORD";
    /// Consul ACL token (when the config has none).
    pub const CONSUL_TOKEN: &str = "KVKIT_CONSUL_TOKEN";
    /// Consul's own token variable, read after [`CONSUL_TOKEN`].
    pub const CONSUL_HTTP_TOKEN: &str = "CONSUL_HTTP_TOKEN";
    /// ZooKeeper digest credentials, `user:password` (when the config has none).
    pub const ZK_DIGEST: &str = "KVKIT_ZK_DIGEST";
}

impl StoreConfig {
    /// Parses a store URL (see the [module docs](self) for the forms and
    /// `docs/from-libkv.md` for every option). Reads no environment variable.
    pub fn from_url(url: &str) -> Result<StoreConfig> {
        url::parse(url)
    }

    /// The backend's short name (`"memory"`, `"redb"`, `"etcd"`, `"zookeeper"`,
    /// `"consul"`).
    pub fn backend_name(&self) -> &'static str {
        match self {
            StoreConfig::Memory(_) => "memory",
            #[cfg(feature = "redb")]
            StoreConfig::Redb(_) => "redb",
            #[cfg(feature = "etcd")]
            StoreConfig::Etcd(_) => "etcd",
            #[cfg(feature = "zookeeper")]
            StoreConfig::Zookeeper(_) => "zookeeper",
            #[cfg(feature = "consul")]
            StoreConfig::Consul(_) => "consul",
        }
    }

    /// Checks every setting without connecting: durations within [`MAX_DURATION`],
    /// endpoints present, TLS settings consistent.
    pub fn validate(&self) -> Result<()> {
        match self {
            StoreConfig::Memory(_) => Ok(()),
            #[cfg(feature = "redb")]
            StoreConfig::Redb(c) => c.validate(),
            #[cfg(feature = "etcd")]
            StoreConfig::Etcd(c) => c.validate(),
            #[cfg(feature = "zookeeper")]
            StoreConfig::Zookeeper(c) => c.validate(),
            #[cfg(feature = "consul")]
            StoreConfig::Consul(c) => c.validate(),
        }
    }

    /// Fills secrets the configuration lacks from `lookup(name)`: etcd's user name and
    /// password from `KVKIT_ETCD_USERNAME` / `KVKIT_ETCD_PASSWORD`, Consul's token from
    /// `KVKIT_CONSUL_TOKEN` then `CONSUL_HTTP_TOKEN`, ZooKeeper's digest credentials
    /// from `KVKIT_ZK_DIGEST` (`user:password`). A secret set in the configuration wins.
    pub fn with_secrets_from(self, lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let _ = &lookup;
        match self {
            #[cfg(feature = "etcd")]
            StoreConfig::Etcd(mut c) => {
                if c.username.is_none() {
                    c.username = lookup(env::ETCD_USERNAME);
                }
                if c.password.is_none() && c.username.is_some() {
                    c.password = lookup(env::ETCD_PASSWORD);
                }
                Ok(StoreConfig::Etcd(c))
            }
            #[cfg(feature = "consul")]
            StoreConfig::Consul(mut c) => {
                if c.token.is_none() {
                    c.token = lookup(env::CONSUL_TOKEN).or_else(|| lookup(env::CONSUL_HTTP_TOKEN));
                }
                Ok(StoreConfig::Consul(c))
            }
            #[cfg(feature = "zookeeper")]
            StoreConfig::Zookeeper(mut c) => {
                if c.digest.is_none()
                    && let Some(text) = lookup(env::ZK_DIGEST)
                {
                    let (user, password) = text.split_once(':').ok_or_else(|| {
                        config_error(format!(
                            "{} must be user:password (the value is not shown)",
                            env::ZK_DIGEST
                        ))
                    })?;
                    c = c.digest(user, password);
                }
                Ok(StoreConfig::Zookeeper(c))
            }
            other => Ok(other),
        }
    }

    /// [`StoreConfig::with_secrets_from`] the process environment.
    pub fn with_secrets_from_env(self) -> Result<Self> {
        self.with_secrets_from(|name| std::env::var(name).ok())
    }

    /// Fills missing secrets from the environment, validates, and connects.
    pub async fn connect(self) -> Result<Kv<AnyBackend>> {
        let config = self.with_secrets_from_env()?;
        config.validate()?;
        let backend = match config {
            StoreConfig::Memory(_) => AnyBackend::from(crate::memory::Memory::new()),
            #[cfg(feature = "redb")]
            StoreConfig::Redb(c) => AnyBackend::from(crate::redb::Redb::open(&c.path)?),
            #[cfg(feature = "etcd")]
            StoreConfig::Etcd(c) => AnyBackend::from(crate::etcd::Etcd::connect(c).await?),
            #[cfg(feature = "zookeeper")]
            StoreConfig::Zookeeper(c) => {
                AnyBackend::from(crate::zookeeper::Zookeeper::connect(c).await?)
            }
            #[cfg(feature = "consul")]
            StoreConfig::Consul(c) => AnyBackend::from(crate::consul::Consul::connect(c).await?),
        };
        Ok(Kv::new(backend))
    }
}

impl std::str::FromStr for StoreConfig {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self> {
        StoreConfig::from_url(url)
    }
}

impl fmt::Display for StoreConfig {
    /// The URL form, without secrets: passwords, tokens, digest credentials and inline
    /// PEMs are left out (file paths of certificates and keys are kept).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&url::write(self))
    }
}

/// Connects to the store named by `url` (see [`StoreConfig`] and the
/// [module docs](crate::config)): parses it, fills unset secrets from the environment,
/// validates every setting and connects.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> kvkit::Result<()> {
/// let kv = kvkit::connect("memory://").await?;
/// kv.put("app/config", "v1", kvkit::PutOptions::default()).await?;
/// assert_eq!(kv.get("app/config").await?.value, "v1");
/// # Ok(())
/// # }
/// ```
pub async fn connect(url: &str) -> Result<Kv<AnyBackend>> {
    StoreConfig::from_url(url)?.connect().await
}

/// The URL codec of [`StoreConfig`].
mod url {
    use super::*;

    /// One parsed query option.
    struct Query {
        pairs: Vec<(String, String)>,
    }

    impl Query {
        fn take(&mut self, name: &str) -> Option<String> {
            let at = self.pairs.iter().position(|(k, _)| k == name)?;
            Some(self.pairs.remove(at).1)
        }

        #[allow(dead_code)] // unused without network backends
        fn duration(&mut self, name: &str) -> Result<Option<Duration>> {
            self.take(name)
                .map(|text| {
                    parse_duration(&text).map_err(|e| match e {
                        Error::Config { reason } => {
                            config_error(format!("option {name}: {reason}"))
                        }
                        other => other,
                    })
                })
                .transpose()
        }

        #[allow(dead_code)]
        fn bool(&mut self, name: &str) -> Result<Option<bool>> {
            self.take(name)
                .map(|text| match text.as_str() {
                    "true" | "1" | "yes" => Ok(true),
                    "false" | "0" | "no" => Ok(false),
                    _ => Err(config_error(format!(
                        "option {name}: expected true or false, got {text:?}"
                    ))),
                })
                .transpose()
        }

        #[allow(dead_code)]
        fn tls(&mut self) -> Option<TlsConfig> {
            let ca = self.take("ca").map(PathBuf::from);
            let cert = self.take("cert").map(PathBuf::from);
            let key = self.take("key").map(PathBuf::from);
            let server_name = self.take("server_name");
            if ca.is_none() && cert.is_none() && key.is_none() && server_name.is_none() {
                return None;
            }
            Some(TlsConfig {
                ca_file: ca,
                cert_file: cert,
                key_file: key,
                server_name,
                ..TlsConfig::default()
            })
        }

        /// Errors when an option is left that the backend does not know.
        fn finish(self, backend: &str, known: &[&str]) -> Result<()> {
            match self.pairs.first() {
                None => Ok(()),
                Some((name, _)) => Err(config_error(format!(
                    "unknown option {name:?} for {backend} (known: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ))),
            }
        }
    }

    fn percent_decode(text: &str, what: &str) -> Result<String> {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'%' => {
                    let hex = bytes
                        .get(i + 1..i + 3)
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .ok_or_else(|| {
                            config_error(format!("bad percent-encoding in the {what}"))
                        })?;
                    out.push(hex);
                    i += 3;
                }
                b'+' if what == "query" => {
                    out.push(b' ');
                    i += 1;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| config_error(format!("the {what} is not UTF-8")))
    }

    /// Percent-encodes everything but unreserved characters and those in `keep`.
    fn encode(text: &str, keep: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for b in text.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.as_bytes().contains(&b) {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    /// `scheme://authority/path?query` split into its parts, decoded.
    struct Parts {
        scheme: String,
        tls: bool,
        userinfo: Option<(String, Option<String>)>,
        hosts: Vec<String>,
        path: String,
        query: Query,
    }

    fn split(url: &str) -> Result<Parts> {
        const MAX_URL: usize = 8192;
        if url.len() > MAX_URL {
            return Err(config_error(format!(
                "store URL of {} bytes is too long (at most {MAX_URL})",
                url.len()
            )));
        }
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            config_error(
                "a store URL looks like scheme://..., e.g. memory://, redb:///data.redb, \
                 etcd://host:2379/prefix, zk://host:2181/root, consul://host:8500/prefix",
            )
        })?;
        let scheme = scheme.to_ascii_lowercase();
        let (scheme, tls) = match scheme.split_once('+') {
            Some((base, "https")) => (base.to_owned(), true),
            Some((base, "http")) => (base.to_owned(), false),
            Some((_, other)) => {
                return Err(config_error(format!(
                    "unknown transport {other:?} in the scheme (use +https or +http)"
                )));
            }
            None => (scheme, false),
        };
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, query),
            None => (rest, ""),
        };
        if rest.contains('#') {
            return Err(config_error("a store URL has no #fragment"));
        }
        let mut pairs = Vec::new();
        for item in query.split('&').filter(|s| !s.is_empty()) {
            let (name, value) = item.split_once('=').ok_or_else(|| {
                config_error(format!("option {item:?} has no value (write name=value)"))
            })?;
            let name = percent_decode(name, "query")?;
            if pairs.iter().any(|(n, _): &(String, String)| *n == name) {
                return Err(config_error(format!("option {name:?} is given twice")));
            }
            pairs.push((name, percent_decode(value, "query")?));
        }
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, ""),
        };
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((user, hosts)) => {
                let (name, password) = match user.split_once(':') {
                    Some((name, password)) => (name, Some(percent_decode(password, "password")?)),
                    None => (user, None),
                };
                (Some((percent_decode(name, "user name")?, password)), hosts)
            }
            None => (None, authority),
        };
        let hosts = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| percent_decode(h, "host list"))
            .collect::<Result<Vec<_>>>()?;
        Ok(Parts {
            scheme,
            tls,
            userinfo,
            hosts,
            path: percent_decode(path, "path")?,
            query: Query { pairs },
        })
    }

    #[allow(dead_code)]
    fn missing_feature(backend: &str, feature: &str) -> Error {
        config_error(missing_feature_reason(backend, feature))
    }

    pub(super) fn parse(url: &str) -> Result<StoreConfig> {
        let parts = split(url.trim())?;
        let no_tls = |parts: &Parts| {
            if parts.tls {
                Err(config_error(format!(
                    "{}+https makes no sense",
                    parts.scheme
                )))
            } else {
                Ok(())
            }
        };
        match parts.scheme.as_str() {
            "memory" => {
                no_tls(&parts)?;
                if !parts.hosts.is_empty() || !parts.path.is_empty() || parts.userinfo.is_some() {
                    return Err(config_error("memory:// takes no host or path"));
                }
                parts.query.finish("memory", &[])?;
                Ok(StoreConfig::Memory(MemoryConfig {}))
            }
            "redb" => {
                no_tls(&parts)?;
                redb(parts)
            }
            "etcd" => etcd(parts),
            "zk" | "zookeeper" => {
                no_tls(&parts)?;
                zookeeper(parts)
            }
            "consul" => consul(parts),
            other => Err(config_error(format!(
                "unknown store scheme {other:?} (known: memory, redb, etcd, zk, zookeeper, consul)"
            ))),
        }
    }

    #[cfg(feature = "redb")]
    fn redb(parts: Parts) -> Result<StoreConfig> {
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
        Ok(StoreConfig::Redb(RedbConfig::new(path)))
    }

    #[cfg(not(feature = "redb"))]
    fn redb(_: Parts) -> Result<StoreConfig> {
        Err(missing_feature("redb", "redb"))
    }

    /// The path of a network URL as a prefix: without its leading `/`.
    #[allow(dead_code)]
    fn prefix_of(path: &str) -> String {
        path.trim_start_matches('/').to_owned()
    }

    #[cfg(feature = "etcd")]
    fn etcd(mut parts: Parts) -> Result<StoreConfig> {
        use crate::etcd::EtcdConfig;
        const KNOWN: &[&str] = &[
            "connect_timeout",
            "request_timeout",
            "lock_ttl",
            "ca",
            "cert",
            "key",
            "server_name",
        ];
        if parts.hosts.is_empty() {
            return Err(config_error("etcd:// needs at least one host:port"));
        }
        let mut config = EtcdConfig::new(parts.hosts.clone()).prefix(prefix_of(&parts.path));
        if let Some((user, password)) = parts.userinfo.take() {
            config.username = Some(user);
            config.password = password;
        }
        let q = &mut parts.query;
        if let Some(d) = q.duration("connect_timeout")? {
            config.connect_timeout = d;
        }
        if let Some(d) = q.duration("request_timeout")? {
            config.request_timeout = d;
        }
        if let Some(d) = q.duration("lock_ttl")? {
            config.lock_ttl = d;
        }
        let tls = q.tls();
        if tls.is_some() && !parts.tls {
            return Err(config_error(
                "TLS options (ca, cert, key, server_name) need etcd+https://",
            ));
        }
        if parts.tls {
            config.tls = Some(tls.unwrap_or_default());
        }
        parts.query.finish("etcd", KNOWN)?;
        Ok(StoreConfig::Etcd(config))
    }

    #[cfg(not(feature = "etcd"))]
    fn etcd(_: Parts) -> Result<StoreConfig> {
        Err(missing_feature("etcd", "etcd"))
    }

    #[cfg(feature = "zookeeper")]
    fn zookeeper(mut parts: Parts) -> Result<StoreConfig> {
        use crate::zookeeper::{ZookeeperConfig, ZookeeperEncoding};
        const KNOWN: &[&str] = &[
            "connect_timeout",
            "request_timeout",
            "session_timeout",
            "encoding",
            "multi_read",
        ];
        if parts.hosts.is_empty() {
            return Err(config_error("zk:// needs at least one host:port"));
        }
        let mut config = ZookeeperConfig::new(parts.hosts.join(","));
        if !parts.path.is_empty() {
            config = config.root(parts.path.clone());
        }
        if let Some((user, password)) = parts.userinfo.take() {
            let password = password.ok_or_else(|| {
                config_error("zk:// digest credentials are user:password@ (or KVKIT_ZK_DIGEST)")
            })?;
            config = config.digest(user, password);
        }
        let q = &mut parts.query;
        if let Some(d) = q.duration("connect_timeout")? {
            config.connect_timeout = d;
        }
        if let Some(d) = q.duration("request_timeout")? {
            config.request_timeout = d;
        }
        if let Some(d) = q.duration("session_timeout")? {
            config.session_timeout = d;
        }
        if let Some(encoding) = q.take("encoding") {
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
        if let Some(multi_read) = q.bool("multi_read")? {
            config.multi_read = multi_read;
        }
        parts.query.finish("zookeeper", KNOWN)?;
        Ok(StoreConfig::Zookeeper(config))
    }

    #[cfg(not(feature = "zookeeper"))]
    fn zookeeper(_: Parts) -> Result<StoreConfig> {
        Err(missing_feature("zookeeper", "zookeeper"))
    }

    #[cfg(feature = "consul")]
    fn consul(mut parts: Parts) -> Result<StoreConfig> {
        use crate::consul::{ConsulConfig, Scheme};
        const KNOWN: &[&str] = &[
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
        if parts.hosts.is_empty() {
            return Err(config_error("consul:// needs at least one host:port"));
        }
        if parts.userinfo.is_some() {
            return Err(config_error(
                "consul:// takes no user name: give the ACL token as KVKIT_CONSUL_TOKEN",
            ));
        }
        let mut config = ConsulConfig::default().prefix(prefix_of(&parts.path));
        config.endpoints = parts.hosts.clone();
        let q = &mut parts.query;
        for (name, slot) in [
            ("connect_timeout", &mut config.connect_timeout),
            ("request_timeout", &mut config.request_timeout),
            ("lock_ttl", &mut config.lock_ttl),
            ("lock_delay", &mut config.lock_delay),
            ("min_session_ttl", &mut config.min_session_ttl),
            ("wait", &mut config.wait),
        ] {
            if let Some(d) = q.duration(name)? {
                *slot = d;
            }
        }
        config.datacenter = q.take("datacenter");
        config.token = q.take("token");
        let tls = q.tls();
        if tls.is_some() && !parts.tls {
            return Err(config_error(
                "TLS options (ca, cert, key) need consul+https://",
            ));
        }
        if parts.tls {
            config.scheme = Scheme::Https;
            config.tls = Some(tls.unwrap_or_default());
        }
        parts.query.finish("consul", KNOWN)?;
        Ok(StoreConfig::Consul(config))
    }

    #[cfg(not(feature = "consul"))]
    fn consul(_: Parts) -> Result<StoreConfig> {
        Err(missing_feature("consul", "consul"))
    }

    /// Builds `?a=1&b=2` from the options that differ from the defaults.
    #[derive(Default)]
    struct QueryWriter(Vec<String>);

    impl QueryWriter {
        #[allow(dead_code)]
        fn push(&mut self, name: &str, value: &str) {
            self.0.push(format!("{name}={}", encode(value, ":/")));
        }

        #[allow(dead_code)]
        fn duration(&mut self, name: &str, value: Duration, default: Duration) {
            if value != default {
                self.push(name, &format_duration(value));
            }
        }

        #[allow(dead_code)]
        fn tls(&mut self, tls: &Option<TlsConfig>) {
            let Some(tls) = tls else { return };
            fn path(p: &Option<PathBuf>) -> Option<std::borrow::Cow<'_, str>> {
                p.as_deref().map(Path::to_string_lossy)
            }
            if let Some(ca) = path(&tls.ca_file) {
                self.push("ca", &ca);
            }
            if let Some(cert) = path(&tls.cert_file) {
                self.push("cert", &cert);
            }
            if let Some(key) = path(&tls.key_file) {
                self.push("key", &key);
            }
            if let Some(name) = &tls.server_name {
                self.push("server_name", name);
            }
        }

        #[allow(dead_code)]
        fn finish(self) -> String {
            if self.0.is_empty() {
                String::new()
            } else {
                format!("?{}", self.0.join("&"))
            }
        }
    }

    #[allow(dead_code)]
    fn hosts(endpoints: &[String], https: bool) -> String {
        endpoints
            .iter()
            .map(|e| {
                let bare = if https {
                    e.strip_prefix("https://")
                } else {
                    e.strip_prefix("http://")
                };
                encode(bare.unwrap_or(e), ":[]")
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    #[allow(dead_code)]
    fn path_of(prefix: &str) -> String {
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            String::new()
        } else {
            format!("/{}", encode(prefix, "/"))
        }
    }

    pub(super) fn write(config: &StoreConfig) -> String {
        match config {
            StoreConfig::Memory(_) => "memory://".to_owned(),
            #[cfg(feature = "redb")]
            StoreConfig::Redb(c) => {
                let path = c.path.to_string_lossy();
                format!("redb://{}", encode(&path, "/"))
            }
            #[cfg(feature = "etcd")]
            StoreConfig::Etcd(c) => {
                let defaults = crate::etcd::EtcdConfig::default();
                let https = c.tls.is_some();
                let user = c
                    .username
                    .as_ref()
                    .map(|u| format!("{}@", encode(u, "")))
                    .unwrap_or_default();
                let mut q = QueryWriter::default();
                q.duration(
                    "connect_timeout",
                    c.connect_timeout,
                    defaults.connect_timeout,
                );
                q.duration(
                    "request_timeout",
                    c.request_timeout,
                    defaults.request_timeout,
                );
                q.duration("lock_ttl", c.lock_ttl, defaults.lock_ttl);
                q.tls(&c.tls);
                format!(
                    "etcd{}://{user}{}{}{}",
                    if https { "+https" } else { "" },
                    hosts(&c.endpoints, https),
                    path_of(&c.prefix),
                    q.finish()
                )
            }
            #[cfg(feature = "zookeeper")]
            StoreConfig::Zookeeper(c) => {
                let defaults = crate::zookeeper::ZookeeperConfig::new("");
                let mut q = QueryWriter::default();
                q.duration(
                    "connect_timeout",
                    c.connect_timeout,
                    defaults.connect_timeout,
                );
                q.duration(
                    "request_timeout",
                    c.request_timeout,
                    defaults.request_timeout,
                );
                q.duration(
                    "session_timeout",
                    c.session_timeout,
                    defaults.session_timeout,
                );
                if c.encoding != defaults.encoding {
                    q.push("encoding", "raw");
                }
                if c.multi_read != defaults.multi_read {
                    q.push("multi_read", &c.multi_read.to_string());
                }
                // Digest credentials are one secret (`user:password`): left out entirely.
                format!(
                    "zk://{}{}{}",
                    hosts(&c.endpoints, false),
                    path_of(&c.prefix),
                    q.finish()
                )
            }
            #[cfg(feature = "consul")]
            StoreConfig::Consul(c) => {
                let defaults = crate::consul::ConsulConfig::default();
                let https = c.tls.is_some() || c.scheme == crate::consul::Scheme::Https;
                let mut q = QueryWriter::default();
                q.duration(
                    "connect_timeout",
                    c.connect_timeout,
                    defaults.connect_timeout,
                );
                q.duration(
                    "request_timeout",
                    c.request_timeout,
                    defaults.request_timeout,
                );
                q.duration("lock_ttl", c.lock_ttl, defaults.lock_ttl);
                q.duration("lock_delay", c.lock_delay, defaults.lock_delay);
                q.duration(
                    "min_session_ttl",
                    c.min_session_ttl,
                    defaults.min_session_ttl,
                );
                q.duration("wait", c.wait, defaults.wait);
                if let Some(dc) = &c.datacenter {
                    q.push("datacenter", dc);
                }
                q.tls(&c.tls);
                format!(
                    "consul{}://{}{}{}",
                    if https { "+https" } else { "" },
                    hosts(&c.endpoints, https),
                    path_of(&c.prefix),
                    q.finish()
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend whose feature is off is refused by URL and by config file, naming
    /// the feature (run with `--no-default-features` to cover all four).
    #[test]
    #[allow(clippy::vec_init_then_push)] // the pushes depend on the features
    fn missing_features_are_named() {
        #[allow(unused_mut)]
        let mut cases: Vec<(&str, &str, &str)> = Vec::new();
        #[cfg(not(feature = "redb"))]
        cases.push((
            "redb:///a.redb",
            "backend = \"redb\"\npath = \"/a\"",
            "redb",
        ));
        #[cfg(not(feature = "etcd"))]
        cases.push(("etcd://h:2379", "backend = \"etcd\"", "etcd"));
        #[cfg(not(feature = "zookeeper"))]
        cases.push(("zk://h:2181/r", "backend = \"zookeeper\"", "zookeeper"));
        #[cfg(not(feature = "consul"))]
        cases.push(("consul://h:8500", "backend = \"consul\"", "consul"));
        for (url, _, feature) in &cases {
            let err = StoreConfig::from_url(url).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Config);
            assert!(
                err.to_string()
                    .contains(&format!("cargo feature `{feature}`")),
                "{err}"
            );
        }
        for (_, json_backend, feature) in &cases {
            let backend = json_backend.split('"').nth(1).unwrap();
            let json = format!("{{\"backend\": \"{backend}\"}}");
            let err = serde_json::from_str::<StoreConfig>(&json).unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("cargo feature `{feature}`")),
                "{err}"
            );
        }
    }
}
