//! Operation benchmarks for the in-process backends, with each operation measured
//! twice: through `Kv<B>` and directly on the backend's primitives, so the wrapper's
//! cost is visible side by side. Run with `cargo bench --bench ops`.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use futures::StreamExt;
use kvkit::memory::Memory;
use kvkit::redb::Redb;
use kvkit::{Backend, Dir, Key, Kv, LockGuard, LockOptions, PutOptions};
use tokio::runtime::Runtime;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Fills `dir` with `n` keys.
async fn fill<B: Backend>(kv: &Kv<B>, dir: &str, n: usize) {
    for i in 0..n {
        kv.put(
            format!("{dir}/{i:05}"),
            vec![b'v'; 100],
            PutOptions::default(),
        )
        .await
        .unwrap();
    }
}

fn bench_backend<B: Backend>(c: &mut Criterion, name: &str, rt: &Runtime, kv: Kv<B>) {
    let mut group = c.benchmark_group(name);
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_millis(500));
    let value = Bytes::from(vec![b'x'; 100]);
    let key = Key::new("bench/key").unwrap();
    rt.block_on(kv.put("bench/key", value.clone(), PutOptions::default()))
        .unwrap();
    let options = PutOptions::default();

    group.bench_function("get/kv", |b| {
        b.to_async(rt)
            .iter(|| async { black_box(kv.get("bench/key").await.unwrap()) })
    });
    group.bench_function("get/primitive", |b| {
        b.to_async(rt)
            .iter(|| async { black_box(kv.backend().get(&key).await.unwrap()) })
    });
    // What a caller of the primitives pays too: building the validated key per call.
    group.bench_function("get/primitive_with_key", |b| {
        b.to_async(rt).iter(|| async {
            let key = Key::new(black_box("bench/key")).unwrap();
            black_box(kv.backend().get(&key).await.unwrap())
        })
    });
    group.bench_function("put/kv", |b| {
        b.to_async(rt).iter(|| async {
            black_box(
                kv.put("bench/key", value.clone(), PutOptions::default())
                    .await
                    .unwrap(),
            )
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
            let key = Key::new(black_box("bench/key")).unwrap();
            black_box(
                kv.backend()
                    .put(&key, value.clone(), &options)
                    .await
                    .unwrap(),
            )
        })
    });
    group.bench_function("atomic_put/kv", |b| {
        b.to_async(rt).iter(|| async {
            let current = kv.get("bench/key").await.unwrap();
            black_box(
                kv.atomic_put(
                    "bench/key",
                    value.clone(),
                    Some(&current),
                    PutOptions::default(),
                )
                .await
                .unwrap(),
            )
        })
    });
    for n in [100usize, 1000] {
        let dir = format!("bench/list{n}");
        rt.block_on(fill(&kv, &dir, n));
        let parsed = Dir::new(&dir).unwrap();
        group.bench_with_input(BenchmarkId::new("list/kv", n), &dir, |b, dir| {
            b.to_async(rt)
                .iter(|| async { black_box(kv.list(dir).await.unwrap()) })
        });
        group.bench_with_input(BenchmarkId::new("list/primitive", n), &parsed, |b, dir| {
            b.to_async(rt)
                .iter(|| async { black_box(kv.backend().list(dir).await.unwrap()) })
        });
    }
    group.bench_function("watch_event_latency", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let kv = kv.clone();
            async move {
                let mut watch = kv.watch("bench/watched").await.unwrap();
                watch.next().await.unwrap().unwrap();
                let start = std::time::Instant::now();
                for i in 0..iters {
                    kv.put("bench/watched", i.to_string(), PutOptions::default())
                        .await
                        .unwrap();
                    black_box(watch.next().await.unwrap().unwrap());
                }
                start.elapsed()
            }
        })
    });
    group.bench_function("lock_unlock", |b| {
        b.to_async(rt).iter(|| async {
            let guard = kv.lock("bench/lock", LockOptions::default()).await.unwrap();
            guard.unlock().await.unwrap();
        })
    });
    group.finish();
}

fn memory(c: &mut Criterion) {
    let rt = runtime();
    bench_backend(c, "memory", &rt, Kv::new(Memory::new()));
}

fn redb(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let kv = Kv::new(Redb::open(dir.path().join("bench.redb")).unwrap());
    bench_backend(c, "redb", &rt, kv);
}

criterion_group!(benches, memory, redb);
criterion_main!(benches);
