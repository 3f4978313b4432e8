//! Keys other tools wrote into Consul in forms kvkit never writes (the shared
//! foreign-key checks, over raw HTTP).

use kvkit::testing::conformance;

use crate::consul_support::{ConsulRaw, setup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_written_by_other_tools_are_never_listed_or_watched() {
    let (emu, kv) = setup().await;
    conformance::foreign_keys_are_never_listed_or_watched(&kv, &ConsulRaw::new(&emu)).await;
}

/// Also when they sit between kvkit keys in the key order, and at the root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_written_by_other_tools_are_never_deleted_by_delete_tree() {
    let (emu, kv) = setup().await;
    conformance::foreign_keys_are_never_deleted_by_delete_tree(&kv, &ConsulRaw::new(&emu)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_keys_written_during_delete_tree_survive_it() {
    let (emu, kv) = setup().await;
    conformance::foreign_keys_written_during_delete_tree_survive_it(&kv, &ConsulRaw::new(&emu))
        .await;
}
