//! The CLI on a redb file: every key/value command, the commands it refuses, and the
//! ways to name a store (`--config` files, `KVKIT_STORE`, `memory://`).

use crate::scenarios::key_value_commands;
use crate::{check_ok, command, expect, run_with_input, stderr};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_key_value_command_works_on_a_redb_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("redb://{}", dir.path().join("data.redb").display());
    key_value_commands(&url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_that_need_another_process_are_refused_saying_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("redb://{}", dir.path().join("data.redb").display());
    // Commands that need another process to share the store are refused, saying why.
    for args in [
        &["watch", "k"][..],
        &["lock", "k", "--", "true"],
        &["elect", "e", "id", "--", "true"],
        &["leader", "e"],
    ] {
        let refused = expect(Some(&url), args, 2);
        assert!(
            stderr(&refused).contains("one process at a time"),
            "{}",
            stderr(&refused)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_files_and_kvkit_store_name_the_store_and_config_wins() {
    let dir = tempfile::tempdir().expect("temp dir");
    // --config with a TOML file, at the top level and under [store]; JSON too.
    let toml_path = dir.path().join("store.toml");
    let other = dir.path().join("other.redb");
    std::fs::write(
        &toml_path,
        format!(
            "[store]\nbackend = \"redb\"\npath = {:?}\n",
            other.display().to_string()
        ),
    )
    .expect("write config");
    let config = toml_path.to_str().expect("utf8 path");
    expect(None, &["--config", config, "put", "c", "from config"], 0);
    let json_path = dir.path().join("store.json");
    std::fs::write(
        &json_path,
        format!(
            "{{\"backend\":\"redb\",\"path\":{:?}}}",
            other.display().to_string()
        ),
    )
    .expect("write config");
    let got = expect(
        None,
        &["--config", json_path.to_str().expect("utf8"), "get", "c"],
        0,
    );
    assert_eq!(got.stdout, b"from config");
    // KVKIT_STORE.
    let mut cmd = command(None, &["get", "c"]);
    cmd.env("KVKIT_STORE", format!("redb://{}", other.display()));
    cmd.assert().code(0).stdout("from config");
    // --config wins over KVKIT_STORE (which names an empty store here).
    let mut cmd = command(None, &["--config", config, "get", "c"]);
    cmd.env(
        "KVKIT_STORE",
        format!("redb://{}", dir.path().join("empty.redb").display()),
    );
    cmd.assert().code(0).stdout("from config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_urls_are_refused_except_for_import() {
    // memory:// is refused where pointless, allowed for import.
    let refused = expect(Some("memory://"), &["get", "k"], 2);
    assert!(
        stderr(&refused).contains("memory://"),
        "{}",
        stderr(&refused)
    );
    let check = run_with_input(
        Some("memory://"),
        &["import"],
        b"{\"key\":\"a\",\"value\":\"1\"}\n",
    );
    check_ok(&check);
}
