//! When to try a model call again: exponential backoff with full jitter, or exactly what the
//! vendor asked for in `retry-after-ms` / `retry-after` (seconds or an HTTP date). Pure, so
//! the schedule is tested without a clock.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;

/// How a failed call is retried inside one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try (so `max_retries + 1` tries in all).
    pub max_retries: u32,
    /// Ceiling of the first backoff; it doubles per retry.
    pub initial_backoff: Duration,
    /// Largest backoff ceiling.
    pub max_backoff: Duration,
    /// A vendor asking for a longer wait than this is not waited for in process: the attempt
    /// fails (retryable) and the queue retries the task later instead of holding a slot.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 4,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The upper bound of the jittered wait before retry `retry` (from 1): `initial_backoff`
    /// doubled per retry, at most `max_backoff`.
    pub fn backoff_ceiling(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        self.initial_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }

    /// How long to wait before retry `retry` (from 1), or `None` to give up: the retries are
    /// used up, or the vendor asked for a wait longer than `max_retry_after`. A vendor's
    /// `retry_after` is honoured as given; otherwise the wait is uniform in
    /// `[0, backoff_ceiling(retry)]` ("full jitter"), drawn from `random`.
    pub fn delay(
        &self,
        retry: u32,
        retry_after: Option<Duration>,
        random: u64,
    ) -> Option<Duration> {
        if retry == 0 || retry > self.max_retries {
            return None;
        }
        if let Some(wait) = retry_after {
            return (wait <= self.max_retry_after).then_some(wait);
        }
        Some(full_jitter(self.backoff_ceiling(retry), random))
    }
}

/// A duration uniform in `[0, ceiling]`, chosen by `random`.
pub(crate) fn full_jitter(ceiling: Duration, random: u64) -> Duration {
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    match nanos.checked_add(1) {
        Some(span) => Duration::from_nanos(random % span),
        None => Duration::from_nanos(random),
    }
}

/// The wait a response asks for: `retry-after-ms` (milliseconds, possibly fractional), else
/// `retry-after` as delay-seconds or an HTTP date (relative to `now`; a date in the past means
/// no wait). Unparseable, negative or absurd values are ignored.
pub(crate) fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if let Some(millis) = text("retry-after-ms").and_then(|v| seconds_from_decimal(v, 1000.0)) {
        return Some(millis);
    }
    let value = text("retry-after")?.trim();
    if let Some(seconds) = seconds_from_decimal(value, 1.0) {
        return Some(seconds);
    }
    let date = DateTime::parse_from_rfc2822(value).ok()?;
    let wait = date.with_timezone(&Utc).signed_duration_since(now);
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// Longest wait a header may ask for before it is treated as nonsense.
const MAX_HEADER_WAIT: Duration = Duration::from_secs(24 * 3600);

/// `value` as a count of `1/per_second` seconds (`per_second` 1000 for milliseconds).
fn seconds_from_decimal(value: &str, per_second: f64) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let number: f64 = value.parse().ok()?;
    let seconds = number / per_second;
    if !seconds.is_finite() || seconds < 0.0 || seconds > MAX_HEADER_WAIT.as_secs_f64() {
        return None;
    }
    Some(Duration::from_secs_f64(seconds))
}

/// A duration in Google's JSON form (`"20s"`, `"1.5s"`), as in a `RetryInfo.retryDelay`.
pub(crate) fn google_duration(value: &str) -> Option<Duration> {
    seconds_from_decimal(value.strip_suffix('s')?, 1.0)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use reqwest::header::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("a header value"));
        }
        map
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-24T12:00:00Z")
            .expect("a date")
            .with_timezone(&Utc)
    }

    #[test]
    fn retry_after_reads_milliseconds_seconds_and_dates() {
        let at = |pairs: &[(&'static str, &str)]| retry_after(&headers(pairs), now());
        assert_eq!(
            at(&[("retry-after-ms", "1500")]),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            at(&[("retry-after-ms", "250.5"), ("retry-after", "9")]),
            Some(Duration::from_micros(250_500)),
            "the more precise header wins"
        );
        assert_eq!(at(&[("retry-after", "7")]), Some(Duration::from_secs(7)));
        assert_eq!(
            at(&[("retry-after", "Tue, 24 Nov 2026 12:00:30 GMT")]),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            at(&[("retry-after", "Tue, 24 Nov 2026 11:00:00 GMT")]),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        for nonsense in ["-3", "soon", "", "1e9", "99999999999"] {
            assert_eq!(at(&[("retry-after", nonsense)]), None, "{nonsense:?}");
        }
        assert_eq!(at(&[]), None);
    }

    #[test]
    fn google_durations_parse() {
        assert_eq!(google_duration("20s"), Some(Duration::from_secs(20)));
        assert_eq!(google_duration("0.5s"), Some(Duration::from_millis(500)));
        assert_eq!(google_duration("20"), None);
    }

    #[test]
    fn the_schedule_doubles_to_its_cap_and_stops_after_the_last_retry() {
        let policy = RetryPolicy::default();
        let ceilings: Vec<_> = (1..=8)
            .map(|r| policy.backoff_ceiling(r).as_millis())
            .collect();
        assert_eq!(ceilings, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(policy.delay(5, None, 0), None, "4 retries at most");
        assert_eq!(policy.delay(0, None, 0), None);
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(3)), 12345),
            Some(Duration::from_secs(3)),
            "the vendor's wait is honoured exactly"
        );
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(61)), 0),
            None,
            "too long a wait is left to the queue"
        );
    }

    proptest! {
        #[test]
        fn jittered_delays_stay_within_the_ceiling(retry in 1u32..=4, random in any::<u64>()) {
            let policy = RetryPolicy::default();
            let delay = policy.delay(retry, None, random).expect("within max_retries");
            prop_assert!(delay <= policy.backoff_ceiling(retry));
        }

        #[test]
        fn ceilings_never_shrink(retry in 0u32..u32::MAX) {
            let policy = RetryPolicy::default();
            prop_assert!(policy.backoff_ceiling(retry + 1) >= policy.backoff_ceiling(retry));
        }

        #[test]
        fn full_jitter_never_exceeds_its_ceiling(nanos in any::<u64>(), random in any::<u64>()) {
            let ceiling = Duration::from_nanos(nanos);
            prop_assert!(full_jitter(ceiling, random) <= ceiling);
        }
    }
}
