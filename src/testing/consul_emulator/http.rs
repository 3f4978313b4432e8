//! The emulator's HTTP layer: connections, faults, routing and the endpoint handlers.

// Handlers return the finished error response as their `Err`; it is built once per
// failed request, so its size does not matter here.
#![allow(clippy::result_large_err)]

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
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

use super::state::{Behavior, Entry, Session, State};
use super::{EmulatorTls, Shared};

/// Consul's KV value limit.
const MAX_VALUE: usize = 512 * 1024;
/// Consul's limit of operations in one transaction.
const MAX_TXN_OPS: usize = 64;
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(600);
const MAX_TTL: Duration = Duration::from_secs(86_400);
const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);
const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);

type Resp = Response<Full<Bytes>>;

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

/// Invalidates sessions whose TTL ran out and forgets finished lock-delays.
pub(crate) async fn reaper(shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        let now = Instant::now();
        let changed = {
            let mut state = shared.lock();
            state.prune_lock_delays(now);
            let expired = state.expired_sessions(now);
            for id in &expired {
                let idx = state.next_index();
                state.destroy_session(idx, id, now);
            }
            !expired.is_empty()
        };
        if changed {
            shared.notify();
        }
    }
}

// ---------------------------------------------------------------------------------
// Requests

struct Req {
    method: Method,
    path: String,
    query: Vec<(String, Option<String>)>,
    token: Option<String>,
    body: Bytes,
}

