//! Locks: etcd's revision-ordered contender recipe, on a lease kept alive by the guard.
//!
//! Each attempt grants a lease and creates a contender key
//! `{prefix}\x01lock/{key}\x00{lease id}` on it. The contender with the lowest
//! `create_revision` holds the lock; the others each watch the deletion of the
//! contender created just before theirs (no polling, no thundering herd). The holder
//! writes the lock's value at the lock key itself, on the same lease, so releasing
//! (revoking the lease) or expiry deletes the value and the contender in one revision,
//! which wakes the next waiter.
//!
//! When nobody contends, acquiring is one LeaseGrant and one Txn that both registers
//! the contender and writes the value (guarded by "no contender exists").

use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, SortOrder, SortTarget, Txn, TxnOp};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Etcd, header_revision, is_lease_not_found, request, ttl_secs};
use crate::backend::{LockGuard, LockLost, LockOptions, LostSignal};
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::key::Key;

/// Bounds of this file's retries (re-opening a watch or a keep-alive, re-reading the
/// contenders).
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// A held etcd lock. Dropping it releases the lock in the background (revoking its
/// lease); [`LockGuard::unlock`] releases it and reports the outcome.
#[derive(Debug)]
pub struct EtcdLock {
    key: String,
    lease: LeaseHold,
    lost: LostSignal,
}

/// Owns a lock's lease: stops its keep-alive and revokes it when dropped (unless
/// released explicitly).
#[derive(Debug)]
struct LeaseHold {
    etcd: Etcd,
    id: i64,
    stop: CancellationToken,
    armed: bool,
}

impl LeaseHold {
    /// Holds lease `id`; registered with the handle so that `close` revokes it.
    fn new(etcd: &Etcd, id: i64) -> Self {
        etcd.inner
            .lock_leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
        LeaseHold {
            etcd: etcd.clone(),
            id,
            stop: CancellationToken::new(),
            armed: true,
        }
    }

    fn unregister(&self) {
        Self::forget(&self.etcd, self.id);
    }

    fn forget(etcd: &Etcd, id: i64) {
        etcd.inner
            .lock_leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    async fn revoke(&mut self) -> Result<()> {
        self.armed = false;
        self.stop.cancel();
        let id = self.id;
        let revoked = request!(self.etcd, lease => lease.revoke(id)).await;
        self.unregister();
        revoked.map(drop)
    }
}

impl Drop for LeaseHold {
    fn drop(&mut self) {
        self.stop.cancel();
        // After `close` the lease was revoked by `close` itself.
        if !self.armed || self.etcd.inner.closed.is_cancelled() {
            return self.unregister();
        }
        // Registered until revoked, so that a `close` meanwhile revokes it too (and
        // a process that closes its store right after dropping a guard frees the lock).
        let etcd = self.etcd.clone();
        let id = self.id;
        let spawned = crate::background::release_in_background("etcd lock lease", async move {
            let revoked = request!(etcd, lease => lease.revoke(id)).await;
            LeaseHold::forget(&etcd, id);
            revoked
        });
        if !spawned {
            self.unregister();
        }
    }
}

impl LockGuard for EtcdLock {
    fn key(&self) -> &str {
        &self.key
    }

    fn lost(&self) -> LockLost {
        self.lost.wait()
    }

    fn is_lost(&self) -> bool {
        self.lost.is_fired()
    }

