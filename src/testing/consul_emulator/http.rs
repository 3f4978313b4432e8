//! The emulator's HTTP layer: connections (plain or TLS), fault switches, request
//! parsing, the ACL check, routing to the endpoint handlers ([`super::kv`],
//! [`super::txn`], [`super::session`]), and what they share: response builders,
//! blocking queries (api-docs/features/blocking) and Go-duration parsing.

// Handlers return the finished error response as their `Err`; it is built once per
// failed request, so its size does not matter here.
#![allow(clippy::result_large_err)]

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

pub(crate) use crate::config::parse_go_duration;

use super::kv::{kv_delete, kv_get, kv_put};
use super::session::{session_create, session_destroy, session_info, session_list, session_renew};
use super::state::State;
use super::txn::txn;
use super::{EmulatorTls, Shared};

const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(600);

pub(super) type Resp = Response<Full<Bytes>>;

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

/// A request, read whole and decoded.
pub(super) struct Req {
    method: Method,
    path: String,
    query: Vec<(String, Option<String>)>,
    token: Option<String>,
    pub(super) body: Bytes,
}

impl Req {
    pub(super) fn has(&self, name: &str) -> bool {
        self.query.iter().any(|(k, _)| k == name)
    }

    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_deref().unwrap_or(""))
    }

    pub(super) fn u64_param(&self, name: &str) -> Result<Option<u64>, Resp> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .map(Some)
                .map_err(|_| text(StatusCode::BAD_REQUEST, &format!("Invalid {name}: {v:?}"))),
        }
    }
}

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

pub(super) fn text(status: StatusCode, body: &str) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_owned())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

pub(super) fn json_resp(status: StatusCode, value: &Value, index: Option<u64>) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(index) = index {
        add_query_meta(&mut resp, index);
    }
    resp
}

/// The headers of a read: `X-Consul-Index` (never 0), `X-Consul-KnownLeader`,
/// `X-Consul-LastContact`.
pub(super) fn add_query_meta(resp: &mut Resp, index: u64) {
    let headers = resp.headers_mut();
    headers.insert("X-Consul-Index", HeaderValue::from(index.max(1)));
    headers.insert("X-Consul-KnownLeader", HeaderValue::from_static("true"));
    headers.insert("X-Consul-LastContact", HeaderValue::from_static("0"));
}

// ---------------------------------------------------------------------------------
// Blocking queries

fn parse_wait(req: &Req) -> Result<Duration, Resp> {
    match req.get("wait") {
        None | Some("") => Ok(DEFAULT_WAIT),
        Some(w) => parse_go_duration(w)
            .map(|d| d.min(MAX_WAIT))
            .ok_or_else(|| {
                text(
                    StatusCode::BAD_REQUEST,
                    &format!("Invalid wait time: {w:?}"),
                )
            }),
    }
}

/// Runs `query` until its index exceeds `?index=` or the wait (plus up to wait/16 of
/// jitter) is over; `index=0` (or none) does not block.
pub(super) async fn blocking<R>(
    shared: &Shared,
    req: &Req,
    mut query: impl FnMut(&State) -> (u64, R),
) -> Result<(u64, R), Resp> {
    let min_index = req.u64_param("index")?.unwrap_or(0);
    let wait = parse_wait(req)?;
    let jitter = if wait.is_zero() {
        Duration::ZERO
    } else {
        let max = (wait / 16).as_millis().max(1) as u64;
        Duration::from_millis(random_u64(shared) % max)
    };
    let deadline = Instant::now() + wait + jitter;
    let mut changes = shared.changes.subscribe();
    let mut abandon = shared.abandon.subscribe();
    abandon.borrow_and_update();
    loop {
        changes.borrow_and_update();
        let (index, result) = {
            let state = shared.lock();
            query(&state)
        };
        if min_index == 0 || index > min_index || Instant::now() >= deadline {
            return Ok((index, result));
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = abandon.changed() => {
                let state = shared.lock();
                return Ok(query(&state));
            }
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

// ---------------------------------------------------------------------------------
// Helpers

pub(super) fn random_u64(shared: &Shared) -> u64 {
    let n = shared.id_seed.fetch_add(1, Ordering::Relaxed);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(n);
    hasher.finish()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode_bytes(s: &str, plus_is_space: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = hex(*bytes.get(i + 1)?)?;
                let lo = hex(*bytes.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn percent_decode(s: &str) -> Option<String> {
    decode_bytes(s, false)
}

fn parse_query(q: &str) -> Vec<(String, Option<String>)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| match pair.split_once('=') {
            Some((k, v)) => Some((decode_bytes(k, true)?, Some(decode_bytes(v, true)?))),
            None => Some((decode_bytes(pair, true)?, None)),
        })
        .collect()
}

pub(super) fn format_go_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        let secs = d.as_secs();
        if secs >= 3600 && secs.is_multiple_of(3600) {
            return format!("{}h0m0s", secs / 3600);
        }
        return format!("{secs}s");
    }
    format!("{}s", d.as_secs_f64())
}
