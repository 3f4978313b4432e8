//! The key/value commands, generic over the backend: get, put, rm, ls, exists, watch,
//! leader.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kvkit::election::Follower;
use kvkit::{Backend, Error, Kv, KvPair, PutOptions};
use serde_json::json;

use crate::exit::{CliError, CliResult, Code};
use crate::output::{line, pair_json, preview};

/// `get KEY`.
pub async fn get<B: Backend>(kv: &Kv<B>, key: &str, as_json: bool) -> CliResult {
    let pair = kv.get(key).await?;
    let mut out = std::io::stdout().lock();
    if as_json {
        line(&mut out, &pair_json(&pair).to_string())?;
    } else {
        out.write_all(&pair.value)?;
        out.flush()?;
    }
    Ok(())
}

/// The value of `put`: the argument, or stdin (refused when stdin is a terminal, where
/// it would wait silently for typing).
pub fn put_value(value: Option<String>) -> CliResult<Bytes> {
    if let Some(value) = value {
        return Ok(Bytes::from(value));
    }
    let mut stdin = std::io::stdin().lock();
    if stdin.is_terminal() {
        return Err(CliError::usage(
            "missing value: pass VALUE after the key, or pipe the value on stdin",
        ));
    }
    let mut value = Vec::new();
    stdin.read_to_end(&mut value)?;
    Ok(Bytes::from(value))
}

/// How `put` writes.
pub enum PutMode {
    Always,
    Create,
    IfIndex(u64),
}

/// `put KEY VALUE`: prints the new index.
pub async fn put<B: Backend>(
    kv: &Kv<B>,
    key: &str,
    value: Bytes,
    ttl: Option<Duration>,
    mode: PutMode,
) -> CliResult {
    let options = PutOptions { ttl };
    let pair = match mode {
        PutMode::Always => kv.put(key, value, options).await?,
        PutMode::Create => kv.atomic_put(key, value, None, options).await?,
        PutMode::IfIndex(index) => {
            kv.atomic_put(key, value, Some(&expected(key, index)), options)
                .await?
        }
    };
    line(&mut std::io::stdout().lock(), &pair.last_index.to_string())?;
    Ok(())
}

/// A pair standing for "the key at index `index`", for the atomic operations (which
/// compare only `last_index`).
fn expected(key: &str, index: u64) -> KvPair {
    KvPair {
        key: key.to_owned(),
        value: Bytes::new(),
        last_index: index,
    }
}

/// `rm KEY` (`-r`, `--if-index`).
pub async fn rm<B: Backend>(
    kv: &Kv<B>,
    key: &str,
    recursive: bool,
    if_index: Option<u64>,
) -> CliResult {
    if recursive {
        // Validate as a key: `rm -r ""` must not wipe the whole store by accident.
        kvkit::Key::new(key)?;
        kv.delete_tree(key).await?;
    } else if let Some(index) = if_index {
        kv.atomic_delete(key, &expected(key, index)).await?;
    } else {
        kv.delete(key).await?;
    }
    Ok(())
}

