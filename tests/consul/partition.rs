//! A lock waiter cut off from the (emulated) agent for longer than its session TTL,
//! calling `lock()` under a timeout and retrying: nothing it registered (its session,
//! a lock its lost request may have taken) may block the lock afterwards (both kinds
//! of cut).

use std::sync::Arc;
use std::time::Duration;

use kvkit::Kv;
use kvkit::consul::{Consul, ConsulConfig};
use kvkit::testing::consul_emulator::ConsulEmulator;
use kvkit::testing::fault::ProxyPartition;
use kvkit::testing::zookeeper_server::TcpProxy;

use crate::consul_support::{client_config, emulator_config};
use crate::cut_waiter::cut_waiter_leaves_the_lock_free;

/// The scenario against an emulator of its own, the waiter (2 s lock sessions) behind
/// a proxy that `cut` cuts.
async fn cut_waiter(cut: impl FnOnce(Arc<TcpProxy>) -> ProxyPartition) {
    let emu = ConsulEmulator::start(emulator_config()).await.unwrap();
    let proxy = Arc::new(TcpProxy::start(emu.addr()).await.unwrap());
    let connect = |config: ConsulConfig| async move {
        Kv::new(
            Consul::connect(config)
                .await
                .expect("connect to the emulator"),
        )
    };
    let holder = connect(client_config(&emu)).await;
    let fresh = connect(client_config(&emu)).await;
    let waiter = connect(
        ConsulConfig::new(format!("http://{}", proxy.connect_string()))
            .min_session_ttl(Duration::from_secs(1))
            .lock_ttl(Duration::from_secs(2))
            .lock_delay(Duration::from_millis(200))
            .wait(Duration::from_secs(5))
            .request_timeout(Duration::from_secs(1)),
    )
    .await;
    cut_waiter_leaves_the_lock_free(holder, waiter, fresh, cut(proxy)).await;
}

crate::cut_waiter_tests!(cut_waiter);
