//! Operation benchmarks for the network backends: etcd and ZooKeeper (real servers
//! started by the bench through `kvkit::testing`, on 127.0.0.1) and the Consul
//! emulator (in process). For etcd each request is also sent through the raw
//! `etcd_client::Client` (the same gRPC channel), side by side with `Kv<Etcd>`, and a
//! paired run (the two calls alternating, so both see the same machine load) prints
//! the median latency ratio `Kv / raw` per operation.
//!
//! Run with `cargo bench --bench backends --all-features` (about 2 minutes on 2 cores).
//! Measurement times are short on purpose; the numbers are for orientation and for
//! spotting regressions, never asserted.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use kvkit::consul::{Consul, ConsulConfig};
use kvkit::etcd::{Etcd, EtcdConfig};
use kvkit::testing::consul_emulator::ConsulEmulator;
use kvkit::testing::etcd_server::EtcdServer;
use kvkit::testing::zookeeper_server::ZkServer;
use kvkit::zookeeper::{Zookeeper, ZookeeperConfig};
use kvkit::{Backend, Kv, PutOptions};
use tokio::runtime::Runtime;

fn short(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(2));
    group.warm_up_time(Duration::from_millis(300));
}

/// The shared `Kv` operations (`common::kv_ops`) with short measurement times.
fn bench_kv<B: Backend>(c: &mut Criterion, name: &str, rt: &Runtime, kv: &Kv<B>) {
    let mut group = c.benchmark_group(name);
    short(&mut group);
    common::kv_ops(&mut group, rt, kv);
    group.finish();
    rt.block_on(kv.delete_tree("bench")).unwrap();
}

/// The same requests through `Kv<Etcd>` and through the raw `etcd_client::Client`
/// (the backend's own client, so the same channel and options; prefix empty, so the
/// same etcd keys).
fn bench_etcd_side_by_side(c: &mut Criterion, rt: &Runtime, kv: &Kv<Etcd>) {
    let mut group = c.benchmark_group("etcd-vs-raw");
    short(&mut group);
    let client = kv.backend().client().clone();
    let value = Bytes::from(vec![b'x'; 100]);
    rt.block_on(kv.put("raw/key", value.clone(), PutOptions::default()))
        .unwrap();
    rt.block_on(common::fill(kv, "raw/list", 100));

    group.bench_function("get/kv", |b| {
        b.to_async(rt)
            .iter(|| async { black_box(kv.get("raw/key").await.unwrap()) })
    });
    group.bench_function("get/raw", |b| {
        b.to_async(rt).iter(|| {
            let mut client = client.clone();
            async move { black_box(client.get("raw/key", None).await.unwrap()) }
        })
    });
    group.bench_function("put/kv", |b| {
        b.to_async(rt).iter(|| async {
            black_box(
                kv.put("raw/key", value.clone(), PutOptions::default())
                    .await
                    .unwrap(),
            )
        })
    });
    group.bench_function("put/raw", |b| {
        b.to_async(rt).iter(|| {
            let mut client = client.clone();
            let value = value.to_vec();
            async move { black_box(client.put("raw/key", value, None).await.unwrap()) }
        })
    });
    group.bench_function("list100/kv", |b| {
        b.to_async(rt)
            .iter(|| async { black_box(kv.list("raw/list").await.unwrap()) })
    });
    group.bench_function("list100/raw", |b| {
        b.to_async(rt).iter(|| {
            let mut client = client.clone();
            async move { black_box(raw_list(&mut client).await) }
        })
    });
    group.bench_function("cas/kv", |b| {
        b.to_async(rt)
            .iter_custom(|iters| common::chained_atomic_puts(kv, "raw/key", &value, iters))
    });
    group.bench_function("cas/raw", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let mut client = client.clone();
            let value = value.to_vec();
            async move {
                let mut rev = kv.get("raw/key").await.unwrap().last_index as i64;
                let start = Instant::now();
                for _ in 0..iters {
                    rev = raw_cas(&mut client, rev, &value).await;
                }
                start.elapsed()
            }
        })
    });
    group.finish();
    rt.block_on(paired_ratios(kv));
    rt.block_on(kv.delete_tree("raw")).unwrap();
}

/// A prefix Range over `raw/list/`, as `Kv::list("raw/list")` sends it.
async fn raw_list(client: &mut etcd_client::Client) -> etcd_client::GetResponse {
    let options = GetOptions::new().with_range("raw/list0");
    client.get("raw/list/", Some(options)).await.unwrap()
}

