//! Leases shared by TTL puts.
//!
//! A put with TTL `t` (whole seconds) attaches the key to a lease that has at least `t`
//! seconds of life left and at most `t + slack`, where `slack = max(1, ceil(t / 4))`
//! seconds. One lease of `t + slack` seconds is granted and then reused by every put
//! with the same TTL for `slack` seconds; after that the next put grants a fresh one.
//! So a key lives between `t` and `t + slack` (at most `1.25 t + 1`, inside the
//! advertised `2 t + 1 s`), and the number of leases granted is bounded by one per
//! `slack` seconds per distinct TTL, whatever the put rate: no lease per put. Leases
//! are never kept alive: they expire on their own, taking their keys with them.
//!
//! The remaining life is measured on the local clock from just before the grant
//! request was sent, so it never overestimates what the server has left.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::Etcd;
use crate::error::Result;

/// The cache of TTL-put leases, keyed by TTL in seconds.
#[derive(Debug, Default)]
pub(crate) struct LeaseCache {
    leases: Mutex<HashMap<u64, Cached>>,
}

#[derive(Clone, Copy, Debug)]
struct Cached {
    id: i64,
    /// When the lease expires at the latest, by the local clock.
    expires: Instant,
}

/// The extra life of a shared lease beyond the TTL it serves.
pub(crate) fn slack(secs: u64) -> u64 {
    secs.div_ceil(4).max(1)
}

impl LeaseCache {
    /// A lease with between `secs` and `secs + slack(secs)` seconds to live.
    pub(crate) async fn lease(&self, etcd: &Etcd, secs: u64) -> Result<i64> {
        let now = Instant::now();
        if let Some(id) = self.cached(secs, now) {
            return Ok(id);
        }
        let granted_ttl = secs + slack(secs);
        let sent = Instant::now();
        let ttl = i64::try_from(granted_ttl).unwrap_or(i64::MAX);
        let resp = super::request!(etcd, lease => lease.grant(ttl, None)).await?;
        let ttl = u64::try_from(resp.ttl()).unwrap_or(0);
        let cached = Cached {
            id: resp.id(),
            expires: sent + Duration::from_secs(ttl),
        };
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        // Keep the lease with the longer life when another put raced us.
        match leases.get(&secs) {
            Some(existing) if existing.expires >= cached.expires => {}
            _ => {
                leases.insert(secs, cached);
            }
        }
        Ok(cached.id)
    }

    fn cached(&self, secs: u64, now: Instant) -> Option<i64> {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        // Drop leases too old to serve any TTL, so the map stays small.
        leases.retain(|&ttl, lease| lease.expires > now + Duration::from_secs(ttl));
        leases.get(&secs).map(|lease| lease.id)
    }

    /// Forgets a lease the server no longer knows.
    pub(crate) fn forget(&self, secs: u64, id: i64) {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        if leases.get(&secs).is_some_and(|lease| lease.id == id) {
            leases.remove(&secs);
        }
    }

    /// Number of cached leases (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.leases.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_is_a_quarter_rounded_up_and_at_least_one_second() {
        assert_eq!(slack(1), 1);
        assert_eq!(slack(2), 1);
        assert_eq!(slack(4), 1);
        assert_eq!(slack(5), 2);
        assert_eq!(slack(60), 15);
    }

    #[test]
    fn expired_entries_are_pruned() {
        let cache = LeaseCache::default();
        let now = Instant::now();
        cache.leases.lock().unwrap().insert(
            2,
            Cached {
                id: 7,
                expires: now + Duration::from_secs(3),
            },
        );
        assert_eq!(cache.cached(2, now), Some(7));
        assert_eq!(cache.cached(2, now + Duration::from_millis(1500)), None);
        assert_eq!(cache.len(), 0);
    }
}
