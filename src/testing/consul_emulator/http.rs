//! The emulator's HTTP layer: connections (plain or TLS), fault switches, request
//! parsing and percent-decoding, the ACL check, and routing to the endpoint handlers
//! ([`super::kv`], [`super::txn`], [`super::session`]). What those share is in
//! [`super::wire`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

use super::kv::{kv_delete, kv_get, kv_put};
use super::session::{session_create, session_destroy, session_info, session_list, session_renew};
use super::txn::txn;
use super::wire::{Req, Resp, json_resp, text};
use super::{EmulatorTls, Shared};

/// The error a handler returns to make hyper close the connection without answering.
#[derive(Debug)]
pub(crate) struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault switch")
    }
}

impl std::error::Error for DropConnection {}

pub(crate) fn tls_acceptor(tls: &EmulatorTls) -> std::io::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |e: &dyn std::fmt::Display| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
    };
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(tls.cert_chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| bad(&e))?;
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).map_err(|e| bad(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?;
    let builder = match &tls.client_ca_pem {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| bad(&e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| bad(&e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

pub(crate) async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        if shared.faults.refusing() {
            // Down: the connection closes before any byte is exchanged.
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let mut dropper = shared.drop_conns.subscribe();
            dropper.borrow_and_update();
            match acceptor {
                Some(acceptor) => {
                    let tls = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        tls = acceptor.accept(stream) => match tls {
                            Ok(tls) => tls,
                            Err(_) => return,
                        },
                    };
                    serve(TokioIo::new(tls), shared, shutdown, dropper).await;
                }
                None => serve(TokioIo::new(stream), shared, shutdown, dropper).await,
            }
        });
    }
}

async fn serve<I>(
    io: I,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    mut dropper: tokio::sync::watch::Receiver<u64>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { handle(shared, req).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::select! {
        _ = conn => {}
        _ = shutdown.cancelled() => {}
        _ = dropper.changed() => {}
    }
}

// ---------------------------------------------------------------------------------
// Requests

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Resp, DropConnection> {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    if shared.faults.take_drop() {
        return Err(DropConnection);
    }
    let delay = shared.faults.delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if shared.faults.take_fail() {
        return Ok(text(StatusCode::INTERNAL_SERVER_ERROR, "emulated failure"));
    }
    if let Some(code) = shared.faults.take_status() {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Ok(text(status, "emulated status"));
    }
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(DropConnection),
    };
    let raw_path = parts.uri.path();
    let Some(path) = percent_decode(raw_path) else {
        return Ok(text(StatusCode::BAD_REQUEST, "invalid path encoding"));
    };
    let query = parts.uri.query().map(parse_query).unwrap_or_default();
    let mut token = query
        .iter()
        .find(|(k, _)| k == "token")
        .and_then(|(_, v)| v.clone());
    if let Some(t) = parts
        .headers
        .get("x-consul-token")
        .and_then(|v| v.to_str().ok())
    {
        token = Some(t.to_owned());
    } else if let Some(t) = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        token = Some(t.trim().to_owned());
    }
    let req = Req {
        method: parts.method,
        path,
        query,
        token,
        body,
    };
    Ok(route(&shared, req).await)
}

async fn route(shared: &Arc<Shared>, req: Req) -> Resp {
    if req.path == "/v1/status/leader" {
        return json_resp(StatusCode::OK, &json!("127.0.0.1:8300"), None);
    }
    if let Some(expected) = &shared.config.acl_token {
        match req.token.as_deref() {
            Some(t) if t == expected => {}
            Some(_) => return text(StatusCode::FORBIDDEN, "ACL not found"),
            None => return text(StatusCode::FORBIDDEN, "Permission denied"),
        }
    }
    if req.has("consistent") && req.has("stale") {
        return text(
            StatusCode::BAD_REQUEST,
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        );
    }
    if let Some(key) = req.path.strip_prefix("/v1/kv/").map(str::to_owned) {
        if key.split('/').any(|s| s == "..") {
            return text(
                StatusCode::BAD_REQUEST,
                "Invalid key: path traversal is not allowed",
            );
        }
        return match req.method {
            Method::GET => kv_get(shared, &req, &key).await,
            Method::PUT => kv_put(shared, &req, &key),
            Method::DELETE => kv_delete(shared, &req, &key),
            _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        };
    }
    if req.path == "/v1/kv" {
        return text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    if req.path == "/v1/txn" {
        return match req.method {
            Method::PUT => txn(shared, &req),
            _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        };
    }
    if let Some(rest) = req.path.strip_prefix("/v1/session/") {
        let (verb, id) = rest.split_once('/').unwrap_or((rest, ""));
        return match (req.method.clone(), verb) {
            (Method::PUT, "create") => session_create(shared, &req),
            (Method::PUT, "renew") => session_renew(shared, id),
            (Method::PUT, "destroy") => session_destroy(shared, id),
            (Method::GET, "info") => session_info(shared, &req, id).await,
            (Method::GET, "list") => session_list(shared, &req).await,
            (_, "create" | "renew" | "destroy" | "info" | "list") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => text(StatusCode::NOT_FOUND, "not found"),
        };
    }
    text(StatusCode::NOT_FOUND, "not found")
}

// ---------------------------------------------------------------------------------
// Responses

// ---------------------------------------------------------------------------------
// Blocking queries

// ---------------------------------------------------------------------------------
// Decoding

/// True when every `%` in `s` starts an escape of two hex digits (Go's URL parser
/// refuses the request otherwise).
fn escapes_are_valid(s: &str) -> bool {
    let bytes = s.as_bytes();
    bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    })
}

/// The percent-decoded text of `s` (`+` stays `+`), or `None` for a malformed escape
/// or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !escapes_are_valid(s) {
        return None;
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|text| text.into_owned())
}

/// A query string's pairs, decoded as a form (`+` is a space); a name without `=` has
/// no value. A pair that does not decode is left out.
fn parse_query(q: &str) -> Vec<(String, Option<String>)> {
    let decode = |s: &str| percent_decode(&s.replace('+', " "));
    q.split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| match pair.split_once('=') {
            Some((k, v)) => Some((decode(k)?, Some(decode(v)?))),
            None => Some((decode(pair)?, None)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{parse_query, percent_decode};

    #[test]
    fn paths_decode_escapes_and_keep_plus() {
        assert_eq!(
            percent_decode("/v1/kv/a%2Fb+c").as_deref(),
            Some("/v1/kv/a/b+c")
        );
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        for malformed in ["%", "%2", "%zz", "a%g1"] {
            assert_eq!(percent_decode(malformed), None, "{malformed:?}");
        }
        assert_eq!(percent_decode("%FF"), None, "not UTF-8");
    }

    #[test]
    fn queries_decode_plus_as_space_and_keep_bare_names() {
        let pairs = parse_query("recurse&separator=%2F&token=a+b%2Bc&&bad=%zz");
        let want = [
            ("recurse".to_owned(), None),
            ("separator".to_owned(), Some("/".to_owned())),
            ("token".to_owned(), Some("a b+c".to_owned())),
        ];
        assert_eq!(pairs, want);
    }
}
