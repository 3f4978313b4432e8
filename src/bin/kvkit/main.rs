//! `kvkit`: one command-line tool for etcd, Consul, ZooKeeper and redb stores.
//!
//! Built with the cargo feature `cli`. Every command but `copy` talks to the store of
//! `--store URL`, `KVKIT_STORE` or `--config FILE`; the commands themselves are
//! generic over the backend (`Kv<B>`), only this entry point connects. Exit codes are
//! listed in `kvkit --help` (see [`exit::Code`]).

mod args;
mod commands;
mod exit;
mod output;
mod store;
mod supervise;
mod transfer;

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind as ClapErrorKind;

use crate::args::{Cli, Command};
use crate::commands::PutMode;
use crate::exit::{CliError, CliResult};
use crate::store::Use;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            return match err.kind() {
                ClapErrorKind::DisplayHelp | ClapErrorKind::DisplayVersion => {
                    let _ = err.print();
                    ExitCode::SUCCESS
                }
                ClapErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                | ClapErrorKind::MissingSubcommand => report(CliError::usage(
                    "missing a command: get, put, rm, ls, exists, watch, lock, elect, leader, \
                     export, import or copy (see `kvkit --help`)",
                )),
                _ => report(args::usage_error(&err)),
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return report(CliError::from(err)),
    };
    let outcome = runtime.block_on(run(cli));
    // Background tasks (keep-alives, watches) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match outcome {
        Ok(status) => ExitCode::from(u8::try_from(status).unwrap_or(u8::MAX)),
        Err(err) => report(err),
    }
}

/// Prints `kvkit: message` (unless silent) and returns the error's exit code.
fn report(err: CliError) -> ExitCode {
    if !err.message.is_empty() {
        eprintln!("kvkit: {}", err.message);
    }
    ExitCode::from(err.code as u8)
}

/// Runs one command; `Ok(status)` is the exit status.
async fn run(cli: Cli) -> CliResult<i32> {
    let result = dispatch(cli).await;
    match result {
        // A closed stdout (`kvkit ls | head`) ends the command quietly.
        Err(err) if err.broken_pipe => Ok(0),
        other => other,
    }
}

async fn dispatch(cli: Cli) -> CliResult<i32> {
    if let Command::Copy {
        src_url,
        dst_url,
        dir,
        concurrency,
        json,
    } = &cli.command
    {
        let source = store::parse_url(src_url)?;
        let destination = store::parse_url(dst_url)?;
        kvkit::Dir::new(dir)?;
        let src = store::open(source, Use::Data, "copy").await?;
        let dst = store::open(destination, Use::Scratch, "copy").await?;
        transfer::copy(&src, &dst, dir, usize::from(*concurrency), *json).await?;
        close(&src).await;
        close(&dst).await;
        return Ok(0);
    }
    let config = store::resolve(&cli.store)?;
    let (usage, name) = match &cli.command {
        Command::Get { .. } => (Use::Data, "get"),
        Command::Put(_) => (Use::Data, "put"),
        Command::Rm { .. } => (Use::Data, "rm"),
        Command::Ls { .. } => (Use::Data, "ls"),
        Command::Exists { .. } => (Use::Data, "exists"),
        Command::Watch { .. } => (Use::Watch, "watch"),
        Command::Lock(_) => (Use::Coordinate, "lock"),
        Command::Elect(_) => (Use::Coordinate, "elect"),
        Command::Leader { .. } => (Use::Watch, "leader"),
        Command::Export { .. } => (Use::Data, "export"),
        Command::Import { .. } => (Use::Scratch, "import"),
        Command::Copy { .. } => unreachable!("handled above"),
    };
    // Input that can be checked without the store is checked first.
    let mut put_value = None;
    let mut records = None;
    match &cli.command {
        Command::Put(put) => {
            kvkit::Key::new(&put.key)?;
            put_value = Some(commands::put_value(put.value.clone())?);
        }
        Command::Import { .. } => {
            records = Some(transfer::read_records(std::io::stdin().lock())?);
        }
        _ => {}
    }
    let kv = store::open(config, usage, name).await?;
    let result = match cli.command {
        Command::Get { key, json } => commands::get(&kv, &key, json).await.map(|()| 0),
        Command::Put(put) => {
            let mode = if put.create {
                PutMode::Create
            } else if let Some(index) = put.if_index {
                PutMode::IfIndex(index)
            } else {
                PutMode::Always
            };
            let value = put_value.unwrap_or_default();
            commands::put(&kv, &put.key, value, put.ttl, mode)
                .await
                .map(|()| 0)
        }
        Command::Rm {
            key,
            recursive,
            if_index,
        } => commands::rm(&kv, &key, recursive, if_index)
            .await
            .map(|()| 0),
        Command::Ls { dir, long, json } => commands::ls(&kv, &dir, long, json).await.map(|()| 0),
        Command::Exists { key, json } => commands::exists(&kv, &key, json).await.map(|()| 0),
        Command::Watch {
            key,
            recursive,
            json,
        } => commands::watch(&kv, &key, recursive, json)
            .await
            .map(|()| 0),
        Command::Lock(lock) => {
            supervise::lock(&kv, &lock.key, &lock.command, lock.try_only, &lock.run).await
        }
        Command::Elect(elect) => {
            supervise::elect(&kv, &elect.name, &elect.id, &elect.command, &elect.run).await
        }
        Command::Leader { name, json } => commands::leader(&kv, &name, json).await.map(|()| 0),
        Command::Export { dir } => transfer::export(&kv, &dir).await.map(|()| 0),
        Command::Import {
            dry_run,
            concurrency,
        } => transfer::import(
            &kv,
            records.unwrap_or_default(),
            dry_run,
            usize::from(concurrency),
        )
        .await
        .map(|()| 0),
        Command::Copy { .. } => unreachable!("handled above"),
    };
    close(&kv).await;
    result
}

/// Closes a store, bounded: a failing close must not hang or change the outcome.
async fn close<B: kvkit::Backend>(kv: &kvkit::Kv<B>) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), kv.close()).await;
}
