//! The history a linearizability check reads: single-key operations, their outcomes
//! and times.

use std::fmt;

use bytes::Bytes;

/// Nanoseconds since the start of the history.
pub type Time = u64;

/// What one single-key operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyOp {
    /// `get`, or one key of a `list`.
    Read,
    /// `exists`.
    Exists,
    /// `put` of this value.
    Put(Bytes),
    /// `delete`.
    Delete,
    /// The part of a `delete_tree` that deletes this key (no result per key).
    TreeDelete,
    /// `atomic_put` with no previous pair (create only if absent).
    Create(Bytes),
    /// `atomic_put` expecting this index.
    Swap(Bytes, u64),
    /// `atomic_delete` expecting this index.
    CompareDelete(u64),
}

/// Why a conditional operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conflict {
    /// `KeyExists`: a create found the key present.
    Exists,
    /// `NotFound`: a swap or compare-delete found the key absent.
    Absent,
    /// `KeyModified`: a swap or compare-delete found another index.
    Modified,
}

/// What an operation returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A read: the pair, or `None` when absent.
    Read(Option<(Bytes, u64)>),
    /// `exists`.
    Exists(bool),
    /// A write was applied with this new index.
    Written(u64),
    /// `delete`: whether the key existed.
    Deleted(bool),
    /// Applied, nothing returned (compare-delete, a part of delete_tree).
    Done,
    /// A refused conditional operation.
    Conflict(Conflict),
    /// Unknown: the operation may or may not have taken effect.
    Unknown,
}

/// One single-key operation of a history.
#[derive(Clone, Debug)]
pub struct Event {
    /// The key (relative to the history's root).
    pub key: String,
    /// Which client issued it.
    pub client: usize,
    /// The operation of the client this event belongs to (a list or delete_tree gives
    /// several events with one origin).
    pub origin: usize,
    /// A short description of the client's operation, for failure reports.
    pub label: String,
    /// When it was invoked.
    pub call: Time,
    /// When it returned; `None` when its outcome is unknown.
    pub ret: Option<Time>,
    /// The operation.
    pub op: KeyOp,
    /// The result ([`Outcome::Unknown`] when `ret` is `None`).
    pub outcome: Outcome,
}

impl Event {
    pub(super) fn ret_or_never(&self) -> Time {
        self.ret.unwrap_or(Time::MAX)
    }

    pub(super) fn is_determinate(&self) -> bool {
        self.ret.is_some() && self.outcome != Outcome::Unknown
    }
}

pub(super) fn ms(t: Time) -> String {
    if t == Time::MAX {
        "never".to_owned()
    } else {
        format!("{:.3}ms", t as f64 / 1e6)
    }
}

pub(super) fn show_value(v: &Bytes) -> String {
    format!("{:?}", String::from_utf8_lossy(v))
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match &self.op {
            KeyOp::Read => "read".to_owned(),
            KeyOp::Exists => "exists".to_owned(),
            KeyOp::Put(v) => format!("put {}", show_value(v)),
            KeyOp::Delete => "delete".to_owned(),
            KeyOp::TreeDelete => "delete (by delete_tree)".to_owned(),
            KeyOp::Create(v) => format!("create {}", show_value(v)),
            KeyOp::Swap(v, i) => format!("swap {} if index {i}", show_value(v)),
            KeyOp::CompareDelete(i) => format!("compare_delete if index {i}"),
        };
        let outcome = match &self.outcome {
            Outcome::Read(None) => "absent".to_owned(),
            Outcome::Read(Some((v, i))) => format!("{} @{i}", show_value(v)),
            Outcome::Exists(b) => format!("{b}"),
            Outcome::Written(i) => format!("ok @{i}"),
            Outcome::Deleted(b) => format!("existed={b}"),
            Outcome::Done => "ok".to_owned(),
            Outcome::Conflict(c) => format!("conflict {c:?}"),
            Outcome::Unknown => "UNKNOWN (may or may not have applied)".to_owned(),
        };
        write!(
            f,
            "[{} .. {}] client {} {op} -> {outcome}   ({})",
            ms(self.call),
            ms(self.ret_or_never()),
            self.client,
            self.label
        )
    }
}
