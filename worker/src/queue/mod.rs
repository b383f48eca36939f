//! The task queue in Postgres: claiming pending tasks and reaping expired leases.
//!
//! The worker connects as a member of `agentplane_worker`, whose row-level security policies
//! let it read agents, tasks and transcripts of every workspace, update tasks, and append
//! events. Each state change commits together with its event rows and notifications.

mod choose;
mod claim;
mod reap;

use std::time::Duration;

use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

pub use claim::claim_tasks;
pub use reap::{LeaseExpiryOutcome, lease_expiry_outcome, reap_expired_leases};

/// Channel the control plane notifies (empty payload) when a task becomes claimable.
pub const TASK_READY_CHANNEL: &str = "agentplane_task_ready";
/// Channel notified with `{"t":"<tenant>","k":"<task>"}` when a task's status changes.
pub const TASK_STATE_CHANNEL: &str = "agentplane_task_state";
/// Channel notified with `{"t":"<tenant>"}` when events were appended for a tenant.
pub const EVENTS_CHANNEL: &str = "agentplane_events";

/// A task this worker now holds the lease of, with everything needed to run it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedTask {
    /// The workspace of the task.
    pub tenant_id: Uuid,
    /// The task.
    pub task_id: Uuid,
    /// The agent that runs it.
    pub agent_id: Uuid,
    /// The attempt this claim started: the fencing token of every message about it.
    pub attempt: i32,
    /// The agent's settings as read at claim time.
    pub agent: AgentSettings,
    /// The task's transcript, in position order.
    pub messages: Vec<TranscriptMessage>,
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
}

/// One message of a task's transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptMessage {
    /// `system`, `user` or `assistant`, as stored; checked by the runner.
    pub role: String,
    /// The text.
    pub content: String,
}

/// The payload of [`TASK_STATE_CHANNEL`] for one task.
pub(crate) fn task_state_payload(tenant_id: Uuid, task_id: Uuid) -> String {
    format!(r#"{{"t":"{tenant_id}","k":"{task_id}"}}"#)
}

/// The payload of [`EVENTS_CHANNEL`] for one tenant.
pub(crate) fn events_payload(tenant_id: Uuid) -> String {
    format!(r#"{{"t":"{tenant_id}"}}"#)
}

/// Notifications to send when a transaction commits.
#[derive(Debug, Default)]
struct Notifications {
    channels: Vec<String>,
    payloads: Vec<String>,
}

impl Notifications {
    /// `task_state` for every task, then `events` once per distinct tenant.
    fn for_changed_tasks(tasks: impl IntoIterator<Item = (Uuid, Uuid)>) -> Self {
        let mut notifications = Self::default();
        let mut tenants = Vec::new();
        for (tenant_id, task_id) in tasks {
            notifications.push(TASK_STATE_CHANNEL, task_state_payload(tenant_id, task_id));
            tenants.push(tenant_id);
        }
        tenants.sort_unstable();
        tenants.dedup();
        for tenant_id in tenants {
            notifications.push(EVENTS_CHANNEL, events_payload(tenant_id));
        }
        notifications
    }

    fn push(&mut self, channel: &str, payload: String) {
        self.channels.push(channel.to_owned());
        self.payloads.push(payload);
    }

    /// Queues the notifications in `tx`; Postgres delivers them on commit.
    async fn send(self, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        if self.channels.is_empty() {
            return Ok(());
        }
        let connection: &mut PgConnection = tx;
        sqlx::query(
            "SELECT pg_notify(n.channel, n.payload) \
             FROM unnest($1::text[], $2::text[]) AS n(channel, payload)",
        )
        .bind(self.channels)
        .bind(self.payloads)
        .execute(connection)
        .await?;
        Ok(())
    }
}

/// Bounds the waits of the current transaction, as `SET LOCAL` does: a lock not granted
/// within 5 s fails its statement with SQLSTATE 55P03, and any statement running 30 s fails
/// with 57014, so a stuck lock cannot hold a claim (or shutdown) forever.
async fn bound_waits(connection: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT set_config('lock_timeout', '5s', true), \
                set_config('statement_timeout', '30s', true)",
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
    use super::*;

    #[test]
    fn payloads_are_compact_json() {
        let tenant = Uuid::from_u128(1);
        let task = Uuid::from_u128(2);
        let state: serde_json::Value =
            serde_json::from_str(&task_state_payload(tenant, task)).expect("json");
        assert_eq!(state["t"], tenant.to_string());
        assert_eq!(state["k"], task.to_string());
        assert_eq!(
            events_payload(tenant),
            format!(r#"{{"t":"{tenant}"}}"#),
            "no spaces, one key"
        );
    }

    #[test]
    fn changed_tasks_notify_each_task_and_each_tenant_once() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let notifications = Notifications::for_changed_tasks([
            (b, Uuid::from_u128(10)),
            (a, Uuid::from_u128(11)),
            (b, Uuid::from_u128(12)),
        ]);
        let count = |channel: &str| {
            notifications
                .channels
                .iter()
                .filter(|name| *name == channel)
                .count()
        };
        assert_eq!(count(TASK_STATE_CHANNEL), 3);
        assert_eq!(count(EVENTS_CHANNEL), 2);
    }
}
