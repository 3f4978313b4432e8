//! [`AnyBackend`]: one type for a store chosen at run time, without trait objects.
//!
//! An enum with one variant per backend compiled in; every [`Backend`] method is a
//! `match` that calls the backend inside, so there is no boxing and no allocation per
//! call, and the backend's native `exists`, `list`, `delete_tree` and `close` are kept.
//! Its watch streams and lock guard are enums too. [`crate::connect`] and
//! [`crate::StoreConfig::connect`] return a [`Kv<AnyBackend>`](crate::Kv); a
//! `Kv<AnyBackend>` behaves exactly as the backend inside it.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kvkit::Result<()> {
//! use kvkit::{AnyBackend, Kv, PutOptions, memory::Memory};
//!
//! let kv = Kv::new(AnyBackend::from(Memory::new()));
//! kv.put("a", "1", PutOptions::default()).await?;
//! assert_eq!(kv.backend().name(), "memory");
//! # Ok(())
//! # }
//! ```

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;

use crate::backend::{
    Backend, Capabilities, Cas, Expect, KvPair, LockGuard, LockLost, LockOptions, PutOptions,
};
use crate::error::Result;
use crate::key::{Dir, Key};
use crate::memory::Memory;

/// Calls `$body` with `$b` bound to the backend inside `$value` (an [`AnyBackend`],
/// [`AnyWatch`], [`AnyWatchTree`] or [`AnyLock`]), wrapping the result with `$wrap`
/// when given.
macro_rules! dispatch {
    ($ty:ident, $value:expr, $b:ident => $body:expr) => {
        match $value {
            $ty::Memory($b) => $body,
            #[cfg(feature = "redb")]
            $ty::Redb($b) => $body,
            #[cfg(feature = "etcd")]
            $ty::Etcd($b) => $body,
            #[cfg(feature = "zookeeper")]
            $ty::Zookeeper($b) => $body,
            #[cfg(feature = "consul")]
            $ty::Consul($b) => $body,
        }
    };
    ($ty:ident, $value:expr, $b:ident => $body:expr, wrap $wrap:ident) => {
        match $value {
            $ty::Memory($b) => $body.map($wrap::Memory),
            #[cfg(feature = "redb")]
            $ty::Redb($b) => $body.map($wrap::Redb),
            #[cfg(feature = "etcd")]
            $ty::Etcd($b) => $body.map($wrap::Etcd),
            #[cfg(feature = "zookeeper")]
            $ty::Zookeeper($b) => $body.map($wrap::Zookeeper),
            #[cfg(feature = "consul")]
            $ty::Consul($b) => $body.map($wrap::Consul),
        }
    };
}