    async fn unlock(mut self) -> Result<()> {
        let was_lost = self.lost.is_fired();
        let result = self.lease.revoke().await;
        if was_lost {
            return Err(Error::LockLost { key: self.key });
        }
        match result {
            Ok(()) => Ok(()),
            Err(err) if is_lease_not_found(&err) => Err(Error::LockLost { key: self.key }),
            Err(err) => Err(err),
        }
    }
}

impl Etcd {
    /// The prefix of the contender keys of `key`: `{prefix}\x01lock/{key}\x00`. Keys
    /// never contain NUL, so the contenders of `a` and `a/b` never mix.
    fn lock_prefix(&self, key: &str) -> Vec<u8> {
        let mut prefix = self.inner.prefix.clone();
        prefix.extend_from_slice(b"\x01lock/");
        prefix.extend_from_slice(key.as_bytes());
        prefix.push(0);
        prefix
    }
}

/// Acquires the lock on `key`; with `wait == false` gives up (`None`) when held.
pub(crate) async fn acquire(
    etcd: &Etcd,
    key: &Key<'_>,
    options: &LockOptions,
    wait: bool,
) -> Result<Option<EtcdLock>> {
    let secs = ttl_secs(options.ttl.unwrap_or(etcd.inner.lock_ttl)).max(2);
    let granted_at = Instant::now();
    let ttl_secs = i64::try_from(secs).unwrap_or(i64::MAX);
    let grant = request!(etcd, lease => lease.grant(ttl_secs, None)).await?;
    let mut hold = LeaseHold::new(etcd, grant.id());
    let lost = LostSignal::new();
    let ttl = Duration::from_secs(u64::try_from(grant.ttl()).unwrap_or(secs));
    // Renewals start once the lease serves a contender (not for a failed try_lock).
    let start_keep_alive = |hold: &LeaseHold| {
        tokio::spawn(keep_alive(
            etcd.clone(),
            hold.id,
            ttl,
            granted_at + ttl,
            lost.clone(),
            hold.stop.clone(),
        ));
    };

    let contenders = etcd.lock_prefix(key.as_str());
    let mut mine = contenders.clone();
    mine.extend_from_slice(format!("{:016x}", hold.id).as_bytes());
    let on_lease = || Some(etcd_client::PutOptions::new().with_lease(hold.id));
    let value_put = TxnOp::put(etcd.full(key.as_str()), options.value.to_vec(), on_lease());
    let register = TxnOp::put(mine.clone(), Vec::new(), on_lease());
    let txn = Txn::new()
        .when([Compare::create_revision(contenders.clone(), CompareOp::Equal, 0).with_prefix()])
        .and_then([register.clone(), value_put.clone()]);
    let txn = if wait { txn.or_else([register]) } else { txn };
    let resp = request!(etcd, kv => kv.txn(txn), clone txn).await?;
    if resp.succeeded() {
        start_keep_alive(&hold);
        let held_at = header_revision(resp.header());
        return Ok(Some(guard(etcd, key, hold, lost, held_at)));
    }
    if !wait {
        // Best effort: the lease expires anyway.
        let _ = hold.revoke().await;
        return Ok(None);
    }

    start_keep_alive(&hold);
    let my_revision = header_revision(resp.header());
    wait_for_predecessors(etcd, key, &contenders, my_revision, &lost).await?;

    // We hold the lock once our contender is the oldest; write the value only if the
    // contender (so the lease) still exists.
    let txn = Txn::new()
        .when([Compare::create_revision(
            mine,
            CompareOp::Equal,
            my_revision,
        )])
        .and_then([value_put]);
    let resp = request!(etcd, kv => kv.txn(txn), clone txn).await?;
    if !resp.succeeded() {
        return Err(Error::LockLost {
            key: key.as_str().to_owned(),
        });
    }
    let held_at = header_revision(resp.header());
    Ok(Some(guard(etcd, key, hold, lost, held_at)))
}

/// The guard of a lock acquired at revision `held_at`; starts the task that watches the
/// lock key for being taken away.
fn guard(etcd: &Etcd, key: &Key<'_>, hold: LeaseHold, lost: LostSignal, held_at: i64) -> EtcdLock {
    tokio::spawn(watch_lock_key(
        etcd.clone(),
        etcd.full(key.as_str()),
        hold.id,
        held_at,
        lost.clone(),
        hold.stop.clone(),
    ));
    EtcdLock {
        key: key.as_str().to_owned(),
        lease: hold,
        lost,
    }
}

/// Fires `lost` when the lock key is deleted or overwritten by someone else after
/// revision `held_at` (or when the lease expires, which deletes it), then revokes the
/// lease so the contender key goes too and the lock is free for others. Resumes from
/// the last seen revision when the watch breaks; ends on `stop` (unlock, drop) or
/// `close`.
async fn watch_lock_key(
    etcd: Etcd,
    key: Vec<u8>,
    lease: i64,
    held_at: i64,
    lost: LostSignal,
    stop: CancellationToken,
) {
    let closed = etcd.inner.closed.clone();
    let mut from = held_at + 1;
    let mut retries = Backoff::new(RETRY_FIRST, RETRY_MAX);
    loop {
        let mut client = etcd.inner.watch.clone();
        let options = etcd_client::WatchOptions::new().with_start_revision(from);
        let timeout = etcd.inner.request_timeout;
        let opened = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = closed.cancelled() => return,
            () = lost.wait() => return,
            opened = tokio::time::timeout(timeout, client.watch(key.clone(), Some(options))) => opened,
        };
        if let Ok(Ok(mut stream)) = opened {
            retries.reset();
            loop {
                let message = tokio::select! {
                    biased;
                    () = stop.cancelled() => return,
                    () = closed.cancelled() => return,
                    () = lost.wait() => return,
                    message = stream.message() => message,
                };
                let Ok(Some(resp)) = message else { break };
                if resp.canceled() {
                    // Compacted or cancelled: check the key as it is now, then watch
                    // again from there.
                    if let Ok(now) = request!(etcd, kv => kv.get(key, None), clone key).await {
                        if now.kvs().first().is_none_or(|kv| kv.lease() != lease) {
                            lost.fire();
                            let id = lease;
                            let _ = request!(etcd, lease => lease.revoke(id)).await;
                            return;
                        }
                        from = header_revision(now.header()) + 1;
                    }
                    break;
                }
                for event in resp.events() {
                    let Some(kv) = event.kv() else { continue };
                    from = from.max(kv.mod_revision() + 1);
                    let taken = match event.event_type() {
                        etcd_client::EventType::Delete => true,
                        etcd_client::EventType::Put => kv.lease() != lease,
                    };
                    if taken {
                        tracing::debug!(lease, "etcd lock key was taken away; the lock is lost");
                        lost.fire();
                        let id = lease;
                        let _ = request!(etcd, lease => lease.revoke(id)).await;
                        return;
                    }
                }
            }
        }
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = closed.cancelled() => return,
            () = lost.wait() => return,
            () = tokio::time::sleep(retries.next_delay()) => {}
        }
    }
}

