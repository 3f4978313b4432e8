//! The steps: each operation applied to the backend and to the model.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::harness::{
    Expiry, Filter, Gone, Harness, LockSlot, OpenWatch, WatchState, WatchStream, lock_key,
    next_item, next_ready, normal, prefixed, strip,
};
use super::ops::{LockValue, MAX_WATCHES, Op, OpenHandle, PROMPTLY, Version};
use super::violation::{Checked, unexpected_error, violation};
use crate::backend::{Backend, KvPair, LockGuard, LockOptions, PutOptions};
use crate::error::{Error, ErrorKind, Result};
use crate::key::Dir;
use crate::kv::Kv;
use crate::testing::rules::Rule;

impl<B: Backend> Harness<B> {
    pub(super) fn expiry_for(&self, ttl: bool, t0: Instant, t1: Instant) -> Option<Expiry> {
        ttl.then(|| Expiry {
            earliest: t0 + self.ttl,
            latest: t1 + self.ttl_bound,
        })
    }

    pub(super) fn put_options(&self, ttl: bool) -> PutOptions {
        PutOptions {
            ttl: ttl.then_some(self.ttl),
        }
    }

    /// Whether a TTL step may run: TTLs on and sleeping budget left.
    pub(super) fn ttl_allowed(&self) -> bool {
        self.config.ttl && !self.sleep_left.is_zero()
    }

    pub(super) async fn sleep_until(&mut self, deadline: Instant) {
        let started = std::time::Instant::now();
        tokio::time::sleep_until(deadline).await;
        self.sleep_left = self.sleep_left.saturating_sub(started.elapsed());
    }

    // -- steps ----------------------------------------------------------------------

