//! `kvkit::connect`, `StoreConfig` and `AnyBackend`: every URL form reaches the right
//! store (real etcd and ZooKeeper servers, the Consul emulator, redb files, memory),
//! `Kv<AnyBackend>` passes `check_backend` on all five,
//! configurations round-trip through TOML, JSON and URLs, bad input is a clear
//! `Error::Config`, and no secret is ever formatted.

use kvkit::testing::model::{ModelConfig, check_backend};
use kvkit::{AnyBackend, ErrorKind, Kv};

mod bad_input;
mod formats;
mod secrets;
mod urls;

/// `check_backend` on `kv`: the conformance suite, a short sequential model run and the
/// concurrent phase.
async fn check(kv: &Kv<AnyBackend>) {
    let config = ModelConfig {
        cases: 12,
        ..ModelConfig::default()
    };
    if let Err(failure) = check_backend(kv, config).await {
        panic!("Kv<{}>: {failure}", kv.capabilities().name);
    }
}

fn config_error(result: kvkit::Result<impl std::fmt::Debug>) -> String {
    let err = result.expect_err("expected a configuration error");
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    err.to_string()
}
