//! Consul backend.
