//! Tasks of one workspace: creation, reads, cancellation, and what workers report.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use super::{NewEvent, StoreError, StoreResult, TenantTx, channel, classify};
use crate::domain::task::{NewTask, Role, TaskStatus, retry_backoff};
use crate::ids::{AgentId, TaskId, TenantId, WorkerId};

/// Largest NOTIFY payload sent (PostgreSQL's limit is 8000 bytes).
const MAX_NOTIFY_PAYLOAD: usize = 7900;

/// A task as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct TaskRow {
    /// Owning workspace.
    pub tenant_id: TenantId,
    /// Task id.
    pub id: TaskId,
    /// Agent.
    pub agent_id: AgentId,
    /// Status name.
    pub status: String,
    /// Priority.
    pub priority: i32,
    /// Earliest start.
    pub run_at: DateTime<Utc>,
    /// Labels.
    pub labels: Json<BTreeMap<String, String>>,
    /// Current attempt.
    pub attempt: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// Worker holding (or that last held) the task.
    pub worker_id: Option<Uuid>,
    /// Final answer.
    pub output: Option<String>,
    /// Why generation stopped.
    pub finish_reason: Option<String>,
    /// Prompt tokens of the successful attempt.
    pub input_tokens: i64,
    /// Generated tokens of the successful attempt.
    pub output_tokens: i64,
    /// Cost of the successful attempt.
    pub cost_micros: i64,
    /// Last failure reason.
    pub error_code: Option<String>,
    /// Last failure detail.
    pub error_message: Option<String>,
    /// Idempotency key.
    pub request_id: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Start of the current attempt.
    pub started_at: Option<DateTime<Utc>>,
    /// End time.
    pub ended_at: Option<DateTime<Utc>>,
}

impl TaskRow {
    /// The parsed status (unknown names cannot pass the CHECK constraint).
    pub fn status(&self) -> TaskStatus {
        TaskStatus::parse(&self.status).unwrap_or(TaskStatus::Failed)
    }
}

macro_rules! columns {
    () => {
        "tenant_id, id, agent_id, status, priority, run_at, labels, attempt, \
    max_attempts, worker_id, output, finish_reason, input_tokens, output_tokens, cost_micros, \
    error_code, error_message, request_id, created_at, updated_at, started_at, ended_at"
    };
}

/// A transcript message.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct TaskMessageRow {
    /// Message id.
    pub id: Uuid,
    /// Position in the conversation.
    pub position: i32,
    /// Role name.
    pub role: String,
    /// Text.
    pub content: String,
    /// Attempt that produced it (0 for input).
    pub attempt: i32,
    /// When recorded.
    pub created_at: DateTime<Utc>,
}

impl TaskMessageRow {
    /// The parsed role.
    pub fn role(&self) -> Role {
        Role::parse(&self.role).unwrap_or(Role::User)
    }
}

/// One stored output delta.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct OutputChunk {
    /// Attempt.
    pub attempt: i32,
    /// Index within the attempt.
    pub seq: i64,
    /// Text.
    pub content: String,
}

/// A task with the output of its current attempt so far.
#[derive(Clone, Debug)]
pub struct TaskSnapshotRow {
    /// The task.
    pub task: TaskRow,
    /// Stored deltas of the current attempt, in order.
    pub chunks: Vec<OutputChunk>,
}

/// One model call reported by a worker.
#[derive(Clone, Debug)]
pub struct ModelCallRecord {
    /// Agent-loop step.
    pub step: i32,
    /// Idempotency id sent to the provider.
    pub provider_request_id: String,
    /// Model.
    pub model: String,
    /// Prompt tokens.
    pub input_tokens: i64,
    /// Generated tokens.
    pub output_tokens: i64,
    /// Cost.
    pub cost_micros: i64,
}

/// How an attempt ended.
#[derive(Clone, Debug)]
pub enum ResultOutcome {
    /// With an answer.
    Success {
        /// Full answer.
        output: String,
        /// Why generation stopped.
        finish_reason: String,
        /// Provider calls made.
        calls: Vec<ModelCallRecord>,
    },
    /// Without one.
    Failure {
        /// Machine-readable reason.
        code: String,
        /// Detail.
        message: String,
        /// Whether another attempt may succeed.
        retryable: bool,
    },
}

