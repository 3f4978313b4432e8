//! Service discovery on any backend: instances register under `root/service/` with a
//! TTL heartbeat and disappear when their handle is dropped or their heartbeat stops.
//!
//! An instance is the key `root/service/instance_id` holding the instance's address.
//! While its [`Registration`] lives, a background task rewrites the key with the TTL
//! every third of the TTL; dropping the handle deletes the key, and an instance whose
//! process dies disappears when the TTL runs out (on Consul, within twice the TTL).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, KvPair, PutOptions};
use crate::error::Result;
use crate::key::Key;
use crate::kv::Kv;

/// A service registry below a root directory.
#[derive(Debug, Clone)]
pub struct Registry<B: Backend> {
    kv: Kv<B>,
    root: String,
}

/// One registered instance of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The instance id (the last key segment).
    pub id: String,
    /// The address it registered.
    pub address: String,
}

impl Instance {
    fn from_pair(pair: &KvPair) -> Self {
        Instance {
            id: pair.key.rsplit('/').next().unwrap_or_default().to_owned(),
            address: String::from_utf8_lossy(&pair.value).into_owned(),
        }
    }
}

impl<B: Backend> Registry<B> {
    /// A registry whose services live below `root` (for example `"services"`).
    pub fn new(kv: Kv<B>, root: impl Into<String>) -> Self {
        Registry {
            kv,
            root: root.into(),
        }
    }

    fn service_dir(&self, service: &str) -> String {
        format!("{}/{service}", self.root)
    }

    /// The normalised prefix of the instance keys of `service`.
    fn instance_prefix(&self, service: &str) -> Result<String> {
        Ok(crate::key::Dir::new(&self.service_dir(service))?.child_prefix())
    }

    /// Registers `instance_id` of `service` at `address` and keeps it alive with a TTL
    /// heartbeat while the returned handle lives. The service and instance id must be
    /// single key segments (no `/`).
    pub async fn register(
        &self,
        service: &str,
        instance_id: &str,
        address: &str,
        ttl: Duration,
    ) -> Result<Registration> {
        for segment in [service, instance_id] {
            if segment.contains('/') || Key::new(segment).is_err() {
                return Err(crate::Error::InvalidKey {
                    key: segment.to_owned(),
                    reason: "service names and instance ids are single key segments",
                });
            }
        }
        let key = format!("{}/{instance_id}", self.service_dir(service));
        let options = PutOptions::with_ttl(ttl);
        let written = self
            .kv
            .put(&key, address.to_owned(), options.clone())
            .await?;
        let stop = CancellationToken::new();
        let heartbeat = Heartbeat {
            kv: self.kv.clone(),
            key: written.key,
            address: address.to_owned(),
            options,
            every: (ttl / 3).max(Duration::from_millis(10)),
            stop: stop.clone(),
        };
        let task = tokio::spawn(heartbeat.run());
        Ok(Registration {
            stop,
            task: Some(task),
        })
    }

    /// The instances of `service` now, sorted by id.
    pub async fn instances(&self, service: &str) -> Result<Vec<Instance>> {
        let pairs = self.kv.list(self.service_dir(service)).await?;
        Ok(direct_instances(&self.instance_prefix(service)?, &pairs))
    }

    /// The set of instances of `service` now and after every change.
    pub async fn watch(&self, service: &str) -> Result<InstanceWatch<B>> {
        let prefix = self.instance_prefix(service)?;
        let inner = self.kv.watch_tree(self.service_dir(service)).await?;
        Ok(InstanceWatch {
            inner,
            prefix,
            last: None,
        })
    }
}

/// Instances are the direct children of the service directory (`prefix` ends in `/`).
fn direct_instances(prefix: &str, pairs: &[KvPair]) -> Vec<Instance> {
    pairs
        .iter()
        .filter(|p| {
            p.key
                .strip_prefix(prefix)
                .is_some_and(|id| !id.contains('/'))
        })
        .map(Instance::from_pair)
        .collect()
}

/// Keeps an instance registered; dropping it deregisters the instance.
#[derive(Debug)]
pub struct Registration {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Registration {
    /// Stops the heartbeat and deletes the instance, waiting for the delete.
    pub async fn deregister(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Stops the heartbeat without deleting the instance, as a crashed process would:
    /// the entry disappears when its TTL runs out.
    pub fn abandon(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // The heartbeat task deletes the key when told to stop.
        self.stop.cancel();
    }
}

struct Heartbeat<B: Backend> {
    kv: Kv<B>,
    key: String,
    address: String,
    options: PutOptions,
    every: Duration,
    stop: CancellationToken,
}

impl<B: Backend> Heartbeat<B> {
    async fn run(self) {
        // First heartbeat one period from now (registration wrote the key); an
        // interval's immediate first tick would park this task for up to a timer tick
        // before it listens for `stop`.
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + self.every, self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => {
                    if let Err(err) = self.kv.delete(&self.key).await {
                        tracing::debug!(key = %self.key, %err, "deregister: instance already gone");
                    }
                    return;
                }
                _ = tick.tick() => {
                    match self.kv.put(&self.key, self.address.clone(), self.options.clone()).await {
                        Ok(_) => {}
                        // A closed store never comes back: the entry expires with its TTL.
                        Err(crate::Error::Closed) => return,
                        Err(err) => {
                            tracing::warn!(key = %self.key, %err, "discovery heartbeat failed, will retry");
                        }
                    }
                }
            }
        }
    }
}

/// The stream of [`Registry::watch`]: the set of instances first, then after every
/// change of the set (heartbeats that change nothing are not reported).
pub struct InstanceWatch<B: Backend> {
    inner: B::WatchTree,
    prefix: String,
    /// The set yielded last: heartbeats rewrite entries without changing the set.
    last: Option<Vec<Instance>>,
}

impl<B: Backend> std::fmt::Debug for InstanceWatch<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceWatch").finish_non_exhaustive()
    }
}

impl<B: Backend> Stream for InstanceWatch<B> {
    type Item = Result<Vec<Instance>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match std::task::ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(pairs)) => {
                    let instances = direct_instances(&this.prefix, &pairs);
                    if this.last.as_ref() != Some(&instances) {
                        this.last = Some(instances.clone());
                        return Poll::Ready(Some(Ok(instances)));
                    }
                }
                Some(Err(err)) => return Poll::Ready(Some(Err(err))),
                None => return Poll::Ready(None),
            }
        }
    }
}
