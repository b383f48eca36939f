//! What workers report about the attempts they hold: lease renewals, output deltas, results
//! and releases. Every write is fenced: it lands only while the worker holds the current
//! attempt of a running task.

use std::time::Duration;

use agentplane_core::limits::MAX_OUTPUT_BYTES;
use agentplane_core::notify::Notification;
use agentplane_core::retry::{LEASE_EXPIRED_CODE, RetryDecision, decide_retry};
use uuid::Uuid;

use super::{NewEvent, StoreError, StoreResult, TaskRow, TenantTx};
use crate::domain::task::TaskStatus;
use crate::domain::worker::{Lease, ResultOutcome};
use crate::ids::{AgentId, TaskId, WorkerId};

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

/// The fencing columns of a task whose attempt a worker holds.
#[derive(sqlx::FromRow)]
struct HeldAttempt {
    agent_id: AgentId,
    releases: i32,
    max_attempts: i32,
}

impl TenantTx {
    /// Extends the leases `worker` holds on these attempts; returns the ones renewed.
    pub async fn renew_leases(
        &mut self,
        worker: WorkerId,
        leases: &[(TaskId, i32)],
        lease: Duration,
    ) -> StoreResult<Vec<(TaskId, i32)>> {
        let (ids, attempts): (Vec<TaskId>, Vec<i32>) = leases.iter().copied().unzip();
        Ok(self
            .query_as(
                "UPDATE tasks t SET lease_expires_at = now() + make_interval(secs => $5) \
                 FROM unnest($2::uuid[], $3::int[]) AS l(id, attempt) \
                 WHERE t.tenant_id = $1 AND t.id = l.id AND t.attempt = l.attempt \
                   AND t.status = 'running' AND t.worker_id = $4 \
                 RETURNING t.id, t.attempt",
            )
            .bind(&ids)
            .bind(&attempts)
            .bind(worker)
            .bind(lease.as_secs_f64())
            .fetch_all(self.executor())
            .await?)
    }

