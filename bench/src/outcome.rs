//! What became of a run's tasks, read from the tasks themselves once all have finished.
//! The times here are the server's (`start_time`, `end_time`), so the processing window
//! does not depend on how often the bench looked.

use std::time::SystemTime;

use agentplane_proto::v1 as pb;

/// Counts and time bounds over a run's tasks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Tasks read.
    pub total: usize,
    /// Tasks that ended SUCCEEDED.
    pub succeeded: usize,
    /// Tasks that ended FAILED.
    pub failed: usize,
    /// Tasks that ended CANCELED.
    pub canceled: usize,
    /// Tasks in any other status (none, once the run has waited for them).
    pub unfinished: usize,
    /// Tasks claimed more than once: `attempt > 1`. The attempt number counts claims (a
    /// retry, a lease that expired, a worker giving a task back on shutdown), so it is the
    /// same count as "more than one `task.started` event", read without the event log.
    pub ran_more_than_once: usize,
    /// The earliest `start_time`: when the first task was claimed. (A task claimed twice
    /// shows its last claim, so this can be late only if the very first claim was retried.)
    pub first_start: Option<SystemTime>,
    /// The latest `end_time`: when the last task finished.
    pub last_end: Option<SystemTime>,
}

impl Outcome {
    /// Tallies `tasks`.
    pub fn of(tasks: &[pb::Task]) -> Self {
        let mut outcome = Self {
            total: tasks.len(),
            ..Self::default()
        };
        for task in tasks {
            match task.status() {
                pb::TaskStatus::Succeeded => outcome.succeeded += 1,
                pb::TaskStatus::Failed => outcome.failed += 1,
                pb::TaskStatus::Canceled => outcome.canceled += 1,
                _ => outcome.unfinished += 1,
            }
            if task.attempt > 1 {
                outcome.ran_more_than_once += 1;
            }
            if let Some(start) = system_time(task.start_time.as_ref()) {
                outcome.first_start = Some(outcome.first_start.map_or(start, |t| t.min(start)));
            }
            if let Some(end) = system_time(task.end_time.as_ref()) {
                outcome.last_end = Some(outcome.last_end.map_or(end, |t| t.max(end)));
            }
        }
        outcome
    }

    /// Tasks that did not end SUCCEEDED.
    pub fn not_succeeded(&self) -> usize {
        self.total - self.succeeded
    }
}

/// A protobuf timestamp as a `SystemTime`; `None` when absent or out of range.
pub fn system_time(timestamp: Option<&prost_types::Timestamp>) -> Option<SystemTime> {
    SystemTime::try_from(*timestamp?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    fn task(status: pb::TaskStatus, attempt: i32, start: Option<i64>, end: i64) -> pb::Task {
        pb::Task {
            status: status.into(),
            attempt,
            start_time: start.and_then(at),
            end_time: at(end),
            ..Default::default()
        }
    }

    #[test]
    fn counts_statuses_reruns_and_the_time_window() {
        let tasks = [
            task(pb::TaskStatus::Succeeded, 1, Some(105), 110),
            task(pb::TaskStatus::Succeeded, 2, Some(100), 120),
            task(pb::TaskStatus::Failed, 3, Some(101), 111),
            // Canceled while pending: never started.
            task(pb::TaskStatus::Canceled, 0, None, 99),
        ];
        let outcome = Outcome::of(&tasks);
        assert_eq!(outcome.total, 4);
        assert_eq!(outcome.succeeded, 2);
        assert_eq!(outcome.failed, 1);
        assert_eq!(outcome.canceled, 1);
        assert_eq!(outcome.unfinished, 0);
        assert_eq!(outcome.not_succeeded(), 2);
        assert_eq!(outcome.ran_more_than_once, 2);
        assert_eq!(outcome.first_start, system_time(at(100).as_ref()));
        assert_eq!(outcome.last_end, system_time(at(120).as_ref()));
    }

    #[test]
    fn tasks_without_times_leave_the_window_open() {
        let tasks = [pb::Task {
            status: pb::TaskStatus::Pending.into(),
            ..Default::default()
        }];
        let outcome = Outcome::of(&tasks);
        assert_eq!(outcome.unfinished, 1);
        assert_eq!(outcome.first_start, None);
        assert_eq!(outcome.last_end, None);
    }
}
