//! The command line: clap definitions, with the help text each command shows.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::exit::{CliError, Code};

/// Help shown after the option list of `kvkit --help`.
const AFTER_HELP: &str = "\
Store URLs:
  redb:///abs/path/data.redb, redb://rel/path.redb   embedded file store
  etcd://host1:2379,host2:2379/prefix                etcd (etcd+https:// for TLS)
  zk://host1:2181,host2:2181/root                    ZooKeeper (zookeeper:// too)
  consul://host:8500/prefix                          Consul (consul+https:// for TLS)
  memory://                                          in-process, empty at start: only for
                                                     `import` (a dry check) and as the
                                                     destination of `copy`
Options go in the query string (?request_timeout=2s&lock_ttl=15s). Secrets can come from
KVKIT_ETCD_USERNAME / KVKIT_ETCD_PASSWORD, KVKIT_CONSUL_TOKEN (or CONSUL_HTTP_TOKEN) and
KVKIT_ZK_DIGEST (user:password) instead of the URL.

Exit status:
  0  success (`exists`: the key exists)
  1  not found, or a condition failed (--create, --if-index; `exists`: no such key)
  2  usage: bad arguments, URL, duration, key or input, or a command the store cannot serve
  3  the store is unavailable (not reachable, timed out); retrying later may work
  4  permission denied (check credentials)
  5  any other error
  6  `lock` / `elect`: the lock or the leadership was lost and the command was stopped
  130 `lock` / `elect`: interrupted (Ctrl-C, SIGTERM) while waiting, before COMMAND ran
  Otherwise `lock` and `elect` exit with the command's own status (128+N when the
  command was killed by signal N).

Examples:
  kvkit --store etcd://127.0.0.1:2379 put app/config '{\"debug\":true}'
  kvkit --store etcd://127.0.0.1:2379 get app/config
  KVKIT_STORE=zk://127.0.0.1:2181 kvkit ls -l app
  kvkit --store consul://127.0.0.1:8500 lock jobs/nightly -- ./nightly.sh
  kvkit copy zk://old:2181 etcd://new:2379 app";

