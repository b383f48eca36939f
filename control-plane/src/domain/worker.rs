//! What a worker reports over its session, as validated values: the protobuf messages are
//! parsed into these once, in `api/workers/parse.rs`.

use crate::ids::{TaskId, TenantId, WorkerId};

/// One attempt of one task: the unit a worker holds a lease on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lease {
    /// Workspace of the task.
    pub tenant: TenantId,
    /// The task.
    pub task: TaskId,
    /// The attempt, from 1: the fencing token.
    pub attempt: i32,
}

/// The first message of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The worker's id (never the nil UUID).
    pub worker: WorkerId,
    /// The worker's version string.
    pub version: String,
    /// Tasks it runs at once.
    pub capacity: i32,
}

/// One model call reported by a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelCallRecord {
    /// The worker's id of the call: its usage record's id (a fresh one for workers that
    /// send none).
    pub id: uuid::Uuid,
    /// Agent-loop step.
    pub step: i32,
    /// Idempotency id sent to the provider.
    pub provider_request_id: String,
    /// Provider called; empty for workers that send none (the agent's is recorded).
    pub provider: String,
    /// Model.
    pub model: String,
    /// Prompt tokens.
    pub input_tokens: i64,
    /// Generated tokens.
    pub output_tokens: i64,
    /// Prompt tokens read from the vendor's cache.
    pub cache_read_input_tokens: i64,
    /// Prompt tokens written to the vendor's cache.
    pub cache_write_input_tokens: i64,
    /// Reasoning tokens.
    pub reasoning_tokens: i64,
    /// Cost.
    pub cost_micros: i64,
    /// The model had no price.
    pub unpriced: bool,
    /// The vendor's id of the response, if any.
    pub vendor_request_id: Option<String>,
    /// Milliseconds the call took, if known.
    pub latency_ms: Option<i64>,
    /// Milliseconds to the first output, if any came.
    pub first_token_ms: Option<i64>,
    /// `ok`, or the failure code.
    pub outcome: String,
}

/// A completed model call of an attempt: the step it adds to the task's transcript.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepRecord {
    /// The step, from 0.
    pub step: i32,
    /// Transcript position of its assistant message.
    pub position: i32,
    /// The answer text, NUL-free.
    pub text: String,
    /// The tools the model called.
    pub tool_calls: Vec<agentplane_core::tools::ToolCallRecord>,
    /// Why generation stopped.
    pub finish_reason: String,
    /// The call that produced it.
    pub call: ModelCallRecord,
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResultOutcome {
    /// With an answer.
    Success {
        /// Full answer, NUL-free.
        output: String,
        /// Why generation stopped.
        finish_reason: String,
        /// Provider calls not reported as steps or usage.
        calls: Vec<ModelCallRecord>,
        /// Transcript position of the step it answers with; 0 to append the answer.
        position: i32,
    },
    /// The model called tools; the task waits for their outputs.
    RequiresAction {
        /// Transcript position of the recorded step with the calls.
        position: i32,
    },
    /// Without one.
    Failure {
        /// Machine-readable reason.
        code: String,
        /// Detail, NUL-free and cut to the limit.
        message: String,
        /// Whether another attempt may succeed.
        retryable: bool,
    },
}

/// A message of a running session, after the hello.
#[derive(Clone, Debug, PartialEq)]
pub enum Report {
    /// Renew these leases.
    Heartbeat(Vec<Lease>),
    /// A delta of an attempt's output.
    Output {
        /// The attempt.
        lease: Lease,
        /// Its index within the attempt.
        index: i64,
        /// The text, NUL-free.
        text: String,
    },
    /// The attempt's output before `index` is withdrawn (a model call failed after
    /// streaming it); its next delta has `index`.
    OutputReset {
        /// The attempt.
        lease: Lease,
        /// Index of the attempt's next delta.
        index: i64,
    },
    /// A progress event for the event log.
    Event {
        /// The attempt.
        lease: Lease,
        /// `task.` and a name.
        action: String,
        /// Details, with the attempt added.
        data: serde_json::Value,
    },
    /// The end of an attempt.
    Result {
        /// The attempt.
        lease: Lease,
        /// How it ended.
        outcome: ResultOutcome,
    },
    /// A result whose lease parsed but whose content did not: acknowledged as not
    /// recorded, so the worker stops resending it and the lease runs out.
    MalformedResult {
        /// The attempt.
        lease: Lease,
        /// What was wrong.
        reason: String,
    },
    /// An attempt given back unfinished.
    Release(Lease),
    /// A completed model call.
    Step {
        /// The attempt that made it.
        lease: Lease,
        /// The step.
        step: Box<StepRecord>,
    },
    /// Model calls that failed after consuming tokens.
    Usage {
        /// The attempt that made them.
        lease: Lease,
        /// The calls.
        calls: Vec<ModelCallRecord>,
    },
}

impl Report {
    /// The attempt the report is about; `None` for a heartbeat, which names many.
    pub fn lease(&self) -> Option<Lease> {
        match self {
            Report::Heartbeat(_) => None,
            Report::Output { lease, .. }
            | Report::OutputReset { lease, .. }
            | Report::Event { lease, .. }
            | Report::Result { lease, .. }
            | Report::MalformedResult { lease, .. }
            | Report::Step { lease, .. }
            | Report::Usage { lease, .. }
            | Report::Release(lease) => Some(*lease),
        }
    }
}
