//! The model harness: random operation sequences run against a backend and checked,
//! step by step, against a model of the rules in `docs/design.md` (the semantics
//! [`crate::memory::Memory`] implements). `docs/testing.md` lists every rule checked.
//!
//! A sequence mixes every operation: get, put (with and without TTL), delete, exists,
//! list, delete_tree, atomic_put (create and swap, with and without TTL),
//! atomic_delete, watches and tree watches that later steps check, lock, try_lock,
//! unlock, dropping a guard, abandoning a TTL lock, and waiting for TTLs to pass. Steps
//! are spread over several handles ([`ModelConfig::handles`]) kept for the whole run,
//! so stale reads across handles show. Keys come from a small nested space whose
//! segments sort before and after `/` (`a`, `ab`, `a-`, `a.b`, `a b`, `a~`, `é`), with
//! random extra slashes, so keys, parents, children and prefix-siblings collide.
//!
//! Time: TTL waits use `tokio::time::sleep`, so a backend on tokio's clock (memory)
//! can be checked under a paused clock (`#[tokio::test(start_paused = true)]`) and
//! never waits for real. Tolerances come from [`Capabilities`](crate::Capabilities): a
//! TTL key is present until its TTL passes and gone after
//! `ttl * ttl_expiry_factor + ttl_granularity`.
//!
//! A failure is shrunk by proptest to a minimal sequence; [`ModelFailure`] (a
//! [`CheckFailure`]) names the rule broken, the seed, the step and the sequence.

mod checks;
mod harness;
pub(in crate::testing) mod ops;
pub(in crate::testing) mod run;
mod steps;
mod violation;

pub use super::check_backend;
pub use ops::{
    LockValue, MODEL_LOCK_ROOT, MODEL_ROOT, ModelConfig, Op, OpenHandle, PROMPTLY, Version,
    sequence,
};
pub use run::check_against_memory;

use super::failure::CheckFailure;

/// The failure [`check_backend`] and [`check_against_memory`] return: the one
/// [`CheckFailure`] type, under the name this module has always used.
pub type ModelFailure = CheckFailure;
