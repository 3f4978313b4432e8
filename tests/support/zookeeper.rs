//! Helpers of the ZooKeeper tests that reach the server as another tool would: a raw
//! `zookeeper-async` client, and ZooKeeper's raw key space for the foreign-key checks.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use kvkit::Kv;
use kvkit::testing::conformance::RawStore;
use kvkit::zookeeper::Zookeeper;
use zookeeper_async::{Acl, CreateMode, ZkError, ZooKeeper};

/// Header byte kvkit puts before a value without TTL (see docs/zookeeper.md).
const VALUE_HEADER: u8 = 0x01;

/// A raw `zookeeper-async` client, as another tool would use.
pub async fn raw_client(addr: &str) -> ZooKeeper {
    ZooKeeper::connect(
        addr,
        Duration::from_secs(8),
        |_: zookeeper_async::WatchedEvent| {},
    )
    .await
    .expect("raw client")
}

/// Whether ZooKeeper accepts `name` below an existing znode: its path rules
/// (`PathUtils.validatePath`) refuse empty segments, `.` and `..` segments, and the
/// characters below, counted in UTF-16 units (so every character above U+FFFF, whose
/// surrogates fall in the refused range).
pub fn zookeeper_accepts(name: &str) -> bool {
    let refused = |c: char| {
        matches!(c as u32,
            0x00..=0x1f | 0x7f..=0x9f | 0xd800..=0xf8ff | 0xfff0..)
    };
    !name.is_empty()
        && name
            .split('/')
            .all(|segment| !matches!(segment, "" | "." | ".."))
        && !name.chars().any(refused)
}

/// ZooKeeper's raw key space below a handle's keys (`{root}/kv`, kvkit's encoding),
/// through a raw client: how other tools write znodes kvkit never writes. A raw key is
/// a znode path relative to `{root}/kv`; only znodes holding data are keys, the empty
/// parents ZooKeeper needs above them are not. Values are written with kvkit's value
/// header, so only their names make them foreign.
#[derive(Clone)]
pub struct ZookeeperRaw {
    zk: Arc<ZooKeeper>,
    kv_root: String,
}

impl ZookeeperRaw {
    /// The raw key space of `kv`, through a new client of the server at `addr`.
    pub async fn new(addr: &str, kv: &Kv<Zookeeper>) -> Self {
        ZookeeperRaw {
            zk: Arc::new(raw_client(addr).await),
            kv_root: format!("{}/kv", kv.backend().root()),
        }
    }

    /// Creates `path` with `data`, and the missing znodes above it empty; retries when a
    /// concurrent `delete_tree` removes an empty parent meanwhile.
    async fn create_with_parents(zk: &ZooKeeper, path: &str, data: Vec<u8>) {
        let open = || Acl::open_unsafe().clone();
        for _ in 0..100 {
            match zk
                .create(path, data.clone(), open(), CreateMode::Persistent)
                .await
            {
                Ok(_) => return,
                Err(ZkError::NodeExists) => {
                    zk.set_data(path, data, None).await.expect("raw set_data");
                    return;
                }
                Err(ZkError::NoNode) => {
                    let mut parent = String::new();
                    let segments: Vec<&str> = path[1..].split('/').collect();
                    for segment in &segments[..segments.len() - 1] {
                        parent = format!("{parent}/{segment}");
                        match zk
                            .create(&parent, Vec::new(), open(), CreateMode::Persistent)
                            .await
                        {
                            Ok(_) | Err(ZkError::NodeExists) => {}
                            Err(e) => panic!("raw create of {parent:?}: {e:?}"),
                        }
                    }
                }
                Err(e) => panic!("raw create of {path:?}: {e:?}"),
            }
        }
        panic!("raw create of {path:?}: its parents kept disappearing");
    }
}

impl RawStore for ZookeeperRaw {
    fn put_raw(&self, key: &[u8], value: &[u8]) -> BoxFuture<'static, ()> {
        let zk = self.zk.clone();
        let key = std::str::from_utf8(key).expect("a znode name is text");
        let path = format!("{}/{key}", self.kv_root);
        let data = [&[VALUE_HEADER], value].concat();
        async move { Self::create_with_parents(&zk, &path, data).await }.boxed()
    }

    fn raw_keys(&self, prefix: &[u8]) -> BoxFuture<'static, Vec<Vec<u8>>> {
        let zk = self.zk.clone();
        let kv_root = self.kv_root.clone();
        let prefix = prefix.to_vec();
        async move {
            let mut keys = Vec::new();
            let mut frontier = vec![kv_root.clone()];
            while let Some(parent) = frontier.pop() {
                let children = match zk.get_children(&parent, false).await {
                    Ok(children) => children,
                    Err(ZkError::NoNode) => continue,
                    Err(e) => panic!("raw get_children of {parent:?}: {e:?}"),
                };
                for child in children {
                    let path = format!("{parent}/{child}");
                    let (data, _) = zk.get_data(&path, false).await.expect("raw get_data");
                    let key = &path.as_bytes()[kv_root.len() + 1..];
                    if data.first().is_some_and(|&header| header != 0) && key.starts_with(&prefix) {
                        keys.push(key.to_vec());
                    }
                    frontier.push(path);
                }
            }
            keys.sort();
            keys
        }
        .boxed()
    }

    fn holds(&self, key: &[u8]) -> bool {
        std::str::from_utf8(key).is_ok_and(zookeeper_accepts)
    }
}
