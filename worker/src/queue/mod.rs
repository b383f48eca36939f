//! The task queue in Postgres: claiming pending tasks and reaping expired leases.
//!
//! The worker connects as a member of `agentplane_worker`, whose row-level security policies
//! let it read agents, tasks and transcripts of every workspace, update tasks, and append
//! events. Each state change commits together with its event rows and notifications.

mod choose;
mod claim;
mod reap;
mod round;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use agentplane_core::ids::{AgentId, TaskId, TenantId};
use agentplane_core::labels::{self, MAX_LABEL_KEY, MAX_LABEL_VALUE, MAX_LABELS};
use agentplane_core::notify::Notification;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

pub use claim::{Claim, ClaimRequest, claim, claim_tasks};
pub use reap::reap_expired_leases;

/// Labels a worker advertises (region, provider access, hardware): it claims only the tasks
/// of agents whose required labels are all among them, with equal values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerLabels(BTreeMap<String, String>);

/// Why a worker's labels were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelsError(String);

impl fmt::Display for LabelsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LabelsError {}

impl WorkerLabels {
    /// Parses `key=value,key=value` (empty: no labels). Keys are 1 to 63 characters of
    /// `[a-z0-9_.-]` and values at most 256 characters without `,` or NUL, the rules an
    /// agent's required labels are checked against.
    pub fn parse(text: &str) -> Result<Self, LabelsError> {
        let mut parsed = BTreeMap::new();
        for pair in text
            .split(',')
            .map(str::trim)
            .filter(|pair| !pair.is_empty())
        {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(LabelsError(format!("label {pair:?} is not key=value")));
            };
            let (key, value) = (key.trim(), value.trim());
            if !labels::is_valid_key(key) {
                return Err(LabelsError(format!(
                    "label key {key:?} must be 1 to {MAX_LABEL_KEY} characters of [a-z0-9_.-]"
                )));
            }
            if !labels::is_valid_value(value) {
                return Err(LabelsError(format!(
                    "label {key:?} must have a value of at most {MAX_LABEL_VALUE} characters"
                )));
            }
            if parsed.insert(key.to_owned(), value.to_owned()).is_some() {
                return Err(LabelsError(format!("label {key:?} is given twice")));
            }
        }
        if parsed.len() > MAX_LABELS {
            return Err(LabelsError(format!(
                "at most {MAX_LABELS} labels are allowed"
            )));
        }
        Ok(Self(parsed))
    }

    /// The labels as the JSON object `tasks.required_labels` is compared with (`<@`).
    pub fn as_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        )
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for WorkerLabels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, value)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{key}={value}")?;
        }
        Ok(())
    }
}

/// A task this worker now holds the lease of, with everything needed to run it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedTask {
    /// The workspace of the task.
    pub tenant_id: TenantId,
    /// The task.
    pub task_id: TaskId,
    /// The agent that runs it.
    pub agent_id: AgentId,
    /// The attempt this claim started: the fencing token of every message about it.
    pub attempt: i32,
    /// The agent's settings as read at claim time.
    pub agent: AgentSettings,
    /// The task's transcript, in position order.
    pub messages: Vec<TranscriptMessage>,
    /// When the task became due: its wait in the queue ends at this claim.
    pub run_at: DateTime<Utc>,
    /// W3C `traceparent` of the call that created the task (`None` when it was not traced);
    /// the attempt's span continues that trace.
    pub traceparent: Option<String>,
}

/// The settings of an agent that matter to running one of its tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSettings {
    /// Provider name, as stored in `agents.provider` (e.g. `echo`).
    pub provider: String,
    /// The provider's model name.
    pub model: String,
    /// Generation parameters as stored (`{"temperature": .., "max_output_tokens": .., ..}`);
    /// parsed by the runner so that one malformed agent cannot block the queue.
    pub generation: serde_json::Value,
    /// How long one attempt may run.
    pub task_timeout: Duration,
    /// The tools the model may call, as stored (`[{"name", "description", "parameters"}]`);
    /// parsed by the runner.
    pub tools: serde_json::Value,
    /// Model calls one task may make.
    pub max_steps: i32,
    /// Fallback (provider, model) pairs as stored (`[{"provider", "model"}]`); parsed by the
    /// runner.
    pub fallbacks: serde_json::Value,
}

/// One message of a task's transcript: the input, and the steps recorded so far.
#[derive(Debug, Clone, PartialEq)]
pub struct TranscriptMessage {
    /// Its position in the transcript.
    pub position: i32,
    /// `system`, `user`, `assistant` or `tool`, as stored; checked by the runner.
    pub role: String,
    /// The text.
    pub content: String,
    /// For an assistant message recorded by a model call, its step.
    pub step: Option<i32>,
    /// For an assistant message, the tools it called, as stored
    /// (`[{"id", "name", "arguments"}]`).
    pub tool_calls: Option<serde_json::Value>,
    /// For a tool output, the call it answers.
    pub tool_call_id: Option<String>,
    /// For a tool output, whether the tool failed.
    pub is_error: bool,
    /// For a recorded step, why its generation stopped (none for steps recorded before the
    /// reason was kept).
    pub finish_reason: Option<String>,
}

