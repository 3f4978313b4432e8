//! Keys other tools wrote straight into etcd in forms kvkit never writes (the shared
//! foreign-key checks, through the etcd client).

use kvkit::testing::conformance;
use kvkit::testing::etcd_server::EtcdServer;

use crate::etcd_support::{EtcdRaw, connect};

#[tokio::test]
async fn keys_written_by_other_tools_are_never_listed_or_watched() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config()).await;
    conformance::foreign_keys_are_never_listed_or_watched(&kv, &EtcdRaw::new(&kv, "")).await;
}

#[tokio::test]
async fn keys_written_by_other_tools_are_never_deleted_by_delete_tree() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config()).await;
    conformance::foreign_keys_are_never_deleted_by_delete_tree(&kv, &EtcdRaw::new(&kv, "")).await;
}

/// The delete is guarded by the revision of its read, so a key written after the read
/// makes it re-read instead of deleting the new key with the range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_keys_written_during_delete_tree_survive_it() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config().prefix("p")).await;
    conformance::foreign_keys_written_during_delete_tree_survive_it(&kv, &EtcdRaw::new(&kv, "p/"))
        .await;
}
