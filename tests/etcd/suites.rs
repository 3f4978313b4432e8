//! The shared suites on etcd: conformance, the model harness against memory, the recipes.

use kvkit::testing::etcd_server::EtcdServer;

use crate::etcd_support::connect;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config().prefix("conformance")).await;
    kvkit::testing::conformance::run_all(&kv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_harness_agrees_with_memory() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config().prefix("model")).await;
    kvkit::testing::model::check_against_memory(&kv, Default::default())
        .await
        .unwrap_or_else(|failure| panic!("{failure}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipes_work_on_etcd() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config().prefix("recipes")).await;
    kvkit::testing::recipes::run_all(&kv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_recipes_on_etcd() {
    let Some(server) = EtcdServer::start().await else {
        return;
    };
    let kv = connect(server.config().prefix("close-recipes")).await;
    kvkit::testing::recipes::close_ends_recipes(&kv).await;
}
