//! What every backend's benchmark measures through `Kv<B>`, shared by `ops.rs`
//! (memory, redb) and `backends.rs` (etcd, ZooKeeper, the Consul emulator) so the
//! operations and their IDs are the same everywhere: `put/kv`, `get/kv`,
//! `atomic_put/kv`, `list/kv/100`, `list/kv/1000`, `watch_event_latency`, `lock_unlock`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId};
use futures::StreamExt;
use kvkit::{Backend, Kv, KvPair, LockGuard, LockOptions, PutOptions};
use tokio::runtime::Runtime;

/// The key `get`, `put` and `atomic_put` use; it holds a 100-byte value.
pub const KEY: &str = "bench/key";
/// Bounds every wait for a watch event.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A runtime like a small service's: two worker threads.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Fills `dir` with `n` keys of 100 bytes (32 puts in flight).
pub async fn fill<B: Backend>(kv: &Kv<B>, dir: &str, n: usize) {
    let puts = futures::stream::iter(0..n)
        .map(|i| {
            kv.put(
                format!("{dir}/{i:05}"),
                vec![b'v'; 100],
                PutOptions::default(),
            )
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    assert!(puts.iter().all(Result::is_ok), "filling {dir}");
}

/// Times `iters` atomic_puts of `key`, each on the version the previous one wrote
/// (CAS on the last version, never refused).
pub async fn chained_atomic_puts<B: Backend>(
    kv: &Kv<B>,
    key: &str,
    value: &Bytes,
    iters: u64,
) -> Duration {
    let mut current = kv.get(key).await.unwrap();
    let start = Instant::now();
    for _ in 0..iters {
        current = kv
            .atomic_put(key, value.clone(), Some(&current), PutOptions::default())
            .await
            .unwrap();
    }
    start.elapsed()
}

/// The list sizes measured; `bench/list{n}` holds `n` keys after [`kv_ops`].
pub const LIST_SIZES: [usize; 2] = [100, 1000];

/// put, get, atomic_put (CAS on the last version), list of 100 and 1,000 keys, watch
/// event latency (write to event) and a lock/unlock cycle, all through `Kv<B>`.
/// Leaves [`KEY`] and the `bench/list{n}` directories filled for the caller's own
/// side-by-side measurements.
pub fn kv_ops<B: Backend>(group: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, kv: &Kv<B>) {
    let value = Bytes::from(vec![b'x'; 100]);
    rt.block_on(kv.put(KEY, value.clone(), PutOptions::default()))
        .unwrap();

    group.bench_function("put/kv", |b| {
        b.to_async(rt).iter(|| async {
            black_box(
                kv.put(KEY, value.clone(), PutOptions::default())
                    .await
                    .unwrap(),
            )
        })
    });
    group.bench_function("get/kv", |b| {
        b.to_async(rt)
            .iter(|| async { black_box(kv.get(KEY).await.unwrap()) })
    });
    group.bench_function("atomic_put/kv", |b| {
        b.to_async(rt)
            .iter_custom(|iters| chained_atomic_puts(kv, KEY, &value, iters))
    });
    for n in LIST_SIZES {
        let dir = format!("bench/list{n}");
        rt.block_on(fill(kv, &dir, n));
        group.bench_with_input(BenchmarkId::new("list/kv", n), &dir, |b, dir| {
            b.to_async(rt).iter(|| async {
                let list = kv.list(dir).await.unwrap();
                assert_eq!(list.len(), n);
                black_box(list)
            })
        });
    }
    group.bench_function("watch_event_latency", |b| {
        b.to_async(rt).iter_custom(|iters| async move {
            let mut watch = kv.watch("bench/watched").await.unwrap();
            let first = tokio::time::timeout(EVENT_TIMEOUT, watch.next()).await;
            first.expect("initial state").unwrap().unwrap();
            // Let a backend that arms its server-side watch in the background do so.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let wanted = format!("w{i}");
                let start = Instant::now();
                kv.put("bench/watched", wanted.clone(), PutOptions::default())
                    .await
                    .unwrap();
                // Backends may coalesce: wait for the state holding this write.
                loop {
                    let item = tokio::time::timeout(EVENT_TIMEOUT, watch.next())
                        .await
                        .expect("a watch event within 10 s")
                        .expect("the watch ended")
                        .expect("the watch failed");
                    if item.is_some_and(|p: KvPair| p.value == wanted.as_bytes()) {
                        break;
                    }
                }
                total += start.elapsed();
            }
            total
        })
    });
    group.bench_function("lock_unlock", |b| {
        b.to_async(rt).iter(|| async {
            let guard = kv.lock("bench/lock", LockOptions::default()).await.unwrap();
            guard.unlock().await.unwrap();
        })
    });
}
