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
