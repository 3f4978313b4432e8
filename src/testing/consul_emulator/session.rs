//! `/v1/session/create|renew|destroy|info|list`, and the reaper that invalidates
//! sessions whose TTL ran out (after `ttl * multiplier`) and forgets finished
//! lock-delays. What invalidation does to the keys a session holds (release or delete,
//! then the lock-delay) is in [`super::state`].
//!
//! Emulates <https://developer.hashicorp.com/consul/api-docs/session>, as summed up
//! (with the server code's corrections) in `shared/reference/consul-http-api.md`,
//! "Sessions".

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::state::{Behavior, Session};
use super::wire::{Req, Resp, blocking, format_go_duration, json_resp, random_u64, text};
use crate::config::parse_go_duration;

/// Longest session TTL (24 h).
const MAX_TTL: Duration = Duration::from_secs(86_400);
const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);
const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);

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

/// A session as `/v1/session/info` shows it.
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

pub(super) fn session_create(shared: &Shared, req: &Req) -> Resp {
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

pub(super) fn session_renew(shared: &Shared, id: &str) -> Resp {
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

pub(super) fn session_destroy(shared: &Shared, id: &str) -> Resp {
    {
        let mut state = shared.lock();
        let idx = state.next_index();
        state.destroy_session(idx, id, Instant::now());
    }
    shared.notify();
    json_resp(StatusCode::OK, &json!(true), None)
}

pub(super) async fn session_info(shared: &Shared, req: &Req, id: &str) -> Resp {
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

pub(super) async fn session_list(shared: &Shared, req: &Req) -> Resp {
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

/// A random version-4 UUID, as Consul's session IDs.
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
