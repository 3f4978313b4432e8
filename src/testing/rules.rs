//! The rule catalogue: every rule the model harness and the concurrent phase check,
//! as a value a failure names (see `docs/testing.md`).

use std::fmt;

/// A rule of the model (`docs/design.md`) a backend must keep; a [`super::CheckFailure`]
/// names the one broken. `Display` prints the rule in words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// A conformance check failed: its name in [`super::conformance::checks`].
    Conformance(&'static str),
    /// Operations succeed on a healthy store.
    Healthy,
    /// Pairs carry the normalised key and the written value.
    Normalised,
    /// Last_index is nonzero, changes on every write and never goes back (also across delete and re-create).
    Versions,
    /// Read your writes (a handle sees its own latest write).
    ReadYourWrites,
    /// Monotonic reads across handles (never older than already seen).
    MonotonicReads,
    /// Reads see the latest completed write (linearizable reads).
    LatestWrite,
    /// Implicit parents are not keys (get/exists of a parent is NotFound).
    ImplicitParents,
    /// A written key stays readable until deleted or expired.
    LostWrite,
    /// A deleted key is gone.
    Deleted,
    /// A key put with a TTL is gone after ttl × ttl_expiry_factor + ttl_granularity.
    TtlGone,
    /// A key put with a TTL is readable until its TTL passes.
    TtlKept,
    /// List is sorted by key (byte order).
    ListSorted,
    /// List returns only keys strictly below dir (never dir itself nor a sibling).
    ListBelow,
    /// List returns exactly the live keys below dir.
    ListContent,
    /// Errors name the caller's decision (NotFound, KeyExists, KeyModified).
    ErrorKinds,
    /// Atomic_put/atomic_delete apply exactly when the version matches.
    CompareAndSwap,
    /// Delete_tree deletes dir and everything below, nothing else.
    DeleteTree,
    /// A watch yields only its key (watch_tree: keys strictly below dir).
    WatchFilter,
    /// A watch's first item is a state the key had between the call and the item.
    WatchFirst,
    /// A watch yields states in order, never a stale one after a newer.
    WatchOrder,
    /// A watch never repeats an item.
    WatchRepeat,
    /// A watch yields only states the store had.
    WatchUnknown,
    /// A watch yields every write once, in order (watch_sees_every_write).
    WatchEvery,
    /// A watch converges to the current state promptly.
    WatchConverges,
    /// A watch yields no error on a healthy store.
    WatchError,
    /// Lock/try_lock of a free lock is granted promptly.
    LockFree,
    /// Mutual exclusion: try_lock of a held lock returns None (identical options).
    LockExclusionSame,
    /// Mutual exclusion: try_lock of a held lock returns None (different options).
    LockExclusionOther,
    /// The lock key holds the lock's value while held (bookkeeping hidden).
    LockValue,
    /// Unlock of a held lock succeeds and frees the lock at once.
    Unlock,
    /// A lock nobody touches is not lost.
    LockNotLost,
    /// Dropping a guard frees the lock promptly.
    DropFrees,
    /// An abandoned TTL lock stays held until its TTL passes.
    AbandonHeld,
    /// An abandoned TTL lock is free within ttl × ttl_expiry_factor + ttl_granularity.
    AbandonFrees,
    /// The history is linearizable per key (concurrent phase).
    Linearizable,
    /// Every list is an atomic snapshot of the keys it returned (concurrent phase).
    ListSnapshot,
    /// Every reply fits its call: its own key and value, a sorted list of keys below dir (concurrent phase).
    ReplyShape,
    /// A watch yields only states the key had between the watch call and the item (concurrent phase).
    WatchInWindow,
    /// A lock every holder releases within milliseconds is granted within three operation timeouts (concurrent phase).
    LockGranted,
    /// Mutual exclusion: holds that were not lost never overlap, and the fencing swap under the lock never conflicts (concurrent phase).
    LockExclusion,
    /// The store serves writes again once the fault is healed (concurrent phase).
    Recovers,
    /// A held lock whose key another handle deletes or overwrites is lost: its `lost()` fires within PROMPTLY, so no second holder coexists with it (concurrent phase).
    LockLossUnnoticed,
    /// Many handles calling try_lock on a free lock at once get one guard at most (concurrent phase).
    TryLockNotExclusive,
    /// A guard try_lock hands out is not lost at birth when nobody touches its key (concurrent phase).
    LockLostAtBirth,
}

