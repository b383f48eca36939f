//! Tasks as clients see them: creation, reads, transcripts, live output and cancellation.
//! What workers report about their attempts is in `attempts.rs`.

use std::collections::BTreeMap;

use agentplane_core::notify::Notification;
use agentplane_core::tools::{RequiredAction, ToolCallRecord};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use super::{NewEvent, StoreError, StoreResult, TenantTx};
use crate::domain::task::{NewTask, Role, TaskStatus};
use crate::ids::{AgentId, TaskId, TenantId, WorkerId};

/// A task as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct TaskRow {
    /// Owning workspace.
    pub tenant_id: TenantId,
    /// Task id.
    pub id: TaskId,
    /// Agent.
    pub agent_id: AgentId,
    /// Where it is in its life.
    pub status: TaskStatus,
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
    pub worker_id: Option<WorkerId>,
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
    /// Prompt tokens read from vendors' caches, over every call.
    pub cache_read_input_tokens: i64,
    /// Prompt tokens written to vendors' caches, over every call.
    pub cache_write_input_tokens: i64,
    /// Reasoning tokens, over every call.
    pub reasoning_tokens: i64,
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
    /// The tool calls it waits on, while `requires_action`.
    pub required_action: Option<Json<RequiredAction>>,
}

macro_rules! columns {
    () => {
        "tenant_id, id, agent_id, status, priority, run_at, labels, attempt, \
    max_attempts, worker_id, output, finish_reason, input_tokens, output_tokens, cost_micros, \
    error_code, error_message, request_id, created_at, updated_at, started_at, ended_at, \
    required_action, cache_read_input_tokens, cache_write_input_tokens, reasoning_tokens"
    };
}
pub(super) use columns;

/// A transcript message.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct TaskMessageRow {
    /// Message id.
    pub id: Uuid,
    /// Position in the conversation.
    pub position: i32,
    /// Author.
    pub role: Role,
    /// Text.
    pub content: String,
    /// Attempt that produced it (0 for input).
    pub attempt: i32,
    /// When recorded.
    pub created_at: DateTime<Utc>,
    /// For a model step's assistant message, the step.
    pub step: Option<i32>,
    /// For an assistant message, the tools it called.
    pub tool_calls: Option<Json<Vec<ToolCallRecord>>>,
    /// For a tool output, the call it answers.
    pub tool_call_id: Option<String>,
    /// For a tool output, whether the tool failed.
    pub is_error: bool,
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
    /// A reset marker, not a delta: the attempt's output before `seq + 1` was withdrawn
    /// (no text; see `live_output.rs`).
    pub reset: bool,
}

