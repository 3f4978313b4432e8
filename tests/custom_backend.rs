//! Runs `examples/custom_backend.rs` (a backend over SQLite built only from storage
//! primitives, `kvkit::poll` watches and `CasLock` locks) through `check_backend`.

#[allow(dead_code)] // the example's `main` is not called here
#[path = "../examples/custom_backend.rs"]
mod custom_backend;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_example_backend_passes_check_backend() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    if let Err(failure) = custom_backend::check(dir.path()).await {
        panic!("{failure}");
    }
}

/// The store-wide revision is persisted with the data: a key's `last_index` never goes
/// back across a reopen, also after a delete and re-create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_and_data_survive_a_reopen() {
    use kvkit::{Kv, PutOptions};
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("kv.sqlite3");
    let kv = Kv::new(custom_backend::Sqlite::open(&path).unwrap());
    let first = kv.put("a/k", "1", PutOptions::default()).await.unwrap();
    kv.delete("a/k").await.unwrap();
    kv.put("a/other", "x", PutOptions::default()).await.unwrap();
    kv.close().await.unwrap();
    drop(kv);
    let kv = Kv::new(custom_backend::Sqlite::open(&path).unwrap());
    assert_eq!(kv.get("a/other").await.unwrap().value, "x");
    let again = kv.put("a/k", "2", PutOptions::default()).await.unwrap();
    assert!(
        again.last_index > first.last_index,
        "{again:?} after {first:?}"
    );
}
