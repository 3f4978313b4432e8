//! The CLI on a real etcd server: every command, a lock lost while its command runs,
//! a copy into redb, and prefixes that isolate.

use kvkit::testing::etcd_server::EtcdServer;

use crate::scenarios;
use crate::{expect, stdout};

/// A fresh server, its URL under the prefix `cli-test`, and its `host:port`.
async fn server() -> Option<(EtcdServer, String, String)> {
    let server = EtcdServer::start().await?;
    let host = server.endpoint().replace("http://", "");
    let url = format!("etcd://{host}/cli-test");
    Some((server, url, host))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_key_value_command_works_and_the_prefix_isolates() {
    let Some((_server, url, host)) = server().await else {
        return;
    };
    scenarios::key_value_commands(&url);
    // The prefix isolates: another prefix on the same server sees nothing.
    assert_eq!(
        stdout(&expect(Some(&format!("etcd://{host}/other")), &["ls"], 0)),
        ""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_lock_and_elect_commands_work() {
    let Some((_server, url, _)) = server().await else {
        return;
    };
    scenarios::coordination_commands(&url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lock_lost_while_its_command_runs_stops_the_command_and_exits_6() {
    let Some((_server, url, _)) = server().await else {
        return;
    };
    let scratch = tempfile::tempdir().expect("temp dir");
    scenarios::lock_lost(&url, scratch.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copy_into_a_redb_file_copies_everything_once() {
    let Some((_server, url, _)) = server().await else {
        return;
    };
    let scratch = tempfile::tempdir().expect("temp dir");
    scenarios::copy_to_redb(&url, scratch.path());
}
