//! `PUT /v1/txn` with the KV verbs (set, cas, lock, unlock, get, get-or-empty, get-tree,
//! check-index, check-session, check-not-exists, delete, delete-tree, delete-cas): all
//! ops apply at one index or, if one fails, none (409 with the failed ops).
//!
//! Emulates <https://developer.hashicorp.com/consul/api-docs/txn>, as summed up in
//! `shared/reference/consul-http-api.md`, "Transactions: PUT /v1/txn".

// A handler returns the finished error response as its `Err`; it is built once per
// failed request, so its size does not matter here.
#![allow(clippy::result_large_err)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hyper::StatusCode;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::Shared;
use super::kv::{MAX_VALUE, entry_json};
use super::state::State;
use super::wire::{Req, Resp, add_query_meta, json_resp, text};

/// Consul's limit of operations in one transaction.
const MAX_TXN_OPS: usize = 64;

/// One `{"KV": {...}}` op of the body; absent fields are empty or 0.
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

pub(super) fn txn(shared: &Shared, req: &Req) -> Resp {
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
