//! The etcd backend against real etcd processes (see `kvkit::testing::etcd_server`),
//! by topic.
//!
//! Every test starts its own server(s) on free loopback ports; without `/usr/bin/etcd`
//! the tests print a notice and pass, unless `KVKIT_REQUIRE_SERVERS=1`.

#[path = "../support/cut_waiter.rs"]
mod cut_waiter;
#[path = "../support/errors.rs"]
mod errors;
#[path = "../support/etcd.rs"]
mod etcd_support;
#[path = "../support/streams.rs"]
mod streams;

mod basics;
mod close;
mod cluster;
mod coalesced_reads;
mod faults;
mod foreign_keys;
mod lock;
mod partition;
mod round_trips;
mod suites;
mod tls_auth;
mod watch;
