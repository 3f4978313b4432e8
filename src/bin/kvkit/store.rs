//! Which store a command talks to: `--store URL`, `KVKIT_STORE`, or `--config FILE`.

use std::path::Path;

use kvkit::{AnyBackend, Kv, StoreConfig};

use crate::args::StoreArgs;
use crate::exit::{CliError, CliResult};

/// What a command does with its store, to refuse a store where it is pointless.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Reads or writes keys that must outlive this process (`get`, `put`, ...).
    Data,
    /// Waits for changes made by other processes (`watch`, `leader`).
    Watch,
    /// Excludes other processes (`lock`, `elect`).
    Coordinate,
    /// Writes that may be thrown away (`import` as a check, `copy`'s destination).
    Scratch,
}

/// Why `memory://` is pointless for `usage`, or `None` when it is allowed.
fn memory_refusal(usage: Use, command: &str) -> Option<String> {
    let why = match usage {
        Use::Scratch => return None,
        Use::Data => "nothing would be there to read and nothing written would be kept",
        Use::Watch => "no other process can change it",
        Use::Coordinate => "no other process can contend for it",
    };
    Some(format!(
        "memory:// is a store inside this one kvkit process, empty at start and gone at \
         exit, so `{command}` on it is pointless: {why}; use redb://FILE for a local store \
         or a server URL"
    ))
}

/// Why a redb file is pointless for `usage`, or `None` when it is allowed.
fn redb_refusal(usage: Use, command: &str) -> Option<String> {
    let why = match usage {
        Use::Data | Use::Scratch => return None,
        Use::Watch => "no other process can change it while kvkit watches",
        Use::Coordinate => "no other process can contend for the lock",
    };
    Some(format!(
        "a redb file is opened by one process at a time, so `{command}` on it is pointless: \
         {why}; use an etcd, ZooKeeper or Consul URL"
    ))
}

/// The environment variable naming the store when neither --store nor --config does.
pub const STORE_VAR: &str = "KVKIT_STORE";

/// The store configuration the arguments name, before connecting: --config FILE, else
/// --store URL, else KVKIT_STORE.
pub fn resolve(args: &StoreArgs) -> CliResult<StoreConfig> {
    if let Some(path) = &args.config {
        return read_config(path);
    }
    // KVKIT_STORE is read here rather than by clap, so that --config beats it.
    let url = args.store.clone().or_else(|| std::env::var(STORE_VAR).ok());
    match url {
        Some(url) if !url.trim().is_empty() => parse_url(&url),
        _ => Err(CliError::usage(
            "no store given: pass --store URL, set KVKIT_STORE, or pass --config FILE \
             (e.g. --store etcd://127.0.0.1:2379)",
        )),
    }
}

/// Parses a store URL; a bad one is a usage error.
pub fn parse_url(url: &str) -> CliResult<StoreConfig> {
    StoreConfig::from_url(url.trim()).map_err(|e| CliError::usage(CliError::from(e).message))
}

/// Reads a StoreConfig from a TOML or JSON file, at the top level or under `store`.
fn read_config(path: &Path) -> CliResult<StoreConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::usage(format!(
            "cannot read the config file {}: {e}",
            path.display()
        ))
    })?;
    let bad = |e: String| {
        CliError::usage(format!(
            "invalid store config in {}: {} (expected kvkit's StoreConfig: backend = \"etcd\", \
             endpoints = [...], ...)",
            path.display(),
            e.replace('\n', " ").trim()
        ))
    };
    let is_json = path.extension().is_some_and(|ext| ext == "json");
    if is_json {
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let value = match value.get("store") {
            Some(inner) if value.get("backend").is_none() => inner.clone(),
            _ => value,
        };
        serde_json::from_value(value).map_err(|e| bad(e.to_string()))
    } else {
        let value: toml::Table = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let value = match value.get("store") {
            Some(toml::Value::Table(inner)) if !value.contains_key("backend") => inner.clone(),
            _ => value,
        };
        value
            .try_into()
            .map_err(|e: toml::de::Error| bad(e.to_string()))
    }
}

/// Connects to `config` for a command that uses it as `usage`, refusing stores where
/// that is pointless.
pub async fn open(config: StoreConfig, usage: Use, command: &str) -> CliResult<Kv<AnyBackend>> {
    let refusal = match &config {
        StoreConfig::Memory(_) => memory_refusal(usage, command),
        StoreConfig::Redb(_) => redb_refusal(usage, command),
        _ => None,
    };
    if let Some(reason) = refusal {
        return Err(CliError::usage(reason));
    }
    Ok(config.connect().await?)
}
