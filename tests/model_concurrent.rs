//! `check_concurrent` on every backend: concurrent clients on separate handles,
//! watchers and lock contenders, checked for linearizability.

use kvkit::Kv;
use kvkit::testing::concurrent::{ConcurrentConfig, ConcurrentReport, check_concurrent};

fn show(name: &str, report: &ConcurrentReport) {
    eprintln!(
        "{name}: {} operations ({} events, {} indeterminate) run in {:?}, checked in {:?} ({:.0} operations checked/s); {} watch items, {} lock holds",
        report.operations,
        report.events,
        report.indeterminate,
        report.run_time,
        report.check_time,
        report.operations as f64 / report.check_time.as_secs_f64().max(1e-9),
        report.watch_items,
        report.lock_holds
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory() {
    let store = kvkit::memory::Memory::new();
    for seed in 0..5 {
        let handles = vec![Kv::new(store.clone()), Kv::new(store.clone())];
        let config = ConcurrentConfig {
            seed,
            ..ConcurrentConfig::default()
        };
        let report = check_concurrent(handles, config, None).await.unwrap();
        show("memory", &report);
    }
}
