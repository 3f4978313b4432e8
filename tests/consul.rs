//! Consul tests.
