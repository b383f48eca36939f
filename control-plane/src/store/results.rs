//! Recording many attempts' endings in one transaction: a fixed number of set-based
//! statements per batch, whatever its size, so a worker's results cost a commit per batch
//! instead of a commit and about ten statements per task.

use std::collections::{HashMap, HashSet};

use agentplane_core::notify::Notification;
use agentplane_core::retry::{RetryDecision, decide_retry};
use uuid::Uuid;

mod marks;

use super::{LeaseCheck, StoreResult, TenantTx};
use crate::domain::worker::{Lease, ModelCallRecord, ResultOutcome};
use crate::ids::{TaskId, WorkerId};
use agentplane_core::tools::{RequiredAction, ToolCallRecord};
use sqlx::types::Json;

/// The fencing columns of an attempt a worker holds, locked for the batch, and the version
/// of its row (`ctid`) that the batch's UPDATE fetches.
#[derive(sqlx::FromRow)]
struct Held {
    id: TaskId,
    attempt: i32,
    releases: i32,
    max_attempts: i32,
    row_version: String,
}

/// Column arrays of the batch, filled in order and bound with `unnest`.
#[derive(Default)]
struct Columns<'a> {
    done_ids: Vec<TaskId>,
    done_versions: Vec<String>,
    outputs: Vec<&'a str>,
    finish_reasons: Vec<&'a str>,
    message_ids: Vec<Uuid>,
    message_tasks: Vec<TaskId>,
    message_contents: Vec<&'a str>,
    message_attempts: Vec<i32>,
    message_positions: Vec<i32>,
    calls: Vec<(Lease, &'a ModelCallRecord)>,
    waiting_ids: Vec<TaskId>,
    waiting_versions: Vec<String>,
    waiting_actions: Vec<String>,
    failed_ids: Vec<TaskId>,
    failed_versions: Vec<String>,
    codes: Vec<&'a str>,
    messages: Vec<&'a str>,
    retries: Vec<bool>,
    delays: Vec<f64>,
    event_ids: Vec<Uuid>,
    event_tasks: Vec<TaskId>,
    event_actions: Vec<&'static str>,
    event_data: Vec<String>,
}

