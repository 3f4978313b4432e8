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
//! never waits for real. Tolerances come from [`Capabilities`]: a TTL key is present
//! until its TTL passes and gone after `ttl * ttl_expiry_factor + ttl_granularity`.
//!
//! A failure is shrunk by proptest to a minimal sequence; [`ModelFailure`] (a
//! [`CheckFailure`]) names the rule broken, the seed, the step and the sequence.

use std::time::Duration;

mod checks;
mod harness;
mod ops;
mod run;
mod steps;

pub use super::check_backend;
pub use ops::{LockValue, ModelConfig, Op, OpenHandle, Version, sequence};
pub use run::check_against_memory;
pub(crate) use run::random_seed;

use super::CheckFailure;

/// The failure [`check_backend`] and [`check_against_memory`] return: the one
/// [`CheckFailure`] type, under the name this module has always used.
pub type ModelFailure = CheckFailure;

/// Every data key of a case lives below this directory, wiped before each case.
pub const MODEL_ROOT: &str = "kvkit-model";

/// The lock keys of a case live below this directory: a prefix-sibling of
/// [`MODEL_ROOT`], so a backend whose `list(MODEL_ROOT)` leaks siblings shows it.
pub const MODEL_LOCK_ROOT: &str = "kvkit-model-locks";

/// How long a step waits for something that must happen "promptly" (a watch item, a
/// lock freed by a dropped guard).
pub const PROMPTLY: Duration = super::conformance::PROMPTLY;
