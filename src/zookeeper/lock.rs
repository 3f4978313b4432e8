//! Locks: the ephemeral-sequential recipe.
//!
//! Contenders are `EPHEMERAL_SEQUENTIAL` znodes `c-<call>-<seq>` in
//! `{root}/locks/<escaped key>`,
//! outside the key space, so they never show in `list`, `watch_tree` or `get`. The
//! lowest sequence number holds the lock; every other contender watches only its
//! predecessor (no herd). The holder then writes the lock's value at the key (an
//! ordinary persistent znode, so keys can live below it and a value someone else
//! writes over it stays). The lock is lost when the session expires, the contender
//! znode disappears, its lease runs out, or someone else overwrites or deletes the key.
//!
//! `<call>` is a random id of the `lock`/`try_lock` call (Curator's "protected" mode):
//! a create whose reply was lost, or whose call was cancelled, can still be found by
//! its name and withdrawn, so no contender outlives the call that created it.
//!
//! A lock with `LockOptions::ttl` carries its TTL in the contender's name
//! (`c-t<ms>-<call>-<seq>`) and renews the contender (an empty `setData`, which moves its
//! `mtime`) while it waits and while it holds; a contender whose `mtime` + TTL has
//! passed on the server clock belongs to a dead or cut-off client, and the contender
//! behind it deletes it (versioned, so a renewal in between keeps it). The holder
//! reports the loss once no renewal sent within 4/5 of the TTL was answered, before
//! anyone may judge it dead.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use zookeeper_async::{CreateMode, ZkError};

use super::armed::{Arm, Kind};
use super::{Node, Zookeeper, codec};
use crate::backend::{LockGuard, LockLost, LostSignal};
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::key::Key;

const PREFIX: &str = "c-";
/// Bounds of the retries after a failed request (withdrawing a contender, re-reading
/// a held lock's nodes).
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Every lock this handle holds, so `close()` can release them and tell their guards.
#[derive(Default)]
pub(crate) struct HeldLocks {
    next: std::sync::atomic::AtomicU64,
    held: std::sync::Mutex<std::collections::HashMap<u64, (Arc<Held>, LostSignal)>>,
}

impl HeldLocks {
    fn held(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, (Arc<Held>, LostSignal)>> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn insert(&self, held: Arc<Held>, lost: LostSignal) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.held().insert(id, (held, lost));
        id
    }

    fn remove(&self, id: u64) {
        self.held().remove(&id);
    }

    /// Fires `lost()` of every held lock and releases them (value if still theirs,
    /// contender), all at once, bounded by `within`.
    pub(crate) async fn release_all(&self, within: Duration) {
        let all: Vec<(Arc<Held>, LostSignal)> = self.held().drain().map(|(_, v)| v).collect();
        for (_, lost) in &all {
            lost.fire();
        }
        let releases = futures::future::join_all(all.iter().map(|(held, _)| held.release()));
        let _ = tokio::time::timeout(within, releases).await;
    }
}

/// The guard of a ZooKeeper lock; see [`LockGuard`].
#[derive(Debug)]
pub struct ZookeeperLock {
    held: Arc<Held>,
    lost: LostSignal,
    loss_watch: AbortHandle,
    released: bool,
    registered: u64,
}

#[derive(Debug)]
pub(crate) struct Held {
    backend: Zookeeper,
    key: Key<'static>,
    contender: String,
    /// The id of the call that created the contender (in its name).
    call: CallId,
    index: u64,
    /// The lock's TTL (`LockOptions::ttl`), renewed on the contender.
    ttl: Option<Duration>,
}

