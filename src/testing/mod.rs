//! Tools to check a backend: the conformance suite, the model harness against
//! [`crate::memory::Memory`], and helpers that start real servers for tests.

#[cfg(feature = "etcd")]
pub mod etcd_server;
pub mod server;
