//! Releasing server-side state from `Drop`, which cannot await.
//!
//! A dropped lock guard (or contender, or session) must still free what it holds on the
//! server: revoke the lease, delete the znode, destroy the session. Every network
//! backend does it the same way: spawn the release on the current tokio runtime, log a
//! failure, and rely on the server's own expiry (lease TTL, session timeout) when there
//! is no runtime or the release fails.

use std::fmt::Display;
use std::future::Future;

/// Spawns `release` on the current tokio runtime; `what` names it in the log if it
/// fails. Returns false (and runs nothing) outside a runtime.
pub(crate) fn release_in_background<T, E>(
    what: &'static str,
    release: impl Future<Output = Result<T, E>> + Send + 'static,
) -> bool
where
    E: Display,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::debug!(
            what,
            "no runtime to release on; the server's expiry frees it"
        );
        return false;
    };
    runtime.spawn(async move {
        if let Err(err) = release.await {
            tracing::debug!(%err, what, "releasing in the background failed; the server's expiry frees it");
        }
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_runtime_nothing_runs() {
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        let spawned = release_in_background("test", async move {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok::<(), String>(())
        });
        assert!(!spawned);
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test]
    async fn inside_a_runtime_the_release_runs() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        assert!(release_in_background("test", async move {
            tx.send(()).map_err(|()| "receiver gone")
        }));
        rx.await.expect("the release ran");
    }
}