/// `ls DIR` (`-l`, `--json`).
pub async fn ls<B: Backend>(kv: &Kv<B>, dir: &str, long: bool, as_json: bool) -> CliResult {
    let pairs = kv.list(dir).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if as_json {
        let items: Vec<_> = pairs
            .iter()
            .map(|pair| {
                let mut item = pair_json(pair);
                item["size"] = json!(pair.value.len());
                item
            })
            .collect();
        writeln!(out, "{}", serde_json::Value::Array(items))?;
    } else if long {
        let key_width = pairs.iter().map(|p| p.key.len()).max().unwrap_or(0);
        let index_width = pairs
            .iter()
            .map(|p| p.last_index.to_string().len())
            .max()
            .unwrap_or(0)
            .max(5);
        if !pairs.is_empty() {
            writeln!(
                out,
                "{:<key_width$}  {:>index_width$}  {:>8}  VALUE",
                "KEY", "INDEX", "SIZE"
            )?;
        }
        for pair in &pairs {
            writeln!(
                out,
                "{:<key_width$}  {:>index_width$}  {:>8}  {}",
                pair.key,
                pair.last_index,
                pair.value.len(),
                preview(&pair.value, 60)
            )?;
        }
    } else {
        for pair in &pairs {
            writeln!(out, "{}", pair.key)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// `exists KEY`: exit 0 when it exists, 1 when not.
pub async fn exists<B: Backend>(kv: &Kv<B>, key: &str, as_json: bool) -> CliResult {
    let found = kv.exists(key).await?;
    let text = if as_json {
        json!({ "key": key, "exists": found }).to_string()
    } else {
        found.to_string()
    };
    line(&mut std::io::stdout().lock(), &text)?;
    if found {
        Ok(())
    } else {
        Err(CliError::new(Code::NotFound, ""))
    }
}

/// One line of `watch`: a key's new state. `initial` marks the state shown first, where
/// a missing key is "absent" rather than "delete".
fn watch_line(key: &str, state: Option<&KvPair>, as_json: bool, initial: bool) -> String {
    let gone = if initial { "absent" } else { "delete" };
    match (state, as_json) {
        (Some(pair), true) => {
            let mut item = pair_json(pair);
            item["event"] = json!("put");
            item.to_string()
        }
        (None, true) => json!({ "event": gone, "key": key }).to_string(),
        (Some(pair), false) => format!(
            "put {} index={} {}",
            pair.key,
            pair.last_index,
            preview(&pair.value, 200)
        ),
        (None, false) => format!("{gone} {key}"),
    }
}

/// `watch KEY` / `watch -r DIR`: the current state, then one line per change, until
/// Ctrl-C (exit 0) or a store failure.
pub async fn watch<B: Backend>(kv: &Kv<B>, key: &str, recursive: bool, as_json: bool) -> CliResult {
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut out = std::io::stdout().lock();
    if recursive {
        let mut stream = kv.watch_tree(key).await?;
        let mut known: BTreeMap<String, KvPair> = BTreeMap::new();
        loop {
            let snapshot = tokio::select! {
                item = stream.next() => item,
                _ = &mut interrupted => return Ok(()),
            };
            let snapshot = snapshot.ok_or_else(watch_ended)??;
            let mut next = BTreeMap::new();
            for pair in snapshot {
                let changed = known
                    .get(&pair.key)
                    .is_none_or(|old| old.last_index != pair.last_index || old.value != pair.value);
                if changed {
                    line(
                        &mut out,
                        &watch_line(&pair.key, Some(&pair), as_json, false),
                    )?;
                }
                next.insert(pair.key.clone(), pair);
            }
            for gone in known.keys().filter(|key| !next.contains_key(*key)) {
                line(&mut out, &watch_line(gone, None, as_json, false))?;
            }
            known = next;
        }
    } else {
        let normal = kvkit::Key::new(key)?.as_str().to_owned();
        let mut stream = kv.watch(key).await?;
        let mut first = true;
        let mut last: Option<u64> = None;
        loop {
            let state = tokio::select! {
                item = stream.next() => item,
                _ = &mut interrupted => return Ok(()),
            };
            let state = state.ok_or_else(watch_ended)??;
            let index = state.as_ref().map(|pair| pair.last_index);
            // The current state is shown once; after it, only changes.
            if first || index != last {
                line(
                    &mut out,
                    &watch_line(&normal, state.as_ref(), as_json, first),
                )?;
            }
            first = false;
            last = index;
        }
    }
}

fn watch_ended() -> Error {
    Error::unavailable("watch", "the store ended the watch")
}

/// `leader NAME`: the leader's ID; exit 1 when there is none.
pub async fn leader<B: Backend>(kv: &Kv<B>, name: &str, as_json: bool) -> CliResult {
    kvkit::Key::new(name)?;
    let leader = Follower::new(kv.clone(), name).leader().await?;
    let mut out = std::io::stdout().lock();
    if as_json {
        line(
            &mut out,
            &json!({ "name": name, "leader": leader }).to_string(),
        )?;
    } else if let Some(id) = &leader {
        line(&mut out, id)?;
    }
    match leader {
        Some(_) => Ok(()),
        None => Err(CliError::new(
            Code::NotFound,
            format!(
                "no leader of {name} right now (start one with `kvkit elect {name} ID -- COMMAND`)"
            ),
        )),
    }
}