/// Whether a worker's report about an attempt was taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseCheck {
    /// Recorded now.
    Accepted,
    /// An identical report was recorded earlier.
    AlreadyRecorded,
    /// Not recorded: the worker does not hold this attempt.
    Rejected(String),
}

impl TenantTx {
    /// Queues a task for a live agent, or returns the task an earlier call with the same
    /// request id created. The flag says whether this call created it.
    pub async fn create_task(
        &mut self,
        new: &NewTask,
        actor: &str,
    ) -> StoreResult<(TaskRow, bool)> {
        if let Some(request_id) = &new.request_id
            && let Some(existing) = self.task_by_request_id(request_id).await?
        {
            return Ok((existing, false));
        }
        // FOR SHARE on both rows: a concurrent DeleteAgent or DeleteWorkspace waits for this
        // task to commit and then cancels it, instead of leaving it pending forever.
        self.share_lock_workspace().await?;
        let agent = self.share_lock_agent(new.agent_id).await?;
        let id = TaskId::generate();
        let task = sqlx::query_as::<_, TaskRow>(concat!(
            "INSERT INTO tasks (tenant_id, id, agent_id, priority, run_at, labels, max_attempts, \
             request_id) VALUES ($1, $2, $3, $4, greatest(coalesce($5, now()), now()), $6, $7, $8) \
             RETURNING ",
            columns!()
        ))
        .bind(self.tenant)
        .bind(id)
        .bind(new.agent_id)
        .bind(new.priority)
        .bind(new.run_at)
        .bind(Json(&new.labels))
        .bind(agent.max_attempts)
        .bind(new.request_id.as_deref())
        .fetch_one(&mut *self.tx)
        .await
        .map_err(classify)?;

        let system = (!agent.system_prompt.is_empty())
            .then_some((Role::System, agent.system_prompt.as_str()));
        let messages = system
            .into_iter()
            .chain(new.input.iter().map(|m| (m.role, m.content.as_str())));
        let (mut ids, mut positions, mut roles, mut contents) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (position, (role, content)) in (0i32..).zip(messages) {
            ids.push(Uuid::now_v7());
            positions.push(position);
            roles.push(role.as_str());
            contents.push(content);
        }
        sqlx::query(
            "INSERT INTO task_messages (tenant_id, id, task_id, position, role, content) \
             SELECT $1, * FROM unnest($2::uuid[], $3::uuid[], $4::int[], $5::text[], $6::text[]) \
             AS m(id, task_id, position, role, content)",
        )
        .bind(self.tenant)
        .bind(&ids)
        .bind(vec![id.0; ids.len()])
        .bind(&positions)
        .bind(&roles)
        .bind(&contents)
        .execute(&mut *self.tx)
        .await
        .map_err(classify)?;

        self.append_event(NewEvent {
            actor,
            action: "task.created",
            resource_type: "task",
            resource_id: id.0,
            request_id: new.request_id.as_deref(),
            data: serde_json::json!({
                "agent_id": new.agent_id,
                "priority": new.priority,
                "input_messages": new.input.len(),
            }),
        })
        .await?;
        self.notify(channel::TASK_READY, &serde_json::Value::Null)
            .await?;
        Ok((task, true))
    }

    /// The task created with this idempotency key, if any.
    pub async fn task_by_request_id(&mut self, request_id: &str) -> StoreResult<Option<TaskRow>> {
        sqlx::query_as::<_, TaskRow>(concat!(
            "SELECT ",
            columns!(),
            " FROM tasks WHERE tenant_id = $1 AND request_id = $2"
        ))
        .bind(self.tenant)
        .bind(request_id)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(classify)
    }

