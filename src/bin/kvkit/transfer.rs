//! Moving data: `export` (JSON lines), `import` (JSON lines from stdin) and `copy`
//! between two stores.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kvkit::{Backend, Error, Kv, PutOptions};
use serde_json::{Value, json};

use crate::exit::{CliError, CliResult, code_of};
use crate::output::{decode_value, encode_value};

/// `export DIR`: one JSON object per key on stdout.
pub async fn export<B: Backend>(kv: &Kv<B>, dir: &str) -> CliResult {
    let pairs = kv.list(dir).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for pair in &pairs {
        let (value, encoding) = encode_value(&pair.value);
        let item = json!({
            "key": pair.key,
            "value": value,
            "encoding": encoding,
            "index": pair.last_index,
        });
        writeln!(out, "{item}")?;
    }
    out.flush()?;
    eprintln!("kvkit: exported {} keys", pairs.len());
    Ok(())
}

/// One line of the `import` input.
#[derive(Debug)]
pub struct Record {
    key: String,
    value: Bytes,
    ttl: Option<Duration>,
}

/// Parses one line of the export format; `Err` says what is wrong with it.
fn parse_record(text: &str) -> Result<Record, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(fields) = value else {
        return Err("not a JSON object".into());
    };
    for name in fields.keys() {
        if !matches!(
            name.as_str(),
            "key" | "value" | "encoding" | "ttl" | "index"
        ) {
            return Err(format!(
                "unknown field {name:?} (expected key, value, encoding, ttl, index)"
            ));
        }
    }
    let key = match fields.get("key") {
        Some(Value::String(key)) => key.clone(),
        Some(_) => return Err("\"key\" is not a string".into()),
        None => return Err("missing \"key\"".into()),
    };
    let key = kvkit::Key::new(&key)
        .map_err(|e| e.to_string())?
        .as_str()
        .to_owned();
    let encoding = match fields.get("encoding") {
        None => "utf8",
        Some(Value::String(encoding)) => encoding.as_str(),
        Some(_) => return Err("\"encoding\" is not a string".into()),
    };
    let value = match fields.get("value") {
        Some(Value::String(text)) => decode_value(text, encoding)?,
        Some(_) => return Err("\"value\" is not a string".into()),
        None => return Err("missing \"value\"".into()),
    };
    let ttl = match fields.get("ttl") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(crate::args::parse_duration(text)?),
        Some(Value::Number(seconds)) => {
            let seconds = seconds
                .as_f64()
                .filter(|s| *s > 0.0)
                .ok_or("\"ttl\" must be a positive number of seconds")?;
            Some(crate::args::parse_duration(&seconds.to_string())?)
        }
        Some(_) => return Err("\"ttl\" must be a duration (\"30s\") or seconds".into()),
    };
    Ok(Record {
        key,
        value: Bytes::from(value),
        ttl,
    })
}

/// Reads and checks every record of `input`; the first bad line is a usage error.
pub fn read_records(input: impl BufRead) -> CliResult<Vec<Record>> {
    let mut records = Vec::new();
    for (number, text) in input.lines().enumerate() {
        let text = text?;
        if text.trim().is_empty() {
            continue;
        }
        let record = parse_record(&text).map_err(|reason| {
            CliError::usage(format!(
                "import: line {}: {reason}; nothing was written",
                number + 1
            ))
        })?;
        records.push(record);
    }
    Ok(records)
}

