//! Authentication failures: counted, and slowed down per source. A source (client IP) that
//! fails more than [`FREE_FAILURES`] times in a [`WINDOW`] waits before each further failure
//! answer, twice as long each time up to [`MAX_DELAY`], so guessing credentials from one place
//! gets slow while a client that mistyped a token once is not held up.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Failures a source may have per window before its answers are delayed.
pub const FREE_FAILURES: u32 = 5;
/// How long failures are remembered.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Delay of the first failure over the allowance; it doubles with each further one.
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// Longest delay.
pub const MAX_DELAY: Duration = Duration::from_secs(5);
/// Sources remembered at most (memory bound); expired ones are dropped first.
const MAX_SOURCES: usize = 10_000;

#[derive(Debug)]
struct Source {
    failures: u32,
    since: Instant,
}

/// Failure counts by source.
#[derive(Debug, Default)]
pub struct FailureThrottle {
    sources: Mutex<HashMap<IpAddr, Source>>,
    total: AtomicU64,
}

impl FailureThrottle {
    /// Records a failure from `source` and returns how long to wait before answering it.
    pub fn failed(&self, source: Option<IpAddr>) -> Duration {
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        let Some(source) = source else {
            return Duration::ZERO;
        };
        let Ok(mut sources) = self.sources.lock() else {
            return Duration::ZERO;
        };
        if sources.len() >= MAX_SOURCES && !sources.contains_key(&source) {
            sources.retain(|_, s| s.since.elapsed() < WINDOW);
            if sources.len() >= MAX_SOURCES {
                sources.clear();
            }
        }
        let entry = sources.entry(source).or_insert(Source {
            failures: 0,
            since: Instant::now(),
        });
        if entry.since.elapsed() >= WINDOW {
            *entry = Source {
                failures: 0,
                since: Instant::now(),
            };
        }
        entry.failures = entry.failures.saturating_add(1);
        let over = entry.failures.saturating_sub(FREE_FAILURES);
        if over == 1 {
            tracing::warn!(%source, failures = entry.failures, total, "repeated authentication failures; slowing this source down");
        }
        delay(over)
    }

    /// Authentication failures since start, from every source.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// The wait for the `over`-th failure past the allowance.
fn delay(over: u32) -> Duration {
    if over == 0 {
        return Duration::ZERO;
    }
    FIRST_DELAY
        .saturating_mul(1u32.checked_shl(over - 1).unwrap_or(u32::MAX))
        .min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_failures_are_free_and_then_each_waits_longer_up_to_a_cap() {
        let throttle = FailureThrottle::default();
        let source = Some(IpAddr::from([10, 0, 0, 1]));
        for _ in 0..FREE_FAILURES {
            assert_eq!(throttle.failed(source), Duration::ZERO);
        }
        let delays: Vec<_> = (0..8).map(|_| throttle.failed(source)).collect();
        assert_eq!(delays[0], FIRST_DELAY);
        assert_eq!(delays[1], FIRST_DELAY * 2);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*delays.last().unwrap(), MAX_DELAY);
        // Another source is not slowed by the first one's failures.
        assert_eq!(
            throttle.failed(Some(IpAddr::from([10, 0, 0, 2]))),
            Duration::ZERO
        );
        assert_eq!(throttle.total(), u64::from(FREE_FAILURES) + 9);
        assert_eq!(delay(u32::MAX), MAX_DELAY);
    }
}
