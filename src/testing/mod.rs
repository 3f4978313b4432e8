//! Tools to check a backend: the conformance suite, the model harness against
//! [`crate::memory::Memory`], and helpers that start real servers for tests.

pub mod server;
#[cfg(feature = "consul")]
pub mod consul_emulator;
