//! The conformance suite: generic async checks of every rule in `docs/design.md`.
//!
//! Each check owns a directory below [`CONFORMANCE_ROOT`] and wipes it first, so the
//! suite can run against a shared server. A failed check panics with a message naming
//! the rule. [`run_all`] runs every check; a backend's tests may also call them one by
//! one.
//!
//! Two groups need more than one shared handle and are not in [`run_all`]: the foreign
//! key checks (keys other tools wrote, through a backend's [`RawStore`]) and the close
//! checks (they close the handle they are given).
//!
//! The cases docker/libkv's own suite checks are here too: put/get/delete/exists on
//! keys with trailing slashes, list and delete_tree, atomic put/create/delete, watch
//! and watch_tree, lock/unlock/relock, lock TTL with renewal, and put TTL.

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::backend::Backend;
use crate::kv::Kv;

mod cas;
mod close;
mod foreign_keys;
mod keys;
mod lock;
mod support;
mod trees;
mod ttl;
mod watch;

pub use cas::{atomic_delete_rules, atomic_put_rules};
pub use close::{
    CloseCheckpoint, close_ends_watches_and_frees_locks,
    guard_dropped_just_before_close_is_free_when_close_returns,
};
pub use foreign_keys::{
    RawStore, foreign_keys, foreign_keys_are_never_deleted_by_delete_tree,
    foreign_keys_are_never_listed_or_watched, foreign_keys_written_during_delete_tree_survive_it,
};
pub use keys::{
    invalid_input, key_with_children, last_index_rules, missing_keys_and_implicit_parents,
    normalised_keys, put_get_delete,
};
pub use lock::{
    lock_bookkeeping_hidden, lock_lost_when_key_taken, lock_ttl_renewal, lock_unlock_relock,
    lock_wakes_waiter,
};
pub use support::{fresh_dir, next_item, siblings};
pub use trees::{delete_tree_rules, list_rules};
pub use ttl::put_ttl;
pub use watch::{watch_key, watch_missing_key, watch_tree};

/// Every check works below this directory.
pub const CONFORMANCE_ROOT: &str = "kvkit-conformance";

/// How long a check waits for something that must happen "promptly" (a watch event,
/// a woken lock waiter).
pub const PROMPTLY: Duration = Duration::from_secs(10);

/// One conformance check, as [`checks`] lists it: takes a handle, panics on a broken
/// rule.
pub type Check<B> = fn(Kv<B>) -> BoxFuture<'static, ()>;

macro_rules! named_checks {
    ($($name:ident),* $(,)?) => {
        vec![$((
            stringify!($name),
            (|kv: Kv<B>| async move { $name(&kv).await }.boxed()) as Check<B>,
        )),*]
    };
}

/// Every check with its name, in the order [`run_all`] runs them.
pub fn checks<B: Backend>() -> Vec<(&'static str, Check<B>)> {
    named_checks![
        put_get_delete,
        normalised_keys,
        missing_keys_and_implicit_parents,
        key_with_children,
        last_index_rules,
        list_rules,
        delete_tree_rules,
        atomic_put_rules,
        atomic_delete_rules,
        invalid_input,
        put_ttl,
        watch_key,
        watch_missing_key,
        watch_tree,
        lock_unlock_relock,
        lock_wakes_waiter,
        lock_lost_when_key_taken,
        lock_ttl_renewal,
        lock_bookkeeping_hidden,
    ]
}

/// Runs every check in turn.
pub async fn run_all<B: Backend>(kv: &Kv<B>) {
    for (_, check) in checks::<B>() {
        check(kv.clone()).await;
    }
}
