//! Coordination recipes built on the [`Backend`](crate::Backend) API alone, so they work
//! on every backend: [`CasLock`] (a lock from storage primitives), [`election`] and
//! [`discovery`].
//!
//! [`election`] and [`discovery`] are also at the crate root (`kvkit::election`,
//! `kvkit::discovery`), and [`cas_lock`] is also `kvkit::recipe`.

pub mod cas_lock;
pub mod discovery;
pub mod election;

pub use cas_lock::CasLock;