impl Req {
    fn has(&self, name: &str) -> bool {
        self.query.iter().any(|(k, _)| k == name)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_deref().unwrap_or(""))
    }

    fn u64_param(&self, name: &str) -> Result<Option<u64>, Resp> {
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

fn text(status: StatusCode, body: &str) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_owned())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json_resp(status: StatusCode, value: &Value, index: Option<u64>) -> Resp {
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
fn add_query_meta(resp: &mut Resp, index: u64) {
    let headers = resp.headers_mut();
    headers.insert("X-Consul-Index", HeaderValue::from(index.max(1)));
    headers.insert("X-Consul-KnownLeader", HeaderValue::from_static("true"));
    headers.insert("X-Consul-LastContact", HeaderValue::from_static("0"));
}

fn entry_json(key: &str, entry: &Entry, with_value: bool) -> Value {
    let value = if with_value && !entry.value.is_empty() {
        Value::String(B64.encode(&entry.value))
    } else {
        Value::Null
    };
    let mut obj = json!({
        "LockIndex": entry.lock_index,
        "Key": key,
        "Flags": entry.flags,
        "Value": value,
        "CreateIndex": entry.create_index,
        "ModifyIndex": entry.modify_index,
    });
    if let Some(session) = &entry.session {
        obj["Session"] = Value::String(session.clone());
    }
    obj
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
async fn blocking<R>(
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
// KV

enum KvRead {
    Missing,
    Entries(Vec<Value>),
    Keys(Vec<String>),
    Raw(Vec<u8>),
}

async fn kv_get(shared: &Shared, req: &Req, key: &str) -> Resp {
    shared.kv_gets.fetch_add(1, Ordering::SeqCst);
    let recurse = req.has("recurse");
    let keys = req.has("keys");
    let raw = req.has("raw");
    let separator = req
        .get("separator")
        .map(str::to_owned)
        .filter(|s| !s.is_empty());
    let result = blocking(shared, req, |state| {
        if keys {
            let mut names = BTreeSet::new();
            for (k, _) in state.list(key) {
                let name = match &separator {
                    Some(sep) => match k[key.len()..].find(sep.as_str()) {
                        Some(pos) => k[..key.len() + pos + sep.len()].to_owned(),
                        None => k.clone(),
                    },
                    None => k.clone(),
                };
                names.insert(name);
            }
            let index = state.prefix_index(key);
            if names.is_empty() {
                (index, KvRead::Missing)
            } else {
                (index, KvRead::Keys(names.into_iter().collect()))
            }
        } else if recurse {
            let entries: Vec<Value> = state
                .list(key)
                .into_iter()
                .map(|(k, e)| entry_json(k, e, true))
                .collect();
            let index = state.prefix_index(key);
            if entries.is_empty() {
                (index, KvRead::Missing)
            } else {
                (index, KvRead::Entries(entries))
            }
        } else {
            let index = state.key_index(key);
            match state.kv.get(key) {
                None => (index, KvRead::Missing),
                Some(e) if raw => (index, KvRead::Raw(e.value.clone())),
                Some(e) => (index, KvRead::Entries(vec![entry_json(key, e, true)])),
            }
        }
    })
    .await;
    let (index, read) = match result {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    match read {
        KvRead::Missing => {
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::NOT_FOUND;
            add_query_meta(&mut resp, index);
            resp
        }
        KvRead::Entries(entries) => json_resp(StatusCode::OK, &Value::Array(entries), Some(index)),
        KvRead::Keys(names) => json_resp(StatusCode::OK, &json!(names), Some(index)),
        KvRead::Raw(value) => {
            let mut resp = Response::new(Full::new(Bytes::from(value)));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            add_query_meta(&mut resp, index);
            resp
        }
    }
}

fn kv_put(shared: &Shared, req: &Req, key: &str) -> Resp {
    if key.is_empty() {
        return text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    if req.body.len() > MAX_VALUE {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "Request body(Content-Length) too large, max size: {MAX_VALUE} bytes. See https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size."
            ),
        );
    }
    let flags = match req.u64_param("flags") {
        Ok(f) => f.unwrap_or(0),
        Err(resp) => return resp,
    };
    let cas = match req.u64_param("cas") {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let acquire = req.get("acquire").map(str::to_owned);
    let release = req.get("release").map(str::to_owned);
    let conflicting = [cas.is_some(), acquire.is_some(), release.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if conflicting > 1 {
        return text(
            StatusCode::BAD_REQUEST,
            "Conflicting flags: cas, acquire, release",
        );
    }
    let value = req.body.to_vec();
    let now = Instant::now();
    let outcome = {
        let mut state = shared.lock();
        let idx = state.next_index();
        if let Some(cas) = cas {
            Ok(state.cas(idx, key, value, flags, cas))
        } else if let Some(session) = acquire {
            state.acquire(idx, key, value, flags, &session, now)
        } else if let Some(session) = release {
            Ok(state.release(idx, key, value, flags, &session))
        } else {
            state.set(idx, key, value, flags);
            Ok(true)
        }
    };
    shared.notify();
    match outcome {
        Ok(ok) => json_resp(StatusCode::OK, &json!(ok), None),
        Err(msg) => text(StatusCode::INTERNAL_SERVER_ERROR, &msg),
    }
}

fn kv_delete(shared: &Shared, req: &Req, key: &str) -> Resp {
    let recurse = req.has("recurse");
    let cas = match req.u64_param("cas") {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    if recurse && cas.is_some() {
        return text(StatusCode::BAD_REQUEST, "Conflicting flags: cas, recurse");
    }
    if key.is_empty() && !recurse {
        return text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    let ok = {
        let mut state = shared.lock();
        let idx = state.next_index();
        if recurse {
            state.delete_tree(idx, key);
            true
        } else if let Some(cas) = cas {
            match state.kv.get(key) {
                // A CAS delete of a missing key succeeds (server code).
                None => true,
                Some(e) if e.modify_index == cas => state.delete(idx, key),
                Some(_) => false,
            }
        } else {
            state.delete(idx, key);
            true
        }
    };
    shared.notify();
    json_resp(StatusCode::OK, &json!(ok), None)
}

// ---------------------------------------------------------------------------------
// Transactions

struct TxnOp {
    verb: String,
    key: String,
    value: Vec<u8>,
    flags: u64,
    index: u64,
    session: String,
}

fn parse_txn(body: &[u8]) -> Result<Vec<TxnOp>, Resp> {
    let bad = |msg: String| text(StatusCode::BAD_REQUEST, &msg);
    let ops: Vec<Value> =
        serde_json::from_slice(body).map_err(|e| bad(format!("Failed to parse body: {e}")))?;
    if ops.len() > MAX_TXN_OPS {
        return Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "Transaction contains too many operations ({} > {MAX_TXN_OPS})",
                ops.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let Some(kv) = op.get("KV") else {
            return Err(bad("only KV operations are emulated".into()));
        };
        let field = |name: &str| kv.get(name).filter(|v| !v.is_null());
        let verb = field("Verb")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let key = field("Key")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let value = match field("Value") {
            None => Vec::new(),
            Some(Value::String(s)) => B64
                .decode(s)
                .map_err(|e| bad(format!("Failed to decode value for key {key:?}: {e}")))?,
            Some(_) => return Err(bad("Value must be a base64 string".into())),
        };
        if value.len() > MAX_VALUE {
            return Err(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "Value for key {key:?} is too large ({} > {MAX_VALUE} bytes)",
                    value.len()
                ),
            ));
        }
        let num = |name: &str| -> Result<u64, Resp> {
            match field(name) {
                None => Ok(0),
                Some(v) => v
                    .as_u64()
                    .ok_or_else(|| bad(format!("{name} must be an unsigned integer"))),
            }
        };
        let flags = num("Flags")?;
        let index = num("Index")?;
        let session = field("Session")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        out.push(TxnOp {
            verb,
            key,
            value,
            flags,
            index,
            session,
        });
    }
    Ok(out)
}

fn txn(shared: &Shared, req: &Req) -> Resp {
    let ops = match parse_txn(&req.body) {
        Ok(ops) => ops,
        Err(resp) => return resp,
    };
    let now = Instant::now();
    let mut guard = shared.lock();
    let mut state = guard.clone();
    let idx = state.next_index();
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match apply_op(&mut state, idx, op, now) {
            Ok(entries) => results.extend(entries.into_iter().map(|kv| json!({ "KV": kv }))),
            Err(what) => errors.push(json!({ "OpIndex": i, "What": what })),
        }
    }
    if errors.is_empty() {
        *guard = state;
        drop(guard);
        shared.notify();
        let mut resp = json_resp(
            StatusCode::OK,
            &json!({ "Results": results, "Errors": null }),
            None,
        );
        add_query_meta(&mut resp, idx);
        resp
    } else {
        // Rolled back; the request still took a Raft index.
        guard.index = idx;
        drop(guard);
        json_resp(
            StatusCode::CONFLICT,
            &json!({ "Results": null, "Errors": errors }),
            None,
        )
    }
}

/// Applies one KV operation; the entries it returns as results.
fn apply_op(state: &mut State, idx: u64, op: &TxnOp, now: Instant) -> Result<Vec<Value>, String> {
    let key = op.key.as_str();
    let one =
        |state: &State, with_value: bool| state.kv.get(key).map(|e| entry_json(key, e, with_value));
    let result =
        |state: &State, with_value: bool| one(state, with_value).into_iter().collect::<Vec<_>>();
    let missing = || format!("key {key:?} doesn't exist");
    match op.verb.as_str() {
        "set" => {
            state.set(idx, key, op.value.clone(), op.flags);
            Ok(result(state, false))
        }
        "cas" => {
            if state.cas(idx, key, op.value.clone(), op.flags, op.index) {
                Ok(result(state, false))
            } else {
                Err(format!("failed to set key {key:?}, index is stale"))
            }
        }
        "lock" => match state.acquire(idx, key, op.value.clone(), op.flags, &op.session, now) {
            Ok(true) => Ok(result(state, false)),
            Ok(false) => Err(format!("failed to lock key {key:?}, lock is already held")),
            Err(e) => Err(e),
        },
        "unlock" => {
            if state.release(idx, key, op.value.clone(), op.flags, &op.session) {
                Ok(result(state, false))
            } else {
                Err(format!("failed to unlock key {key:?}, lock isn't held, or is held by another session"))
            }
        }
        "get" => match one(state, true) {
            Some(r) => Ok(vec![r]),
            None => Err(missing()),
        },
        "get-or-empty" => Ok(vec![one(state, true).unwrap_or_else(|| {
            json!({"LockIndex": 0, "Key": key, "Flags": 0, "Value": null, "CreateIndex": 0, "ModifyIndex": 0})
        })]),
        "get-tree" => Ok(state.list(key).into_iter().map(|(k, e)| entry_json(k, e, true)).collect()),
        "check-index" => match state.kv.get(key) {
            None => Err(missing()),
            Some(e) if e.modify_index == op.index => Ok(Vec::new()),
            Some(e) => Err(format!("current modify index {} != {}", e.modify_index, op.index)),
        },
        "check-session" => match state.kv.get(key) {
            None => Err(missing()),
            Some(e) if e.session.as_deref() == Some(op.session.as_str()) => Ok(Vec::new()),
            Some(e) => Err(format!(
                "current session {:?} != {:?}",
                e.session.as_deref().unwrap_or(""),
                op.session
            )),
        },
        "check-not-exists" => match state.kv.get(key) {
            None => Ok(Vec::new()),
            Some(_) => Err(format!("key {key:?} exists")),
        },
        "delete" => {
            state.delete(idx, key);
            Ok(Vec::new())
        }
        "delete-tree" => {
            state.delete_tree(idx, key);
            Ok(Vec::new())
        }
        "delete-cas" => match state.kv.get(key) {
            Some(e) if e.modify_index == op.index => {
                state.delete(idx, key);
                Ok(Vec::new())
            }
            _ => Err(format!("failed to delete key {key:?}, index is stale")),
        },
        other => Err(format!("unknown KV verb {other:?}")),
    }
}

// ---------------------------------------------------------------------------------
// Sessions

fn session_json(s: &Session) -> Value {
    json!({
        "ID": s.id,
        "Name": s.name,
        "Node": "emulator",
        "NodeChecks": [],
        "ServiceChecks": null,
        "LockDelay": u64::try_from(s.lock_delay.as_nanos()).unwrap_or(u64::MAX),
        "Behavior": s.behavior.as_str(),
        "TTL": s.ttl_text,
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
    })
}

fn session_create(shared: &Shared, req: &Req) -> Resp {
    let err = |msg: String| text(StatusCode::INTERNAL_SERVER_ERROR, &msg);
    let body: Value = if req.body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice(&req.body) {
            Ok(v) => v,
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("Request decode failed: {e}"),
                );
            }
        }
    };
    let field = |name: &str| body.get(name).filter(|v| !v.is_null());
    let name = field("Name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let ttl_text = field("TTL")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let ttl = if ttl_text.is_empty() {
        None
    } else {
        match parse_go_duration(&ttl_text) {
            Some(d) if d.is_zero() => None,
            Some(d) if d < shared.config.session_ttl_min || d > MAX_TTL => {
                return err(format!(
                    "Invalid Session TTL '{}', must be between [{}={}]",
                    d.as_secs_f64(),
                    format_go_duration(shared.config.session_ttl_min),
                    format_go_duration(MAX_TTL)
                ));
            }
            Some(d) => Some(d),
            None => return err(format!("Session TTL '{ttl_text}' invalid")),
        }
    };
    let behavior = match field("Behavior").and_then(Value::as_str).unwrap_or("") {
        "" | "release" => Behavior::Release,
        "delete" => Behavior::Delete,
        other => return err(format!("Invalid Behavior setting '{other}'")),
    };
    let lock_delay = match field("LockDelay") {
        None => DEFAULT_LOCK_DELAY,
        Some(Value::String(s)) => match parse_go_duration(s) {
            Some(d) => d,
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("Request decode failed: invalid LockDelay {s:?}"),
                );
            }
        },
        Some(Value::Number(n)) => match n.as_u64() {
            // A bare number under 1000 means seconds; otherwise nanoseconds.
            Some(v) if v < 1000 => Duration::from_secs(v),
            Some(v) => Duration::from_nanos(v),
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "Request decode failed: invalid LockDelay",
                );
            }
        },
        Some(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                "Request decode failed: invalid LockDelay",
            );
        }
    }
    .min(MAX_LOCK_DELAY);
    let id = new_uuid(shared);
    let session = Session {
        id,
        name,
        ttl_text,
        ttl,
        behavior,
        lock_delay,
        create_index: 0,
        modify_index: 0,
        expires_at: None,
    };
    let id = {
        let mut state = shared.lock();
        let idx = state.next_index();
        state.create_session(
            idx,
            session,
            Instant::now(),
            shared.config.session_ttl_multiplier,
        )
    };
    shared.notify();
    json_resp(StatusCode::OK, &json!({ "ID": id }), None)
}