/// Declares an enum with one variant per compiled-in backend, each holding
/// `<Backend as Backend>::$assoc` (or the backend itself without `$assoc`).
macro_rules! per_backend {
    ($(#[$meta:meta])* $name:ident $(, $assoc:ident)?) => {
        $(#[$meta])*
        #[non_exhaustive]
        pub enum $name {
            /// The in-memory store.
            Memory(per_backend!(@ty Memory $(, $assoc)?)),
            /// The embedded redb store.
            #[cfg(feature = "redb")]
            #[cfg_attr(docsrs, doc(cfg(feature = "redb")))]
            Redb(per_backend!(@ty crate::redb::Redb $(, $assoc)?)),
            /// etcd.
            #[cfg(feature = "etcd")]
            #[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
            Etcd(per_backend!(@ty crate::etcd::Etcd $(, $assoc)?)),
            /// ZooKeeper.
            #[cfg(feature = "zookeeper")]
            #[cfg_attr(docsrs, doc(cfg(feature = "zookeeper")))]
            Zookeeper(per_backend!(@ty crate::zookeeper::Zookeeper $(, $assoc)?)),
            /// Consul.
            #[cfg(feature = "consul")]
            #[cfg_attr(docsrs, doc(cfg(feature = "consul")))]
            Consul(per_backend!(@ty crate::consul::Consul $(, $assoc)?)),
        }
    };
    (@ty $backend:ty) => { $backend };
    (@ty $backend:ty, $assoc:ident) => { <$backend as Backend>::$assoc };
}

per_backend!(
    /// A backend chosen at run time: one variant per backend compiled in (see the
    /// [module docs](self)). `Clone` shares the connection like the backend's own.
    #[derive(Clone, Debug)]
    AnyBackend
);

per_backend!(
    /// The [`Backend::Watch`] stream of [`AnyBackend`].
    AnyWatch,
    Watch
);

per_backend!(
    /// The [`Backend::WatchTree`] stream of [`AnyBackend`].
    AnyWatchTree,
    WatchTree
);

per_backend!(
    /// The lock guard of [`AnyBackend`]; dropping it releases the lock as the
    /// backend's own guard does.
    AnyLock,
    Lock
);

impl AnyBackend {
    /// The backend's short name (as in [`Capabilities::name`]), without a call.
    pub fn name(&self) -> &'static str {
        match self {
            AnyBackend::Memory(_) => "memory",
            #[cfg(feature = "redb")]
            AnyBackend::Redb(_) => "redb",
            #[cfg(feature = "etcd")]
            AnyBackend::Etcd(_) => "etcd",
            #[cfg(feature = "zookeeper")]
            AnyBackend::Zookeeper(_) => "zookeeper",
            #[cfg(feature = "consul")]
            AnyBackend::Consul(_) => "consul",
        }
    }
}

impl From<Memory> for AnyBackend {
    fn from(backend: Memory) -> Self {
        AnyBackend::Memory(backend)
    }
}

#[cfg(feature = "redb")]
impl From<crate::redb::Redb> for AnyBackend {
    fn from(backend: crate::redb::Redb) -> Self {
        AnyBackend::Redb(backend)
    }
}

#[cfg(feature = "etcd")]
impl From<crate::etcd::Etcd> for AnyBackend {
    fn from(backend: crate::etcd::Etcd) -> Self {
        AnyBackend::Etcd(backend)
    }
}

#[cfg(feature = "zookeeper")]
impl From<crate::zookeeper::Zookeeper> for AnyBackend {
    fn from(backend: crate::zookeeper::Zookeeper) -> Self {
        AnyBackend::Zookeeper(backend)
    }
}

#[cfg(feature = "consul")]
impl From<crate::consul::Consul> for AnyBackend {
    fn from(backend: crate::consul::Consul) -> Self {
        AnyBackend::Consul(backend)
    }
}

impl Backend for AnyBackend {
    type Watch = AnyWatch;
    type WatchTree = AnyWatchTree;
    type Lock = AnyLock;

    fn capabilities(&self) -> Capabilities {
        dispatch!(AnyBackend, self, b => b.capabilities())
    }

    async fn get(&self, key: &Key<'_>) -> Result<Option<KvPair>> {
        dispatch!(AnyBackend, self, b => b.get(key).await)
    }

    async fn put(&self, key: &Key<'_>, value: Bytes, options: &PutOptions) -> Result<KvPair> {
        dispatch!(AnyBackend, self, b => b.put(key, value, options).await)
    }

    async fn delete(&self, key: &Key<'_>) -> Result<bool> {
        dispatch!(AnyBackend, self, b => b.delete(key).await)
    }

    async fn compare_and_put(
        &self,
        key: &Key<'_>,
        value: Bytes,
        expect: Expect,
        options: &PutOptions,
    ) -> Result<Cas<KvPair>> {
        dispatch!(AnyBackend, self, b => b.compare_and_put(key, value, expect, options).await)
    }

    async fn compare_and_delete(&self, key: &Key<'_>, index: u64) -> Result<Cas<()>> {
        dispatch!(AnyBackend, self, b => b.compare_and_delete(key, index).await)
    }

    async fn scan_below(&self, dir: &Dir) -> Result<Vec<KvPair>> {
        dispatch!(AnyBackend, self, b => b.scan_below(dir).await)
    }

    async fn delete_below(&self, dir: &Dir) -> Result<()> {
        dispatch!(AnyBackend, self, b => b.delete_below(dir).await)
    }

    async fn watch(&self, key: &Key<'_>) -> Result<AnyWatch> {
        dispatch!(AnyBackend, self, b => b.watch(key).await, wrap AnyWatch)
    }

    async fn watch_tree(&self, dir: &Dir) -> Result<AnyWatchTree> {
        dispatch!(AnyBackend, self, b => b.watch_tree(dir).await, wrap AnyWatchTree)
    }

    async fn lock(&self, key: &Key<'_>, options: &LockOptions) -> Result<AnyLock> {
        dispatch!(AnyBackend, self, b => b.lock(key, options).await, wrap AnyLock)
    }

    async fn try_lock(&self, key: &Key<'_>, options: &LockOptions) -> Result<Option<AnyLock>> {
        match self {
            AnyBackend::Memory(b) => Ok(b.try_lock(key, options).await?.map(AnyLock::Memory)),
            #[cfg(feature = "redb")]
            AnyBackend::Redb(b) => Ok(b.try_lock(key, options).await?.map(AnyLock::Redb)),
            #[cfg(feature = "etcd")]
            AnyBackend::Etcd(b) => Ok(b.try_lock(key, options).await?.map(AnyLock::Etcd)),
            #[cfg(feature = "zookeeper")]
            AnyBackend::Zookeeper(b) => Ok(b.try_lock(key, options).await?.map(AnyLock::Zookeeper)),
            #[cfg(feature = "consul")]
            AnyBackend::Consul(b) => Ok(b.try_lock(key, options).await?.map(AnyLock::Consul)),
        }
    }

    async fn close(&self) -> Result<()> {
        dispatch!(AnyBackend, self, b => b.close().await)
    }

    async fn exists(&self, key: &Key<'_>) -> Result<bool> {
        dispatch!(AnyBackend, self, b => b.exists(key).await)
    }

    async fn list(&self, dir: &Dir) -> Result<Vec<KvPair>> {
        dispatch!(AnyBackend, self, b => b.list(dir).await)
    }

    async fn delete_tree(&self, dir: &Dir) -> Result<()> {
        dispatch!(AnyBackend, self, b => b.delete_tree(dir).await)
    }
}

// Every backend's streams are `Unpin` (the `Backend` trait requires it), so the enums
// poll them in place.
impl Stream for AnyWatch {
    type Item = Result<Option<KvPair>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        dispatch!(AnyWatch, self.get_mut(), s => Pin::new(s).poll_next(cx))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        dispatch!(AnyWatch, self, s => s.size_hint())
    }
}

impl Stream for AnyWatchTree {
    type Item = Result<Vec<KvPair>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        dispatch!(AnyWatchTree, self.get_mut(), s => Pin::new(s).poll_next(cx))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        dispatch!(AnyWatchTree, self, s => s.size_hint())
    }
}

impl std::fmt::Debug for AnyWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnyWatch").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for AnyWatchTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnyWatchTree").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for AnyLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnyLock")
            .field("key", &self.key())
            .finish_non_exhaustive()
    }
}

impl LockGuard for AnyLock {
    fn key(&self) -> &str {
        dispatch!(AnyLock, self, g => g.key())
    }

    fn lost(&self) -> LockLost {
        dispatch!(AnyLock, self, g => g.lost())
    }

    fn is_lost(&self) -> bool {
        dispatch!(AnyLock, self, g => g.is_lost())
    }

    async fn unlock(self) -> Result<()> {
        dispatch!(AnyLock, self, g => g.unlock().await)
    }
}
