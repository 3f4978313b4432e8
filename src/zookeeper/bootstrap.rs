//! Opening a ZooKeeper handle: the session handshake, the granted session timeout, the
//! root znodes, and the estimate of the server clock's offset used by TTL deadlines.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{RwLock, watch as tokio_watch};
use zookeeper_async::{Acl, CreateMode, ZkError, ZooKeeper};

use super::config::validate_root;
use super::error::is_transient;
use super::multiread::{self, MultiReader, ReaderConfig};
use super::session::{Inner, Shared, now_ms, on_state};
use super::{NAME, Zookeeper, ZookeeperConfig, ZookeeperEncoding, codec, lock, watch};
use crate::backoff::Backoff;
use crate::error::{Error, Result};

impl Zookeeper {
    /// Connects to the ensemble, waits for a session (up to the request timeout) and
    /// creates the root znodes when missing.
    pub async fn connect(config: ZookeeperConfig) -> Result<Self> {
        config.validate()?;
        let root = validate_root(&config.prefix)?;
        let connect = config.connect_string();
        let session_timeout = config.session_timeout.max(Duration::from_secs(2));
        let request_timeout = config.request_timeout.max(Duration::from_millis(100));
        // The session handshake is a request too: the shorter timeout bounds it.
        let connect_timeout = config
            .connect_timeout
            .min(request_timeout)
            .max(Duration::from_millis(100));
        let (epoch, _) = tokio_watch::channel(0u64);
        let (session, _) = tokio_watch::channel(0u64);
        let (ready, _) = tokio_watch::channel(false);
        let shared = Arc::new(Shared {
            epoch,
            session,
            ready,
        });
        let watch_hub = Arc::new(watch::WatchHub::default());
        let hub = watch_hub.clone();
        // The crate retries the first TCP connect forever: bound it.
        let zk = tokio::time::timeout(
            connect_timeout,
            ZooKeeper::connect_with_retry_time(
                &connect,
                session_timeout,
                // Every watch is requested with the plain flag: its event comes here.
                move |event: zookeeper_async::WatchedEvent| hub.dispatch(event),
                Duration::from_millis(200),
            ),
        )
        .await
        .map_err(|_| Error::unavailable(NAME, format!("cannot reach {connect}")))?
        .map_err(|e| Error::backend(NAME, format!("bad connect string: {e}")))?;
        let digest = config
            .digest
            .as_ref()
            .map(|d| format!("{}:{}", d.user, d.password).into_bytes());
        let addrs: Vec<String> = config.endpoints.clone();
        let requested_session_timeout = session_timeout;
        // The server may grant another timeout than asked (clamped to its
        // min/maxSessionTimeout); it expires the session after the granted one, so every
        // deadline of this handle (lock leases above all) uses that.
        let session_timeout = match multiread::negotiated_session_timeout(
            &addrs,
            session_timeout,
            request_timeout,
        )
        .await
        {
            Some(granted) => granted,
            None => {
                tracing::warn!(
                    "could not learn the granted ZooKeeper session timeout; assuming the requested one"
                );
                session_timeout
            }
        };
        let reader = config.multi_read.then(|| {
            MultiReader::new(ReaderConfig {
                addrs,
                session_timeout: requested_session_timeout,
                request_timeout,
                digest: digest.clone(),
            })
        });
        let acl = if digest.is_some() {
            Acl::creator_all().clone()
        } else {
            Acl::open_unsafe().clone()
        };
        // Raw encoding: keys are the znodes below the root itself, as other tools see
        // them; kvkit's own znodes (locks, clock) live in the sibling `{root}.kvkit`.
        let (kv_root, root) = match config.encoding {
            ZookeeperEncoding::Kvkit => (format!("{root}/kv"), root),
            ZookeeperEncoding::Raw => (root.clone(), format!("{root}.kvkit")),
        };
        let inner = Arc::new(Inner {
            zk: Arc::new(zk),
            shared: shared.clone(),
            kv_root,
            lock_root: format!("{root}/locks"),
            root,
            acl,
            digest,
            gate: RwLock::new(()),
            clock_offset_ms: AtomicI64::new(0),
            session_timeout,
            request_timeout,
            closed: AtomicBool::new(false),
            shutdown: tokio_util::sync::CancellationToken::new(),
            requests: AtomicU64::new(0),
            waves: AtomicU64::new(0),
            watch_hub,
            held_locks: lock::HeldLocks::default(),
            collecting: std::sync::Mutex::default(),
            seen_main: AtomicI64::new(0),
            seen_reader: AtomicI64::new(0),
            seen_reader_generation: AtomicU64::new(0),
            reader,
            encoding: config.encoding,
        });
        let weak = Arc::downgrade(&inner);
        inner.zk.add_listener(move |state| on_state(&weak, state));
        // The first connect may have completed before the listener was added.
        let backend = Zookeeper { inner };
        backend.ensure_ready_after_connect().await?;
        backend.ensure_roots().await?;
        backend.measure_clock().await;
        Ok(backend)
    }

