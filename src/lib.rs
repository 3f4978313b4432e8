//! # kvkit
//!
//! One key/value and coordination API over etcd, Consul, ZooKeeper, an embedded store
//! (redb) and an in-memory reference store.
//!
//! [`Kv<B>`](Kv) is a cheap, cloneable handle over a [`Backend`] chosen at compile time:
//! no trait objects and no boxed futures. Every backend shares the semantics written in
//! `docs/design.md`: normalised keys, directories that are just key prefixes, versions
//! that never go back, watches that converge, and RAII locks.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kvkit::Result<()> {
//! use kvkit::{Kv, LockGuard, LockOptions, PutOptions, memory::Memory};
//!
//! let kv = Kv::new(Memory::new());
//! let first = kv.put("app/config", "v1", PutOptions::default()).await?;
//! // Compare-and-swap against the version we read.
//! kv.atomic_put("app/config", "v2", Some(&first), PutOptions::default()).await?;
//! assert!(kv.atomic_put("app/config", "v3", Some(&first), PutOptions::default()).await.is_err());
//!
//! let guard = kv.lock("locks/job", LockOptions::default().value("me")).await?;
//! assert_eq!(kv.get("locks/job").await?.value, "me");
//! guard.unlock().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Backends live behind cargo features named after them: `redb` (default), `etcd`,
//! `consul`, `zookeeper`. The feature `testing` exports the conformance suite and the
//! model harness so any backend, including yours, can be checked against [`memory`].
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod any;
pub mod backend;
#[cfg(any(feature = "etcd", feature = "consul", feature = "zookeeper"))]
mod background;
mod backoff;
pub mod config;
#[cfg(feature = "consul")]
#[cfg_attr(docsrs, doc(cfg(feature = "consul")))]
pub mod consul;
pub mod error;
#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub mod etcd;
pub mod key;
mod kv;
mod local_watch;
pub mod memory;
pub mod poll;
pub mod prelude;
pub mod recipes;
#[cfg(feature = "redb")]
#[cfg_attr(docsrs, doc(cfg(feature = "redb")))]
pub mod redb;
pub mod task_stream;

#[cfg(feature = "zookeeper")]
#[cfg_attr(docsrs, doc(cfg(feature = "zookeeper")))]
pub mod zookeeper;

#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use backend::{
    Backend, Capabilities, Cas, Expect, KvPair, LockGuard, LockLost, LockOptions, LostSignal,
    PutOptions,
};
pub use error::{Error, ErrorKind, Result};
pub use key::{Dir, Key};
pub use kv::Kv;

pub use any::{AnyBackend, AnyLock, AnyWatch, AnyWatchTree};
pub use config::{StoreConfig, TlsConfig, connect};
/// [`CasLock`](recipes::CasLock) at its first path, `kvkit::recipe::CasLock`.
pub use recipes::cas_lock as recipe;
pub use recipes::{discovery, election};