impl Held {
    /// Deletes the lock's value (only if still ours) and then the contender znode.
    async fn release(&self) -> Result<()> {
        let _ = self
            .backend
            .compare_and_delete_raw(&self.key, self.index)
            .await;
        let inner = self.backend.inner();
        match inner
            .call(|| inner.zk().delete(&self.contender, None))
            .await
        {
            Ok(()) | Err(ZkError::NoNode) => {}
            Err(e) => {
                // Keep trying in the background: a contender left behind would block
                // everyone for as long as this session lives.
                if let Some((dir, _)) = self.contender.rsplit_once('/') {
                    spawn_withdraw(self.backend.clone(), dir.to_owned(), self.call.clone());
                }
                return Err(self.backend.map_err(e));
            }
        }
        // The lock's directory, unless other contenders wait in it (a contender that
        // finds it gone creates it again).
        if let Some((dir, _)) = self.contender.rsplit_once('/') {
            let _ = inner.call(|| inner.zk().delete(dir, None)).await;
        }
        Ok(())
    }
}

/// The random id of one `lock`/`try_lock` call, in the name of every contender it
/// creates (32 hex digits: never starts with `t`, holds no `-`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct CallId(String);

impl CallId {
    fn new() -> Self {
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Two independently seeded hashes: unique across calls and clients.
        let half = || {
            std::hash::BuildHasher::hash_one(
                &std::collections::hash_map::RandomState::new(),
                (n, std::process::id()),
            )
        };
        CallId(format!("{:016x}{:016x}", half(), half()))
    }

    /// Whether the contender `name` was created by this call.
    fn created(&self, name: &str) -> bool {
        call_of(name) == Some(self.0.as_str())
    }
}

/// Withdraws every contender a `lock`/`try_lock` call created when the call ends
/// without a lock (an error, a timeout, a cancelled future), including one whose
/// create reply never came.
struct Contender {
    backend: Zookeeper,
    dir: String,
    call: CallId,
    armed: bool,
}

