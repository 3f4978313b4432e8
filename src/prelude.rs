//! The traits a user must have in scope and the everyday types:
//! `use kvkit::prelude::*;`.
//!
//! ```
//! use kvkit::prelude::*;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<()> {
//! let kv: Kv<AnyBackend> = connect("memory://").await?;
//! let guard = kv.lock("jobs/nightly", LockOptions::default()).await?;
//! guard.unlock().await?; // `unlock` needs `LockGuard` in scope
//! # Ok(())
//! # }
//! ```

pub use crate::any::AnyBackend;
pub use crate::backend::{Backend, KvPair, LockGuard, LockOptions, PutOptions};
pub use crate::config::{StoreConfig, connect};
pub use crate::error::{Error, ErrorKind, Result};
pub use crate::kv::Kv;
/// `next()` on watch streams.
pub use futures::StreamExt as _;
