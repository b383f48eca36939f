//! RetryTask: a failed or canceled task back in the queue, as the same task.

use agentplane_core::notify::Notification;

use super::tasks::columns;
use super::{NewEvent, StoreError, StoreResult, TaskRow, TenantTx};
use crate::ids::TaskId;

impl TenantTx {
    /// Puts a failed or canceled task back in the queue for new attempts. Its earlier
    /// attempts stop counting against `max_attempts` (they join `releases`), its error and
    /// end time are cleared, and its place in line is its creation time, as before. The
    /// agent must still be live. A retry of a call that already retried this task (same
    /// `request_id`) returns the task as it is now.
    pub async fn retry_task(
        &mut self,
        id: TaskId,
        request_id: Option<&str>,
        actor: &str,
    ) -> StoreResult<TaskRow> {
        if let Some(request_id) = request_id
            && self.retried_by(id, request_id).await?
        {
            return self.get_task(id).await;
        }
        // FOR SHARE, as CreateTask: a concurrent DeleteAgent or DeleteWorkspace waits for
        // this retry to commit and then cancels the task again, instead of leaving it pending
        // forever under a deleted agent.
        self.share_lock_workspace().await?;
        let task = self.get_task(id).await?;
        let agent = match self.share_lock_agent(task.agent_id).await {
            Err(StoreError::NotFound(_)) => {
                return Err(StoreError::FailedPrecondition(
                    "the task's agent has been deleted".to_owned(),
                ));
            }
            other => other?,
        };
        let retried = self
            .query_as::<TaskRow>(concat!(
                "UPDATE tasks SET status = 'pending', run_at = now(), releases = attempt, \
                        worker_id = NULL, lease_expires_at = NULL, error_code = NULL, \
                        error_message = NULL, output = NULL, finish_reason = NULL, \
                        ended_at = NULL, required_labels = $3, updated_at = now() \
                 WHERE tenant_id = $1 AND id = $2 AND status IN ('failed', 'canceled') \
                 RETURNING ",
                columns!()
            ))
            .bind(id)
            // The agent's requirement as it is now, not as it was when the task failed.
            .bind(&agent.required_labels)
            .fetch_optional(self.executor())
            .await?;
        let Some(retried) = retried else {
            // A concurrent call with the same request id may have retried it meanwhile.
            if let Some(request_id) = request_id
                && self.retried_by(id, request_id).await?
            {
                return self.get_task(id).await;
            }
            let task = self.get_task(id).await?;
            return Err(StoreError::FailedPrecondition(format!(
                "only a failed or canceled task can be retried; this one is {}",
                task.status
            )));
        };
        self.append_event(NewEvent {
            actor,
            action: "task.retried",
            resource_type: "task",
            resource_id: id.0,
            request_id,
            data: serde_json::json!({
                "previous_status": task.status.as_str(),
                "attempts_so_far": retried.attempt,
            }),
        })
        .await?;
        let tenant = self.tenant();
        self.notify(&[
            Notification::TaskReady,
            Notification::TaskState { tenant, task: id },
        ])
        .await?;
        Ok(retried)
    }

    /// Whether a RetryTask call with `request_id` already retried task `id`.
    async fn retried_by(&mut self, id: TaskId, request_id: &str) -> StoreResult<bool> {
        Ok(self
            .query_scalar::<bool>(
                "SELECT EXISTS (SELECT 1 FROM events \
                                WHERE tenant_id = $1 AND resource_id = $2 \
                                  AND action = 'task.retried' AND request_id = $3)",
            )
            .bind(id)
            .bind(request_id)
            .fetch_one(self.executor())
            .await?)
    }
}
