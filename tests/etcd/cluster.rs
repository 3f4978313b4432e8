//! A three-member etcd cluster losing its leader.

use std::time::{Duration, Instant};

use kvkit::etcd::{Etcd, EtcdConfig};
use kvkit::testing::etcd_server::EtcdCluster;
use kvkit::{Kv, PutOptions};

use crate::etcd_support::{STEP, connect};
use crate::streams::{next_ok, value};

#[tokio::test]
async fn cluster_survives_stopping_the_leader() {
    let Some(mut cluster) = EtcdCluster::start(3).await else {
        return;
    };
    let kv = connect(cluster.config()).await;
    kv.put("c/k", "before", PutOptions::default())
        .await
        .unwrap();
    let mut watch = kv.watch("c/k").await.unwrap();
    assert_eq!(value(&next_ok(&mut watch).await), Some("before".into()));

    let leader = cluster.leader().await.expect("the cluster elects a leader");
    cluster.stop(leader);

    let deadline = Instant::now() + Duration::from_secs(20);
    let written = loop {
        match kv.put("c/k", "after", PutOptions::default()).await {
            Ok(pair) => break pair,
            Err(err) => {
                assert!(err.is_retryable(), "unexpected error: {err}");
                assert!(
                    Instant::now() < deadline,
                    "no write after the leader stopped: {err}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(kv.get("c/k").await.unwrap(), written);
    assert_eq!(next_ok(&mut watch).await, Some(written.clone()));
    // A new client listing every member, one of them down, connects and works.
    for _ in 0..5 {
        let fresh = connect(cluster.config()).await;
        assert_eq!(fresh.get("c/k").await.unwrap(), written);
    }
    let new_leader = cluster.leader().await.expect("a new leader");
    assert_ne!(new_leader, leader);

    // The stopped member comes back and catches up.
    cluster.restart(leader).await;
    let member_only = EtcdConfig::new([cluster.endpoints()[leader].clone()]);
    let deadline = Instant::now() + STEP;
    loop {
        if let Ok(member) = Etcd::connect(member_only.clone()).await
            && let Ok(pair) = Kv::new(member).get("c/k").await
        {
            assert_eq!(pair.value, "after");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted member did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
