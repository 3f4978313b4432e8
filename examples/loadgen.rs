//! A load generator for any kvkit backend. It starts nothing itself: point it at
//! running servers (or a redb file).
//!
//! ```text
//! cargo run --release --example loadgen --all-features -- \
//!     --backend memory|redb|etcd|zookeeper|consul --endpoints ADDR[,ADDR] \
//!     --ops put,get,cas,list --n 2000 --concurrency 1,16 --value-size 100 --list-size 100
//! ```
//!
//! Prints one JSON line per operation and concurrency:
//! `{"backend","op","concurrency","n","secs","ops_per_s","p50_us","p99_us"}`.
//! `--raw` (etcd only) sends the same requests through the raw `etcd_client::Client`
//! (reported as backend `etcd-raw`), for the wrapper-cost comparison.
//! `--no-multiread` (ZooKeeper only) turns off the `multiRead` bulk reads of `list`
//! (reported as backend `zookeeper-pipelined`).
//! For redb, `--endpoints` is the database file (default: a temporary one). For etcd
//! (`host:port` client URLs), ZooKeeper (`host:port` servers) and Consul (`host:port`
//! agents) `--endpoints` is required; each is compiled in only with its cargo feature.
//! Keys are written under `loadgen/` below the prefix/root `kvkit-loadgen`, and that
//! directory is deleted at the end.

use std::time::{Duration, Instant};

use kvkit::{Backend, Kv, PutOptions};

#[derive(Debug, Clone)]
struct Args {
    backend: String,
    endpoints: Vec<String>,
    ops: Vec<String>,
    n: usize,
    concurrency: Vec<usize>,
    value_size: usize,
    list_size: usize,
    /// etcd only: send the same requests through the raw `etcd_client::Client`.
    raw: bool,
    /// ZooKeeper only: list with pipelined single reads instead of `multiRead`.
    no_multiread: bool,
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "loadgen: {problem}\nusage: loadgen --backend memory|redb|etcd|zookeeper|consul [--endpoints A,B] \
         [--ops put,get,cas,list] [--n 2000] [--concurrency 1,16] [--value-size 100] [--list-size 100] [--raw (etcd: raw etcd-client)] [--no-multiread (zookeeper)]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        backend: "memory".into(),
        endpoints: Vec::new(),
        ops: vec!["put".into(), "get".into(), "cas".into(), "list".into()],
        n: 2000,
        concurrency: vec![1, 16],
        value_size: 100,
        list_size: 100,
        raw: false,
        no_multiread: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        let list = |v: String| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let number = |v: String| {
            v.parse::<usize>()
                .unwrap_or_else(|_| usage(&format!("not a number: {v}")))
        };
        match flag.as_str() {
            "--backend" => args.backend = value(),
            "--endpoints" => args.endpoints = list(value()),
            "--ops" => args.ops = list(value()),
            "--n" => args.n = number(value()),
            "--concurrency" => args.concurrency = list(value()).into_iter().map(number).collect(),
            "--value-size" => args.value_size = number(value()),
            "--list-size" => args.list_size = number(value()),
            "--raw" => args.raw = true,
            "--no-multiread" => args.no_multiread = true,
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown flag {other}")),
        }
    }
    if args.n == 0 || args.concurrency.contains(&0) {
        usage("--n and --concurrency must be positive");
    }
    args
}

/// The `--endpoints` of a network backend (it starts no server, so they are required).
#[cfg(any(feature = "etcd", feature = "zookeeper", feature = "consul"))]
fn required_endpoints(args: &Args) -> Vec<String> {
    if args.endpoints.is_empty() {
        usage(&format!(
            "--backend {} needs --endpoints of running servers",
            args.backend
        ));
    }
    args.endpoints.clone()
}