/// Waits until no contender older than ours (created before `my_revision`) is left,
/// each time watching the deletion of the youngest older one.
async fn wait_for_predecessors(
    etcd: &Etcd,
    key: &Key<'_>,
    contenders: &[u8],
    my_revision: i64,
    lost: &LostSignal,
) -> Result<()> {
    // The lease of a waiter of a closed handle was revoked by `close`.
    let lost_error = || {
        if etcd.inner.closed.is_cancelled() {
            Error::Closed
        } else {
            Error::LockLost {
                key: key.as_str().to_owned(),
            }
        }
    };
    let mut retries = Backoff::new(RETRY_FIRST, RETRY_MAX);
    loop {
        if lost.is_fired() {
            return Err(lost_error());
        }
        let options = GetOptions::new()
            .with_prefix()
            .with_max_create_revision(my_revision - 1)
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(1)
            .with_keys_only();
        let resp =
            match request!(etcd, kv => kv.get(contenders.to_vec(), Some(options)), clone options)
                .await
            {
                Ok(resp) => resp,
                Err(err) if err.is_retryable() => {
                    // The keep-alive fires `lost` if the server stays away longer than the
                    // lease; until then, retry.
                    tokio::select! {
                        () = tokio::time::sleep(retries.next_delay()) => {}
                        () = lost.wait() => return Err(lost_error()),
                    }
                    continue;
                }
                Err(err) => return Err(err),
            };
        let Some(predecessor) = resp.kvs().first() else {
            return Ok(());
        };
        let predecessor = predecessor.key().to_vec();
        let from = header_revision(resp.header()) + 1;
        tokio::select! {
            deleted = wait_deleted(etcd, predecessor, from) => {
                if deleted {
                    retries.reset();
                } else {
                    // The watch broke: look again after a short pause.
                    tokio::time::sleep(retries.next_delay()).await;
                }
            }
            () = lost.wait() => return Err(lost_error()),
            () = etcd.inner.closed.cancelled() => return Err(Error::Closed),
        }
    }
}

