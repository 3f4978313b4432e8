//! Durations in configurations: parsing `"1500ms"`, `"2s"`, `"1m30s"` or a number of
//! seconds, writing them back, the [`MAX_DURATION`] bound, and their serde form.
//!
//! Use the serde form with `#[serde(with = "kvkit::config::duration")]`: it writes
//! `"1m30s"` and reads a string or a number of seconds.

use std::time::Duration;

use serde::Deserialize;

use super::error::config_error;
use crate::error::{Error, Result};

/// The longest duration any configuration accepts (one year): longer values are an
/// error, never a panic or an overflow in `Instant + Duration`.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The longest duration string accepted, in bytes.
const MAX_DURATION_TEXT: usize = 64;

/// Parses a duration written as `"1500ms"`, `"2s"`, `"1m30s"`, `"1h 5m"` (humantime's
/// format) or a bare number of seconds (`"1.5"`). Errors for an empty, unparsable,
/// overlong or negative value, and for more than [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    if text.len() > MAX_DURATION_TEXT {
        return Err(config_error(format!(
            "duration of {} characters is too long (at most {MAX_DURATION_TEXT})",
            text.len()
        )));
    }
    let parsed = if text.is_empty() {
        return Err(config_error(
            "empty duration (write e.g. \"2s\" or \"1500ms\")",
        ));
    } else if text == "0" {
        Duration::ZERO
    } else if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let seconds: f64 = text
            .parse()
            .map_err(|_| config_error(format!("invalid duration {text:?}")))?;
        seconds_to_duration(seconds)?
    } else {
        match humantime::parse_duration(text) {
            Ok(parsed) => parsed,
            // Go's fractional form (`"1.5s"`, `"0.5h"`), common in etcd and Consul configs.
            Err(_)
                if text.contains('.')
                    && let Some(parsed) = parse_go_duration(text) =>
            {
                parsed
            }
            Err(e) => {
                return Err(config_error(format!(
                    "invalid duration {text:?}: {e} (write e.g. \"2s\", \"1500ms\", \"1m30s\")"
                )));
            }
        }
    };
    check_duration("duration", parsed)
}

/// Parses Go's `time.ParseDuration` form (`"10s"`, `"1.5s"`, `"1m0.5s"`, `"0"`), as
/// etcd and Consul write durations (also the Consul emulator's parser); `None` when it
/// is not one or does not fit.
pub(crate) fn parse_go_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    if text.is_empty() {
        return None;
    }
    let mut rest = text;
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&end| end > 0)?;
        let number: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total = total.checked_add(Duration::try_from_secs_f64(number * scale).ok()?)?;
    }
    Some(total)
}

fn seconds_to_duration(seconds: f64) -> Result<Duration> {
    let duration = Duration::try_from_secs_f64(seconds)
        .map_err(|_| config_error(format!("invalid duration of {seconds} seconds")))?;
    check_duration("duration", duration)
}

/// Writes a duration the way [`parse_duration`] reads it, without spaces: `"1m30s"`,
/// `"1s500ms"`, `"0s"`.
pub fn format_duration(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".to_owned();
    }
    humantime::format_duration(duration)
        .to_string()
        .replace(' ', "")
}

/// Errors when `duration` (the setting `what`) exceeds [`MAX_DURATION`].
pub fn check_duration(what: &str, duration: Duration) -> Result<Duration> {
    if duration > MAX_DURATION {
        Err(config_error(format!(
            "{what} of {}s is too long (at most {}s)",
            duration.as_secs(),
            MAX_DURATION.as_secs()
        )))
    } else {
        Ok(duration)
    }
}

/// Writes `"1m30s"`.
pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// Reads `"1m30s"`, `"1500ms"` or a number of seconds.
pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Seconds(f64),
    }
    match Raw::deserialize(d)? {
        Raw::Text(text) => parse_duration(&text),
        Raw::Seconds(seconds) => seconds_to_duration(seconds),
    }
    .map_err(|e| serde::de::Error::custom(reason_of(e)))
}

fn reason_of(e: Error) -> String {
    match e {
        Error::Config { reason } => reason,
        other => other.to_string(),
    }
}

/// A configuration's duration settings, each under the one name that URLs, config
/// files and error messages use, so parsing, writing and validating list them once.
pub(crate) trait DurationSettings: Clone {
    /// Every duration setting, by name, to be set.
    fn durations_mut(&mut self) -> Vec<(&'static str, &mut Duration)>;

    /// Every duration setting, by name, with its value.
    fn durations(&self) -> Vec<(&'static str, Duration)> {
        let mut copy = self.clone();
        copy.durations_mut()
            .into_iter()
            .map(|(name, value)| (name, *value))
            .collect()
    }
}
