//! `/v1/kv/<key>`: GET (one key, `recurse`, `keys` with `separator`, `raw`, blocking),
//! PUT (`flags`, `cas`, `acquire`, `release`, the value limit) and DELETE (`recurse`,
//! `cas`), and the JSON form of a KV entry, which `/v1/txn` returns too.
//!
//! Emulates <https://developer.hashicorp.com/consul/api-docs/kv>, as summed up (with
//! the server code's corrections) in `shared/reference/consul-http-api.md`, "KV
//! entries", `GET/PUT/DELETE /v1/kv/<key>`. The lock rules behind `acquire` and
//! `release` are the session's, in [`super::state`].

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::Shared;
use super::state::Entry;
use super::wire::{Req, Resp, add_query_meta, blocking, json_resp, text};

/// Consul's KV value limit.
pub(super) const MAX_VALUE: usize = 512 * 1024;

/// An entry as Consul shows it; `Value` is base64, null when empty or not asked for.
pub(super) fn entry_json(key: &str, entry: &Entry, with_value: bool) -> Value {
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

/// What a KV read found.
enum KvRead {
    Missing,
    Entries(Vec<Value>),
    Keys(Vec<String>),
    Raw(Vec<u8>),
}

pub(super) async fn kv_get(shared: &Shared, req: &Req, key: &str) -> Resp {
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

pub(super) fn kv_put(shared: &Shared, req: &Req, key: &str) -> Resp {
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

pub(super) fn kv_delete(shared: &Shared, req: &Req, key: &str) -> Resp {
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
