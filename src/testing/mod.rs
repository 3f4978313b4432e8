//! Tools to check a backend: the conformance suite, the model harness against
//! [`crate::memory::Memory`], and helpers that start real servers for tests.
//!
//! One call checks any backend, including your own:
//!
//! ```no_run
//! # async fn check() {
//! use kvkit::{Kv, memory::Memory, testing::{check_backend, model::ModelConfig}};
//! let kv = Kv::new(Memory::new()); // your backend here
//! check_backend(&kv, ModelConfig::default()).await.unwrap();
//! # }
//! ```
//!
//! A failure is a [`CheckFailure`]: its [`Phase`] and [`Rule`] say what broke, as
//! values to match on.

mod check;
pub mod concurrent;
pub mod conformance;
#[cfg(feature = "consul")]
pub mod consul_emulator;
#[cfg(feature = "etcd")]
pub mod etcd_server;
mod failure;
pub mod fault;
pub mod linearizability;
pub mod model;
pub mod recipes;
mod rules;
pub mod server;
#[cfg(feature = "zookeeper")]
pub mod zookeeper_server;

pub use check::check_backend;
pub use failure::{CheckFailure, Phase, Seed};
pub use rules::Rule;