impl TenantTx {
    /// Records how these attempts ended, each only if `worker` still holds it, all in this
    /// transaction: task rows, assistant messages, usage records, events and notifications.
    /// An attempt that waits for tool outputs needs its step (with the calls) recorded
    /// first. Returns one check per ending, in order.
    pub async fn record_results(
        &mut self,
        worker: WorkerId,
        endings: &[(Lease, ResultOutcome)],
        stored_steps: &HashSet<(TaskId, i32)>,
        actor: &str,
    ) -> StoreResult<Vec<LeaseCheck>> {
        if endings.is_empty() {
            return Ok(Vec::new());
        }
        // Each held attempt is probed by primary key (a subquery that locks rows is never
        // flattened into a join), in id order: a semi-join of the keys with the worker's
        // running tasks compared every pair, which grew with the square of the batch.
        let mut keys: Vec<(TaskId, i32)> = endings
            .iter()
            .map(|(lease, _)| (lease.task, lease.attempt))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let (ids, attempts): (Vec<TaskId>, Vec<i32>) = keys.into_iter().unzip();
        let held: HashMap<(TaskId, i32), Held> = self
            .query_as::<Held>(
                "SELECT t.id, t.attempt, t.releases, t.max_attempts, t.row_version \
                 FROM unnest($2::uuid[], $3::int[]) AS k(id, attempt) \
                 CROSS JOIN LATERAL ( \
                     SELECT id, attempt, releases, max_attempts, ctid::text AS row_version \
                     FROM tasks \
                     WHERE tenant_id = (SELECT $1::uuid) AND id = k.id AND attempt = k.attempt \
                       AND status = (SELECT 'running'::text) AND worker_id = $4 \
                     FOR UPDATE) t",
            )
            .bind(&ids)
            .bind(&attempts)
            .bind(worker)
            .fetch_all(self.executor())
            .await?
            .into_iter()
            .map(|held| ((held.id, held.attempt), held))
            .collect();

        let waits = self.recorded_tool_calls(endings).await?;
        // A held attempt that waits on a step which was never recorded (its report was
        // refused or lost) cannot wait: it fails, retryable, so that the task is not left
        // running until its lease lapses.
        let unrecorded: HashMap<(TaskId, i32), ResultOutcome> = endings
            .iter()
            .filter_map(|(lease, outcome)| match outcome {
                ResultOutcome::RequiresAction { position }
                    if !waits.contains_key(&(lease.task, *position)) =>
                {
                    Some((
                        (lease.task, lease.attempt),
                        ResultOutcome::Failure {
                            code: "step_not_recorded".to_owned(),
                            message: format!(
                                "the model's tool calls were not recorded (no step at \
                                 position {position})"
                            ),
                            retryable: true,
                        },
                    ))
                }
                _ => None,
            })
            .collect();

        // The first ending of each held attempt is recorded; a repeat in the same batch is
        // judged afterwards, like any report about an attempt no longer held.
        let mut recorded = HashSet::new();
        let mut columns = Columns::default();
        for (lease, outcome) in endings {
            let key = (lease.task, lease.attempt);
            let Some(held) = held.get(&key) else { continue };
            if !recorded.insert(key) {
                continue;
            }
            let outcome = unrecorded.get(&key).unwrap_or(outcome);
            let wait = match outcome {
                ResultOutcome::RequiresAction { position } => waits.get(&(lease.task, *position)),
                _ => None,
            };
            let answer_stored = match outcome {
                ResultOutcome::Success { position, .. } => {
                    stored_steps.contains(&(lease.task, *position))
                }
                _ => false,
            };
            columns.add(lease, held, outcome, wait, answer_stored);
        }
        self.record_usage(worker, &columns.calls).await?;
        self.mark_tasks(&columns).await?;
        self.write_answers(&columns).await?;
        self.write_events(&columns, actor).await?;
        let finished: Vec<TaskId> = columns
            .done_ids
            .iter()
            .chain(&columns.failed_ids)
            .chain(&columns.waiting_ids)
            .copied()
            .collect();
        if !finished.is_empty() {
            self.query("DELETE FROM task_output_chunks WHERE tenant_id = $1 AND task_id = ANY($2)")
                .bind(&finished)
                .execute(self.executor())
                .await?;
            // No TaskReady: the worker whose slot this frees claims again itself, and other
            // idle workers poll; waking every idle worker per result only made them race.
            let tenant = self.tenant();
            let mut notifications: Vec<Notification> = finished
                .iter()
                .map(|&task| Notification::TaskState { tenant, task })
                .collect();
            notifications.push(Notification::Events { tenant });
            self.notify(&notifications).await?;
        }

        let mut checks = Vec::with_capacity(endings.len());
        let mut answered = HashSet::new();
        for (lease, _) in endings {
            let key = (lease.task, lease.attempt);
            if recorded.contains(&key) && answered.insert(key) {
                checks.push(LeaseCheck::Accepted);
            } else {
                checks.push(self.explain_lost_attempt(worker, *lease).await?);
            }
        }
        Ok(checks)
    }

    /// The recorded steps with tool calls that these endings wait on, by (task, position).
    async fn recorded_tool_calls(
        &mut self,
        endings: &[(Lease, ResultOutcome)],
    ) -> StoreResult<HashMap<(TaskId, i32), RequiredAction>> {
        let (tasks, positions): (Vec<TaskId>, Vec<i32>) = endings
            .iter()
            .filter_map(|(lease, outcome)| match outcome {
                ResultOutcome::RequiresAction { position } => Some((lease.task, *position)),
                _ => None,
            })
            .unzip();
        if tasks.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(TaskId, i32, i32, Json<Vec<ToolCallRecord>>)> = self
            .query_as(
                "SELECT task_id, position, step, tool_calls FROM task_messages \
                 WHERE tenant_id = (SELECT $1::uuid) AND (task_id, position) IN \
                       (SELECT * FROM unnest($2::uuid[], $3::int[])) \
                   AND step IS NOT NULL AND tool_calls IS NOT NULL",
            )
            .bind(&tasks)
            .bind(&positions)
            .fetch_all(self.executor())
            .await?;
        Ok(rows
            .into_iter()
            .map(|(task, position, step, calls)| {
                let action = RequiredAction {
                    step,
                    tool_calls: calls.0,
                };
                ((task, position), action)
            })
            .collect())
    }

