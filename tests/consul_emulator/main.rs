//! Tests of the Consul API emulator against the reference document
//! (`shared/reference/consul-http-api.md`), through raw HTTP: they check the
//! emulator, not the backend, so that the backend's tests stand on a checked base.

#[path = "../support/consul_api.rs"]
mod consul_api;

mod agent;
mod kv;
mod sessions;
mod txn;
