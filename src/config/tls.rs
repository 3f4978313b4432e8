//! [`TlsConfig`]: the one TLS setting of every network backend that speaks TLS, and
//! the PEM material it loads.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::env::REDACTED;
use super::error::config_error;
use crate::error::Result;

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