/// Notifications to send when a transaction commits.
#[derive(Debug, Default)]
struct Notifications(Vec<Notification>);

impl Notifications {
    /// `task_state` for every task, then `events` once per distinct tenant.
    fn for_changed_tasks(tasks: impl IntoIterator<Item = (TenantId, TaskId)>) -> Self {
        let mut notifications = Self::default();
        let mut tenants = Vec::new();
        for (tenant, task) in tasks {
            notifications.push(Notification::TaskState { tenant, task });
            tenants.push(tenant);
        }
        tenants.sort_unstable();
        tenants.dedup();
        for tenant in tenants {
            notifications.push(Notification::Events { tenant });
        }
        notifications
    }

    fn push(&mut self, notification: Notification) {
        self.0.push(notification);
    }

    /// Queues the notifications in `tx`; Postgres delivers them on commit.
    async fn send(self, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        agentplane_core::notify::send_all(tx, &self.0).await
    }
}

/// Bounds the waits of the current transaction (a claim's or the reaper's), as `SET LOCAL`
/// does: a lock not granted within 5 s fails its statement with SQLSTATE 55P03, and any
/// statement running 30 s fails with 57014, so a stuck lock cannot hold a claim (or
/// shutdown) forever. It also turns JIT compilation off: the planner's cost of the claim
/// grows with the backlog and passes `jit_above_cost` at a few thousand pending tasks, and
/// then every claim spent 13-19 ms compiling a query that runs in under 1 ms (a third of
/// all CPU in the profile). And it plans each statement for its parameters: a generic plan
/// that sqlx's prepared statement settles on while the table is small is kept until
/// autovacuum next analyzes `tasks`, and one made from a small table scans it whole once
/// the backlog has grown. Random page reads are costed as what they are for a table in
/// memory (1.1, PostgreSQL's advice for SSDs, instead of the default 4 for spinning disks),
/// so that fetching a claim's few hundred rows by version or key is not costed above
/// reading a young table whole.
async fn bound_waits(connection: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT set_config('lock_timeout', '5s', true), \
                set_config('statement_timeout', '30s', true), \
                set_config('jit', 'off', true), \
                set_config('plan_cache_mode', 'force_custom_plan', true), \
                set_config('random_page_cost', '1.1', true)",
    )
    .execute(connection)
    .await?;
    Ok(())
}

/// Whether `error` is a lock timeout (55P03) or statement timeout (57014) set by
/// [`bound_waits`]: the transaction gave up waiting, and is best treated as having found
/// nothing to do.
fn is_wait_timeout(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|error| error.code())
        .is_some_and(|code| code == "55P03" || code == "57014")
}

/// Splits pairs into the two arrays that `unnest($1::uuid[], $2::uuid[])` takes.
fn unzip_pairs(pairs: impl IntoIterator<Item = (Uuid, Uuid)>) -> (Vec<Uuid>, Vec<Uuid>) {
    pairs.into_iter().unzip()
}

#[cfg(test)]
mod tests {
    use agentplane_core::notify::channel;

    use super::*;

    #[test]
    fn changed_tasks_notify_each_task_and_each_tenant_once() {
        let (a, b) = (TenantId(Uuid::from_u128(1)), TenantId(Uuid::from_u128(2)));
        let notifications = Notifications::for_changed_tasks([
            (b, TaskId(Uuid::from_u128(10))),
            (a, TaskId(Uuid::from_u128(11))),
            (b, TaskId(Uuid::from_u128(12))),
        ]);
        let count = |channel: &str| {
            notifications
                .0
                .iter()
                .filter(|n| n.channel() == channel)
                .count()
        };
        assert_eq!(count(channel::TASK_STATE), 3);
        assert_eq!(count(channel::EVENTS), 2);
    }

    #[test]
    fn worker_labels_parse_and_round_trip() {
        let labels = WorkerLabels::parse(" region=eu-west-1, gpu=a100 ,,").unwrap();
        assert_eq!(labels.to_string(), "gpu=a100,region=eu-west-1");
        assert_eq!(
            labels.as_json(),
            serde_json::json!({"gpu": "a100", "region": "eu-west-1"})
        );
        assert!(WorkerLabels::parse("").unwrap().is_empty());
        for bad in ["gpu", "GPU=x", "=x", "a=1,a=2"] {
            assert!(WorkerLabels::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