/// A task with the output of its current attempt so far.
#[derive(Clone, Debug)]
pub struct TaskSnapshotRow {
    /// The task.
    pub task: TaskRow,
    /// Stored deltas of the current attempt, in order.
    pub chunks: Vec<OutputChunk>,
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
        // Its transcript's key checks run at COMMIT, planned as batch creation plans them
        // (see the method).
        self.check_keys_at_commit().await?;
        let id = TaskId::generate();
        let task = self
            .query_as::<TaskRow>(concat!(
                "INSERT INTO tasks (tenant_id, id, agent_id, priority, run_at, labels, \
                 max_attempts, request_id, traceparent, required_labels) \
                 VALUES ($1, $2, $3, $4, greatest(coalesce($5, now()), now()), $6, $7, $8, $9, \
                         $10) \
                 RETURNING ",
                columns!()
            ))
            .bind(id)
            .bind(new.agent_id)
            .bind(new.priority)
            .bind(new.run_at)
            .bind(Json(&new.labels))
            .bind(agent.max_attempts)
            .bind(new.request_id.as_deref())
            .bind(new.traceparent.as_deref())
            .bind(&agent.required_labels)
            .fetch_one(self.executor())
            .await?;

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
            roles.push(role);
            contents.push(content);
        }
        self.query(
            "INSERT INTO task_messages (tenant_id, id, task_id, position, role, content) \
             SELECT $1, m.id, $3, m.position, m.role, m.content \
             FROM unnest($2::uuid[], $4::int[], $5::text[], $6::text[]) \
             AS m(id, position, role, content)",
        )
        .bind(&ids)
        .bind(id)
        .bind(&positions)
        .bind(&roles)
        .bind(&contents)
        .execute(self.executor())
        .await?;

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
        self.notify(&[Notification::TaskReady]).await?;
        Ok((task, true))
    }

    /// The task created with this idempotency key, if any.
    pub async fn task_by_request_id(&mut self, request_id: &str) -> StoreResult<Option<TaskRow>> {
        Ok(self
            .query_as::<TaskRow>(concat!(
                "SELECT ",
                columns!(),
                " FROM tasks WHERE tenant_id = $1 AND request_id = $2"
            ))
            .bind(request_id)
            .fetch_optional(self.executor())
            .await?)
    }

    /// One task.
    pub async fn get_task(&mut self, id: TaskId) -> StoreResult<TaskRow> {
        self.query_as::<TaskRow>(concat!(
            "SELECT ",
            columns!(),
            " FROM tasks WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(id)
        .fetch_optional(self.executor())
        .await?
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
        Ok(self
            .query_as::<TaskRow>(concat!(
                "SELECT ",
                columns!(),
                " FROM tasks WHERE tenant_id = $1 \
                 AND ($2::text IS NULL OR status = $2) \
                 AND ($3::uuid IS NULL OR agent_id = $3) \
                 AND ($4::uuid IS NULL OR id < $4) \
                 ORDER BY id DESC LIMIT $5"
            ))
            .bind(status)
            .bind(agent)
            .bind(before)
            .bind(limit)
            .fetch_all(self.executor())
            .await?)
    }

    /// Cancels a pending or running task.
    pub async fn cancel_task(
        &mut self,
        id: TaskId,
        request_id: Option<&str>,
        actor: &str,
    ) -> StoreResult<TaskRow> {
        let task = self.get_task(id).await?;
        if task.status.is_terminal() {
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
        // Rows are locked in id order, as everywhere several tasks are locked at once, so
        // this cannot deadlock with a worker's batch of reports.
        let ids: Vec<TaskId> = self
            .query_scalar(
                "SELECT id FROM tasks WHERE tenant_id = $1 \
                 AND ($2::uuid IS NULL OR agent_id = $2) \
                 AND (status IN ('pending', 'requires_action') OR ($3 AND status = 'running')) \
                 ORDER BY id FOR UPDATE",
            )
            .bind(agent)
            .bind(include_running)
            .fetch_all(self.executor())
            .await?;
        self.cancel_tasks(&ids, reason, actor, request_id).await
    }

    /// The guarded cancel of a set of tasks: only pending, running or requires-action rows
    /// change; running ones get their worker told to stop.
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
        let changed: Vec<(TaskId, TaskStatus, i32, Option<WorkerId>)> = self
            .query_as(
                "UPDATE tasks t SET status = 'canceled', lease_expires_at = NULL, \
                        required_action = NULL, ended_at = now(), updated_at = now(), \
                        error_code = 'canceled', error_message = $3 \
                 FROM (SELECT id, status AS old_status FROM tasks \
                       WHERE tenant_id = $1 AND id = ANY($2) ORDER BY id FOR UPDATE) old \
                 WHERE t.tenant_id = $1 AND t.id = old.id \
                   AND t.status IN ('pending', 'running', 'requires_action') \
                 RETURNING t.id, old.old_status, t.attempt, t.worker_id",
            )
            .bind(ids)
            .bind(reason)
            .fetch_all(self.executor())
            .await?;
        if changed.is_empty() {
            return Ok(0);
        }
        // One statement per kind of row, however many tasks: a workspace with a large
        // backlog must not hold its rows (and the event log's read horizon) for long.
        let task_ids: Vec<TaskId> = changed.iter().map(|c| c.0).collect();
        let event_ids: Vec<Uuid> = changed.iter().map(|_| Uuid::now_v7()).collect();
        let was: Vec<TaskStatus> = changed.iter().map(|c| c.1).collect();
        self.query(
            "INSERT INTO events (tenant_id, id, actor, action, resource_type, resource_id, \
             request_id, data) \
             SELECT $1, e.id, $4, 'task.canceled', 'task', e.task_id, $5, \
                    jsonb_build_object('reason', $6::text, 'was', e.was) \
             FROM unnest($2::uuid[], $3::uuid[], $7::text[]) AS e(id, task_id, was)",
        )
        .bind(&event_ids)
        .bind(&task_ids)
        .bind(actor)
        .bind(request_id)
        .bind(reason)
        .bind(&was)
        .execute(self.executor())
        .await?;
        self.query("DELETE FROM task_output_chunks WHERE tenant_id = $1 AND task_id = ANY($2)")
            .bind(&task_ids)
            .execute(self.executor())
            .await?;
        let tenant = self.tenant();
        let mut notifications: Vec<Notification> = changed
            .iter()
            .map(|c| Notification::TaskState { tenant, task: c.0 })
            .collect();
        notifications.extend(changed.iter().filter_map(|&(task, was, attempt, worker)| {
            let worker = worker.filter(|_| was == TaskStatus::Running)?;
            Some(Notification::TaskCancel {
                tenant,
                task,
                attempt,
                worker,
            })
        }));
        notifications.push(Notification::Events { tenant });
        // A running task freed a slot under its agent's max_concurrency.
        if changed.iter().any(|c| c.1 == TaskStatus::Running) {
            notifications.push(Notification::TaskReady);
        }
        self.notify(&notifications).await?;
        Ok(changed.len() as u64)
    }

    /// A page of a task's transcript after `after_position`.
    pub async fn list_task_messages(
        &mut self,
        task: TaskId,
        after_position: Option<i32>,
        limit: i64,
    ) -> StoreResult<Vec<TaskMessageRow>> {
        self.get_task(task).await?;
        Ok(self
            .query_as::<TaskMessageRow>(
                "SELECT id, position, role, content, attempt, created_at, step, tool_calls, \
                        tool_call_id, is_error FROM task_messages \
                 WHERE tenant_id = $1 AND task_id = $2 AND ($3::int IS NULL OR position > $3) \
                 ORDER BY position LIMIT $4",
            )
            .bind(task)
            .bind(after_position)
            .bind(limit)
            .fetch_all(self.executor())
            .await?)
    }

    /// The task and every stored delta of its current attempt.
    pub async fn task_snapshot(&mut self, id: TaskId) -> StoreResult<TaskSnapshotRow> {
        let task = self.get_task(id).await?;
        let chunks = self.output_after(id, task.attempt, -1).await?;
        Ok(TaskSnapshotRow { task, chunks })
    }

    /// Stored deltas of one attempt with an index above `after`, after the attempt's reset
    /// marker if it has one (whatever its index).
    pub async fn output_after(
        &mut self,
        id: TaskId,
        attempt: i32,
        after: i64,
    ) -> StoreResult<Vec<OutputChunk>> {
        Ok(self
            .query_as::<OutputChunk>(
                // The marker, if any, is the attempt's lowest row: two index probes.
                "SELECT * FROM ( \
                     SELECT attempt, seq, content, reset FROM task_output_chunks \
                     WHERE tenant_id = $1 AND task_id = $2 AND attempt = $3 \
                     ORDER BY seq LIMIT 1) first \
                 WHERE first.reset AND first.seq <= $4 \
                 UNION ALL \
                 SELECT attempt, seq, content, reset FROM task_output_chunks \
                 WHERE tenant_id = $1 AND task_id = $2 AND attempt = $3 AND seq > $4 \
                 ORDER BY seq",
            )
            .bind(id)
            .bind(attempt)
            .bind(after)
            .fetch_all(self.executor())
            .await?)
    }
}
