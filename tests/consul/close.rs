//! `close` on Consul: it releases the locks held through the handle, destroys their
//! sessions and ends its watches (the shared close checks, plus the sessions).

use std::time::Duration;

use kvkit::Kv;
use kvkit::consul::Consul;
use kvkit::testing::conformance::{self, CloseCheckpoint};
use tokio::time::Instant;

use crate::consul_support::{client_config, setup};

/// A guard dropped right before `close()` is released once `close` returns: its
/// session stays registered until the background release is done, so `close`
/// releases it too. (A current-thread runtime: the background task has not run when
/// `close` starts.)
#[tokio::test(flavor = "current_thread")]
async fn a_guard_dropped_just_before_close_is_released_when_close_returns() {
    let (emu, kv) = setup().await;
    let other = Kv::new(Consul::connect(client_config(&emu)).await.unwrap());
    conformance::guard_dropped_just_before_close_is_free_when_close_returns(
        &kv,
        &other,
        |checkpoint| match checkpoint {
            CloseCheckpoint::Locked => assert_eq!(emu.session_ids().len(), 1),
            CloseCheckpoint::Closed => assert!(
                emu.session_ids().is_empty(),
                "sessions left after close: {:?}",
                emu.session_ids()
            ),
        },
    )
    .await;
}

/// The guards know at once (their sessions were destroyed), and the locks are free for
/// others now, not after the session's TTL: a closed handle never goes on believing it
/// holds a lock someone else takes. No session is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_watches_releases_locks_and_tells_their_guards() {
    let (emu, kv) = setup().await;
    let other = Kv::new(Consul::connect(client_config(&emu)).await.unwrap());
    conformance::close_ends_watches_and_frees_locks(&kv, &other).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !emu.session_ids().is_empty() {
        assert!(Instant::now() < deadline, "{:?}", emu.session_ids());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