impl Rule {
    /// The rule in words, as a failure prints it.
    pub fn text(self) -> &'static str {
        match self {
            Rule::Conformance(name) => name,
            Rule::Healthy => "operations succeed on a healthy store",
            Rule::Normalised => "pairs carry the normalised key and the written value",
            Rule::Versions => {
                "last_index is nonzero, changes on every write and never goes back (also across delete and re-create)"
            }
            Rule::ReadYourWrites => "read your writes (a handle sees its own latest write)",
            Rule::MonotonicReads => {
                "monotonic reads across handles (never older than already seen)"
            }
            Rule::LatestWrite => "reads see the latest completed write (linearizable reads)",
            Rule::ImplicitParents => {
                "implicit parents are not keys (get/exists of a parent is NotFound)"
            }
            Rule::LostWrite => "a written key stays readable until deleted or expired",
            Rule::Deleted => "a deleted key is gone",
            Rule::TtlGone => {
                "a key put with a TTL is gone after ttl × ttl_expiry_factor + ttl_granularity"
            }
            Rule::TtlKept => "a key put with a TTL is readable until its TTL passes",
            Rule::ListSorted => "list is sorted by key (byte order)",
            Rule::ListBelow => {
                "list returns only keys strictly below dir (never dir itself nor a sibling)"
            }
            Rule::ListContent => "list returns exactly the live keys below dir",
            Rule::ErrorKinds => {
                "errors name the caller's decision (NotFound, KeyExists, KeyModified)"
            }
            Rule::CompareAndSwap => {
                "atomic_put/atomic_delete apply exactly when the version matches"
            }
            Rule::DeleteTree => "delete_tree deletes dir and everything below, nothing else",
            Rule::WatchFilter => {
                "a watch yields only its key (watch_tree: keys strictly below dir)"
            }
            Rule::WatchFirst => {
                "a watch's first item is a state the key had between the call and the item"
            }
            Rule::WatchOrder => "a watch yields states in order, never a stale one after a newer",
            Rule::WatchRepeat => "a watch never repeats an item",
            Rule::WatchUnknown => "a watch yields only states the store had",
            Rule::WatchEvery => {
                "a watch yields every write once, in order (watch_sees_every_write)"
            }
            Rule::WatchConverges => "a watch converges to the current state promptly",
            Rule::WatchError => "a watch yields no error on a healthy store",
            Rule::LockFree => "lock/try_lock of a free lock is granted promptly",
            Rule::LockExclusionSame => {
                "mutual exclusion: try_lock of a held lock returns None (identical options)"
            }
            Rule::LockExclusionOther => {
                "mutual exclusion: try_lock of a held lock returns None (different options)"
            }
            Rule::LockValue => {
                "the lock key holds the lock's value while held (bookkeeping hidden)"
            }
            Rule::Unlock => "unlock of a held lock succeeds and frees the lock at once",
            Rule::LockNotLost => "a lock nobody touches is not lost",
            Rule::DropFrees => "dropping a guard frees the lock promptly",
            Rule::AbandonHeld => "an abandoned TTL lock stays held until its TTL passes",
            Rule::AbandonFrees => {
                "an abandoned TTL lock is free within ttl × ttl_expiry_factor + ttl_granularity"
            }
            Rule::Linearizable => "the history is linearizable per key (concurrent phase)",
            Rule::ListSnapshot => {
                "every list is an atomic snapshot of the keys it returned (concurrent phase)"
            }
            Rule::ReplyShape => {
                "every reply fits its call: its own key and value, a sorted list of keys below dir (concurrent phase)"
            }
            Rule::WatchInWindow => {
                "a watch yields only states the key had between the watch call and the item (concurrent phase)"
            }
            Rule::LockGranted => {
                "a lock every holder releases within milliseconds is granted within three operation timeouts (concurrent phase)"
            }
            Rule::LockExclusion => {
                "mutual exclusion: holds that were not lost never overlap, and the fencing swap under the lock never conflicts (concurrent phase)"
            }
            Rule::Recovers => {
                "the store serves writes again once the fault is healed (concurrent phase)"
            }
            Rule::LockLossUnnoticed => {
                "a held lock whose key another handle deletes or overwrites is lost: its lost() fires within PROMPTLY, so no second holder coexists with it (concurrent phase)"
            }
            Rule::TryLockNotExclusive => {
                "many handles calling try_lock on a free lock at once get one guard at most (concurrent phase)"
            }
            Rule::LockLostAtBirth => {
                "a guard try_lock hands out is not lost at birth when nobody touches its key (concurrent phase)"
            }
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}
