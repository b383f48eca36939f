//! Tasks: statuses, roles, input limits and the retry schedule.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::ids::AgentId;

/// Most input messages per task.
pub const MAX_INPUT_MESSAGES: usize = 256;
/// Largest single input message, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Largest total input, in bytes.
pub const MAX_INPUT_BYTES: usize = 1024 * 1024;
/// Lowest and highest priority.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -1000..=1000;
/// Furthest a task may be scheduled ahead.
pub const MAX_SCHEDULE_AHEAD: chrono::Duration = chrono::Duration::days(30);
/// Largest output delta from a worker, in bytes.
pub const MAX_DELTA_BYTES: usize = 64 * 1024;
/// Largest final output, in bytes.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// Longest failure message kept, in bytes.
pub const MAX_FAILURE_MESSAGE_BYTES: usize = 4 * 1024;
/// Most model calls reported for one attempt.
pub const MAX_MODEL_CALLS: usize = 1000;

/// Where a task is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskStatus {
    /// Waiting for a worker.
    Pending,
    /// Held by a worker.
    Running,
    /// Finished with an answer.
    Succeeded,
    /// Finished without one.
    Failed,
    /// Stopped by a client.
    Canceled,
}

impl TaskStatus {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Canceled => "canceled",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "pending" => TaskStatus::Pending,
            "running" => TaskStatus::Running,
            "succeeded" => TaskStatus::Succeeded,
            "failed" => TaskStatus::Failed,
            "canceled" => TaskStatus::Canceled,
            _ => return None,
        })
    }

    /// Whether the task can no longer change.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Canceled
        )
    }
}

/// Author of a transcript message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The system prompt.
    System,
    /// The caller.
    User,
    /// The model.
    Assistant,
}

impl Role {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "system" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            _ => return None,
        })
    }
}

/// One input message.
#[derive(Clone, Debug, PartialEq)]
pub struct InputMessage {
    /// User or assistant.
    pub role: Role,
    /// Text.
    pub content: String,
}

/// A validated CreateTask request.
#[derive(Clone, Debug)]
pub struct NewTask {
    /// Agent to run it.
    pub agent_id: AgentId,
    /// Input conversation.
    pub input: Vec<InputMessage>,
    /// Claim priority.
    pub priority: i32,
    /// Earliest start; `None` means now.
    pub run_at: Option<DateTime<Utc>>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Idempotency key.
    pub request_id: Option<String>,
}

/// Delay before retrying after failed attempt number `attempt` (from 1): one second,
/// doubling, at most five minutes.
pub fn retry_backoff(attempt: i32) -> Duration {
    let exponent = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(0)
        .min(16);
    Duration::from_secs(1u64 << exponent).min(Duration::from_secs(300))
}

/// At most `max` bytes of `text`, cut at a character boundary.
pub fn truncate_bytes(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_backoff_doubles_and_is_capped() {
        assert_eq!(retry_backoff(1), Duration::from_secs(1));
        assert_eq!(retry_backoff(2), Duration::from_secs(2));
        assert_eq!(retry_backoff(4), Duration::from_secs(8));
        assert_eq!(retry_backoff(50), Duration::from_secs(300));
        assert_eq!(retry_backoff(0), Duration::from_secs(1));
        assert_eq!(retry_backoff(i32::MIN), Duration::from_secs(1));
    }

    #[test]
    fn statuses_round_trip_and_know_terminality() {
        for status in [
            TaskStatus::Pending,
            TaskStatus::Running,
            TaskStatus::Succeeded,
            TaskStatus::Failed,
            TaskStatus::Canceled,
        ] {
            assert_eq!(TaskStatus::parse(status.as_str()), Some(status));
        }
        assert!(TaskStatus::Canceled.is_terminal());
        assert!(!TaskStatus::Running.is_terminal());
    }

    #[test]
    fn truncation_respects_character_boundaries() {
        assert_eq!(truncate_bytes("héllo", 2), "h");
        assert_eq!(truncate_bytes("hello", 10), "hello");
    }
}
