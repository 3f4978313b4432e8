//! The CLI on a real ZooKeeper server (one shared by these tests, each under a root of
//! its own): every command, a copy into redb, and a copy of 1,000 keys to etcd.

use std::io::Write;

use kvkit::testing::etcd_server::EtcdServer;
use kvkit::testing::zookeeper_server::ZkServer;
use serde_json::Value;

use crate::scenarios;
use crate::{check, expect, json, run_with_input, stderr, stdout};

/// The URL of the shared server under `root`.
fn url(root: &str) -> Option<String> {
    let zk = ZkServer::shared()?;
    Some(format!("zk://{}/{root}", zk.connect_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_key_value_command_works() {
    let Some(url) = url("cli-key-values") else {
        return;
    };
    scenarios::key_value_commands(&url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_lock_and_elect_commands_work() {
    let Some(url) = url("cli-coordination") else {
        return;
    };
    scenarios::coordination_commands(&url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copy_into_a_redb_file_copies_everything_once() {
    let Some(url) = url("cli-copy-redb") else {
        return;
    };
    let scratch = tempfile::tempdir().expect("temp dir");
    scenarios::copy_to_redb(&url, scratch.path());
}

/// 1,000 keys, some binary, copied from ZooKeeper to etcd and the copy repeated: the
/// second copies nothing, the third only the changed key; an unreachable destination
/// exits 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_to_etcd_repeated_copies_only_what_changed() {
    let Some(zk_url) = url("cli-copy-etcd") else {
        return;
    };
    let Some(etcd) = EtcdServer::start().await else {
        return;
    };
    let etcd_url = format!("etcd://{}/migrated", etcd.endpoint().replace("http://", ""));
    // 1,000 keys, some binary, imported into ZooKeeper.
    let mut input = Vec::new();
    for i in 0..1000 {
        if i % 10 == 0 {
            writeln!(
                input,
                "{{\"key\":\"data/bin/{i:04}\",\"value\":\"AAEC/w==\",\"encoding\":\"base64\"}}"
            )
        } else {
            writeln!(
                input,
                "{{\"key\":\"data/k{:02}/{i:04}\",\"value\":\"value {i}\"}}",
                i % 7
            )
        }
        .expect("write");
    }
    check(
        &run_with_input(Some(&zk_url), &["import"], &input),
        &["import"],
        0,
    );

    let first = json(&expect(
        None,
        &["copy", &zk_url, &etcd_url, "data", "--json"],
        0,
    ));
    assert_eq!(
        (
            first["copied"].as_u64(),
            first["unchanged"].as_u64(),
            first["failed"].as_u64()
        ),
        (Some(1000), Some(0), Some(0)),
        "{first}"
    );
    let source = stdout(&expect(Some(&zk_url), &["export", "data"], 0));
    let copied = stdout(&expect(Some(&etcd_url), &["export", "data"], 0));
    assert_eq!(keys_and_values(&source), keys_and_values(&copied));
    assert_eq!(keys_and_values(&copied).len(), 1000);

    // Repeating the copy changes nothing; after one change it copies just that key.
    let second = json(&expect(
        None,
        &["copy", &zk_url, &etcd_url, "data", "--json"],
        0,
    ));
    assert_eq!(
        (
            second["copied"].as_u64(),
            second["unchanged"].as_u64(),
            second["failed"].as_u64()
        ),
        (Some(0), Some(1000), Some(0)),
        "{second}"
    );
    let untouched = json(&expect(
        Some(&etcd_url),
        &["get", "data/k01/0001", "--json"],
        0,
    ));
    expect(Some(&zk_url), &["put", "data/k01/0008", "changed"], 0);
    let third = json(&expect(
        None,
        &["copy", &zk_url, &etcd_url, "data", "--json"],
        0,
    ));
    assert_eq!(
        (third["copied"].as_u64(), third["unchanged"].as_u64()),
        (Some(1), Some(999))
    );
    assert_eq!(
        expect(Some(&etcd_url), &["get", "data/k01/0008"], 0).stdout,
        b"changed"
    );
    let after = json(&expect(
        Some(&etcd_url),
        &["get", "data/k01/0001", "--json"],
        0,
    ));
    assert_eq!(
        after["index"], untouched["index"],
        "an unchanged key is not rewritten"
    );
    // The destination unreachable: exit 3 and a message saying what to do.
    let down = expect(
        None,
        &[
            "copy",
            &zk_url,
            "etcd://127.0.0.1:1/x?connect_timeout=1s",
            "data",
        ],
        3,
    );
    assert!(stderr(&down).contains("unavailable"), "{}", stderr(&down));
}

/// (key, value, encoding) of every line of an export.
fn keys_and_values(export: &str) -> Vec<(String, String, String)> {
    export
        .lines()
        .map(|line| {
            let item: Value = serde_json::from_str(line).expect("JSON line");
            (
                item["key"].as_str().expect("key").to_owned(),
                item["value"].as_str().expect("value").to_owned(),
                item["encoding"].as_str().expect("encoding").to_owned(),
            )
        })
        .collect()
}