/// One command-line tool for etcd, Consul, ZooKeeper and redb stores.
#[derive(Debug, Parser)]
#[command(
    name = "kvkit",
    version,
    about = "One command-line tool for etcd, Consul, ZooKeeper and redb stores",
    long_about = "One command-line tool for etcd, Consul, ZooKeeper and redb stores: read, \
                  write, watch, lock, elect, export/import, and copy a tree from one store \
                  to another. Keys are '/'-separated paths; directories are key prefixes.",
    after_long_help = AFTER_HELP,
    after_help = "See `kvkit --help` for store URLs, exit codes and examples.",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub store: StoreArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Where the store is.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The store's URL (see `kvkit --help` for the forms). Without --store and --config,
    /// the URL in the environment variable KVKIT_STORE.
    #[arg(long, short = 's', global = true, value_name = "URL")]
    pub store: Option<String>,

    /// A store configuration file (TOML, or JSON when it ends in .json), in kvkit's
    /// StoreConfig format: `backend = "etcd"`, `endpoints = [...]`, ... Either at the
    /// top level or under a `[store]` table. Takes precedence over KVKIT_STORE.
    #[arg(
        long,
        short = 'c',
        global = true,
        value_name = "FILE",
        conflicts_with = "store"
    )]
    pub config: Option<PathBuf>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the raw value of KEY to stdout, bytes unchanged (no newline added).
    Get {
        /// The key.
        key: String,
        /// Print {"key","value","encoding","index"} as JSON instead (value as UTF-8 text,
        /// or base64 when it is not UTF-8).
        #[arg(long)]
        json: bool,
    },
    /// Write KEY; prints the new index (for a later --if-index).
    Put(PutArgs),
    /// Delete KEY (or, with -r, KEY and everything below it).
    #[command(alias = "delete")]
    Rm {
        /// The key.
        key: String,
        /// Delete KEY and every key below it; succeeds when there is nothing to delete.
        #[arg(short = 'r', long, conflicts_with = "if_index")]
        recursive: bool,
        /// Delete only if the key's index is still N (exit 1 otherwise).
        #[arg(long, value_name = "N")]
        if_index: Option<u64>,
    },
    /// List the keys below DIR (default: the whole store), recursively, sorted.
    #[command(alias = "list")]
    Ls {
        /// The directory (a key prefix); empty for the whole store.
        #[arg(default_value = "")]
        dir: String,
        /// Also show each key's index, size in bytes and a value preview.
        #[arg(short = 'l', long)]
        long: bool,
        /// Print a JSON array of {"key","index","size","value","encoding"} instead.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 when KEY exists, 1 when it does not; prints true or false.
    Exists {
        /// The key.
        key: String,
        /// Print {"key","exists"} as JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Print the current state of KEY, then one line per change, until interrupted.
    ///
    /// Lines: `put KEY index=N VALUE-PREVIEW`, `delete KEY`, and `absent KEY` when the key
    /// does not exist at the start. With -r, the keys below the directory at the start
    /// (one line each), then one line per changed key. Ctrl-C ends it with status 0.
    Watch {
        /// The key (or, with -r, the directory).
        key: String,
        /// Watch every key below the directory KEY (one line per changed key).
        #[arg(short = 'r', long)]
        recursive: bool,
        /// One JSON object per line: {"event":"put"|"delete"|"absent","key","value",
        /// "encoding","index"}.
        #[arg(long)]
        json: bool,
    },
    /// Take the lock KEY, run COMMAND while holding it, release it when COMMAND exits.
    ///
    /// Exits with COMMAND's status. If the lock is lost while COMMAND runs (its lease or
    /// session expired, or someone deleted or overwrote the lock key), COMMAND gets
    /// SIGTERM, then SIGKILL after the grace period, and kvkit exits with status 6.
    /// Ctrl-C or SIGTERM to kvkit is passed on to COMMAND the same way.
    Lock(LockArgs),
    /// Run COMMAND only while ID leads the election NAME; stop it when leadership is lost.
    ///
    /// Waits until ID is elected, runs COMMAND, and resigns when COMMAND exits (exiting
    /// with its status). If leadership is lost while COMMAND runs, COMMAND gets SIGTERM,
    /// then SIGKILL after the grace period, and kvkit exits with status 6.
    Elect(ElectArgs),
    /// Print the ID leading the election NAME (exit 1 when there is no leader).
    Leader {
        /// The election's name (its key).
        name: String,
        /// Print {"name","leader"} as JSON instead (leader null when there is none).
        #[arg(long)]
        json: bool,
    },
    /// Write the keys below DIR to stdout as JSON lines.
    ///
    /// One object per key: {"key":..., "value":..., "encoding":"utf8"|"base64",
    /// "index":N}. kvkit's stores do not report the remaining time to live of a key, so
    /// no "ttl" is written; `import` honours one ("ttl":"30s" or seconds) when present.
    Export {
        /// The directory (a key prefix); empty for the whole store.
        #[arg(default_value = "")]
        dir: String,
    },
    /// Read JSON lines (the `export` format) from stdin and write every key.
    ///
    /// The whole input is checked before anything is written: a bad line is an error
    /// naming its line number, and nothing is written. "index" is ignored.
    Import {
        /// Check the input and print what would be written, without writing.
        #[arg(long)]
        dry_run: bool,
        /// Writes in flight at once.
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
        concurrency: u16,
    },
    /// Copy every key below DIR from the store SRC_URL to the store DST_URL.
    ///
    /// Lists both trees, then writes only the keys whose value differs in DST (so a
    /// second run, or a run after an interruption, copies only what is missing or
    /// changed). Keys in DST that are not in SRC are left alone. Shows a progress bar on
    /// stderr when it is a terminal, and ends with a report of copied / unchanged /
    /// failed keys (exit 0 only when none failed). Ignores --store.
    Copy {
        /// The source store's URL.
        src_url: String,
        /// The destination store's URL.
        dst_url: String,
        /// The directory to copy (a key prefix); empty for the whole store.
        #[arg(default_value = "")]
        dir: String,
        /// Writes in flight at once.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
        concurrency: u16,
        /// Print the final report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// `put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// The key.
    pub key: String,
    /// The value; read from stdin (bytes unchanged) when absent.
    pub value: Option<String>,
    /// Delete the key after this long ("30s", "1500ms", "1m30s"); rounded up to what
    /// the store supports.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub ttl: Option<Duration>,
    /// Create only: fail with exit 1 when the key exists.
    #[arg(long, conflicts_with = "if_index")]
    pub create: bool,
    /// Write only if the key's index is still N (compare-and-swap; exit 1 otherwise).
    #[arg(long, value_name = "N")]
    pub if_index: Option<u64>,
}

/// `lock`.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// The lock's key.
    pub key: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
    /// Give up at once (exit 1) when someone else holds the lock, instead of waiting.
    #[arg(long = "try")]
    pub try_only: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

/// `elect`.
#[derive(Debug, Args)]
pub struct ElectArgs {
    /// The election's name (its key).
    pub name: String,
    /// This candidate's ID, shown by `kvkit leader NAME`.
    pub id: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// How a command runs under a lock or leadership.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// How long the lock outlives kvkit if kvkit dies without releasing it (default:
    /// the store's lock TTL).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub ttl: Option<Duration>,
    /// After SIGTERM, how long COMMAND has to exit before it gets SIGKILL.
    #[arg(long, value_parser = parse_duration, default_value = "10s", value_name = "DURATION")]
    pub grace: Duration,
}

/// Parses a duration argument ("30s", "1500ms", "1m30s"; a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    kvkit::config::parse_duration(text).map_err(|e| match e {
        kvkit::Error::Config { reason } => reason,
        other => other.to_string(),
    })
}

/// Turns clap's multi-line message into one line for `kvkit: ...`.
pub fn usage_error(err: &clap::Error) -> CliError {
    let rendered = err.render().to_string();
    // The message is the text before clap's blank line and "Usage:" block; a missing
    // argument's name is on the second line, so the lines are joined.
    let message: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .skip_while(|line| line.is_empty())
        .take_while(|line| !line.is_empty() && !line.starts_with("Usage:"))
        .collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    let message = if message.is_empty() {
        "invalid arguments"
    } else {
        message
    };
    CliError::new(Code::Usage, format!("{message} (see `kvkit --help`)"))
}
