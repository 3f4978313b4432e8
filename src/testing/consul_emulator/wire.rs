//! What the emulator's endpoints share: the decoded request, response builders with
//! Consul's read headers, blocking queries (api-docs/features/blocking) and Go
//! durations. A leaf below the HTTP layer ([`super::http`]) and the endpoints
//! ([`super::kv`], [`super::session`], [`super::txn`]).

// Handlers return the finished error response as their `Err`; it is built once per
// failed request, so its size does not matter here.
#![allow(clippy::result_large_err)]

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Response, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

use super::Shared;
use super::state::State;
use crate::config::parse_go_duration;

/// A blocking query's wait when the request names none.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// The longest wait a blocking query is given.
const MAX_WAIT: Duration = Duration::from_secs(600);

/// A response, its body whole.
pub(super) type Resp = Response<Full<Bytes>>;

/// A request, read whole and decoded.
pub(super) struct Req {
    pub(super) method: Method,
    pub(super) path: String,
    pub(super) query: Vec<(String, Option<String>)>,
    pub(super) token: Option<String>,
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

/// A plain-text response.
pub(super) fn text(status: StatusCode, body: &str) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_owned())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A JSON response, with the read headers when `index` is given.
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

/// The wait a blocking query asked for (`?wait=`), at most [`MAX_WAIT`].
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

/// A fresh pseudo-random number (session ids, jitter).
pub(super) fn random_u64(shared: &Shared) -> u64 {
    let n = shared.id_seed.fetch_add(1, Ordering::Relaxed);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(n);
    hasher.finish()
}

/// `d` as Go prints a `time.Duration` (`10s`, `24h0m0s`, `1.5s`).
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
