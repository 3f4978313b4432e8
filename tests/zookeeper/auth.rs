//! Digest authentication: keys written with credentials are refused to everyone else.

use kvkit::zookeeper::{Zookeeper, ZookeeperConfig};
use kvkit::{ErrorKind, Kv, PutOptions};

use crate::streams::values;
use crate::{connect, connect_with, counted, kind, quiet_shared_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_credentials_keep_keys_from_everyone_else() {
    let Some(turn) = quiet_shared_server().await else {
        return;
    };
    let server = turn.addr();
    let alice = as_alice(server, "s3cret").await;
    alice
        .put("private/k", "hidden", PutOptions::default())
        .await
        .unwrap();
    assert_eq!(alice.get("private/k").await.unwrap().value, "hidden");

    let anonymous = connect(server, "/secure").await;
    assert_eq!(
        kind(anonymous.get("private/k").await),
        ErrorKind::PermissionDenied
    );
    assert_eq!(kind(anonymous.list("").await), ErrorKind::PermissionDenied);
    assert_eq!(
        kind(anonymous.put("private/k", "x", PutOptions::default()).await),
        ErrorKind::PermissionDenied
    );
    let mallory = as_alice(server, "guess").await;
    assert_eq!(
        kind(mallory.get("private/k").await),
        ErrorKind::PermissionDenied
    );
    let alice2 = as_alice(server, "s3cret").await;
    assert_eq!(alice2.get("private/k").await.unwrap().value, "hidden");
    // Listed through the bulk reader, whose session replays the credentials: sync +
    // getChildren of kv, getData of private (+ marker), getChildren of it, getData of
    // private/k (+ marker); a quiet ensemble: no validation needed.
    let (listed, req, waves) = counted(&alice2, alice2.list("")).await;
    assert_eq!(
        values(&listed.unwrap()),
        [("private/k".into(), "hidden".into())]
    );
    assert_eq!((req, waves), (7, 4), "through the bulk reader");
    // Refused per read inside the multiRead: sync + getChildren of kv.
    let (refused, req, _) = counted(&anonymous, anonymous.list("")).await;
    assert_eq!(kind(refused), ErrorKind::PermissionDenied);
    assert_eq!(req, 2, "through the bulk reader");
    assert_eq!(kind(mallory.list("").await), ErrorKind::PermissionDenied);
    for kv in [alice, anonymous, mallory, alice2] {
        kv.close().await.unwrap();
    }
}

/// A handle under `/secure` that authenticates as `alice` with `password`.
async fn as_alice(server: &str, password: &str) -> Kv<Zookeeper> {
    connect_with(
        ZookeeperConfig::new(server)
            .prefix("/secure")
            .digest("alice", password),
    )
    .await
}