    pub(super) async fn apply(&mut self, op: &Op) -> Checked {
        self.expire_if_due().await?;
        match op {
            Op::Put {
                handle,
                key,
                value,
                ttl,
            } => {
                let ttl = *ttl && self.ttl_allowed();
                let (h, kv) = self.handle(*handle);
                let key = normal(&prefixed(key));
                let t0 = Instant::now();
                let got = kv.put(&key, value.clone(), self.put_options(ttl)).await;
                let expiry = self.expiry_for(ttl, t0, Instant::now());
                match got {
                    Ok(pair) => self.wrote(h, &key, value, &pair, expiry),
                    Err(e) => Err(unexpected_error("put", &e)),
                }
            }
            Op::Get { handle, key } => {
                let (h, kv) = self.handle(*handle);
                let key = normal(&prefixed(key));
                match kv.get(&key).await {
                    Ok(pair) => self.check_read(h, &key, Some(&pair), "get"),
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        self.check_read(h, &key, None, "get")
                    }
                    Err(e) => Err(unexpected_error("get", &e)),
                }
            }
            Op::Exists { handle, key } => {
                let (h, kv) = self.handle(*handle);
                let key = normal(&prefixed(key));
                match kv.exists(&key).await {
                    Ok(found) => {
                        let want = self.data.contains_key(&key);
                        if found == want {
                            return Ok(());
                        }
                        let rule = if found
                            && self
                                .data
                                .keys()
                                .any(|k| Dir::new(&key).is_ok_and(|d| d.contains(k)))
                        {
                            Rule::ImplicitParents
                        } else if found {
                            match self.gone.get(&key) {
                                Some(Gone::Expired { .. }) => Rule::TtlGone,
                                Some(Gone::Deleted { .. }) => Rule::Deleted,
                                None => Rule::LatestWrite,
                            }
                        } else {
                            Rule::LostWrite
                        };
                        Err(violation(
                            rule,
                            format!(
                                "exists via handle {h} of {key:?}: expected {want}, got {found}"
                            ),
                        ))
                    }
                    Err(e) => Err(unexpected_error("exists", &e)),
                }
            }
            Op::Delete { handle, key } => {
                let (h, kv) = self.handle(*handle);
                let key = normal(&prefixed(key));
                let want = (!self.data.contains_key(&key)).then_some(ErrorKind::NotFound);
                let got = kv.delete(&key).await;
                self.check_kind(&format!("delete {key:?}"), got.as_ref().err(), want)?;
                self.removed(h, vec![key]);
                Ok(())
            }
            Op::List { handle, dir } => {
                let (h, kv) = self.handle(*handle);
                let dir = prefixed(dir);
                match kv.list(&dir).await {
                    Ok(pairs) => self.check_list(h, &dir, &pairs),
                    Err(e) => Err(unexpected_error("list", &e)),
                }
            }
            Op::DeleteTree { handle, dir } => {
                let (h, kv) = self.handle(*handle);
                let dir = Dir::new(&prefixed(dir)).expect("model dirs are valid");
                if let Err(e) = kv.delete_tree(dir.as_str()).await {
                    return Err(unexpected_error("delete_tree", &e));
                }
                let doomed: Vec<String> = self
                    .data
                    .keys()
                    .filter(|k| dir.contains(k) || dir.as_str() == k.as_str())
                    .cloned()
                    .collect();
                self.may_see_part_of(&doomed);
                self.removed(h, doomed);
                // Siblings of dir must survive: read one back when there is one.
                let survivor = self
                    .data
                    .keys()
                    .find(|k| {
                        k.starts_with(dir.as_str())
                            && !dir.contains(k)
                            && k.as_str() != dir.as_str()
                    })
                    .cloned();
                if let Some(key) = survivor {
                    match kv.get(&key).await {
                        Ok(pair) => {
                            self.check_read(h, &key, Some(&pair), "get after delete_tree")?
                        }
                        Err(e) if e.kind() == ErrorKind::NotFound => {
                            return Err(violation(
                                Rule::DeleteTree,
                                format!(
                                    "delete_tree({:?}) deleted the sibling {key:?}",
                                    dir.as_str()
                                ),
                            ));
                        }
                        Err(e) => return Err(unexpected_error("get", &e)),
                    }
                }
                Ok(())
            }
            Op::Create {
                handle,
                key,
                value,
                ttl,
            } => {
                let ttl = *ttl && self.ttl_allowed();
                let key = normal(&prefixed(key));
                self.atomic_put(*handle, &key, value, None, ttl).await
            }
            Op::Swap {
                handle,
                key,
                value,
                version,
                ttl,
            } => {
                let ttl = *ttl && self.ttl_allowed();
                let key = normal(&prefixed(key));
                let Some(prev) = self.observed_or_get(*handle, &key, *version).await? else {
                    return Ok(());
                };
                self.atomic_put(*handle, &key, value, Some(&prev), ttl)
                    .await
            }
            Op::CompareDelete {
                handle,
                key,
                version,
            } => {
                let key = normal(&prefixed(key));
                let Some(prev) = self.observed_or_get(*handle, &key, *version).await? else {
                    return Ok(());
                };
                let (h, kv) = self.handle(*handle);
                let want = self.cas_expect(&key, prev.last_index);
                let got = kv.atomic_delete(&key, &prev).await;
                self.check_cas(
                    &format!("atomic_delete({key:?}, last_index {})", prev.last_index),
                    got.as_ref().err(),
                    want,
                )?;
                if got.is_ok() {
                    self.removed(h, vec![key]);
                }
                Ok(())
            }
            Op::Watch { handle, key } if self.config.watches => {
                let key = normal(&prefixed(key));
                self.open_watch(*handle, Filter::Key(key)).await
            }
            Op::WatchTree { handle, dir } if self.config.watches => {
                let dir = Dir::new(&prefixed(dir)).expect("model dirs are valid");
                self.open_watch(*handle, Filter::Tree(dir)).await
            }
            Op::Observe => self.observe_all().await,
            Op::Elapse if self.ttl_allowed() => self.elapse().await,
            Op::Lock {
                handle,
                lock,
                value,
            } if self.config.locks => self.lock(*handle, *lock, *value, true).await,
            Op::TryLock {
                handle,
                lock,
                value,
            } if self.config.locks => self.lock(*handle, *lock, *value, false).await,
            Op::Unlock { lock } if self.config.locks => self.unlock(*lock).await,
            Op::DropGuard { lock } if self.config.locks => self.drop_guard(*lock).await,
            Op::Abandon { handle, lock } if self.config.locks && self.ttl_allowed() => {
                self.abandon(*handle, *lock).await
            }
            // A step whose switch is off does nothing.
            _ => Ok(()),
        }
    }

    // -- time -----------------------------------------------------------------------

    /// When a TTL key is close to its TTL, sleeps past every TTL bound first, so every
    /// step sees TTL keys either certainly present or certainly gone.
    pub(super) async fn expire_if_due(&mut self) -> Checked {
        let margin = self.ttl / 2;
        let now = Instant::now();
        if self
            .data
            .values()
            .filter_map(|e| e.expiry)
            .any(|x| x.earliest <= now + margin)
        {
            self.elapse().await?;
        }
        Ok(())
    }

    /// Sleeps until every TTL key written so far must be gone, then checks it is.
    pub(super) async fn elapse(&mut self) -> Checked {
        let expiring: Vec<(String, Expiry)> = self
            .data
            .iter()
            .filter_map(|(k, e)| e.expiry.map(|x| (k.clone(), x)))
            .collect();
        let Some(deadline) = expiring.iter().map(|(_, x)| x.latest).max() else {
            return Ok(());
        };
        self.sleep_until(deadline).await;
        // Watches may see the expiries in any order: one flexible state, then the end.
        let keys: Vec<String> = expiring.iter().map(|(k, _)| k.clone()).collect();
        for i in 0..self.watches.len() {
            let lacking: BTreeSet<String> = keys
                .iter()
                .filter(|k| self.watches[i].filter.contains(k))
                .cloned()
                .collect();
            if !lacking.is_empty() {
                let pairs = self.snapshot(&self.watches[i].filter);
                self.watches[i].history.push(WatchState {
                    pairs,
                    may_lack: lacking,
                });
            }
        }
        for key in &keys {
            if let Some(entry) = self.data.remove(key) {
                self.gone
                    .insert(key.clone(), Gone::Expired { index: entry.index });
            }
        }
        self.record(&keys);
        // Every expired key must be gone, whichever handle reads it.
        for (i, key) in keys.iter().enumerate() {
            let (h, kv) = self.handle(i);
            match kv.get(key).await {
                Ok(pair) => self.check_read(h, key, Some(&pair), "get after its TTL")?,
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(unexpected_error("get", &e)),
            }
        }
        Ok(())
    }

    // -- watches --------------------------------------------------------------------

    pub(super) async fn open_watch(&mut self, handle: usize, filter: Filter) -> Checked {
        if self.watches.len() >= MAX_WATCHES {
            self.watches.remove(0);
        }
        let (h, kv) = self.handle(handle);
        let stream = match &filter {
            Filter::Key(key) => kv.watch(key).await.map(WatchStream::Key),
            Filter::Tree(dir) => kv.watch_tree(dir.as_str()).await.map(WatchStream::Tree),
        };
        let stream = stream.map_err(|e| unexpected_error("watch", &e))?;
        let pairs = self.snapshot(&filter);
        self.watches.push(OpenWatch {
            step: self.step,
            handle: h,
            filter,
            stream,
            history: vec![WatchState {
                pairs,
                may_lack: BTreeSet::new(),
            }],
            open_pos: 0,
            pos: None,
            last_item: None,
        });
        Ok(())
    }

    /// Checks the items every open watch has ready now.
    pub(super) async fn observe_all(&mut self) -> Checked {
        tokio::task::yield_now().await;
        for i in 0..self.watches.len() {
            while let Some(item) = next_ready(&mut self.watches[i].stream) {
                self.check_item(i, item)?;
            }
        }
        Ok(())
    }

    /// Reads every watch until it yields the current state (bounded by [`PROMPTLY`]).
    pub(super) async fn converge_all(&mut self) -> Checked {
        for i in 0..self.watches.len() {
            loop {
                let watch = &self.watches[i];
                let last = watch.history.len() - 1;
                // Converged when the last item shows the current state (a coalescing
                // watch may skip from one absent state to another, equal one).
                let current = &watch.history[last];
                if current.may_lack.is_empty() && watch.last_item.as_ref() == Some(&current.pairs) {
                    // Converged; anything ready now is one item too many.
                    tokio::task::yield_now().await;
                    if let Some(item) = next_ready(&mut self.watches[i].stream) {
                        self.check_item(i, item)?;
                    }
                    break;
                }
                let next =
                    tokio::time::timeout(PROMPTLY, next_item(&mut self.watches[i].stream)).await;
                match next {
                    Ok(Some(item)) => self.check_item(i, item)?,
                    Ok(None) => {
                        return Err(self.watch_violation(
                            i,
                            Rule::WatchConverges,
                            "the stream ended".into(),
                        ));
                    }
                    Err(_) => {
                        let want = &self.watches[i].history[last].pairs;
                        return Err(self.watch_violation(
                            i,
                            Rule::WatchConverges,
                            format!("no item equal to the current state {want:?} within {PROMPTLY:?}; last item {:?}", self.watches[i].last_item),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    // -- locks ----------------------------------------------------------------------

    pub(super) async fn lock(
        &mut self,
        handle: usize,
        lock: usize,
        value: LockValue,
        wait: bool,
    ) -> Checked {
        let (h, kv) = self.handle(handle);
        let key = lock_key(lock);
        let options = value.options();
        match &self.locks[lock] {
            LockSlot::Held {
                handle: holder,
                value: held,
                ..
            } => {
                let holder = *holder;
                let held = *held;
                let got = kv.try_lock(&key, options).await;
                match got {
                    Ok(None) => {}
                    Ok(Some(_stolen)) => {
                        let rule = if held == value {
                            Rule::LockExclusionSame
                        } else {
                            Rule::LockExclusionOther
                        };
                        return Err(violation(
                            rule,
                            format!(
                                "try_lock({key:?}, {value:?}) via handle {h} returned a guard while handle {holder} holds it with {held:?}"
                            ),
                        ));
                    }
                    Err(e) => return Err(unexpected_error("try_lock", &e)),
                }
                self.check_locks(h).await
            }
            LockSlot::Free => {
                let got = if wait {
                    match tokio::time::timeout(PROMPTLY, kv.lock(&key, options)).await {
                        Ok(got) => got.map(Some),
                        Err(_) => {
                            return Err(violation(
                                Rule::LockFree,
                                format!("lock({key:?}) of a free lock waited {PROMPTLY:?}"),
                            ));
                        }
                    }
                } else {
                    kv.try_lock(&key, options).await
                };
                match got {
                    Ok(Some(guard)) => {
                        self.locks[lock] = LockSlot::Held {
                            handle: h,
                            value,
                            guard,
                        };
                        self.check_locks(h).await
                    }
                    Ok(None) => Err(violation(
                        Rule::LockFree,
                        format!("try_lock({key:?}) via handle {h} of a free lock returned None"),
                    )),
                    Err(e) => Err(unexpected_error("lock", &e)),
                }
            }
        }
    }

    /// The observed pair a compare step uses; `None` when none was observed yet, after
    /// a `get` of the key instead.
    async fn observed_or_get(
        &mut self,
        handle: usize,
        key: &str,
        version: Version,
    ) -> Checked<Option<KvPair>> {
        if let Some(prev) = self.pick(key, version) {
            return Ok(Some(prev));
        }
        let get = Op::Get {
            handle,
            key: strip(key),
        };
        Box::pin(self.apply(&get)).await.map(|()| None)
    }

    /// `atomic_put` of `key` (a create when `prev` is `None`, a swap otherwise),
    /// checked against the model's expected outcome.
    async fn atomic_put(
        &mut self,
        handle: usize,
        key: &str,
        value: &Bytes,
        prev: Option<&KvPair>,
        ttl: bool,
    ) -> Checked {
        let (h, kv) = self.handle(handle);
        let want = match prev {
            None => self.data.contains_key(key).then_some(ErrorKind::KeyExists),
            Some(prev) => self.cas_expect(key, prev.last_index),
        };
        let t0 = Instant::now();
        let got = kv
            .atomic_put(key, value.clone(), prev, self.put_options(ttl))
            .await;
        let expiry = self.expiry_for(ttl, t0, Instant::now());
        match prev {
            None => self.check_kind(
                &format!("atomic_put({key:?}, None)"),
                got.as_ref().err(),
                want,
            )?,
            Some(prev) => self.check_cas(
                &format!("atomic_put({key:?}, last_index {})", prev.last_index),
                got.as_ref().err(),
                want,
            )?,
        }
        match got {
            Ok(pair) => self.wrote(h, key, value, &pair, expiry),
            Err(_) => Ok(()),
        }
    }

    /// Frees the model's slot of `lock`: its holder's handle, guard and key, if held.
    fn take_held(&mut self, lock: usize) -> Option<(usize, B::Lock, String)> {
        match std::mem::replace(&mut self.locks[lock], LockSlot::Free) {
            LockSlot::Held { handle, guard, .. } => Some((handle, guard, lock_key(lock))),
            LockSlot::Free => None,
        }
    }

    pub(super) async fn unlock(&mut self, lock: usize) -> Checked {
        let Some((handle, guard, key)) = self.take_held(lock) else {
            return Ok(());
        };
        if guard.is_lost() {
            return Err(violation(
                Rule::LockNotLost,
                format!("the lock {key:?} held via handle {handle} says it is lost"),
            ));
        }
        if let Err(e) = guard.unlock().await {
            return Err(violation(Rule::Unlock, format!("unlock of {key:?}: {e:?}")));
        }
        let (h, kv) = self.other_handle(handle);
        match kv.try_lock(&key, LockOptions::default()).await {
            Ok(Some(again)) => release_retaken(&key, h, again).await,
            Ok(None) => Err(violation(
                Rule::Unlock,
                format!("try_lock({key:?}) via handle {h} right after unlock returned None"),
            )),
            Err(e) => Err(unexpected_error("try_lock", &e)),
        }
    }

    pub(super) async fn drop_guard(&mut self, lock: usize) -> Checked {
        let Some((handle, guard, key)) = self.take_held(lock) else {
            return Ok(());
        };
        drop(guard);
        let (h, kv) = self.other_handle(handle);
        match tokio::time::timeout(PROMPTLY, kv.lock(&key, LockOptions::default())).await {
            Ok(Ok(again)) => release_retaken(&key, h, again).await,
            Ok(Err(e)) => Err(unexpected_error("lock", &e)),
            Err(_) => Err(violation(
                Rule::DropFrees,
                format!(
                    "lock({key:?}) via handle {h} waited {PROMPTLY:?} after the guard was dropped"
                ),
            )),
        }
    }

    /// Takes a TTL lock in a runtime of its own that then ends: its holder stops
    /// renewing without releasing, as in a crashed process. The handle is opened there
    /// with [`ModelConfig::open_handle`] (so its connection dies too) or is a clone.
    pub(super) async fn abandon(&mut self, handle: usize, lock: usize) -> Checked {
        if matches!(self.locks[lock], LockSlot::Held { .. }) {
            return Ok(());
        }
        let key = lock_key(lock);
        let ttl = self.ttl;
        let options = LockOptions::default().value("abandoned").ttl(ttl);
        let (h, kv) = self.handle(handle);
        // On a paused clock the doomed runtime's paused clock is set to ours; it starts
        // at the real time, so ours first moves ahead of that (free when paused).
        let paused = self.paused;
        if paused {
            let ahead = std::time::Instant::now() + Duration::from_millis(500);
            tokio::time::sleep_until(Instant::from_std(ahead)).await;
        }
        let target = Instant::now().into_std();
        let open = self.config.open_handle.clone();
        let holder = Kv::clone(&kv);
        let t0 = Instant::now();
        let taken = tokio::task::spawn_blocking(move || {
            std::thread::spawn(move || doomed_lock(holder, open, key, options, paused, target))
                .join()
                .unwrap_or_else(|_| Err(Error::Closed))
        })
        .await
        .unwrap_or(Err(Error::Closed));
        let t1 = Instant::now();
        let key = lock_key(lock);
        match taken {
            Ok(true) => {}
            Ok(false) => {
                return Err(violation(
                    Rule::LockFree,
                    format!("try_lock({key:?}) of a free lock returned None"),
                ));
            }
            Err(e) => return Err(unexpected_error("try_lock with a TTL", &e)),
        }
        let (h2, other) = self.other_handle(h);
        if Instant::now() + ttl / 2 < t0 + ttl {
            match other.try_lock(&key, LockOptions::default()).await {
                Ok(None) => {}
                Ok(Some(_)) => {
                    return Err(violation(
                        Rule::AbandonHeld,
                        format!(
                            "try_lock({key:?}) via handle {h2} succeeded right after the TTL lock ({ttl:?}) was abandoned"
                        ),
                    ));
                }
                Err(e) => return Err(unexpected_error("try_lock", &e)),
            }
        }
        let bound = t1 + self.ttl_bound;
        self.sleep_until(bound).await;
        match other.try_lock(&key, LockOptions::default()).await {
            Ok(Some(guard)) => guard
                .unlock()
                .await
                .map_err(|e| violation(Rule::Unlock, format!("unlock of {key:?}: {e:?}"))),
            Ok(None) => Err(violation(
                Rule::AbandonFrees,
                format!(
                    "try_lock({key:?}) via handle {h2} returned None {:?} after a lock with TTL {ttl:?} was abandoned",
                    self.ttl_bound
                ),
            )),
            Err(e) => Err(unexpected_error("try_lock", &e)),
        }
    }
}

/// Takes the lock in a runtime of its own, then ends that runtime with the guard
/// alive: its keep-alive task dies without releasing. `Ok(true)`: the lock was taken.
pub(super) fn doomed_lock<B: Backend>(
    kv: Kv<B>,
    open: Option<OpenHandle<B>>,
    key: String,
    options: LockOptions,
    paused: bool,
    target: std::time::Instant,
) -> Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(paused)
        .build()
        .map_err(|e| Error::Backend {
            backend: "model",
            source: Box::new(e),
        })?;
    let outcome = runtime.block_on(async move {
        if paused {
            let behind = target.saturating_duration_since(Instant::now().into_std());
            tokio::time::advance(behind).await;
        }
        let kv = match open {
            Some(open) => open().await?,
            None => kv,
        };
        let guard = kv.try_lock(&key, options).await?;
        Ok::<_, Error>((guard, kv))
    });
    // The runtime ends first, so neither the guard's drop nor the handle's reaches the
    // store.
    drop(runtime);
    let (guard, kv) = outcome?;
    let taken = guard.is_some();
    drop(guard);
    drop(kv);
    Ok(taken)
}

/// Releases a lock just taken again via handle `h` to prove it was free.
async fn release_retaken<L: LockGuard>(key: &str, h: usize, again: L) -> Checked {
    again.unlock().await.map_err(|e| {
        violation(
            Rule::Unlock,
            format!("unlock of {key:?} retaken via handle {h}: {e:?}"),
        )
    })
}