/// Watches `key` from revision `from` until it is deleted (`true`), or the watch
/// breaks (`false`).
async fn wait_deleted(etcd: &Etcd, key: Vec<u8>, from: i64) -> bool {
    let mut client = etcd.inner.watch.clone();
    let options = etcd_client::WatchOptions::new()
        .with_start_revision(from)
        .with_filters([etcd_client::WatchFilterType::NoPut]);
    let timeout = etcd.inner.request_timeout;
    let Ok(Ok(mut stream)) = tokio::time::timeout(timeout, client.watch(key, Some(options))).await
    else {
        return false;
    };
    loop {
        match stream.message().await {
            Ok(Some(resp)) => {
                if resp.canceled() {
                    return false;
                }
                if resp
                    .events()
                    .iter()
                    .any(|e| e.event_type() == etcd_client::EventType::Delete)
                {
                    return true;
                }
            }
            _ => return false,
        }
    }
}

/// Keeps the lease alive until `stop`; fires `lost` when the server says the lease is
/// gone, or when renewals kept failing until the lease's local `deadline` passed (the
/// server has expired it by then, whether or not we can reach it).
async fn keep_alive(
    etcd: Etcd,
    id: i64,
    ttl: Duration,
    mut deadline: Instant,
    lost: LostSignal,
    stop: CancellationToken,
) {
    let interval = (ttl / 3).max(Duration::from_millis(500));
    let closed = etcd.inner.closed.clone();
    let timeout = etcd.inner.request_timeout.min(interval);
    // Retries stay within a renewal interval, so the lease is renewed in time.
    let mut retries = Backoff::new(RETRY_FIRST, RETRY_MAX.min(interval));
    loop {
        // (Re)open the keep-alive stream; its first request is a renewal.
        let sent = Instant::now();
        let mut client = etcd.inner.lease.clone();
        let opened = tokio::select! {
            opened = tokio::time::timeout(timeout, client.keep_alive(id)) => opened,
            () = stop.cancelled() => return,
            () = closed.cancelled() => { lost.fire(); return }
            () = tokio::time::sleep_until(deadline) => { lost.fire(); return }
        };
        match opened {
            Ok(Ok((mut keeper, mut stream))) => {
                retries.reset();
                deadline = sent + ttl;
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(interval) => {}
                        () = stop.cancelled() => return,
                        () = closed.cancelled() => { lost.fire(); return }
                        () = tokio::time::sleep_until(deadline) => { lost.fire(); return }
                    }
                    let sent = Instant::now();
                    if keeper.keep_alive().await.is_err() {
                        break;
                    }
                    let answer = tokio::select! {
                        answer = tokio::time::timeout(timeout, stream.message()) => answer,
                        () = stop.cancelled() => return,
                        () = closed.cancelled() => { lost.fire(); return }
                        () = tokio::time::sleep_until(deadline) => { lost.fire(); return }
                    };
                    match answer {
                        Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                            deadline =
                                sent + Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(0));
                        }
                        Ok(Ok(Some(_))) => {
                            tracing::debug!(lease = id, "etcd lock lease expired");
                            lost.fire();
                            return;
                        }
                        _ => break,
                    }
                }
            }
            Ok(Err(err)) if lease_gone(&etcd, id, &err).await => {
                tracing::debug!(lease = id, %err, "etcd lock lease is gone");
                lost.fire();
                return;
            }
            Ok(Err(err)) => tracing::debug!(lease = id, %err, "etcd keep-alive failed; retrying"),
            Err(_) => tracing::debug!(lease = id, "etcd keep-alive timed out; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(retries.next_delay()) => {}
            () = stop.cancelled() => return,
            () = closed.cancelled() => { lost.fire(); return }
            () = tokio::time::sleep_until(deadline) => { lost.fire(); return }
        }
    }
}

/// True when opening a keep-alive failed because the lease no longer exists: etcd's
/// `NotFound` code, or (etcd-client reports a first answer with TTL 0 only as text) a
/// TimeToLive request that finds no life left.
async fn lease_gone(etcd: &Etcd, id: i64, err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::GRpcStatus(status) => status.code() == tonic::Code::NotFound,
        etcd_client::Error::LeaseKeepAliveError(_) => {
            matches!(request!(etcd, lease => lease.time_to_live(id, None)).await,
                Ok(resp) if resp.ttl() <= 0)
        }
        _ => false,
    }
}
