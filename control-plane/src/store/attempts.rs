//! What workers report about the attempts they hold: lease renewals and releases (results
//! are in `results.rs`, output deltas in `live_output.rs`). Every write is fenced: it lands
//! only while the worker holds the current attempt of a running task.

use std::time::Duration;

use agentplane_core::notify::Notification;
use agentplane_core::retry::LEASE_EXPIRED_CODE;

use super::{NewEvent, StoreError, StoreResult, TaskRow, TenantTx};
use crate::domain::task::TaskStatus;
use crate::domain::worker::Lease;
use crate::ids::{TaskId, WorkerId};

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

    /// Gives an attempt back to the queue without counting it against max_attempts.
    pub async fn release_attempt(
        &mut self,
        worker: WorkerId,
        lease: Lease,
        actor: &str,
    ) -> StoreResult<LeaseCheck> {
        if !self.lock_held_attempt(worker, lease).await? {
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

    /// Locks these tasks' rows in id order, for a transaction that will change several of
    /// them: taking row locks in one global order is what keeps two such transactions
    /// (a batch of worker reports, a cancel of many tasks) from deadlocking. Each row is
    /// probed by its key (a subquery that locks is never flattened into a join): written as
    /// `id = ANY(…)`, the planner scanned the workspace's whole key range instead whenever
    /// the batch outnumbered its guess of the workspace's size (0.5 % of the table), 12 ms
    /// for a batch of 128 with 60,000 tasks in the workspace.
    pub async fn lock_tasks_in_order(&mut self, ids: &[TaskId]) -> StoreResult<()> {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() < 2 {
            return Ok(());
        }
        self.query(
            "SELECT 1 FROM unnest($2::uuid[]) AS k(id) \
             CROSS JOIN LATERAL ( \
                 SELECT 1 FROM tasks WHERE tenant_id = (SELECT $1::uuid) AND id = k.id \
                 FOR UPDATE) t",
        )
        .bind(&ids)
        .execute(self.executor())
        .await?;
        Ok(())
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
    async fn lock_held_attempt(&mut self, worker: WorkerId, lease: Lease) -> StoreResult<bool> {
        let held: Option<i32> = self
            .query_scalar(
                "SELECT attempt FROM tasks \
                 WHERE tenant_id = $1 AND id = $2 AND attempt = $3 AND status = 'running' \
                   AND worker_id = $4 FOR UPDATE",
            )
            .bind(lease.task)
            .bind(lease.attempt)
            .bind(worker)
            .fetch_optional(self.executor())
            .await?;
        Ok(held.is_some())
    }

    /// Why a report about an attempt the worker no longer holds is not taken, or that it was
    /// taken already (a resend after a reconnect).
    pub(super) async fn explain_lost_attempt(
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
        TaskStatus::Succeeded
            | TaskStatus::Failed
            | TaskStatus::Pending
            | TaskStatus::RequiresAction
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
