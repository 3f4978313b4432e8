//! Operation benchmarks for the in-process backends, with each operation measured
//! twice: through `Kv<B>` (the shared set in `common`) and directly on the backend's
//! primitives, so the wrapper's cost is visible side by side. Run with
//! `cargo bench --bench ops`.
//!
//! `any-vs-memory` measures `Kv<AnyBackend>` over memory beside `Kv<Memory>` (the
//! enum dispatch of runtime selection): criterion IDs `get/any`, `get/memory`, ... and
//! a paired run printed as `any paired ...` (`cargo bench --bench ops -- any`).

mod common;

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use kvkit::memory::Memory;
use kvkit::redb::Redb;
use kvkit::{AnyBackend, Backend, Dir, Key, Kv, PutOptions};
use tokio::runtime::Runtime;

use common::{KEY, LIST_SIZES};

fn bench_backend<B: Backend>(c: &mut Criterion, name: &str, rt: &Runtime, kv: Kv<B>) {
    let mut group = c.benchmark_group(name);
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_millis(500));
    common::kv_ops(&mut group, rt, &kv);

    let value = Bytes::from(vec![b'x'; 100]);
    let key = Key::new(KEY).unwrap();
    let options = PutOptions::default();
    group.bench_function("get/primitive", |b| {
        b.to_async(rt)
            .iter(|| async { black_box(kv.backend().get(&key).await.unwrap()) })
    });
    // What a caller of the primitives pays too: building the validated key per call.
    group.bench_function("get/primitive_with_key", |b| {
        b.to_async(rt).iter(|| async {
            let key = Key::new(black_box(KEY)).unwrap();
            black_box(kv.backend().get(&key).await.unwrap())
        })
    });
    group.bench_function("put/primitive", |b| {
        b.to_async(rt).iter(|| async {
            black_box(
                kv.backend()
                    .put(&key, value.clone(), &options)
                    .await
                    .unwrap(),
            )
        })
    });
    group.bench_function("put/primitive_with_key", |b| {
        b.to_async(rt).iter(|| async {
            let key = Key::new(black_box(KEY)).unwrap();
            black_box(
                kv.backend()
                    .put(&key, value.clone(), &options)
                    .await
                    .unwrap(),
            )
        })
    });
    for n in LIST_SIZES {
        let dir = Dir::new(&format!("bench/list{n}")).unwrap();
        group.bench_with_input(BenchmarkId::new("list/primitive", n), &dir, |b, dir| {
            b.to_async(rt)
                .iter(|| async { black_box(kv.backend().list(dir).await.unwrap()) })
        });
    }
    group.finish();
}

fn memory(c: &mut Criterion) {
    let rt = common::runtime();
    bench_backend(c, "memory", &rt, Kv::new(Memory::new()));
}

fn redb(c: &mut Criterion) {
    let rt = common::runtime();
    let dir = tempfile::tempdir().unwrap();
    let kv = Kv::new(Redb::open(dir.path().join("bench.redb")).unwrap());
    bench_backend(c, "redb", &rt, kv);
}

/// One operation through `Kv<B>`: the bodies the `any` and `memory` sides share.
async fn op<B: Backend>(kv: &Kv<B>, op: &str, value: &Bytes) {
    match op {
        "get" => {
            black_box(kv.get(KEY).await.unwrap());
        }
        "put" => {
            black_box(
                kv.put(KEY, value.clone(), PutOptions::default())
                    .await
                    .unwrap(),
            );
        }
        _ => {
            black_box(kv.list("bench/list100").await.unwrap());
        }
    }
}

/// Times `batch` calls of `name` on `kv`.
async fn timed<B: Backend>(kv: &Kv<B>, name: &str, value: &Bytes, batch: u32) -> Duration {
    let start = std::time::Instant::now();
    for _ in 0..batch {
        op(kv, name, value).await;
    }
    start.elapsed()
}

/// `Kv<AnyBackend>` over memory beside `Kv<Memory>`: criterion benchmarks, then a
/// paired measurement (batches alternating between the two, alternating which goes
/// first; the ratio of the medians), printed as `any paired <op>: <ratio>`.
fn any_vs_memory(c: &mut Criterion) {
    let rt = common::runtime();
    let any = Kv::new(AnyBackend::from(Memory::new()));
    let memory = Kv::new(Memory::new());
    let value = Bytes::from(vec![b'x'; 100]);
    rt.block_on(async {
        common::fill(&any, "bench/list100", 100).await;
        common::fill(&memory, "bench/list100", 100).await;
        any.put(KEY, value.clone(), PutOptions::default())
            .await
            .unwrap();
        memory
            .put(KEY, value.clone(), PutOptions::default())
            .await
            .unwrap();
    });
    let mut group = c.benchmark_group("any-vs-memory");
    group.measurement_time(Duration::from_secs(2));
    group.warm_up_time(Duration::from_millis(300));
    for name in ["get", "put", "list100"] {
        group.bench_function(format!("{name}/any"), |b| {
            b.to_async(&rt).iter(|| op(&any, name, &value))
        });
        group.bench_function(format!("{name}/memory"), |b| {
            b.to_async(&rt).iter(|| op(&memory, name, &value))
        });
    }
    group.finish();

    const SAMPLES: usize = 300;
    for name in ["get", "put", "list100"] {
        let batch = if name == "list100" { 20 } else { 200 };
        let (mut any_times, mut memory_times) = (Vec::new(), Vec::new());
        rt.block_on(async {
            for i in 0..SAMPLES {
                if i % 2 == 0 {
                    any_times.push(timed(&any, name, &value, batch).await);
                    memory_times.push(timed(&memory, name, &value, batch).await);
                } else {
                    memory_times.push(timed(&memory, name, &value, batch).await);
                    any_times.push(timed(&any, name, &value, batch).await);
                }
            }
        });
        any_times.sort_unstable();
        memory_times.sort_unstable();
        let (a, m) = (any_times[SAMPLES / 2], memory_times[SAMPLES / 2]);
        println!(
            "any paired {name}: any {:?} memory {:?} per call, ratio {:.3}",
            a / batch,
            m / batch,
            a.as_secs_f64() / m.as_secs_f64()
        );
    }
}

criterion_group!(benches, memory, redb, any_vs_memory);
criterion_main!(benches);
