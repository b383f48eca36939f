//! Exponential backoff for idle queue polling and reconnects. The retry delay of a task is
//! a contract with the control plane: `agentplane_core::retry`.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Doubles from `initial` up to `max`; `reset` goes back to `initial`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A schedule starting at `initial` and capped at `max` (`max` wins if smaller).
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.min(max);
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay to wait now; the following call returns twice as much, up to the cap.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// Starts over from the initial delay.
    pub(crate) fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// `delay` scaled into `[delay/2, delay]` at random, so a fleet that lost its control plane
/// at the same moment does not reconnect in lockstep.
pub(crate) fn jittered(delay: Duration) -> Duration {
    let random = random_u64();
    let half = delay / 2;
    let spread = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(if spread == 0 { 0 } else { random % spread })
}

/// A random number, good enough to spread retries (not for secrets): std seeds every
/// `RandomState` from the OS once and then varies it per instance.
pub(crate) fn random_u64() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(300));
        let delays: Vec<_> = (0..6).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [50, 100, 200, 300, 300, 300]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(50));
    }

    #[test]
    fn backoff_with_cap_below_initial_uses_the_cap() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_millis(10));
        assert_eq!(backoff.next_delay(), Duration::from_millis(10));
        assert_eq!(backoff.next_delay(), Duration::from_millis(10));
    }

    #[test]
    fn jitter_stays_between_half_and_full_delay() {
        for millis in [0, 1, 7, 100, 10_000] {
            let delay = Duration::from_millis(millis);
            for _ in 0..100 {
                let jittered = jittered(delay);
                assert!(jittered >= delay / 2 && jittered <= delay, "{jittered:?}");
            }
        }
    }
}