/// `import`: writes `records` (already checked), `concurrency` at a time.
pub async fn import<B: Backend>(
    kv: &Kv<B>,
    records: Vec<Record>,
    dry_run: bool,
    concurrency: usize,
) -> CliResult {
    if dry_run {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for record in &records {
            match record.ttl {
                Some(ttl) => writeln!(
                    out,
                    "would put {} ({} bytes, ttl {ttl:?})",
                    record.key,
                    record.value.len()
                )?,
                None => writeln!(
                    out,
                    "would put {} ({} bytes)",
                    record.key,
                    record.value.len()
                )?,
            }
        }
        out.flush()?;
        eprintln!(
            "kvkit: dry run: {} keys checked, nothing written",
            records.len()
        );
        return Ok(());
    }
    let total = records.len();
    let progress = progress_bar(total as u64, "importing");
    let results: Vec<(String, kvkit::Result<()>)> = futures::stream::iter(records)
        .map(|record| {
            let progress = &progress;
            async move {
                let result = kv
                    .put(&record.key, record.value, PutOptions { ttl: record.ttl })
                    .await
                    .map(drop);
                progress.inc(1);
                (record.key, result)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    progress.finish_and_clear();
    let failures: Vec<(String, Error)> = results
        .into_iter()
        .filter_map(|(key, result)| result.err().map(|err| (key, err)))
        .collect();
    eprintln!(
        "kvkit: imported {} keys, {} failed",
        total - failures.len(),
        failures.len()
    );
    report_failures(&failures)
}

/// A progress bar on stderr, drawn only when stderr is a terminal.
fn progress_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} keys ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style);
    }
    bar.set_message(what.to_owned());
    bar
}

/// Lists the first failures on stderr; the exit code is that of the first.
fn report_failures(failures: &[(String, Error)]) -> CliResult {
    const SHOWN: usize = 20;
    for (key, err) in failures.iter().take(SHOWN) {
        eprintln!("kvkit: failed: {key}: {err}");
    }
    if failures.len() > SHOWN {
        eprintln!("kvkit: ... and {} more failures", failures.len() - SHOWN);
    }
    match failures.first() {
        None => Ok(()),
        Some((_, err)) => Err(CliError::new(
            code_of(err.kind()),
            format!(
                "{} keys failed; run the command again to retry them",
                failures.len()
            ),
        )),
    }
}

/// The outcome of `copy`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    pub copied: usize,
    pub unchanged: usize,
    pub failed: usize,
}

/// `copy SRC DST DIR`: writes to `dst` every key below `dir` whose value differs from
/// `src`'s, `concurrency` writes at a time.
pub async fn copy<S: Backend, D: Backend>(
    src: &Kv<S>,
    dst: &Kv<D>,
    dir: &str,
    concurrency: usize,
    as_json: bool,
) -> CliResult {
    let listing = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    listing.set_message("listing the source and destination trees");
    listing.enable_steady_tick(Duration::from_millis(200));
    let (source, existing) = tokio::join!(src.list(dir), dst.list(dir));
    listing.finish_and_clear();
    let source = source?;
    let existing: HashMap<String, Bytes> = existing?
        .into_iter()
        .map(|pair| (pair.key, pair.value))
        .collect();
    let mut report = CopyReport::default();
    let mut todo = Vec::new();
    for pair in source {
        if existing.get(&pair.key) == Some(&pair.value) {
            report.unchanged += 1;
        } else {
            todo.push(pair);
        }
    }
    let progress = progress_bar(todo.len() as u64, "copying");
    let results: Vec<(String, kvkit::Result<()>)> = futures::stream::iter(todo)
        .map(|pair| {
            let progress = &progress;
            async move {
                let result = dst
                    .put(&pair.key, pair.value, PutOptions::default())
                    .await
                    .map(drop);
                progress.inc(1);
                (pair.key, result)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    progress.finish_and_clear();
    let mut failures = Vec::new();
    for (key, result) in results {
        match result {
            Ok(()) => report.copied += 1,
            Err(err) => failures.push((key, err)),
        }
    }
    report.failed = failures.len();
    eprintln!(
        "kvkit: copied {}, unchanged {}, failed {}",
        report.copied, report.unchanged, report.failed
    );
    if as_json {
        let failed_keys: Vec<Value> = failures
            .iter()
            .map(|(key, err)| json!({ "key": key, "error": err.to_string() }))
            .collect();
        let item = json!({
            "copied": report.copied,
            "unchanged": report.unchanged,
            "failed": report.failed,
            "failures": failed_keys,
        });
        crate::output::line(&mut std::io::stdout().lock(), &item.to_string())?;
    }
    report_failures(&failures)
}
