//! The Consul backend against the Consul API emulator (and against a real Consul when
//! `KVKIT_CONSUL_ADDR` is set, with the token from `KVKIT_CONSUL_TOKEN`), by topic.

#[path = "../support/consul.rs"]
mod consul_support;
#[path = "../support/cut_waiter.rs"]
mod cut_waiter;
#[path = "../support/errors.rs"]
mod errors;
#[path = "../support/streams.rs"]
mod streams;

mod basics;
mod close;
mod faults;
mod foreign_keys;
mod lock;
mod partition;
mod round_trips;
mod suites;
mod tls_auth;
mod watch;
