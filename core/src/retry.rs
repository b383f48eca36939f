//! The retry schedule and the retry-or-fail decision, shared by the control plane (a worker
//! reports a retryable failure) and the worker (it reaps an expired lease), so both paths
//! requeue a task after the same delay and give up after the same attempt.

use std::time::Duration;

/// The failure code of an attempt whose lease expired (written by the reaper).
pub const LEASE_EXPIRED_CODE: &str = "lease_expired";

/// Largest delay before a task is retried.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// How long a task waits before its next attempt after attempt `attempt` (from 1) ended
/// without a result: 1 s, doubling, at most [`MAX_RETRY_DELAY`]. Attempts below 1 wait 1 s.
pub fn retry_delay(attempt: i32) -> Duration {
    let exponent = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(0)
        .min(16);
    Duration::from_secs(1u64 << exponent).min(MAX_RETRY_DELAY)
}

/// What becomes of a task whose attempt ended without an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Back to pending, claimable after `delay`.
    Retry {
        /// How long until it may be claimed again.
        delay: Duration,
    },
    /// It fails for good.
    Fail,
}

/// Decides for a task whose attempt `attempt` ended: attempts given back on shutdown
/// (`releases`) do not count against `max_attempts`, and a failure the worker called
/// permanent (`retryable == false`) is never retried.
pub fn decide_retry(
    attempt: i32,
    releases: i32,
    max_attempts: i32,
    retryable: bool,
) -> RetryDecision {
    if retryable && attempt.saturating_sub(releases) < max_attempts {
        RetryDecision::Retry {
            delay: retry_delay(attempt),
        }
    } else {
        RetryDecision::Fail
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn delay_doubles_from_one_second_and_is_capped() {
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(2), Duration::from_secs(2));
        assert_eq!(retry_delay(4), Duration::from_secs(8));
        assert_eq!(retry_delay(9), Duration::from_secs(256));
        assert_eq!(retry_delay(10), MAX_RETRY_DELAY);
        assert_eq!(retry_delay(0), Duration::from_secs(1));
        assert_eq!(retry_delay(i32::MIN), Duration::from_secs(1));
        assert_eq!(retry_delay(i32::MAX), MAX_RETRY_DELAY);
    }

    #[test]
    fn releases_do_not_count_and_permanent_failures_never_retry() {
        assert_eq!(decide_retry(3, 0, 3, true), RetryDecision::Fail);
        assert_eq!(
            decide_retry(3, 1, 3, true),
            RetryDecision::Retry {
                delay: Duration::from_secs(4)
            }
        );
        assert_eq!(decide_retry(1, 0, 3, false), RetryDecision::Fail);
    }

    proptest! {
        #[test]
        fn delay_is_within_bounds_and_never_shrinks(attempt in any::<i32>()) {
            let delay = retry_delay(attempt);
            prop_assert!(delay >= Duration::from_secs(1));
            prop_assert!(delay <= MAX_RETRY_DELAY);
            if let Some(next) = attempt.checked_add(1) {
                prop_assert!(retry_delay(next) >= delay);
            }
        }

        #[test]
        fn delay_is_exactly_double_below_the_cap(attempt in 1i32..=8) {
            prop_assert_eq!(retry_delay(attempt + 1), retry_delay(attempt) * 2);
        }

        #[test]
        fn retry_happens_only_while_counted_attempts_remain(
            attempt in any::<i32>(),
            releases in any::<i32>(),
            max_attempts in any::<i32>(),
            retryable in any::<bool>(),
        ) {
            let decision = decide_retry(attempt, releases, max_attempts, retryable);
            let counted = i64::from(attempt) - i64::from(releases);
            let should_retry = retryable && counted < i64::from(max_attempts);
            // Saturation may only ever turn a retry into a failure, never the reverse.
            match decision {
                RetryDecision::Retry { delay } => {
                    prop_assert!(should_retry);
                    prop_assert_eq!(delay, retry_delay(attempt));
                }
                RetryDecision::Fail => prop_assert!(!should_retry || counted >= i64::from(i32::MAX)),
            }
        }
    }
}