/// Runs `n` calls of `op` spread over `concurrency` tasks; returns per-call latencies.
async fn drive<B: Backend>(
    kv: &Kv<B>,
    op: &str,
    n: usize,
    concurrency: usize,
    args: &Args,
) -> kvkit::Result<(Duration, Vec<Duration>)> {
    let value = vec![b'v'; args.value_size];
    let list_size = args.list_size;
    spread(n, concurrency, |task, count| {
        let kv = kv.clone();
        let op = op.to_owned();
        let value = value.clone();
        async move {
            let mut latencies = Vec::with_capacity(count);
            let key = format!("loadgen/keys/{task}");
            let mut current = kv.put(&key, value.clone(), PutOptions::default()).await?;
            for _ in 0..count {
                let t = Instant::now();
                match op.as_str() {
                    "put" => {
                        kv.put(&key, value.clone(), PutOptions::default()).await?;
                    }
                    "get" => {
                        kv.get(&key).await?;
                    }
                    "cas" => {
                        current = kv
                            .atomic_put(&key, value.clone(), Some(&current), PutOptions::default())
                            .await?;
                    }
                    "list" => {
                        let listed = kv.list("loadgen/list").await?.len();
                        if listed != list_size {
                            let wrong = format!("listed {listed} keys, not {list_size}");
                            return Err(kvkit::Error::backend("loadgen", wrong));
                        }
                    }
                    other => usage(&format!("unknown op {other}")),
                }
                latencies.push(t.elapsed());
            }
            Ok(latencies)
        }
    })
    .await
}

/// Runs `n` calls spread over `concurrency` tasks: `task(index, count)` makes the
/// future of one task, which makes `count` calls and returns their latencies.
async fn spread<F, Fut>(
    n: usize,
    concurrency: usize,
    task: F,
) -> kvkit::Result<(Duration, Vec<Duration>)>
where
    F: Fn(usize, usize) -> Fut,
    Fut: std::future::Future<Output = kvkit::Result<Vec<Duration>>> + Send + 'static,
{
    let per_task = n.div_ceil(concurrency);
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|index| {
            tokio::spawn(task(
                index,
                per_task.min(n.saturating_sub(index * per_task)),
            ))
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    for task in tasks {
        all.extend(
            task.await
                .map_err(|e| kvkit::Error::backend("loadgen", e))??,
        );
    }
    Ok((start.elapsed(), all))
}

fn percentile(sorted: &[Duration], p: f64) -> u128 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank].as_micros()
}

/// Prints the JSON line of one operation at one concurrency.
fn report(
    backend: &str,
    op: &str,
    concurrency: usize,
    elapsed: Duration,
    mut latencies: Vec<Duration>,
) {
    latencies.sort_unstable();
    let secs = elapsed.as_secs_f64();
    println!(
        "{{\"backend\":\"{backend}\",\"op\":\"{op}\",\"concurrency\":{concurrency},\"n\":{},\"secs\":{secs:.4},\"ops_per_s\":{:.1},\"p50_us\":{},\"p99_us\":{}}}",
        latencies.len(),
        latencies.len() as f64 / secs,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
    );
}

/// Writes the `--list-size` keys that `list` reads.
async fn fill_list<B: Backend>(kv: &Kv<B>, args: &Args) -> kvkit::Result<()> {
    if args.ops.iter().any(|op| op == "list") {
        kv.delete_tree("loadgen/list").await?;
        for i in 0..args.list_size {
            kv.put(
                format!("loadgen/list/{i:06}"),
                vec![b'l'; args.value_size],
                PutOptions::default(),
            )
            .await?;
        }
    }
    Ok(())
}

async fn run<B: Backend>(kv: Kv<B>, args: &Args) -> kvkit::Result<()> {
    fill_list(&kv, args).await?;
    for op in &args.ops {
        for &concurrency in &args.concurrency {
            let (elapsed, latencies) = drive(&kv, op, args.n, concurrency, args).await?;
            let backend = if args.no_multiread {
                format!("{}-pipelined", args.backend)
            } else {
                args.backend.clone()
            };
            report(&backend, op, concurrency, elapsed, latencies);
        }
    }
    kv.delete_tree("loadgen").await?;
    kv.close().await
}

