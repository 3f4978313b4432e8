//! Locks: the ephemeral-sequential recipe.
//!
//! Contenders are `EPHEMERAL_SEQUENTIAL` znodes `c-<seq>` in `{root}/locks/<escaped key>`,
//! outside the key space, so they never show in `list`, `watch_tree` or `get`. The
//! lowest sequence number holds the lock; every other contender watches only its
//! predecessor (no herd). The holder then writes the lock's value at the key (an
//! ephemeral znode when the key is new, so the value vanishes with the session). The
//! lock is lost when the session expires, the contender znode disappears, or someone
//! else overwrites or deletes the key.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use zookeeper_async::{CreateMode, WatchedEvent, ZkError};

use super::{Node, Zookeeper, codec};
use crate::backend::{LockGuard, LockLost, LostSignal};
use crate::error::{Error, Result};
use crate::key::Key;

const PREFIX: &str = "c-";

/// The guard of a ZooKeeper lock; see [`LockGuard`].
#[derive(Debug)]
pub struct ZookeeperLock {
    held: Arc<Held>,
    lost: LostSignal,
    monitor: AbortHandle,
    released: bool,
}

#[derive(Debug)]
struct Held {
    backend: Zookeeper,
    key: Key<'static>,
    contender: String,
    index: u64,
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
            Err(e) => return Err(self.backend.map_err(e)),
        }
        // The lock's directory, unless other contenders wait in it (a contender that
        // finds it gone creates it again).
        if let Some((dir, _)) = self.contender.rsplit_once('/') {
            let _ = inner.call(|| inner.zk().delete(dir, None)).await;
        }
        Ok(())
    }
}

/// Deletes a contender znode when the acquisition is abandoned (cancelled future).
struct Contender {
    backend: Zookeeper,
    path: Option<String>,
}

impl Contender {
    fn disarm(&mut self) -> String {
        self.path.take().unwrap_or_default()
    }
}

impl Drop for Contender {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            spawn_delete(self.backend.clone(), path);
        }
    }
}

fn spawn_delete(backend: Zookeeper, path: String) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move {
            let inner = backend.inner();
            let _ = inner.call(|| inner.zk().delete(&path, None)).await;
        });
    }
}

impl Zookeeper {
    /// `compare_and_delete` without the trait's future bounds (used on release).
    async fn compare_and_delete_raw(&self, key: &Key<'_>, index: u64) -> Result<()> {
        crate::backend::Backend::compare_and_delete(self, key, index)
            .await
            .map(|_| ())
    }
}

fn sequence(name: &str) -> Option<i64> {
    name.strip_prefix(PREFIX)?.parse().ok()
}