    /// Stores one output delta of the attempt `worker` holds and publishes it. Returns false
    /// if the worker does not hold the attempt, the delta was stored before, its predecessor
    /// is not stored (deltas come without gaps), or storing it would take the attempt's
    /// output past [`MAX_OUTPUT_BYTES`].
    ///
    /// Each row keeps the attempt's running byte total (`end_offset`). Because a delta is
    /// stored only after its predecessor, the total read from row `seq - 1` is exact, and
    /// the cap costs one primary-key probe however long the output is.
    pub async fn append_output(
        &mut self,
        worker: WorkerId,
        lease: Lease,
        seq: i64,
        content: &str,
    ) -> StoreResult<bool> {
        let inserted = self
            .query(
                "INSERT INTO task_output_chunks (tenant_id, task_id, attempt, seq, content, \
                                                 end_offset) \
                 SELECT $1, $2, $3, $4, $5, before.bytes + octet_length($5) \
                 FROM (SELECT 0::bigint AS bytes WHERE $4 = 0 \
                       UNION ALL \
                       SELECT end_offset FROM task_output_chunks \
                       WHERE tenant_id = $1 AND task_id = $2 AND attempt = $3 \
                         AND seq = $4 - 1) before \
                 WHERE before.bytes + octet_length($5) <= $7 AND EXISTS ( \
                     SELECT 1 FROM tasks WHERE tenant_id = $1 AND id = $2 AND attempt = $3 \
                     AND status = 'running' AND worker_id = $6 FOR SHARE) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(lease.task)
            .bind(lease.attempt)
            .bind(seq)
            .bind(content)
            .bind(worker)
            .bind(i64::try_from(MAX_OUTPUT_BYTES).unwrap_or(i64::MAX))
            .execute(self.executor())
            .await?
            .rows_affected()
            == 1;
        if inserted {
            let notification = Notification::TaskOutput {
                tenant: lease.tenant,
                task: lease.task,
                attempt: lease.attempt,
                index: seq,
                text: Some(content.to_owned()),
            };
            self.notify(&[notification]).await?;
        }
        Ok(inserted)
    }

    /// Records how an attempt ended, if `worker` still holds it: the task row, the assistant
    /// message, usage records and the event, all in this transaction.
    pub async fn record_result(
        &mut self,
        worker: WorkerId,
        lease: Lease,
        outcome: &ResultOutcome,
        actor: &str,
    ) -> StoreResult<LeaseCheck> {
        let Some(held) = self.lock_held_attempt(worker, lease).await? else {
            return self.explain_lost_attempt(worker, lease).await;
        };
        match outcome {
            ResultOutcome::Success {
                output,
                finish_reason,
                calls,
            } => {
                self.record_success(lease, &held, output, finish_reason, calls, actor)
                    .await?;
            }
            ResultOutcome::Failure {
                code,
                message,
                retryable,
            } => {
                let decision =
                    decide_retry(lease.attempt, held.releases, held.max_attempts, *retryable);
                let retry_in = match decision {
                    RetryDecision::Retry { delay } => Some(delay),
                    RetryDecision::Fail => None,
                };
                self.query(
                    "UPDATE tasks SET status = CASE WHEN $5 THEN 'pending' ELSE 'failed' END, \
                     run_at = CASE WHEN $5 THEN now() + make_interval(secs => $6) \
                                   ELSE run_at END, \
                     ended_at = CASE WHEN $5 THEN NULL ELSE now() END, \
                     lease_expires_at = NULL, updated_at = now(), error_code = $3, \
                     error_message = $4 \
                     WHERE tenant_id = $1 AND id = $2",
                )
                .bind(lease.task)
                .bind(code)
                .bind(message)
                .bind(retry_in.is_some())
                .bind(retry_in.unwrap_or_default().as_secs_f64())
                .execute(self.executor())
                .await?;
                self.append_event(NewEvent {
                    actor,
                    action: if retry_in.is_some() {
                        "task.retrying"
                    } else {
                        "task.failed"
                    },
                    resource_type: "task",
                    resource_id: lease.task.0,
                    request_id: None,
                    data: serde_json::json!({
                        "attempt": lease.attempt,
                        "code": code,
                        "message": message,
                        "retry_in_seconds": retry_in.map(|d| d.as_secs()),
                    }),
                })
                .await?;
            }
        }
        self.left_running(lease).await?;
        Ok(LeaseCheck::Accepted)
    }

    async fn record_success(
        &mut self,
        lease: Lease,
        held: &HeldAttempt,
        output: &str,
        finish_reason: &str,
        calls: &[crate::domain::worker::ModelCallRecord],
        actor: &str,
    ) -> StoreResult<()> {
        let (input_tokens, output_tokens, cost) =
            calls.iter().fold((0i64, 0i64, 0i64), |acc, c| {
                (
                    acc.0.saturating_add(c.input_tokens),
                    acc.1.saturating_add(c.output_tokens),
                    acc.2.saturating_add(c.cost_micros),
                )
            });
        self.query(
            "UPDATE tasks SET status = 'succeeded', output = $3, finish_reason = $4, \
             input_tokens = $5, output_tokens = $6, cost_micros = $7, \
             lease_expires_at = NULL, ended_at = now(), updated_at = now(), \
             error_code = NULL, error_message = NULL \
             WHERE tenant_id = $1 AND id = $2",
        )
        .bind(lease.task)
        .bind(output)
        .bind(finish_reason)
        .bind(input_tokens)
        .bind(output_tokens)
        .bind(cost)
        .execute(self.executor())
        .await?;
        self.query(
            "INSERT INTO task_messages (tenant_id, id, task_id, position, role, content, attempt) \
             SELECT $1, $2, $3, coalesce(max(position), -1) + 1, 'assistant', $4, $5 \
             FROM task_messages WHERE tenant_id = $1 AND task_id = $3",
        )
        .bind(Uuid::now_v7())
        .bind(lease.task)
        .bind(output)
        .bind(lease.attempt)
        .execute(self.executor())
        .await?;
        if !calls.is_empty() {
            let ids: Vec<Uuid> = calls.iter().map(|_| Uuid::now_v7()).collect();
            let steps: Vec<i32> = calls.iter().map(|c| c.step).collect();
            let models: Vec<&str> = calls.iter().map(|c| c.model.as_str()).collect();
            let request_ids: Vec<&str> = calls
                .iter()
                .map(|c| c.provider_request_id.as_str())
                .collect();
            let inputs: Vec<i64> = calls.iter().map(|c| c.input_tokens).collect();
            let outputs: Vec<i64> = calls.iter().map(|c| c.output_tokens).collect();
            let costs: Vec<i64> = calls.iter().map(|c| c.cost_micros).collect();
            self.query(
                "INSERT INTO usage_records (tenant_id, id, task_id, attempt, step, provider, \
                 model, provider_request_id, input_tokens, output_tokens, cost_micros) \
                 SELECT $1, c.id, $2, $3, c.step, a.provider, c.model, c.request_id, \
                        c.input_tokens, c.output_tokens, c.cost_micros \
                 FROM unnest($5::uuid[], $6::int[], $7::text[], $8::text[], $9::bigint[], \
                             $10::bigint[], $11::bigint[]) \
                      AS c(id, step, model, request_id, input_tokens, output_tokens, cost_micros) \
                 JOIN agents a ON a.tenant_id = $1 AND a.id = $4 \
                 ON CONFLICT (tenant_id, provider_request_id) DO NOTHING",
            )
            .bind(lease.task)
            .bind(lease.attempt)
            .bind(held.agent_id)
            .bind(&ids)
            .bind(&steps)
            .bind(&models)
            .bind(&request_ids)
            .bind(&inputs)
            .bind(&outputs)
            .bind(&costs)
            .execute(self.executor())
            .await?;
        }
        self.append_event(NewEvent {
            actor,
            action: "task.succeeded",
            resource_type: "task",
            resource_id: lease.task.0,
            request_id: None,
            data: serde_json::json!({
                "attempt": lease.attempt,
                "finish_reason": finish_reason,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cost_micros": cost,
                "provider_request_ids": calls.iter().map(|c| &c.provider_request_id).collect::<Vec<_>>(),
            }),
        })
        .await
    }

    /// Gives an attempt back to the queue without counting it against max_attempts.
    pub async fn release_attempt(
        &mut self,
        worker: WorkerId,
        lease: Lease,
        actor: &str,
    ) -> StoreResult<LeaseCheck> {
        if self.lock_held_attempt(worker, lease).await?.is_none() {
            return self.explain_lost_attempt(worker, lease).await;
        }
        self.query(
            "UPDATE tasks SET status = 'pending', releases = releases + 1, run_at = now(), \
             lease_expires_at = NULL, updated_at = now() WHERE tenant_id = $1 AND id = $2",
        )
        .bind(lease.task)
        .execute(self.executor())
        .await?;
        self.append_event(NewEvent {
            actor,
            action: "task.released",
            resource_type: "task",
            resource_id: lease.task.0,
            request_id: None,
            data: serde_json::json!({ "attempt": lease.attempt }),
        })
        .await?;
        self.left_running(lease).await?;
        Ok(LeaseCheck::Accepted)
    }

    /// Whether `worker` holds the attempt (and locks the task until commit if it does).
    pub async fn holds_attempt(&mut self, worker: WorkerId, lease: Lease) -> StoreResult<bool> {
        Ok(self.lock_held_attempt(worker, lease).await?.is_some())
    }

    /// Drops live output of an attempt that stopped running, tells watchers, and wakes
    /// workers: a slot under the agent's max_concurrency opened.
    async fn left_running(&mut self, lease: Lease) -> StoreResult<()> {
        self.query("DELETE FROM task_output_chunks WHERE tenant_id = $1 AND task_id = $2")
            .bind(lease.task)
            .execute(self.executor())
            .await?;
        self.notify(&[
            Notification::TaskReady,
            Notification::TaskState {
                tenant: lease.tenant,
                task: lease.task,
            },
        ])
        .await
    }

    /// Locks the task if `worker` holds the attempt.
    async fn lock_held_attempt(
        &mut self,
        worker: WorkerId,
        lease: Lease,
    ) -> StoreResult<Option<HeldAttempt>> {
        Ok(self
            .query_as::<HeldAttempt>(
                "SELECT agent_id, releases, max_attempts FROM tasks \
                 WHERE tenant_id = $1 AND id = $2 AND attempt = $3 AND status = 'running' \
                   AND worker_id = $4 FOR UPDATE",
            )
            .bind(lease.task)
            .bind(lease.attempt)
            .bind(worker)
            .fetch_optional(self.executor())
            .await?)
    }

    /// Why a report about an attempt the worker no longer holds is not taken, or that it was
    /// taken already (a resend after a reconnect).
    async fn explain_lost_attempt(
        &mut self,
        worker: WorkerId,
        lease: Lease,
    ) -> StoreResult<LeaseCheck> {
        let task = match self.get_task(lease.task).await {
            Ok(task) => task,
            Err(StoreError::NotFound(_)) => {
                return Ok(LeaseCheck::Rejected("task not found".to_owned()));
            }
            Err(error) => return Err(error),
        };
        Ok(judge_lost_report(&task, worker, lease.attempt))
    }
}

/// Whether a report from `worker` about `attempt` of `task`, which it no longer holds, was
/// recorded before (a resend) or is refused.
fn judge_lost_report(task: &TaskRow, worker: WorkerId, attempt: i32) -> LeaseCheck {
    let same_holder = task.attempt == attempt && task.worker_id == Some(worker);
    let reported = matches!(
        task.status,
        TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Pending
    ) && task.error_code.as_deref() != Some(LEASE_EXPIRED_CODE);
    if same_holder && reported {
        return LeaseCheck::AlreadyRecorded;
    }
    LeaseCheck::Rejected(if task.attempt != attempt {
        format!(
            "attempt {attempt} is not current (current is {})",
            task.attempt
        )
    } else {
        format!("task is {}", task.status)
    })
}
