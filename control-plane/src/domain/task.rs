//! Tasks: statuses, roles and input limits. The worker-channel limits and the retry
//! schedule are contracts shared with the worker, in `agentplane_core`.

use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

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

pub use agentplane_core::columns::{Role, TaskStatus};

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
