//! The HTTP client: pooled keep-alive connections (HTTP or HTTPS), the token and
//! datacenter on every request, timeouts, and the mapping of failures to [`Error`].

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderValue;
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use super::config::{ConsulConfig, Scheme};
use super::error::{status_error, transport_error};
use crate::error::{Error, Result};

// Reached as `super::client::NAME` by the lock module.
pub(crate) use super::error::NAME;

/// A KV entry as Consul returns it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Entry {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub modify_index: u64,
    #[serde(default)]
    pub session: Option<String>,
}

impl Entry {
    pub fn decode_value(&self) -> Result<Bytes> {
        match &self.value {
            None => Ok(Bytes::new()),
            Some(v) => B64.decode(v).map(Bytes::from).map_err(|e| {
                Error::backend(NAME, format!("bad base64 value for {}: {e}", self.key))
            }),
        }
    }
}

/// The answer to a request.
#[derive(Debug)]
pub(crate) struct Response {
    pub status: StatusCode,
    /// `X-Consul-Index`, when present.
    pub index: Option<u64>,
    pub body: Bytes,
}

impl Response {
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::backend(NAME, format!("unexpected response from Consul: {e}")))
    }

    /// Fails unless the status is one of `ok`: 403 is PermissionDenied, 429 (rate
    /// limited) and 5xx (503 included) are Unavailable, anything else is a backend
    /// error.
    pub fn expect(self, ok: &[StatusCode]) -> Result<Self> {
        if ok.contains(&self.status) {
            return Ok(self);
        }
        Err(status_error(self.status, &self.body))
    }
}

type Http = HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The shared HTTP client.
pub(crate) struct Client {
    http: Http,
    bases: Vec<String>,
    current: AtomicUsize,
    token: Option<HeaderValue>,
    datacenter: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("bases", &self.bases)
            .finish()
    }
}

fn tls_config(config: &ConsulConfig) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, e: &dyn std::fmt::Display| Error::backend(NAME, format!("{what}: {e}"));
    let material = config.tls_or_default().load()?;
    let mut roots = rustls::RootCertStore::empty();
    match material.ca {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| bad("invalid CA PEM", &e))?;
                roots
                    .add(cert)
                    .map_err(|e| bad("invalid CA certificate", &e))?;
            }
            if roots.is_empty() {
                return Err(Error::backend(NAME, "the CA PEM holds no certificate"));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS setup", &e))?
        .with_root_certificates(roots);
    match material.identity {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert)
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| bad("invalid client certificate", &e))?;
            let key =
                PrivateKeyDer::from_pem_slice(&key).map_err(|e| bad("invalid client key", &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad("client certificate", &e))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

impl Client {
    pub fn new(config: &ConsulConfig) -> Result<Self> {
        config.validate()?;
        let https = config.scheme == Scheme::Https || config.tls.is_some();
        let bases: Vec<String> = config
            .endpoints
            .iter()
            .map(|a| {
                let a = a.trim_end_matches('/');
                if a.starts_with("http://") || a.starts_with("https://") {
                    a.to_owned()
                } else {
                    if https {
                        format!("https://{a}")
                    } else {
                        format!("http://{a}")
                    }
                }
            })
            .collect();
        let any_https = bases.iter().any(|b| b.starts_with("https://"));
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let tls = if any_https {
            tls_config(config)?
        } else {
            // Never used for plain HTTP; built without touching the system store.
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::backend(NAME, e.to_string()))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        let token = match &config.token {
            Some(t) => {
                let mut value = HeaderValue::from_str(t).map_err(|_| {
                    Error::backend(NAME, "the ACL token is not a valid header value")
                })?;
                // Keeps the token out of hyper's and tracing's output.
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(Client {
            http,
            bases,
            current: AtomicUsize::new(0),
            token,
            datacenter: config.datacenter.clone(),
            timeout: config.request_timeout,
        })
    }

    /// Sends one request. `path_and_query` is already encoded; the datacenter is
    /// appended here. `extra_timeout` is added for blocking queries.
    pub async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        body: Bytes,
        extra_timeout: Duration,
    ) -> Result<Response> {
        let which = self.current.load(Ordering::Relaxed) % self.bases.len();
        let base = &self.bases[which];
        let mut uri = format!("{base}{path_and_query}");
        if let Some(dc) = &self.datacenter {
            uri.push(if path_and_query.contains('?') {
                '&'
            } else {
                '?'
            });
            uri.push_str("dc=");
            uri.push_str(&encode(dc, false));
        }
        let mut req = Request::builder().method(method).uri(&uri);
        if let Some(token) = &self.token {
            req = req.header("X-Consul-Token", token.clone());
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| Error::backend(NAME, format!("cannot build a request for {uri}: {e}")))?;
        let timeout = self.timeout + extra_timeout;
        let outcome = tokio::time::timeout(timeout, async {
            let resp = self.http.request(req).await.map_err(transport_error)?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| Error::unavailable(NAME, format!("reading the response: {e}")))?
                .to_bytes();
            Ok::<_, Error>((parts, body))
        })
        .await;
        let (parts, body) = match outcome {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                if e.is_retryable() && self.bases.len() > 1 {
                    let _ = self.current.compare_exchange(
                        which,
                        which + 1,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                return Err(e);
            }
            Err(_) => {
                return Err(Error::unavailable(
                    NAME,
                    format!("no answer from {base} within {timeout:?}"),
                ));
            }
        };
        let index = parts
            .headers
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok(Response {
            status: parts.status,
            index,
            body,
        })
    }
}

/// Every byte but the unreserved ones of RFC 3986 (`A-Z a-z 0-9 - . _ ~`).
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// Like [`QUERY_VALUE`], keeping `/` between path segments.
const PATH: &AsciiSet = &QUERY_VALUE.remove(b'/');

/// Percent-encodes `s` for a URL path (`/` kept when `keep_slash`) or query value.
pub(crate) fn encode(s: &str, keep_slash: bool) -> String {
    let set = if keep_slash { PATH } else { QUERY_VALUE };
    utf8_percent_encode(s, set).to_string()
}

#[cfg(test)]
mod tests {
    use super::encode;

    #[test]
    fn encode_keeps_unreserved_bytes_and_escapes_the_rest_in_upper_hex() {
        assert_eq!(encode("app/config-1_x.y~z", true), "app/config-1_x.y~z");
        assert_eq!(encode("app/config", false), "app%2Fconfig");
        assert_eq!(
            encode("a b+c?d&e=f#g%h", true),
            "a%20b%2Bc%3Fd%26e%3Df%23g%25h"
        );
        assert_eq!(encode("ключ/é", true), "%D0%BA%D0%BB%D1%8E%D1%87/%C3%A9");
        assert_eq!(encode("\u{1}lock/x:y@z", false), "%01lock%2Fx%3Ay%40z");
        assert_eq!(encode("", true), "");
    }
}
