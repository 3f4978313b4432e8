//! The one retry backoff: capped exponential delays with jitter.

use std::time::Duration;

/// Capped exponential backoff with up to 25 % jitter, shared by every retry
/// loop (watches, polling, lock waiters, keep-alives, reconnects).
#[derive(Debug)]
pub(crate) struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `first`, doubles per failure, never above `max`.
    pub(crate) fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            next: first,
            max,
        }
    }

    /// Back to the first delay (after a success).
    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        // Jitter so that many watchers do not retry in lockstep.
        let random = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            delay,
        );
        let quarter = u64::try_from(delay.as_nanos() / 4).unwrap_or(u64::MAX);
        delay + Duration::from_nanos(random % quarter.saturating_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_bounded_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(300));
        let delays: Vec<Duration> = (0..4).map(|_| backoff.next_delay()).collect();
        for (delay, base) in delays.iter().zip([100, 200, 300, 300]) {
            let base = Duration::from_millis(base);
            assert!(
                *delay >= base && *delay <= base + base / 4,
                "{delay:?} vs {base:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() < Duration::from_millis(126));
    }
}