    /// Adds the answers that are not in the transcript yet.
    async fn write_answers(&mut self, c: &Columns<'_>) -> StoreResult<()> {
        if c.message_ids.is_empty() {
            return Ok(());
        }
        // The answer's assistant message is normally in the transcript already (its step was
        // reported before the result); this writes it only if that report was lost, and for
        // workers that report no position.
        self.query(
            "INSERT INTO task_messages (tenant_id, id, task_id, position, role, content, attempt) \
             SELECT $1, m.id, m.task_id, \
                    CASE WHEN m.position > 0 THEN m.position \
                         ELSE (SELECT coalesce(max(p.position), -1) + 1 FROM task_messages p \
                               WHERE p.tenant_id = (SELECT $1::uuid) AND p.task_id = m.task_id) END, \
                    'assistant', m.content, m.attempt \
             FROM unnest($2::uuid[], $3::uuid[], $4::text[], $5::int[], $6::int[]) \
                  AS m(id, task_id, content, attempt, position) \
             ON CONFLICT (tenant_id, task_id, position) DO NOTHING",
        )
        .bind(&c.message_ids)
        .bind(&c.message_tasks)
        .bind(&c.message_contents)
        .bind(&c.message_attempts)
        .bind(&c.message_positions)
        .execute(self.executor())
        .await?;
        Ok(())
    }

    async fn write_events(&mut self, c: &Columns<'_>, actor: &str) -> StoreResult<()> {
        if c.event_ids.is_empty() {
            return Ok(());
        }
        self.query(
            "INSERT INTO events (tenant_id, id, actor, action, resource_type, resource_id, data) \
             SELECT $1, e.id, $2, e.action, 'task', e.task_id, e.data::jsonb \
             FROM unnest($3::uuid[], $4::uuid[], $5::text[], $6::text[]) \
                  AS e(id, task_id, action, data)",
        )
        .bind(actor)
        .bind(&c.event_ids)
        .bind(&c.event_tasks)
        .bind(&c.event_actions)
        .bind(&c.event_data)
        .execute(self.executor())
        .await?;
        Ok(())
    }
}

impl<'a> Columns<'a> {
    /// Adds one held attempt's ending to the batch (`wait`: the recorded calls of a
    /// requires-action ending).
    fn add(
        &mut self,
        lease: &Lease,
        held: &Held,
        outcome: &'a ResultOutcome,
        wait: Option<&RequiredAction>,
        answer_stored: bool,
    ) {
        let data = match outcome {
            ResultOutcome::Success {
                output,
                finish_reason,
                calls,
                position,
            } => {
                self.done_ids.push(lease.task);
                self.done_versions.push(held.row_version.clone());
                self.outputs.push(output);
                self.finish_reasons.push(finish_reason);
                // Its step, recorded in this transaction, already holds the answer.
                if !answer_stored {
                    self.message_ids.push(Uuid::now_v7());
                    self.message_tasks.push(lease.task);
                    self.message_contents.push(output);
                    self.message_attempts.push(lease.attempt);
                    self.message_positions.push(*position);
                }
                self.calls.extend(calls.iter().map(|call| (*lease, call)));
                self.event_actions.push("task.succeeded");
                serde_json::json!({
                    "attempt": lease.attempt,
                    "finish_reason": finish_reason,
                })
            }
            ResultOutcome::RequiresAction { .. } => {
                let action = wait.cloned().unwrap_or(RequiredAction {
                    step: 0,
                    tool_calls: Vec::new(),
                });
                self.waiting_ids.push(lease.task);
                self.waiting_versions.push(held.row_version.clone());
                self.waiting_actions
                    .push(serde_json::to_string(&action).unwrap_or_default());
                self.event_actions.push("task.requires_action");
                serde_json::json!({
                    "attempt": lease.attempt,
                    "step": action.step,
                    "tool_call_ids": action.tool_calls.iter().map(|c| &c.id).collect::<Vec<_>>(),
                    "tools": action.tool_calls.iter().map(|c| &c.name).collect::<Vec<_>>(),
                })
            }
            ResultOutcome::Failure {
                code,
                message,
                retryable,
            } => {
                let retry_in =
                    match decide_retry(lease.attempt, held.releases, held.max_attempts, *retryable)
                    {
                        RetryDecision::Retry { delay } => Some(delay),
                        RetryDecision::Fail => None,
                    };
                self.failed_ids.push(lease.task);
                self.failed_versions.push(held.row_version.clone());
                self.codes.push(code);
                self.messages.push(message);
                self.retries.push(retry_in.is_some());
                self.delays.push(retry_in.unwrap_or_default().as_secs_f64());
                self.event_actions.push(if retry_in.is_some() {
                    "task.retrying"
                } else {
                    "task.failed"
                });
                serde_json::json!({
                    "attempt": lease.attempt,
                    "code": code,
                    "message": message,
                    "retry_in_seconds": retry_in.map(|d| d.as_secs()),
                })
            }
        };
        self.event_ids.push(Uuid::now_v7());
        self.event_tasks.push(lease.task);
        self.event_data.push(data.to_string());
    }
}
