//! The checks every network backend's `validate()` shares: endpoints given and not
//! blank, durations within [`MAX_DURATION`](super::MAX_DURATION), timeouts above zero.
//!
//! Each message starts with the backend's name (`"etcd: no endpoints configured"`).

// Each check serves some backends: with only some compiled in, some go unused.
#![cfg_attr(
    not(all(feature = "etcd", feature = "consul", feature = "zookeeper")),
    allow(dead_code)
)]

use std::time::Duration;

use super::duration::check_duration;
use super::error::config_error;
use crate::error::Result;

/// Errors when `endpoints` is empty or one of them is blank.
pub(crate) fn check_endpoints(backend: &str, endpoints: &[String]) -> Result<()> {
    if endpoints.is_empty() {
        return Err(config_error(format!("{backend}: no endpoints configured")));
    }
    if let Some(blank) = endpoints.iter().find(|e| e.trim().is_empty()) {
        return Err(config_error(format!("{backend}: empty endpoint {blank:?}")));
    }
    Ok(())
}

/// Errors for the first of the named durations longer than the crate's maximum.
pub(crate) fn check_durations(backend: &str, durations: &[(&str, Duration)]) -> Result<()> {
    for (name, value) in durations {
        check_duration(&format!("{backend} {name}"), *value)?;
    }
    Ok(())
}

/// Errors when the duration `name` is zero (a timeout that would fail every request).
pub(crate) fn check_positive(backend: &str, name: &str, value: Duration) -> Result<()> {
    if value.is_zero() {
        return Err(config_error(format!(
            "{backend}: {name} must be more than 0"
        )));
    }
    Ok(())
}