/// Acquires the lock on `key`: waits when `wait`, else returns `None` when it is held.
pub(crate) async fn lock(
    backend: Zookeeper,
    key: Key<'static>,
    value: Bytes,
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
    'contend: for _ in 0..super::MAX_ATTEMPTS {
        let session_at_start = *session.borrow_and_update();
        let prefix = format!("{dir}/{PREFIX}");
        let created = match inner
            .call(|| {
                inner.zk().create(
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
        let mut contender = Contender {
            backend: backend.clone(),
            path: Some(created.clone()),
        };
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
                contender.disarm();
                continue 'contend;
            };
            if pos == 0 {
                if *session.borrow() != session_at_start {
                    contender.disarm();
                    continue 'contend;
                }
                break;
            }
            if !wait {
                // Withdraw before answering, so our contender cannot block a later
                // `try_lock` of someone else.
                let path = contender.disarm();
                if inner
                    .call(|| inner.zk().delete(&path, None))
                    .await
                    .is_err_and(|e| e != ZkError::NoNode)
                {
                    spawn_delete(backend.clone(), path);
                }
                return Ok(None);
            }
            let predecessor = format!("{dir}/{}", children[pos - 1].1);
            let (tx, mut rx) = mpsc::unbounded_channel::<()>();
            let fire = move |_e: WatchedEvent| {
                let _ = tx.send(());
            };
            match inner
                .call(|| inner.zk().exists_w(&predecessor, fire.clone()))
                .await
            {
                Ok(None) => continue,
                Ok(Some(_)) => {}
                Err(e) => return Err(backend.map_err(e)),
            }
            tokio::select! {
                _ = rx.recv() => {}
                _ = session.changed() => {}
                _ = epoch.changed() => {}
                // A safety net against a lost notification; the check is cheap.
                _ = tokio::time::sleep(inner.session_timeout()) => {}
            }
        }
        // Held: write the value at the key (its answer proves the session alive at
        // least since `proven`).
        let proven = Instant::now();
        let pair = match backend.write_lock_value(&key, &value).await {
            Ok(pair) => pair,
            Err(e) => return Err(e), // `contender` deletes our znode on drop
        };
        let contender = contender.disarm();
        let lost = LostSignal::new();
        let held = Arc::new(Held {
            backend: backend.clone(),
            key,
            contender,
            index: pair.last_index,
        });
        let monitor = tokio::spawn(monitor(
            held.clone(),
            lost.clone(),
            session_at_start,
            proven,
        ));
        return Ok(Some(ZookeeperLock {
            held,
            lost,
            monitor: monitor.abort_handle(),
            released: false,
        }));
    }
    Err(Error::unavailable(
        super::NAME,
        "the lock's contender znode kept disappearing (session expiring?)",
    ))
}

/// Fires `lost` when the session expires, the contender znode goes, or the key is
/// overwritten or deleted by someone else.
async fn monitor(held: Arc<Held>, lost: LostSignal, session_at_start: u64, proven: Instant) {
    tokio::select! {
        _ = follow(&held, session_at_start) => {}
        _ = lease(&held, proven) => {}
        // Closing the store ends its session, and with it every lock.
        _ = held.backend.inner().shutdown() => {}
    }
    lost.fire();
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
async fn lease(held: &Held, mut proven: Instant) {
    let inner = held.backend.inner();
    let timeout = inner.session_timeout();
    let deadline_after = timeout - timeout / 5;
    loop {
        let deadline = proven + deadline_after;
        let sent = Instant::now();
        if sent >= deadline {
            return;
        }
        let beat = tokio::time::timeout_at(
            deadline,
            inner.call(|| inner.zk().exists(&held.contender, false)),
        )
        .await;
        match beat {
            Ok(Ok(Some(_))) => proven = sent,
            // The contender is gone: `follow` reports it; stop renewing.
            Ok(Ok(None)) => return,
            Ok(Err(_)) => {}
            Err(_) => return,
        }
        let pause = timeout / 4;
        tokio::time::sleep_until((Instant::now() + pause).min(proven + deadline_after)).await;
    }
}

async fn follow(held: &Held, session_at_start: u64) {
    let backend = &held.backend;
    let inner = backend.inner();
    let mut session = inner.session();
    let mut epoch = inner.epoch();
    let key_path = inner.key_path(held.key.as_str());
    loop {
        if *session.borrow_and_update() != session_at_start {
            break;
        }
        epoch.borrow_and_update();
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let fire = move |_e: WatchedEvent| {
            let _ = tx.send(());
        };
        let contender = inner
            .call(|| inner.zk().exists_w(&held.contender, fire.clone()))
            .await;
        let value = inner
            .call(|| inner.zk().get_data_w(&key_path, fire.clone()))
            .await;
        match (contender, value) {
            (Ok(None), _) => break,
            (_, Err(ZkError::NoNode)) => break,
            (Ok(Some(_)), Ok((data, stat))) => {
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
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                continue;
            }
        }
        drop(fire);
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
        self.monitor.abort();
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

impl Drop for ZookeeperLock {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.monitor.abort();
        let held = self.held.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = held.release().await;
            });
        }
    }
}