impl Contender {
    /// The call holds the lock or has withdrawn: nothing left to clean up.
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Contender {
    fn drop(&mut self) {
        if self.armed {
            spawn_withdraw(self.backend.clone(), self.dir.clone(), self.call.clone());
        }
    }
}

/// Deletes, in the background, every contender in `dir` that `call` created, and keeps
/// trying through connection loss and reconnects: an orphaned contender would block
/// every later contender for as long as its session lives. The listing is sent after
/// every create of the call on the same session, and the server answers one session's
/// requests in order, so a create whose reply was lost shows in it (a create of an
/// earlier session went with that session). It stops once a listing shows none left
/// or the store is closed (closing ends the session and its contenders); at the latest
/// after a few session timeouts, by which a session that cannot reach the server has
/// expired.
fn spawn_withdraw(backend: Zookeeper, dir: String, call: CallId) {
    crate::background::release_in_background("zookeeper lock contender", async move {
        let inner = backend.inner();
        let give_up = Instant::now() + inner.session_timeout() * 3 + inner.request_timeout();
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
        loop {
            if inner.is_closed() {
                return Ok(());
            }
            if withdraw(&backend, &dir, &call).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= give_up {
                tracing::warn!(lock = %dir, "could not withdraw a lock contender");
                return Err(format!("gave up withdrawing contenders in {dir}"));
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    });
}

/// One round of [`spawn_withdraw`]: lists `dir` and deletes `call`'s contenders.
async fn withdraw(backend: &Zookeeper, dir: &str, call: &CallId) -> Result<(), ZkError> {
    let inner = backend.inner();
    let children = match inner.call(|| inner.zk().get_children(dir, false)).await {
        Ok(children) => children,
        Err(ZkError::NoNode) => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in children.iter().filter(|name| call.created(name)) {
        let path = format!("{dir}/{name}");
        match inner.call(|| inner.zk().delete(&path, None)).await {
            Ok(()) | Err(ZkError::NoNode) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Zookeeper {
    /// `compare_and_delete` without the trait's future bounds (used on release).
    async fn compare_and_delete_raw(&self, key: &Key<'_>, index: u64) -> Result<()> {
        crate::backend::Backend::compare_and_delete(self, key, index)
            .await
            .map(|_| ())
    }
}

/// The sequence number of a contender `c-[t<ttl ms>-][<call>-]<seq>`.
fn sequence(name: &str) -> Option<i64> {
    name.strip_prefix(PREFIX)?.rsplit('-').next()?.parse().ok()
}

/// The TTL of a contender named `c-t<ttl ms>-[<call>-]<seq>`.
fn lease_of(name: &str) -> Option<Duration> {
    let rest = name.strip_prefix(PREFIX)?.strip_prefix('t')?;
    let (ms, _) = rest.split_once('-')?;
    ms.parse().ok().map(Duration::from_millis)
}

/// The call id in a contender named `c-[t<ttl ms>-]<call>-<seq>` (none in the names
/// of clients that predate call ids: `c-[t<ttl ms>-]<seq>`).
fn call_of(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(PREFIX)?;
    let rest = match rest.strip_prefix('t') {
        Some(ttl_and_rest) => ttl_and_rest.split_once('-')?.1,
        None => rest,
    };
    Some(rest.rsplit_once('-')?.0)
}

/// The prefix of the names of the contenders `call` creates for this lock.
fn contender_prefix(dir: &str, ttl: Option<Duration>, call: &CallId) -> String {
    match ttl {
        None => format!("{dir}/{PREFIX}{}-", call.0),
        Some(ttl) => format!("{dir}/{PREFIX}t{}-{}-", ttl.as_millis().max(1), call.0),
    }
}

/// With a TTL, whether the contender at `path` outlived its lease without renewing it
/// (its client died or was cut off); if so it is deleted (versioned, so a renewal
/// that lands first keeps it). True when it was removed or is gone.
async fn remove_if_expired(backend: &Zookeeper, path: &str, lease: Duration) -> bool {
    let inner = backend.inner();
    let Ok(found) = inner.call(|| inner.zk().exists(path, false)).await else {
        return false;
    };
    let Some(stat) = found else { return true };
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    if stat.mtime.saturating_add(lease_ms) > inner.server_now_ms() {
        return false;
    }
    tracing::debug!(contender = %path, "removing a lock contender whose TTL ran out");
    matches!(
        inner
            .call(|| inner.zk().delete(path, Some(stat.version)))
            .await,
        Ok(()) | Err(ZkError::NoNode)
    )
}

/// How long to wait before judging `stat`'s contender dead (local clock), `None`
/// without a lease.
fn expiry_in(backend: &Zookeeper, name: &str, stat: &zookeeper_async::Stat) -> Option<Duration> {
    let lease = lease_of(name)?;
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let left = stat
        .mtime
        .saturating_add(lease_ms)
        .saturating_sub(backend.inner().server_now_ms());
    Some(Duration::from_millis(
        u64::try_from(left.max(0)).unwrap_or(0) + 1,
    ))
}

/// Acquires the lock on `key`: waits when `wait`, else returns `None` when it is held.
pub(crate) async fn lock(
    backend: Zookeeper,
    key: Key<'static>,
    value: Bytes,
    ttl: Option<Duration>,
    wait: bool,
) -> Result<Option<ZookeeperLock>> {
    let inner = backend.inner();
    let dir = format!(
        "{}/{}",
        inner.lock_root(),
        codec::escape_segment(key.as_str())
    );
    let mut session = inner.session();
    let mut epoch = inner.epoch();
    let call = CallId::new();
    // Armed before the first create: a create whose reply is lost is withdrawn too.
    let mut contender = Contender {
        backend: backend.clone(),
        dir: dir.clone(),
        call: call.clone(),
        armed: true,
    };
    let prefix = contender_prefix(&dir, ttl, &call);
    'contend: for _ in 0..super::MAX_ATTEMPTS {
        let session_at_start = *session.borrow_and_update();
        // Renewals of a TTL contender prove it alive from when they were sent.
        let mut renewed = Instant::now();
        let (created, _) = match inner
            .call(|| {
                inner.zk().create2(
                    &prefix,
                    Vec::new(),
                    inner.acl(),
                    CreateMode::EphemeralSequential,
                )
            })
            .await
        {
            Err(ZkError::NoNode) => {
                match inner
                    .create_with_parents(&dir, codec::no_value(), CreateMode::Persistent)
                    .await
                {
                    Ok(_) | Err(ZkError::NodeExists) => continue 'contend,
                    Err(e) => return Err(backend.map_err(e)),
                }
            }
            other => other.map_err(|e| backend.map_err(e))?,
        };
        // The crate returns the path relative to its (absent) chroot: the full path.
        let my_name = created.rsplit('/').next().unwrap_or_default().to_owned();
        let Some(my_seq) = sequence(&my_name) else {
            return Err(Error::backend(
                super::NAME,
                format!("unexpected contender {created}"),
            ));
        };
        loop {
            let mut children: Vec<(i64, String)> =
                match inner.call(|| inner.zk().get_children(&dir, false)).await {
                    Ok(children) => children
                        .into_iter()
                        .filter_map(|c| sequence(&c).map(|s| (s, c)))
                        .collect(),
                    Err(ZkError::NoNode) => Vec::new(),
                    Err(e) => return Err(backend.map_err(e)),
                };
            children.sort_unstable();
            let Some(pos) = children.iter().position(|(s, _)| *s == my_seq) else {
                // Our contender is gone (the session expired): start again.
                continue 'contend;
            };
            if let Some((_, stale)) = children[..pos].iter().find(|(_, c)| call.created(c)) {
                // An earlier contender of this call (of a session since replaced)
                // would block us: it goes first.
                let stale = format!("{dir}/{stale}");
                match inner.call(|| inner.zk().delete(&stale, None)).await {
                    Ok(()) | Err(ZkError::NoNode) => continue,
                    Err(e) => return Err(backend.map_err(e)),
                }
            }
            if pos == 0 {
                if *session.borrow() != session_at_start {
                    continue 'contend;
                }
                break;
            }
            if !wait {
                // Contenders ahead whose TTL ran out belong to dead clients: remove
                // them and look again. Any other one holds or waits: withdraw before
                // answering, so our contender cannot block a later `try_lock`.
                let mut all_dead = true;
                for (_, name) in &children[..pos] {
                    let removed = match lease_of(name) {
                        Some(lease) => {
                            remove_if_expired(&backend, &format!("{dir}/{name}"), lease).await
                        }
                        None => false,
                    };
                    if !removed {
                        all_dead = false;
                        break;
                    }
                }
                if all_dead {
                    continue;
                }
                // (If the delete fails, `contender` withdraws it in the background.)
                if let Ok(()) | Err(ZkError::NoNode) =
                    inner.call(|| inner.zk().delete(&created, None)).await
                {
                    contender.disarm();
                }
                return Ok(None);
            }
            let (pred_name, predecessor) = {
                let name = &children[pos - 1].1;
                (name.clone(), format!("{dir}/{name}"))
            };
            let (arm, mut rx) = Arm::new(&backend);
            arm.claim(&predecessor, Kind::Data);
            let pred_stat = match inner.call(|| inner.zk().exists(&predecessor, true)).await {
                Ok(None) => continue,
                Ok(Some(stat)) => stat,
                Err(e) => return Err(backend.map_err(e)),
            };
            let pred_expiry =
                expiry_in(&backend, &pred_name, &pred_stat).map(|left| Instant::now() + left);
            // A safety net against a lost notification; the check is cheap.
            let recheck = Instant::now() + inner.session_timeout();
            loop {
                let renew_at = ttl.map(|ttl| renewed + ttl / 3);
                let wake = [pred_expiry, renew_at]
                    .into_iter()
                    .flatten()
                    .fold(recheck, Instant::min);
                tokio::select! {
                    _ = rx.recv() => break,
                    _ = session.changed() => break,
                    _ = epoch.changed() => break,
                    _ = tokio::time::sleep_until(wake) => {}
                }
                if renew_at.is_some_and(|at| Instant::now() >= at) {
                    let sent = Instant::now();
                    match inner
                        .call(|| inner.zk().set_data(&created, Vec::new(), None))
                        .await
                    {
                        Ok(_) => renewed = sent,
                        Err(ZkError::NoNode) => break,
                        Err(e) => return Err(backend.map_err(e)),
                    }
                }
                if pred_expiry.is_some_and(|at| Instant::now() >= at) {
                    if let Some(lease) = lease_of(&pred_name) {
                        remove_if_expired(&backend, &predecessor, lease).await;
                    }
                    break;
                }
                if Instant::now() >= recheck {
                    break;
                }
            }
        }
        // Held: write the value at the key (its answer proves the session alive at
        // least since `proven`; a TTL lock's lease since its last renewal).
        let proven = if ttl.is_some() {
            renewed
        } else {
            Instant::now()
        };
        let pair = match backend.write_lock_value(&key, &value).await {
            Ok(pair) => pair,
            Err(e) => return Err(e), // `contender` withdraws our znode on drop
        };
        contender.disarm();
        let lost = LostSignal::new();
        let held = Arc::new(Held {
            backend: backend.clone(),
            key,
            contender: created,
            call,
            index: pair.last_index,
            ttl,
        });
        let registered = inner.held_locks().insert(held.clone(), lost.clone());
        let loss_watch = tokio::spawn(watch_for_loss(
            held.clone(),
            lost.clone(),
            session_at_start,
            proven,
            registered,
        ));
        return Ok(Some(ZookeeperLock {
            held,
            lost,
            loss_watch: loss_watch.abort_handle(),
            released: false,
            registered,
        }));
    }
    Err(Error::unavailable(
        super::NAME,
        "the lock's contender znode kept disappearing (session expiring?)",
    ))
}

/// Fires `lost` when the session expires, the contender znode goes, or the key is
/// overwritten or deleted by someone else.
async fn watch_for_loss(
    held: Arc<Held>,
    lost: LostSignal,
    session_at_start: u64,
    proven: Instant,
    registered: u64,
) {
    tokio::select! {
        _ = watch_lock_nodes(&held, session_at_start) => {}
        _ = lease(&held, proven) => {}
        // Closing the store ends its session, and with it every lock.
        _ = held.backend.inner().shutdown() => {}
    }
    lost.fire();
    held.backend.inner().held_locks().remove(registered);
    // A lost lock must not keep blocking others while its guard lives: give up the
    // contender (and the value, only if it is still the one this lock wrote).
    if !held.backend.inner().is_closed() {
        let _ = held.release().await;
    }
}

/// The session's lease as this client can prove it: the server expires a session one
/// session timeout after it last heard from it, which is no earlier than the sending of
/// the client's last answered request. A heartbeat (`exists` of the contender) every
/// quarter timeout renews the proof; when no request sent within the last
/// `timeout - margin` was answered, the lock is reported lost *before* the server can
/// expire the session and hand the lock to someone else, even if the connection went
/// silent without being closed (which the client crate notices only much later).
/// The timeout is the one the server granted, not the one asked for.
///
/// A TTL lock renews its contender instead (an empty `setData`, which also proves the
/// session), and its lease is the shorter of the TTL and the session timeout: other
/// contenders judge it dead at its contender's `mtime` + TTL, no earlier than the
/// sending of its last answered renewal + TTL.
async fn lease(held: &Held, mut proven: Instant) {
    let inner = held.backend.inner();
    let timeout = held.ttl.map_or(inner.session_timeout(), |ttl| {
        ttl.min(inner.session_timeout())
    });
    let deadline_after = timeout - timeout / 5;
    loop {
        let deadline = proven + deadline_after;
        let sent = Instant::now();
        if sent >= deadline {
            return;
        }
        let beat = tokio::time::timeout_at(deadline, async {
            if held.ttl.is_some() {
                match inner
                    .call(|| inner.zk().set_data(&held.contender, Vec::new(), None))
                    .await
                {
                    Ok(stat) => Ok(Some(stat)),
                    Err(ZkError::NoNode) => Ok(None),
                    Err(e) => Err(e),
                }
            } else {
                inner
                    .call(|| inner.zk().exists(&held.contender, false))
                    .await
            }
        })
        .await;
        match beat {
            Ok(Ok(Some(_))) => proven = sent,
            // The contender is gone: `watch_lock_nodes` reports it; stop renewing.
            Ok(Ok(None)) => return,
            Ok(Err(_)) => {}
            Err(_) => return,
        }
        let pause = timeout / 4;
        tokio::time::sleep_until((Instant::now() + pause).min(proven + deadline_after)).await;
    }
}

async fn watch_lock_nodes(held: &Held, session_at_start: u64) {
    let backend = &held.backend;
    let inner = backend.inner();
    let mut session = inner.session();
    let mut epoch = inner.epoch();
    let key_path = inner.key_path(held.key.as_str());
    let (arm, mut rx) = Arm::new(backend);
    let mut retries = Backoff::new(RETRY_FIRST, RETRY_MAX);
    loop {
        if *session.borrow_and_update() != session_at_start {
            break;
        }
        epoch.borrow_and_update();
        // Fresh registrations each round (what fired, or a new connection's).
        arm.clear();
        while rx.try_recv().is_ok() {}
        // A TTL lock's renewals change its contender's data: its removal is seen by
        // the renewal (`lease`), not by a watch that would fire on every renewal.
        let contender = if held.ttl.is_none() {
            arm.claim(&held.contender, Kind::Data);
            inner
                .call(|| inner.zk().exists(&held.contender, true))
                .await
                .map(|stat| stat.is_some())
        } else {
            Ok(true)
        };
        arm.claim(&key_path, Kind::Data);
        let value = inner.call(|| inner.zk().get_data(&key_path, true)).await;
        match (contender, value) {
            (Ok(false), _) => break,
            (_, Err(ZkError::NoNode)) => break,
            (Ok(true), Ok((data, stat))) => {
                match inner.decode_node(held.key.as_str(), data, stat) {
                    Node::Value { pair, .. } if pair.last_index == held.index => {}
                    _ => break,
                }
            }
            // Transient failure: the session may still be fine; look again shortly.
            _ => {
                if inner.is_closed() {
                    return;
                }
                tokio::select! {
                    _ = session.changed() => {}
                    _ = tokio::time::sleep(retries.next_delay()) => {}
                }
                continue;
            }
        }
        retries.reset();
        tokio::select! {
            _ = rx.recv() => {}
            _ = session.changed() => {}
            _ = epoch.changed() => {}
        }
    }
}

impl LockGuard for ZookeeperLock {
    fn key(&self) -> &str {
        self.held.key.as_str()
    }

    fn lost(&self) -> LockLost {
        self.lost.wait()
    }

    fn is_lost(&self) -> bool {
        self.lost.is_fired()
    }

    async fn unlock(mut self) -> Result<()> {
        self.released = true;
        self.stop_watching_for_loss();
        let was_lost = self.lost.is_fired();
        let released = self.held.release().await;
        if was_lost {
            return Err(Error::LockLost {
                key: self.held.key.as_str().to_owned(),
            });
        }
        released
    }
}

impl ZookeeperLock {
    /// Stops the loss watch and takes the lock off the handle's list of held locks
    /// (what `unlock` does first).
    fn stop_watching_for_loss(&mut self) {
        self.loss_watch.abort();
        self.held
            .backend
            .inner()
            .held_locks()
            .remove(self.registered);
    }
}

impl Drop for ZookeeperLock {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.loss_watch.abort();
        // The lock stays on the handle's list until the release is done, so a close()
        // that comes first releases it too and returns only once it is free.
        let held = self.held.clone();
        let registered = self.registered;
        crate::background::release_in_background("zookeeper lock", async move {
            let released = held.release().await;
            held.backend.inner().held_locks().remove(registered);
            released
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contender_names_carry_their_call() {
        let call = CallId::new();
        assert_ne!(call, CallId::new());
        for ttl in [None, Some(Duration::from_millis(1500))] {
            let name = format!("{}0000000042", contender_prefix("/d", ttl, &call));
            let name = name.strip_prefix("/d/").unwrap();
            assert!(call.created(name), "{name}");
            assert!(!CallId::new().created(name));
            assert_eq!(sequence(name), Some(42));
            assert_eq!(lease_of(name), ttl);
        }
        // Names of clients without call ids.
        for old in ["c-0000000007", "c-t1500-0000000007"] {
            assert_eq!(call_of(old), None);
            assert_eq!(sequence(old), Some(7));
        }
    }
}