    /// One task.
    pub async fn get_task(&mut self, id: TaskId) -> StoreResult<TaskRow> {
        sqlx::query_as::<_, TaskRow>(concat!(
            "SELECT ",
            columns!(),
            " FROM tasks WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(self.tenant)
        .bind(id)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(classify)?
        .ok_or(StoreError::NotFound("task"))
    }

    /// Tasks before `before` (keyset), newest first, optionally filtered.
    pub async fn list_tasks(
        &mut self,
        status: Option<TaskStatus>,
        agent: Option<AgentId>,
        before: Option<TaskId>,
        limit: i64,
    ) -> StoreResult<Vec<TaskRow>> {
        sqlx::query_as::<_, TaskRow>(concat!(
            "SELECT ",
            columns!(),
            " FROM tasks WHERE tenant_id = $1 \
             AND ($2::text IS NULL OR status = $2) \
             AND ($3::uuid IS NULL OR agent_id = $3) \
             AND ($4::uuid IS NULL OR id < $4) \
             ORDER BY id DESC LIMIT $5"
        ))
        .bind(self.tenant)
        .bind(status.map(TaskStatus::as_str))
        .bind(agent)
        .bind(before)
        .bind(limit)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(classify)
    }

    /// Cancels a pending or running task.
    pub async fn cancel_task(
        &mut self,
        id: TaskId,
        request_id: Option<&str>,
        actor: &str,
    ) -> StoreResult<TaskRow> {
        let task = self.get_task(id).await?;
        if task.status().is_terminal() {
            return Err(StoreError::FailedPrecondition(format!(
                "task is already {}",
                task.status
            )));
        }
        let canceled = self
            .cancel_tasks(&[id], "canceled by request", actor, request_id)
            .await?;
        if canceled == 0 {
            // It finished between the read and the update.
            let task = self.get_task(id).await?;
            return Err(StoreError::FailedPrecondition(format!(
                "task is already {}",
                task.status
            )));
        }
        self.get_task(id).await
    }

    /// Cancels the unfinished tasks of one agent (or of the whole workspace), pending only or
    /// running too. Returns how many were canceled.
    pub async fn cancel_tasks_where(
        &mut self,
        agent: Option<AgentId>,
        include_running: bool,
        reason: &str,
        actor: &str,
        request_id: Option<&str>,
    ) -> StoreResult<u64> {
        let ids: Vec<TaskId> = sqlx::query_scalar(
            "SELECT id FROM tasks WHERE tenant_id = $1 \
             AND ($2::uuid IS NULL OR agent_id = $2) \
             AND (status = 'pending' OR ($3 AND status = 'running')) \
             FOR UPDATE",
        )
        .bind(self.tenant)
        .bind(agent)
        .bind(include_running)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(classify)?;
        self.cancel_tasks(&ids, reason, actor, request_id).await
    }

    /// The guarded cancel of a set of tasks: only pending or running rows change; running
    /// ones get their worker told to stop.
    async fn cancel_tasks(
        &mut self,
        ids: &[TaskId],
        reason: &str,
        actor: &str,
        request_id: Option<&str>,
    ) -> StoreResult<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let changed: Vec<(TaskId, String, i32, Option<Uuid>)> = sqlx::query_as(
            "UPDATE tasks t SET status = 'canceled', lease_expires_at = NULL, \
                    ended_at = now(), updated_at = now(), \
                    error_code = 'canceled', error_message = $3 \
             FROM (SELECT id, status AS old_status FROM tasks \
                   WHERE tenant_id = $1 AND id = ANY($2) FOR UPDATE) old \
             WHERE t.tenant_id = $1 AND t.id = old.id AND t.status IN ('pending', 'running') \
             RETURNING t.id, old.old_status, t.attempt, t.worker_id",
        )
        .bind(self.tenant)
        .bind(ids)
        .bind(reason)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(classify)?;
        if changed.is_empty() {
            return Ok(0);
        }
        // One statement per kind of row, however many tasks: a workspace with a large
        // backlog must not hold its rows (and the event log's read horizon) for long.
        let task_ids: Vec<TaskId> = changed.iter().map(|c| c.0).collect();
        let event_ids: Vec<Uuid> = changed.iter().map(|_| Uuid::now_v7()).collect();
        let was: Vec<&str> = changed.iter().map(|c| c.1.as_str()).collect();
        sqlx::query(
            "INSERT INTO events (tenant_id, id, actor, action, resource_type, resource_id, \
             request_id, data) \
             SELECT $1, e.id, $4, 'task.canceled', 'task', e.task_id, $5, \
                    jsonb_build_object('reason', $6::text, 'was', e.was) \
             FROM unnest($2::uuid[], $3::uuid[], $7::text[]) AS e(id, task_id, was)",
        )
        .bind(self.tenant)
        .bind(&event_ids)
        .bind(&task_ids)
        .bind(actor)
        .bind(request_id)
        .bind(reason)
        .bind(&was)
        .execute(&mut *self.tx)
        .await
        .map_err(classify)?;
        sqlx::query("DELETE FROM task_output_chunks WHERE tenant_id = $1 AND task_id = ANY($2)")
            .bind(self.tenant)
            .bind(&task_ids)
            .execute(&mut *self.tx)
            .await
            .map_err(classify)?;
        let (cancel_ids, cancel_attempts, cancel_workers): (Vec<TaskId>, Vec<i32>, Vec<Uuid>) =
            changed
                .iter()
                .filter(|c| c.1 == "running")
                .filter_map(|c| c.3.map(|w| (c.0, c.2, w)))
                .fold(
                    (Vec::new(), Vec::new(), Vec::new()),
                    |mut acc, (id, attempt, worker)| {
                        acc.0.push(id);
                        acc.1.push(attempt);
                        acc.2.push(worker);
                        acc
                    },
                );
        sqlx::query(
            "SELECT pg_notify($2, json_build_object('t', $1::uuid, 'k', k)::text) \
             FROM unnest($3::uuid[]) AS k",
        )
        .bind(self.tenant)
        .bind(channel::TASK_STATE)
        .bind(&task_ids)
        .execute(&mut *self.tx)
        .await
        .map_err(classify)?;
        sqlx::query(
            "SELECT pg_notify($2, json_build_object('t', $1::uuid, 'k', c.k, 'a', c.a, 'w', c.w)::text) \
             FROM unnest($3::uuid[], $4::int[], $5::uuid[]) AS c(k, a, w)",
        )
        .bind(self.tenant)
        .bind(channel::TASK_CANCEL)
        .bind(&cancel_ids)
        .bind(&cancel_attempts)
        .bind(&cancel_workers)
        .execute(&mut *self.tx)
        .await
        .map_err(classify)?;
        self.notify(channel::EVENTS, &serde_json::json!({ "t": self.tenant }))
            .await?;
        self.notify(channel::TASK_READY, &serde_json::Value::Null)
            .await?;
        Ok(changed.len() as u64)
    }

    /// Drops live output of a task that stopped running, tells watchers, and wakes workers:
    /// a slot under the agent's max_concurrency may have opened.
    async fn task_left_running(&mut self, id: TaskId) -> StoreResult<()> {
        self.notify(channel::TASK_READY, &serde_json::Value::Null)
            .await?;
        sqlx::query("DELETE FROM task_output_chunks WHERE tenant_id = $1 AND task_id = $2")
            .bind(self.tenant)
            .bind(id)
            .execute(&mut *self.tx)
            .await
            .map_err(classify)?;
        self.notify_task_state(id).await
    }

    async fn notify_task_state(&mut self, id: TaskId) -> StoreResult<()> {
        let payload = serde_json::json!({ "t": self.tenant, "k": id });
        self.notify(channel::TASK_STATE, &payload).await
    }

    /// A page of a task's transcript after `after_position`.
    pub async fn list_task_messages(
        &mut self,
        task: TaskId,
        after_position: Option<i32>,
        limit: i64,
    ) -> StoreResult<Vec<TaskMessageRow>> {
        self.get_task(task).await?;
        sqlx::query_as::<_, TaskMessageRow>(
            "SELECT id, position, role, content, attempt, created_at FROM task_messages \
             WHERE tenant_id = $1 AND task_id = $2 AND ($3::int IS NULL OR position > $3) \
             ORDER BY position LIMIT $4",
        )
        .bind(self.tenant)
        .bind(task)
        .bind(after_position)
        .bind(limit)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(classify)
    }

    /// The task and every stored delta of its current attempt.
    pub async fn task_snapshot(&mut self, id: TaskId) -> StoreResult<TaskSnapshotRow> {
        let task = self.get_task(id).await?;
        let chunks = self.output_after(id, task.attempt, -1).await?;
        Ok(TaskSnapshotRow { task, chunks })
    }

    /// Stored deltas of one attempt with an index above `after`.
    pub async fn output_after(
        &mut self,
        id: TaskId,
        attempt: i32,
        after: i64,
    ) -> StoreResult<Vec<OutputChunk>> {
        sqlx::query_as::<_, OutputChunk>(
            "SELECT attempt, seq, content FROM task_output_chunks \
             WHERE tenant_id = $1 AND task_id = $2 AND attempt = $3 AND seq > $4 ORDER BY seq",
        )
        .bind(self.tenant)
        .bind(id)
        .bind(attempt)
        .bind(after)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(classify)
    }

    /// Extends the leases `worker` holds on these attempts; returns the ones renewed.
    pub async fn renew_leases(
        &mut self,
        worker: WorkerId,
        leases: &[(TaskId, i32)],
        lease: Duration,
    ) -> StoreResult<Vec<(TaskId, i32)>> {
        let (ids, attempts): (Vec<TaskId>, Vec<i32>) = leases.iter().copied().unzip();
        sqlx::query_as(
            "UPDATE tasks t SET lease_expires_at = now() + make_interval(secs => $5) \
             FROM unnest($2::uuid[], $3::int[]) AS l(id, attempt) \
             WHERE t.tenant_id = $1 AND t.id = l.id AND t.attempt = l.attempt \
               AND t.status = 'running' AND t.worker_id = $4 \
             RETURNING t.id, t.attempt",
        )
        .bind(self.tenant)
        .bind(&ids)
        .bind(&attempts)
        .bind(worker)
        .bind(lease.as_secs_f64())
        .fetch_all(&mut *self.tx)
        .await
        .map_err(classify)
    }

    /// Stores one output delta of the attempt `worker` holds and publishes it. Returns false
    /// if the worker does not hold the attempt (or the delta was stored before).
    pub async fn append_output(
        &mut self,
        worker: WorkerId,
        id: TaskId,
        attempt: i32,
        seq: i64,
        content: &str,
    ) -> StoreResult<bool> {
        let inserted = sqlx::query(
            "INSERT INTO task_output_chunks (tenant_id, task_id, attempt, seq, content) \
             SELECT $1, $2, $3, $4, $5 WHERE EXISTS ( \
                 SELECT 1 FROM tasks WHERE tenant_id = $1 AND id = $2 AND attempt = $3 \
                 AND status = 'running' AND worker_id = $6 FOR SHARE) \
             ON CONFLICT DO NOTHING",
        )
        .bind(self.tenant)
        .bind(id)
        .bind(attempt)
        .bind(seq)
        .bind(content)
        .bind(worker)
        .execute(&mut *self.tx)
        .await
        .map_err(classify)?
        .rows_affected()
            == 1;
        if inserted {
            // Notification payloads are limited to 8000 bytes after JSON escaping; without
            // the text, watchers read it from the table.
            let mut payload = serde_json::json!({ "t": self.tenant, "k": id, "a": attempt, "i": seq, "x": content });
            if payload.to_string().len() > MAX_NOTIFY_PAYLOAD {
                payload["x"] = serde_json::Value::Null;
            }
            self.notify(channel::TASK_OUTPUT, &payload).await?;
        }
        Ok(inserted)
    }

    /// Records how an attempt ended, if `worker` still holds it: the task row, the assistant
    /// message, usage records and the event, all in this transaction.
    pub async fn record_result(
        &mut self,
        worker: WorkerId,
        id: TaskId,
        attempt: i32,
        outcome: &ResultOutcome,
        actor: &str,
    ) -> StoreResult<LeaseCheck> {
        let held = self.lock_held_attempt(worker, id, attempt).await?;
        let Some(task) = held else {
            return self.explain_lost_attempt(worker, id, attempt).await;
        };
        match outcome {
            ResultOutcome::Success {
                output,
                finish_reason,
                calls,
            } => {
                let (input_tokens, output_tokens, cost) =
                    calls.iter().fold((0i64, 0i64, 0i64), |acc, c| {
                        (
                            acc.0.saturating_add(c.input_tokens),
                            acc.1.saturating_add(c.output_tokens),
                            acc.2.saturating_add(c.cost_micros),
                        )
                    });
                sqlx::query(
                    "UPDATE tasks SET status = 'succeeded', output = $3, finish_reason = $4, \
                     input_tokens = $5, output_tokens = $6, cost_micros = $7, \
                     lease_expires_at = NULL, ended_at = now(), updated_at = now(), \
                     error_code = NULL, error_message = NULL \
                     WHERE tenant_id = $1 AND id = $2",
                )
                .bind(self.tenant)
                .bind(id)
                .bind(output)
                .bind(finish_reason)
                .bind(input_tokens)
                .bind(output_tokens)
                .bind(cost)
                .execute(&mut *self.tx)
                .await
                .map_err(classify)?;
                sqlx::query(
                    "INSERT INTO task_messages (tenant_id, id, task_id, position, role, content, attempt) \
                     SELECT $1, $2, $3, coalesce(max(position), -1) + 1, 'assistant', $4, $5 \
                     FROM task_messages WHERE tenant_id = $1 AND task_id = $3",
                )
                .bind(self.tenant)
                .bind(Uuid::now_v7())
                .bind(id)
                .bind(output)
                .bind(attempt)
                .execute(&mut *self.tx)
                .await
                .map_err(classify)?;
                for call in calls {
                    sqlx::query(
                        "INSERT INTO usage_records (tenant_id, id, task_id, attempt, step, provider, \
                         model, provider_request_id, input_tokens, output_tokens, cost_micros) \
                         SELECT $1, $2, $3, $4, $5, a.provider, $6, $7, $8, $9, $10 \
                         FROM agents a WHERE a.tenant_id = $1 AND a.id = $11 \
                         ON CONFLICT (tenant_id, provider_request_id) DO NOTHING",
                    )
                    .bind(self.tenant)
                    .bind(Uuid::now_v7())
                    .bind(id)
                    .bind(attempt)
                    .bind(call.step)
                    .bind(&call.model)
                    .bind(&call.provider_request_id)
                    .bind(call.input_tokens)
                    .bind(call.output_tokens)
                    .bind(call.cost_micros)
                    .bind(task.agent_id)
                    .execute(&mut *self.tx)
                    .await
                    .map_err(classify)?;
                }
                self.append_event(NewEvent {
                    actor,
                    action: "task.succeeded",
                    resource_type: "task",
                    resource_id: id.0,
                    request_id: None,
                    data: serde_json::json!({
                        "attempt": attempt,
                        "finish_reason": finish_reason,
                        "input_tokens": input_tokens,
                        "output_tokens": output_tokens,
                        "cost_micros": cost,
                        "provider_request_ids": calls.iter().map(|c| &c.provider_request_id).collect::<Vec<_>>(),
                    }),
                })
                .await?;
            }
            ResultOutcome::Failure {
                code,
                message,
                retryable,
            } => {
                let retry = *retryable && task.attempt - task.releases < task.max_attempts;
                let backoff = retry_backoff(attempt);
                sqlx::query(
                    "UPDATE tasks SET status = CASE WHEN $5 THEN 'pending' ELSE 'failed' END, \
                     run_at = CASE WHEN $5 THEN now() + make_interval(secs => $6) ELSE run_at END, \
                     ended_at = CASE WHEN $5 THEN NULL ELSE now() END, \
                     lease_expires_at = NULL, updated_at = now(), error_code = $3, error_message = $4 \
                     WHERE tenant_id = $1 AND id = $2",
                )
                .bind(self.tenant)
                .bind(id)
                .bind(code)
                .bind(message)
                .bind(retry)
                .bind(backoff.as_secs_f64())
                .execute(&mut *self.tx)
                .await
                .map_err(classify)?;
                self.append_event(NewEvent {
                    actor,
                    action: if retry {
                        "task.retrying"
                    } else {
                        "task.failed"
                    },
                    resource_type: "task",
                    resource_id: id.0,
                    request_id: None,
                    data: serde_json::json!({
                        "attempt": attempt,
                        "code": code,
                        "message": message,
                        "retry_in_seconds": retry.then_some(backoff.as_secs()),
                    }),
                })
                .await?;
            }
        }
        self.task_left_running(id).await?;
        Ok(LeaseCheck::Accepted)
    }

    /// Gives an attempt back to the queue without counting it against max_attempts.
    pub async fn release_attempt(
        &mut self,
        worker: WorkerId,
        id: TaskId,
        attempt: i32,
        actor: &str,
    ) -> StoreResult<LeaseCheck> {
        if self.lock_held_attempt(worker, id, attempt).await?.is_none() {
            return self.explain_lost_attempt(worker, id, attempt).await;
        }
        sqlx::query(
            "UPDATE tasks SET status = 'pending', releases = releases + 1, run_at = now(), \
             lease_expires_at = NULL, updated_at = now() WHERE tenant_id = $1 AND id = $2",
        )
        .bind(self.tenant)
        .bind(id)
        .execute(&mut *self.tx)
        .await
        .map_err(classify)?;
        self.append_event(NewEvent {
            actor,
            action: "task.released",
            resource_type: "task",
            resource_id: id.0,
            request_id: None,
            data: serde_json::json!({ "attempt": attempt }),
        })
        .await?;
        self.task_left_running(id).await?;
        Ok(LeaseCheck::Accepted)
    }

    /// Whether `worker` holds `attempt` of the task.
    pub async fn holds_attempt(
        &mut self,
        worker: WorkerId,
        id: TaskId,
        attempt: i32,
    ) -> StoreResult<bool> {
        Ok(self.lock_held_attempt(worker, id, attempt).await?.is_some())
    }

    /// Locks the task if `worker` holds `attempt` of it.
    async fn lock_held_attempt(
        &mut self,
        worker: WorkerId,
        id: TaskId,
        attempt: i32,
    ) -> StoreResult<Option<HeldAttempt>> {
        sqlx::query_as::<_, HeldAttempt>(
            "SELECT agent_id, attempt, releases, max_attempts FROM tasks \
             WHERE tenant_id = $1 AND id = $2 AND attempt = $3 AND status = 'running' \
               AND worker_id = $4 FOR UPDATE",
        )
        .bind(self.tenant)
        .bind(id)
        .bind(attempt)
        .bind(worker)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(classify)
    }

    /// Why a report about an attempt the worker no longer holds is not taken, or that it was
    /// taken already (a resend after a reconnect).
    async fn explain_lost_attempt(
        &mut self,
        worker: WorkerId,
        id: TaskId,
        attempt: i32,
    ) -> StoreResult<LeaseCheck> {
        let task = match self.get_task(id).await {
            Ok(task) => task,
            Err(StoreError::NotFound(_)) => {
                return Ok(LeaseCheck::Rejected("task not found".to_owned()));
            }
            Err(error) => return Err(error),
        };
        let same_holder = task.attempt == attempt && task.worker_id == Some(worker.0);
        let reported = matches!(
            task.status(),
            TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Pending
        ) && task.error_code.as_deref() != Some("lease_expired");
        if same_holder && reported {
            return Ok(LeaseCheck::AlreadyRecorded);
        }
        Ok(LeaseCheck::Rejected(if task.attempt != attempt {
            format!(
                "attempt {attempt} is not current (current is {})",
                task.attempt
            )
        } else {
            format!("task is {}", task.status)
        }))
    }
}

#[derive(sqlx::FromRow)]
struct HeldAttempt {
    agent_id: AgentId,
    attempt: i32,
    releases: i32,
    max_attempts: i32,
}