    /// Waits for the first session: probes with a request until one succeeds.
    async fn ensure_ready_after_connect(&self) -> Result<()> {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + inner.request_timeout;
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(50));
        loop {
            let probe = {
                let _gate = inner.gate.write().await;
                tokio::time::timeout(Duration::from_millis(1_000), inner.zk.exists("/", false))
                    .await
            };
            match probe {
                Ok(Ok(_)) => break,
                Ok(Err(e)) if !is_transient(e) => return Err(self.map_err(e)),
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::unavailable(
                    NAME,
                    "no ZooKeeper session could be established",
                ));
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
        let epoch = *inner.shared.epoch.borrow();
        inner.authenticate(epoch).await?;
        Ok(())
    }

    async fn ensure_roots(&self) -> Result<()> {
        let inner = &self.inner;
        for path in [inner.kv_root.clone(), inner.lock_root.clone()] {
            match inner.exists(&path).await {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(ZkError::NoAuth) => continue,
                Err(e) => return Err(self.map_err(e)),
            }
            match inner
                .create_with_parents(&path, codec::no_value(), CreateMode::Persistent)
                .await
            {
                Ok(_) | Err(ZkError::NodeExists) | Err(ZkError::NoAuth) => {}
                Err(e) => return Err(self.map_err(e)),
            }
        }
        Ok(())
    }

    /// Estimates the server clock's offset from ours with writes of `{root}/clock`, so
    /// TTL deadlines (taken from the server's `mtime`) are compared on the server's
    /// clock. The estimate (the midpoint of a write's round trip) is off by up to half
    /// that round trip, so the sample with the shortest round trip is kept: one slow
    /// answer (a loaded server at connect) would otherwise shift every TTL deadline of
    /// the handle. Best effort: without write access the offset stays 0.
    async fn measure_clock(&self) {
        const SAMPLES: usize = 4;
        let inner = &self.inner;
        let path = format!("{}/clock", inner.root);
        let mut best: Option<(i64, i64)> = None; // (round trip, offset)
        // One round more than samples: the first write may only create the znode.
        for _ in 0..=SAMPLES {
            let before = now_ms();
            let result = inner
                .call(|| inner.zk.set_data(&path, Vec::new(), None))
                .await;
            let after = now_ms();
            match result {
                Ok(stat) => {
                    let sample = (after - before, stat.mtime - (before + after) / 2);
                    if best.is_none_or(|(round_trip, _)| sample.0 < round_trip) {
                        best = Some(sample);
                    }
                    // Millisecond clocks: a round trip this short cannot be beaten.
                    if sample.0 <= 2 {
                        break;
                    }
                }
                Err(ZkError::NoNode) => {
                    let _ = inner
                        .create_with_parents(&path, Vec::new(), CreateMode::Persistent)
                        .await;
                }
                Err(_) => break,
            }
        }
        if let Some((_, offset)) = best {
            inner.clock_offset_ms.store(offset, Ordering::Relaxed);
        }
    }
}