fn session_renew(shared: &Shared, id: &str) -> Resp {
    let (renewed, index) = {
        let mut state = shared.lock();
        let renewed = state.renew_session(id, Instant::now(), shared.config.session_ttl_multiplier);
        (renewed, state.session_index)
    };
    match renewed {
        Some(s) => json_resp(StatusCode::OK, &json!([session_json(&s)]), Some(index)),
        None => text(
            StatusCode::NOT_FOUND,
            &format!("Session id '{id}' not found"),
        ),
    }
}

fn session_destroy(shared: &Shared, id: &str) -> Resp {
    {
        let mut state = shared.lock();
        let idx = state.next_index();
        state.destroy_session(idx, id, Instant::now());
    }
    shared.notify();
    json_resp(StatusCode::OK, &json!(true), None)
}

async fn session_info(shared: &Shared, req: &Req, id: &str) -> Resp {
    let id = id.to_owned();
    match blocking(shared, req, |state| {
        let found: Vec<Value> = state
            .sessions
            .get(&id)
            .map(session_json)
            .into_iter()
            .collect();
        (state.session_index, found)
    })
    .await
    {
        Ok((index, found)) => json_resp(StatusCode::OK, &Value::Array(found), Some(index)),
        Err(resp) => resp,
    }
}

async fn session_list(shared: &Shared, req: &Req) -> Resp {
    match blocking(shared, req, |state| {
        let all: Vec<Value> = state.sessions.values().map(session_json).collect();
        (state.session_index, all)
    })
    .await
    {
        Ok((index, all)) => json_resp(StatusCode::OK, &Value::Array(all), Some(index)),
        Err(resp) => resp,
    }
}

// ---------------------------------------------------------------------------------
// Helpers

fn random_u64(shared: &Shared) -> u64 {
    let n = shared.id_seed.fetch_add(1, Ordering::Relaxed);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(n);
    hasher.finish()
}

fn new_uuid(shared: &Shared) -> String {
    let a = random_u64(shared);
    let b = random_u64(shared);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
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

/// Parses a Go duration (`"10s"`, `"1.5s"`, `"500ms"`, `"1m30s"`, `"0"`).
pub(crate) fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let number: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += number * scale;
    }
    Duration::try_from_secs_f64(total).ok()
}

fn format_go_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        let secs = d.as_secs();
        if secs >= 3600 && secs.is_multiple_of(3600) {
            return format!("{}h0m0s", secs / 3600);
        }
        return format!("{secs}s");
    }
    format!("{}s", d.as_secs_f64())
}
