//! Tasks: statuses, roles, input limits and the validated requests of TaskService. The
//! worker-channel limits and the retry schedule are contracts shared with the worker, in
//! `agentplane_core`.

use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

use crate::ids::{AgentId, TaskId, TenantId};

/// Most input messages per task.
pub const MAX_INPUT_MESSAGES: usize = 256;
/// Largest single input message, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Largest total input, in bytes.
pub const MAX_INPUT_BYTES: usize = 1024 * 1024;
/// Lowest and highest priority.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -1000..=1000;
/// Most tasks one BatchCreateTasks call creates.
pub const MAX_BATCH_TASKS: usize = 1000;
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

/// One task of one workspace: what GetTask, WatchTask and CancelTask address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskRef {
    /// Workspace the task belongs to.
    pub tenant: TenantId,
    /// The task.
    pub task: TaskId,
}

/// A validated CreateTask request.
#[derive(Clone, Debug)]
pub struct NewTask {
    /// Workspace to queue it in.
    pub tenant: TenantId,
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
    /// W3C `traceparent` of the creating call's span, stored so the worker that claims the
    /// task continues its trace; `None` when tracing is off.
    pub traceparent: Option<String>,
}

/// A validated BatchCreateTasks request: tasks of one workspace, created all or none.
#[derive(Clone, Debug)]
pub struct NewTaskBatch {
    /// Workspace every task is queued in.
    pub tenant: TenantId,
    /// The tasks, in request order, each with `tenant` as its workspace.
    pub tasks: Vec<NewTask>,
}

/// A validated ListTasks request: a page of a workspace's tasks, newest first.
#[derive(Clone, Debug)]
pub struct TaskQuery {
    /// Workspace listed.
    pub tenant: TenantId,
    /// Only tasks in this status; `None` means any.
    pub status: Option<TaskStatus>,
    /// Only tasks of this agent; `None` means any.
    pub agent: Option<AgentId>,
    /// Only tasks older than this one (the page token); `None` starts at the newest.
    pub before: Option<TaskId>,
    /// Most tasks in the page.
    pub limit: i64,
}

/// A validated CancelTask request.
#[derive(Clone, Debug)]
pub struct CancelTask {
    /// Task to cancel.
    pub task: TaskRef,
    /// Idempotency key.
    pub request_id: Option<String>,
}

/// A validated SubmitToolOutputs request.
#[derive(Clone, Debug)]
pub struct SubmitToolOutputs {
    /// Task that waits for them.
    pub task: TaskRef,
    /// The outputs, ids unique.
    pub outputs: Vec<ToolOutputInput>,
    /// Idempotency key (recorded in the event log).
    pub request_id: Option<String>,
}

/// One tool output of a SubmitToolOutputs request, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolOutputInput {
    /// The call it answers.
    pub call_id: String,
    /// The output, NUL-free.
    pub output: String,
    /// The tool failed.
    pub is_error: bool,
}

/// A validated RetryTask request.
#[derive(Clone, Debug)]
pub struct RetryTask {
    /// Task to put back in the queue.
    pub task: TaskRef,
    /// Idempotency key.
    pub request_id: Option<String>,
}

/// A validated ListTaskMessages request: a page of a task's transcript, in order.
#[derive(Clone, Debug)]
pub struct MessageQuery {
    /// Task whose transcript is listed.
    pub task: TaskRef,
    /// Only messages after this position (the page token); `None` starts at the first.
    pub after: Option<i32>,
    /// Most messages in the page.
    pub limit: i64,
}
