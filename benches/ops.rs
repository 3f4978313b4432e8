//! Operation benchmarks for the in-process backends, with each operation measured
//! twice: through `Kv<B>` (the shared set in `common`) and directly on the backend's
//! primitives, so the wrapper's cost is visible side by side. Run with
//! `cargo bench --bench ops`.

mod common;

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use kvkit::memory::Memory;
use kvkit::redb::Redb;
use kvkit::{Backend, Dir, Key, Kv, PutOptions};
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

criterion_group!(benches, memory, redb);
criterion_main!(benches);
