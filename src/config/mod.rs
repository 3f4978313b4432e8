//! Choosing a store at run time: [`StoreConfig`] (from a config file or a URL) and
//! [`connect`]; the pieces every backend's configuration shares live in the submodules
//! (durations, [`TlsConfig`], the URL grammar, the shared checks).
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
//!
//! Only this file and [`crate::any`] know every backend: the shared pieces import no
//! backend, and each backend's own `config.rs` maps its URL and settings on them.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::any::AnyBackend;
use crate::error::{Error, Result};
use crate::kv::Kv;
use error::config_error;
use url::UrlParts;

pub mod duration;
pub mod env;
pub(crate) mod error;
pub(crate) mod tls;
pub(crate) mod url;
pub(crate) mod validate;

pub use crate::memory::MemoryConfig;
#[cfg(feature = "redb")]
#[cfg_attr(docsrs, doc(cfg(feature = "redb")))]
pub use crate::redb::RedbConfig;
pub use duration::{MAX_DURATION, check_duration, format_duration, parse_duration};
pub use tls::{TlsConfig, TlsMaterial};
// The path the Consul emulator used before the configuration was split by job.
#[cfg(all(feature = "testing", feature = "consul"))]
pub(crate) use duration::parse_go_duration;

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
    #[cfg_attr(docsrs, doc(cfg(feature = "redb")))]
    Redb(RedbConfig),
    /// etcd v3.
    #[cfg(feature = "etcd")]
    #[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
    Etcd(crate::etcd::EtcdConfig),
    /// ZooKeeper.
    #[cfg(feature = "zookeeper")]
    #[cfg_attr(docsrs, doc(cfg(feature = "zookeeper")))]
    Zookeeper(crate::zookeeper::ZookeeperConfig),
    /// Consul.
    #[cfg(feature = "consul")]
    #[cfg_attr(docsrs, doc(cfg(feature = "consul")))]
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

impl StoreConfig {
    /// Parses a store URL (see the [module docs](self) for the forms and
    /// `docs/from-libkv.md` for every option). Reads no environment variable.
    pub fn from_url(url: &str) -> Result<StoreConfig> {
        parse_url(url)
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
        Ok(match self {
            #[cfg(feature = "etcd")]
            StoreConfig::Etcd(c) => StoreConfig::Etcd(c.with_secrets_from(&lookup)),
            #[cfg(feature = "consul")]
            StoreConfig::Consul(c) => StoreConfig::Consul(c.with_secrets_from(&lookup)),
            #[cfg(feature = "zookeeper")]
            StoreConfig::Zookeeper(c) => StoreConfig::Zookeeper(c.with_secrets_from(&lookup)?),
            other => other,
        })
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
        f.write_str(&write_url(self))
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

#[allow(dead_code)] // unused when every backend is compiled in
fn missing_feature(backend: &str, feature: &str) -> Error {
    config_error(missing_feature_reason(backend, feature))
}

/// Parses a store URL: the shared grammar, then the backend its scheme names.
fn parse_url(url: &str) -> Result<StoreConfig> {
    let parts = UrlParts::split(url.trim())?;
    match parts.scheme.as_str() {
        "memory" => {
            parts.refuse_tls()?;
            Ok(StoreConfig::Memory(MemoryConfig::from_url(parts)?))
        }
        "redb" => {
            parts.refuse_tls()?;
            #[cfg(feature = "redb")]
            return Ok(StoreConfig::Redb(RedbConfig::from_url(parts)?));
            #[cfg(not(feature = "redb"))]
            return Err(missing_feature("redb", "redb"));
        }
        "etcd" => {
            #[cfg(feature = "etcd")]
            return Ok(StoreConfig::Etcd(crate::etcd::EtcdConfig::from_url(parts)?));
            #[cfg(not(feature = "etcd"))]
            return Err(missing_feature("etcd", "etcd"));
        }
        "zk" | "zookeeper" => {
            parts.refuse_tls()?;
            #[cfg(feature = "zookeeper")]
            return Ok(StoreConfig::Zookeeper(
                crate::zookeeper::ZookeeperConfig::from_url(parts)?,
            ));
            #[cfg(not(feature = "zookeeper"))]
            return Err(missing_feature("zookeeper", "zookeeper"));
        }
        "consul" => {
            #[cfg(feature = "consul")]
            return Ok(StoreConfig::Consul(crate::consul::ConsulConfig::from_url(
                parts,
            )?));
            #[cfg(not(feature = "consul"))]
            return Err(missing_feature("consul", "consul"));
        }
        other => Err(config_error(format!(
            "unknown store scheme {other:?} (known: memory, redb, etcd, zk, zookeeper, consul)"
        ))),
    }
}

/// The URL form of a config, written by its backend.
fn write_url(config: &StoreConfig) -> String {
    match config {
        StoreConfig::Memory(c) => c.to_url(),
        #[cfg(feature = "redb")]
        StoreConfig::Redb(c) => c.to_url(),
        #[cfg(feature = "etcd")]
        StoreConfig::Etcd(c) => c.to_url(),
        #[cfg(feature = "zookeeper")]
        StoreConfig::Zookeeper(c) => c.to_url(),
        #[cfg(feature = "consul")]
        StoreConfig::Consul(c) => c.to_url(),
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
