//! The CLI on the Consul emulator: every command and a copy into redb.

use kvkit::testing::consul_emulator::ConsulEmulator;

use crate::scenarios;

/// An emulator and its URL under the prefix `cli-test`.
async fn emulator() -> (ConsulEmulator, String) {
    let emulator = ConsulEmulator::start_default()
        .await
        .expect("start the Consul emulator");
    let url = format!("consul://{}/cli-test", emulator.addr());
    (emulator, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_key_value_command_works() {
    let (_emulator, url) = emulator().await;
    scenarios::key_value_commands(&url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_lock_and_elect_commands_work() {
    let (_emulator, url) = emulator().await;
    scenarios::coordination_commands(&url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copy_into_a_redb_file_copies_everything_once() {
    let (_emulator, url) = emulator().await;
    let scratch = tempfile::tempdir().expect("temp dir");
    scenarios::copy_to_redb(&url, scratch.path());
}
