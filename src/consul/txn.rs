//! Consul transactions (`PUT /v1/txn`): running one, its outcome, the write operations
//! of a put, and what a rolled-back transaction's errors say.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Inner;
use super::client::{Entry, NAME};
use crate::backend::KvPair;
use crate::error::{Error, Result};

/// Consul's limit on the operations of one transaction.
pub(super) const MAX_TXN_OPS: usize = 64;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnResponse {
    #[serde(default)]
    results: Option<Vec<TxnResult>>,
    #[serde(default)]
    errors: Option<Vec<TxnError>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnResult {
    #[serde(rename = "KV")]
    kv: Option<Entry>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct TxnError {
    op_index: usize,
    what: String,
}

/// The outcome of a transaction.
pub(crate) enum Txn {
    Applied(Vec<Entry>),
    RolledBack(Vec<TxnError>),
}

impl Inner {
    /// Runs a transaction of KV operations.
    pub(super) async fn txn(&self, ops: Vec<Value>) -> Result<Txn> {
        if self.closed.is_cancelled() {
            return Err(Error::Closed);
        }
        self.txn_even_if_closed(ops).await
    }

    /// Runs a transaction also after `close`: lock guards still release their key.
    pub(super) async fn txn_even_if_closed(&self, ops: Vec<Value>) -> Result<Txn> {
        let body = Value::Array(ops.into_iter().map(|kv| json!({ "KV": kv })).collect());
        let resp = self
            .client
            .request(
                Method::PUT,
                "/v1/txn",
                Bytes::from(body.to_string()),
                Duration::ZERO,
            )
            .await?
            .expect(&[StatusCode::OK, StatusCode::CONFLICT])?;
        let parsed: TxnResponse = resp.json()?;
        if resp.status == StatusCode::OK {
            Ok(Txn::Applied(
                parsed
                    .results
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|r| r.kv)
                    .collect(),
            ))
        } else {
            Ok(Txn::RolledBack(parsed.errors.unwrap_or_default()))
        }
    }

    /// The write ops of a put: drop any previous entry (and with it any session a
    /// TTL put attached), then set, or lock with the TTL session.
    pub(super) fn write_ops(
        &self,
        remote: &str,
        value: &Bytes,
        session: Option<&str>,
    ) -> Vec<Value> {
        let encoded = B64.encode(value);
        let write = match session {
            Some(s) => json!({"Verb": "lock", "Key": remote, "Value": encoded, "Session": s}),
            None => json!({"Verb": "set", "Key": remote, "Value": encoded}),
        };
        vec![json!({"Verb": "delete", "Key": remote}), write]
    }

    /// The pair written by an applied transaction: the last result for `remote`.
    pub(super) fn written(&self, entries: &[Entry], remote: &str, value: Bytes) -> Result<KvPair> {
        let entry = entries
            .iter()
            .rev()
            .find(|e| e.key == remote)
            .ok_or_else(|| Error::backend(NAME, "the transaction returned no entry for the key"))?;
        Ok(KvPair {
            key: self.local(remote).unwrap_or_else(|| remote.to_owned()),
            value,
            last_index: entry.modify_index.max(1),
        })
    }
}

/// The key's index from a failed `check-index`, when Consul says it
/// (`"current modify index N != M"`); 0 when it does not.
pub(super) fn reported_index(errors: &[TxnError], op: usize) -> u64 {
    errors
        .iter()
        .find(|e| e.op_index == op)
        .and_then(|e| e.what.strip_prefix("current modify index "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// True when the rolled-back transaction's operation `op` is one that failed.
pub(super) fn failed_at(errors: &[TxnError], op: usize) -> bool {
    errors.iter().any(|e| e.op_index == op)
}

/// The error of a transaction that failed for another reason than its checks.
pub(super) fn unexpected(errors: &[TxnError]) -> Error {
    Error::backend(NAME, format!("transaction failed: {errors:?}"))
}