/// A CAS Txn as kvkit sends it (compare mod_revision, put, else read the key); returns
/// the new revision.
async fn raw_cas(client: &mut etcd_client::Client, rev: i64, value: &[u8]) -> i64 {
    let txn = Txn::new()
        .when([Compare::mod_revision("raw/key", CompareOp::Equal, rev)])
        .and_then([TxnOp::put("raw/key", value.to_vec(), None)])
        .or_else([TxnOp::get(
            "raw/key",
            Some(GetOptions::new().with_keys_only()),
        )]);
    let resp = client.txn(txn).await.unwrap();
    assert!(resp.succeeded(), "raw CAS conflict");
    resp.header().expect("a response header").revision()
}

/// Alternates a `Kv` call and the raw call `PAIRS` times per operation, timing each,
/// and prints the medians and their ratio: both sides see the same load, which matters
/// on a shared 2-core machine.
async fn paired_ratios(kv: &Kv<Etcd>) {
    const PAIRS: usize = 400;
    let mut client = kv.backend().client().clone();
    let value = Bytes::from(vec![b'x'; 100]);
    for op in ["get", "put", "list100", "cas"] {
        let mut kv_times = Vec::with_capacity(PAIRS);
        let mut raw_times = Vec::with_capacity(PAIRS);
        let mut current = kv
            .put("raw/key", value.clone(), PutOptions::default())
            .await
            .unwrap();
        for i in 0..PAIRS {
            // Alternate which side goes first, so neither always follows the other.
            for side in [i % 2, 1 - i % 2] {
                let start = Instant::now();
                match (op, side) {
                    ("get", 0) => {
                        black_box(kv.get("raw/key").await.unwrap());
                    }
                    ("get", _) => {
                        black_box(client.get("raw/key", None).await.unwrap());
                    }
                    ("put", 0) => {
                        current = kv
                            .put("raw/key", value.clone(), PutOptions::default())
                            .await
                            .unwrap()
                    }
                    ("put", _) => {
                        let resp = client.put("raw/key", value.to_vec(), None).await.unwrap();
                        current.last_index = resp.header().unwrap().revision() as u64;
                    }
                    ("list100", 0) => {
                        black_box(kv.list("raw/list").await.unwrap());
                    }
                    ("list100", _) => {
                        black_box(raw_list(&mut client).await);
                    }
                    ("cas", 0) => {
                        current = kv
                            .atomic_put(
                                "raw/key",
                                value.clone(),
                                Some(&current),
                                PutOptions::default(),
                            )
                            .await
                            .unwrap()
                    }
                    _ => {
                        let rev = raw_cas(&mut client, current.last_index as i64, &value).await;
                        current.last_index = rev as u64;
                    }
                }
                let elapsed = start.elapsed();
                if side == 0 {
                    kv_times.push(elapsed);
                } else {
                    raw_times.push(elapsed);
                }
            }
        }
        kv_times.sort_unstable();
        raw_times.sort_unstable();
        let (k, r) = (kv_times[PAIRS / 2], raw_times[PAIRS / 2]);
        let mean = |t: &[Duration]| t.iter().sum::<Duration>() / t.len() as u32;
        println!(
            "etcd paired {op:>8} x{PAIRS}: Kv median {k:?} (mean {:?}), raw median {r:?} \
             (mean {:?}), median ratio {:.3}",
            mean(&kv_times),
            mean(&raw_times),
            k.as_secs_f64() / r.as_secs_f64()
        );
    }
}

fn etcd(c: &mut Criterion) {
    let rt = common::runtime();
    let Some(server) = rt.block_on(EtcdServer::start()) else {
        eprintln!("etcd is not installed: skipping the etcd benchmarks");
        return;
    };
    let kv = Kv::new(
        rt.block_on(Etcd::connect(EtcdConfig::new([server.endpoint()])))
            .unwrap(),
    );
    bench_kv(c, "etcd", &rt, &kv);
    bench_etcd_side_by_side(c, &rt, &kv);
    rt.block_on(kv.close()).unwrap();
    drop(server);
}

fn zookeeper(c: &mut Criterion) {
    let rt = common::runtime();
    let Some(server) = ZkServer::start() else {
        eprintln!("ZooKeeper is not installed: skipping the ZooKeeper benchmarks");
        return;
    };
    let config = ZookeeperConfig::new(server.connect_string()).prefix("/kvkit-bench");
    let kv = Kv::new(rt.block_on(Zookeeper::connect(config)).unwrap());
    bench_kv(c, "zookeeper", &rt, &kv);
    rt.block_on(kv.close()).unwrap();
    drop(server);
}

fn consul(c: &mut Criterion) {
    let rt = common::runtime();
    let emulator = rt.block_on(ConsulEmulator::start_default()).unwrap();
    let kv = Kv::new(
        rt.block_on(Consul::connect(ConsulConfig::new(emulator.url())))
            .unwrap(),
    );
    bench_kv(c, "consul-emulator", &rt, &kv);
    rt.block_on(kv.close()).unwrap();
    emulator.shutdown();
}

criterion_group!(benches, etcd, zookeeper, consul);
criterion_main!(benches);