/// `--backend etcd --raw`: the requests `Kv<Etcd>` sends (same keys, same options),
/// through the backend's own `etcd_client::Client`, to show the wrapper's cost.
#[cfg(feature = "etcd")]
mod raw_etcd {
    use super::*;
    use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};

    /// The etcd key of a kvkit key under the `kvkit-loadgen/` prefix.
    fn full(key: &str) -> String {
        format!("kvkit-loadgen/{key}")
    }

    fn failed(e: etcd_client::Error) -> kvkit::Error {
        kvkit::Error::backend("loadgen", e)
    }

    async fn drive(
        client: &Client,
        op: &str,
        n: usize,
        concurrency: usize,
        args: &Args,
    ) -> kvkit::Result<(Duration, Vec<Duration>)> {
        let value = vec![b'v'; args.value_size];
        spread(n, concurrency, |task, count| {
            let mut client = client.clone();
            let op = op.to_owned();
            let value = value.clone();
            async move {
                let mut latencies = Vec::with_capacity(count);
                let key = full(&format!("loadgen/keys/{task}"));
                let put = client.put(key.clone(), value.clone(), None).await;
                let mut rev = put.map_err(failed)?.header().map_or(0, |h| h.revision());
                for _ in 0..count {
                    let t = Instant::now();
                    match op.as_str() {
                        "put" => {
                            client
                                .put(key.clone(), value.clone(), None)
                                .await
                                .map_err(failed)?;
                        }
                        "get" => {
                            client.get(key.clone(), None).await.map_err(failed)?;
                        }
                        "cas" => {
                            let txn = Txn::new()
                                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
                                .and_then([TxnOp::put(key.clone(), value.clone(), None)])
                                .or_else([TxnOp::get(
                                    key.clone(),
                                    Some(GetOptions::new().with_keys_only()),
                                )]);
                            let resp = client.txn(txn).await.map_err(failed)?;
                            if !resp.succeeded() {
                                return Err(kvkit::Error::backend("loadgen", "raw CAS conflict"));
                            }
                            rev = resp.header().map_or(0, |h| h.revision());
                        }
                        "list" => {
                            let options = GetOptions::new().with_range(full("loadgen/list0"));
                            client
                                .get(full("loadgen/list/"), Some(options))
                                .await
                                .map_err(failed)?;
                        }
                        other => usage(&format!("unknown op {other}")),
                    }
                    latencies.push(t.elapsed());
                }
                Ok(latencies)
            }
        })
        .await
    }

    pub async fn run(kv: Kv<kvkit::etcd::Etcd>, args: &Args) -> kvkit::Result<()> {
        fill_list(&kv, args).await?;
        let client = kv.backend().client().clone();
        for op in &args.ops {
            for &concurrency in &args.concurrency {
                let (elapsed, latencies) = drive(&client, op, args.n, concurrency, args).await?;
                report("etcd-raw", op, concurrency, elapsed, latencies);
            }
        }
        kv.delete_tree("loadgen").await?;
        kv.close().await
    }
}

#[tokio::main]
async fn main() -> kvkit::Result<()> {
    let args = parse_args();
    match args.backend.as_str() {
        "memory" => run(Kv::new(kvkit::memory::Memory::new()), &args).await,
        #[cfg(feature = "redb")]
        "redb" => {
            let temp = tempfile::tempdir().map_err(|e| kvkit::Error::backend("loadgen", e))?;
            let path = args
                .endpoints
                .first()
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| temp.path().join("loadgen.redb"));
            run(Kv::new(kvkit::redb::Redb::open(path)?), &args).await
        }
        #[cfg(feature = "etcd")]
        "etcd" => {
            let endpoints = required_endpoints(&args);
            let config = kvkit::etcd::EtcdConfig::new(endpoints).prefix("kvkit-loadgen");
            let kv = Kv::new(kvkit::etcd::Etcd::connect(config).await?);
            if args.raw {
                raw_etcd::run(kv, &args).await
            } else {
                run(kv, &args).await
            }
        }
        #[cfg(feature = "zookeeper")]
        "zookeeper" => {
            let connect = required_endpoints(&args).join(",");
            let config = kvkit::zookeeper::ZookeeperConfig::new(connect)
                .prefix("/kvkit-loadgen")
                .multi_read(!args.no_multiread);
            run(
                Kv::new(kvkit::zookeeper::Zookeeper::connect(config).await?),
                &args,
            )
            .await
        }
        #[cfg(feature = "consul")]
        "consul" => {
            let mut config = kvkit::consul::ConsulConfig::default().prefix("kvkit-loadgen");
            config.endpoints = required_endpoints(&args);
            run(
                Kv::new(kvkit::consul::Consul::connect(config).await?),
                &args,
            )
            .await
        }
        other => usage(&format!(
            "backend {other} is unknown or not compiled in (enable its cargo feature)"
        )),
    }
}
