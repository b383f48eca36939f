//! The arithmetic of the measurements: percentiles, latency summaries, rates, clock
//! differences and the pacing schedule of `trickle`. No I/O and no clock reads, so it is
//! tested on its own.

use std::time::{Duration, SystemTime};

use serde::Serialize;

/// The `percent`-th percentile (1 to 100) of `sorted` (ascending) by the nearest-rank
/// method: the smallest value with at least `percent` % of all values at or below it, so it
/// is always a value that was measured. `None` for an empty slice or a percent out of range.
pub fn percentile(sorted: &[f64], percent: u32) -> Option<f64> {
    if sorted.is_empty() || !(1..=100).contains(&percent) {
        return None;
    }
    // 1-based rank ⌈percent·n/100⌉, in integers so 99 % of 100 values is exactly rank 99.
    let rank = (percent as usize * sorted.len()).div_ceil(100);
    sorted.get(rank.max(1) - 1).copied()
}

/// Where a set of latencies lies, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    /// How many values.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest value.
    pub max_ms: f64,
    /// Arithmetic mean.
    pub mean_ms: f64,
}

impl LatencySummary {
    /// The summary of `values_ms` (any order; may be negative); `None` when empty.
    pub fn of(mut values_ms: Vec<f64>) -> Option<Self> {
        values_ms.sort_by(f64::total_cmp);
        let count = values_ms.len();
        let sum: f64 = values_ms.iter().sum();
        Some(Self {
            count,
            p50_ms: percentile(&values_ms, 50)?,
            p90_ms: percentile(&values_ms, 90)?,
            p99_ms: percentile(&values_ms, 99)?,
            max_ms: *values_ms.last()?,
            mean_ms: sum / count as f64,
        })
    }
}

/// `count` events over `elapsed`, per second; `None` when no time passed.
pub fn per_second(count: usize, elapsed: Duration) -> Option<f64> {
    let seconds = elapsed.as_secs_f64();
    (seconds > 0.0).then(|| count as f64 / seconds)
}

/// Milliseconds from `from` to `to`, negative when `to` is earlier.
pub fn millis_between(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(forward) => forward.as_secs_f64() * 1000.0,
        Err(backward) => -backward.duration().as_secs_f64() * 1000.0,
    }
}

/// When the `index`-th task (from 0) of a run paced at `rate` per second is due, counted
/// from the start of the run. Every due time is computed from the start, not from the
/// previous send, so a slow call delays one task without shifting the whole schedule.
pub fn due_offset(index: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(index as f64 / rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_to(n: u32) -> Vec<f64> {
        (1..=n).map(f64::from).collect()
    }

    #[test]
    fn percentile_uses_the_nearest_rank() {
        let values = one_to(100);
        assert_eq!(percentile(&values, 50), Some(50.0));
        assert_eq!(percentile(&values, 90), Some(90.0));
        assert_eq!(percentile(&values, 99), Some(99.0));
        assert_eq!(percentile(&values, 100), Some(100.0));
        assert_eq!(percentile(&values, 1), Some(1.0));
    }

    #[test]
    fn percentile_rounds_the_rank_up_on_small_sets() {
        let values = one_to(10);
        // ⌈0.99·10⌉ = 10: with ten values the p99 is the largest.
        assert_eq!(percentile(&values, 99), Some(10.0));
        assert_eq!(percentile(&values, 50), Some(5.0));
        assert_eq!(percentile(&[7.0], 50), Some(7.0));
        assert_eq!(percentile(&[7.0], 99), Some(7.0));
    }

    #[test]
    fn percentile_of_nothing_or_out_of_range_is_none() {
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[1.0], 0), None);
        assert_eq!(percentile(&[1.0], 101), None);
    }

    #[test]
    fn summary_sorts_its_input_and_keeps_negative_values() {
        let summary = LatencySummary::of(vec![3.0, -1.0, 2.0, 10.0]).expect("not empty");
        assert_eq!(summary.count, 4);
        assert_eq!(summary.p50_ms, 2.0);
        assert_eq!(summary.p90_ms, 10.0);
        assert_eq!(summary.max_ms, 10.0);
        assert_eq!(summary.mean_ms, 3.5);
        assert_eq!(LatencySummary::of(Vec::new()), None);
    }

    #[test]
    fn rate_needs_elapsed_time() {
        assert_eq!(per_second(500, Duration::from_millis(250)), Some(2000.0));
        assert_eq!(per_second(5, Duration::ZERO), None);
    }

    #[test]
    fn millis_between_is_signed() {
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let later = base + Duration::from_micros(1_500);
        assert_eq!(millis_between(base, later), 1.5);
        assert_eq!(millis_between(later, base), -1.5);
    }

    #[test]
    fn pacing_spaces_tasks_evenly_from_the_start() {
        assert_eq!(due_offset(0, 50.0), Duration::ZERO);
        assert_eq!(due_offset(1, 50.0), Duration::from_millis(20));
        assert_eq!(due_offset(50, 50.0), Duration::from_secs(1));
        assert_eq!(due_offset(3, 0.5), Duration::from_secs(6));
    }

    #[test]
    fn pacing_does_not_drift_over_a_long_run() {
        let rate = 30.0;
        let last = due_offset(90_000, rate);
        assert!(last.abs_diff(Duration::from_secs(3_000)) < Duration::from_micros(1));
        for index in 1..1_000 {
            let gap = due_offset(index, rate) - due_offset(index - 1, rate);
            assert!(gap.abs_diff(Duration::from_secs_f64(1.0 / rate)) < Duration::from_micros(1));
        }
    }
}
