//! Behaviour specific to the embedded redb store.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use kvkit::redb::Redb;
use kvkit::{Error, ErrorKind, Kv, PutOptions};

/// Set in the child process of `a_second_process_gets_a_clear_error`.
const CHILD_VAR: &str = "KVKIT_REDB_CHILD_PATH";

fn open(path: &std::path::Path) -> Kv<Redb> {
    Kv::new(Redb::open(path).expect("open redb"))
}

#[tokio::test]
async fn data_and_versions_survive_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let last = {
        let kv = open(&path);
        kv.put("a/1", "one", PutOptions::default()).await.unwrap();
        let last = kv.put("a/2", "two", PutOptions::default()).await.unwrap();
        kv.close().await.unwrap();
        last
    };
    let kv = open(&path);
    assert_eq!(kv.get("a/1").await.unwrap().value, "one");
    assert_eq!(
        kv.get("a/2").await.unwrap(),
        last,
        "the same pair, same last_index"
    );
    let next = kv.put("a/3", "three", PutOptions::default()).await.unwrap();
    assert!(
        next.last_index > last.last_index,
        "the revision counter persisted"
    );
}

#[tokio::test]
async fn a_key_that_expired_while_closed_is_gone_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ttl.redb");
    {
        let kv = open(&path);
        kv.put(
            "short",
            "v",
            PutOptions::with_ttl(Duration::from_millis(200)),
        )
        .await
        .unwrap();
        kv.put("long", "v", PutOptions::default()).await.unwrap();
        kv.close().await.unwrap();
    }
    std::thread::sleep(Duration::from_millis(400));
    let kv = open(&path);
    assert_eq!(
        kv.get("short").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(kv.exists("long").await.unwrap());
    assert_eq!(kv.list("").await.unwrap().len(), 1);
}

#[tokio::test]
async fn opening_a_path_twice_in_a_process_shares_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.redb");
    let first = open(&path);
    let second = open(&path);
    let mut watch = first.watch("k").await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap(), None);
    second
        .put("k", "from the second handle", PutOptions::default())
        .await
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap();
    assert_eq!(
        seen.unwrap().unwrap().unwrap().value,
        "from the second handle"
    );
    let guard = first.lock("lock", Default::default()).await.unwrap();
    assert!(
        second
            .try_lock("lock", Default::default())
            .await
            .unwrap()
            .is_none(),
        "locks are shared in process"
    );
    drop(guard);
}

#[test]
fn a_second_process_gets_a_clear_error() {
    if let Ok(path) = std::env::var(CHILD_VAR) {
        // The child: report what opening the held file does.
        match Redb::open(&path) {
            Ok(_) => println!("CHILD-OPENED"),
            Err(e) => println!("CHILD-ERROR: {e}"),
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locked.redb");
    let _held = Redb::open(&path).unwrap();
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_second_process_gets_a_clear_error",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_VAR, &path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(
            "CHILD-ERROR: redb error: the database file is already open in another process"
        ),
        "the child must get a clear error, got: {stdout}"
    );
}

#[tokio::test]
async fn closed_store_refuses_calls() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open(&dir.path().join("closed.redb"));
    kv.put("k", "v", PutOptions::default()).await.unwrap();
    kv.close().await.unwrap();
    assert!(matches!(kv.get("k").await, Err(Error::Closed)));
    assert!(matches!(
        kv.put("k", "v", PutOptions::default()).await,
        Err(Error::Closed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_commits_without_losing_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open(&dir.path().join("group.redb"));
    let writers: Vec<_> = (0..64)
        .map(|i| {
            let kv = kv.clone();
            tokio::spawn(async move {
                kv.put(format!("g/{i:02}"), format!("{i}"), PutOptions::default())
                    .await
            })
        })
        .collect();
    let mut indices = HashSet::new();
    for writer in writers {
        let pair = writer.await.unwrap().unwrap();
        assert!(
            indices.insert(pair.last_index),
            "every write gets its own index"
        );
    }
    let listed = kv.list("g").await.unwrap();
    assert_eq!(listed.len(), 64);
    for (i, pair) in listed.iter().enumerate() {
        assert_eq!(pair.value, format!("{i}"));
    }
}

/// Set in the child process of `a_lock_held_by_a_killed_process_is_free_after_reopen`.
const LOCK_CHILD_VAR: &str = "KVKIT_REDB_LOCK_CHILD_PATH";

/// redb files are process-exclusive, so a lock found at open belongs to a process that
/// died: the child takes a TTL-less lock and is killed -9 while holding it; the parent
/// then opens the file and takes the lock at once.
#[test]
fn a_lock_held_by_a_killed_process_is_free_after_reopen() {
    if let Ok(path) = std::env::var(LOCK_CHILD_VAR) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let kv = open(std::path::Path::new(&path));
            let guard = kv
                .lock("jobs/nightly", kvkit::LockOptions::default().value("child"))
                .await
                .unwrap();
            kv.put("jobs/other", "kept", PutOptions::default())
                .await
                .unwrap();
            println!("CHILD-LOCKED");
            use std::io::Write as _;
            std::io::stdout().flush().unwrap();
            // Hold the lock until killed.
            tokio::time::sleep(Duration::from_secs(120)).await;
            drop(guard);
        });
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_lock_held_by_a_killed_process_is_free_after_reopen",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(LOCK_CHILD_VAR, &path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let locked = std::thread::spawn(move || {
        use std::io::BufRead as _;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("CHILD-LOCKED"))
    });
    // Bounded: a child that never locks is killed after the deadline and fails below.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !locked.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL: no destructor, no unlock
    child.wait().unwrap();
    assert!(locked.join().unwrap(), "the child took the lock");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let kv = open(&path);
        assert_eq!(kv.get("jobs/other").await.unwrap().value, "kept");
        let guard = tokio::time::timeout(
            Duration::from_secs(5),
            kv.lock(
                "jobs/nightly",
                kvkit::LockOptions::default().value("parent"),
            ),
        )
        .await
        .expect("the dead process's lock is freed at open")
        .unwrap();
        assert_eq!(kv.get("jobs/nightly").await.unwrap().value, "parent");
        drop(guard);
    });
}

/// `close` releases the locks held through the store and tells their guards; the key
/// is free after reopening.
#[tokio::test]
async fn close_releases_held_locks_and_tells_their_guards() {
    use kvkit::LockGuard;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("close-locks.redb");
    {
        let kv = open(&path);
        let guard = kv
            .lock("held", kvkit::LockOptions::default())
            .await
            .unwrap();
        // A plain key that a lock once held stays: only current lock writes go.
        let released = kv.lock("was-lock", Default::default()).await.unwrap();
        released.unlock().await.unwrap();
        kv.put("was-lock", "plain", PutOptions::default())
            .await
            .unwrap();
        kv.close().await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), guard.lost())
            .await
            .expect("the guard reports lost() after close");
        assert_eq!(
            guard.unlock().await.unwrap_err().kind(),
            ErrorKind::LockLost
        );
    }
    let kv = open(&path);
    assert!(!kv.exists("held").await.unwrap(), "close released the lock");
    assert_eq!(kv.get("was-lock").await.unwrap().value, "plain");
    assert!(
        kv.try_lock("held", Default::default())
            .await
            .unwrap()
            .is_some()
    );
}
