//! SubmitToolOutputs: the caller's outputs of the tools a task's model called join its
//! transcript, and the task goes back in the queue to continue on any worker.

use std::collections::HashSet;

use agentplane_core::notify::Notification;
use uuid::Uuid;

use super::tasks::columns;
use super::{NewEvent, StoreError, StoreResult, TaskRow, TenantTx};
use crate::domain::task::{TaskStatus, ToolOutputInput};
use crate::ids::TaskId;

impl TenantTx {
    /// Records the outputs of the tool calls task `id` waits on and queues it again. The
    /// outputs must answer exactly those calls. Idempotent per call id: outputs for calls
    /// that were answered already return the task as it is now.
    pub async fn submit_tool_outputs(
        &mut self,
        id: TaskId,
        outputs: &[ToolOutputInput],
        request_id: Option<&str>,
        actor: &str,
    ) -> StoreResult<TaskRow> {
        let task = self
            .query_as::<TaskRow>(concat!(
                "SELECT ",
                columns!(),
                " FROM tasks WHERE tenant_id = $1 AND id = $2 FOR UPDATE"
            ))
            .bind(id)
            .fetch_optional(self.executor())
            .await?
            .ok_or(StoreError::NotFound("task"))?;
        // A repeat of outputs already recorded (the answer to the first call was lost) returns
        // the task as it is, whatever it has done since.
        if self.all_answered(id, outputs).await? {
            return Ok(task);
        }
        let waiting = match (&task.status, &task.required_action) {
            (TaskStatus::RequiresAction, Some(action)) => action.0.clone(),
            _ => {
                return Err(StoreError::FailedPrecondition(format!(
                    "the task is {} and waits for no tool outputs",
                    task.status
                )));
            }
        };
        let wanted: HashSet<&str> = waiting
            .tool_calls
            .iter()
            .map(|call| call.id.as_str())
            .collect();
        let given: HashSet<&str> = outputs.iter().map(|o| o.call_id.as_str()).collect();
        let missing: Vec<&str> = waiting
            .tool_calls
            .iter()
            .map(|call| call.id.as_str())
            .filter(|id| !given.contains(id))
            .collect();
        let unknown: Vec<&str> = outputs
            .iter()
            .map(|o| o.call_id.as_str())
            .filter(|id| !wanted.contains(id))
            .collect();
        if !missing.is_empty() || !unknown.is_empty() {
            let mut problems = Vec::new();
            if !missing.is_empty() {
                problems.push(format!("no output for tool calls {missing:?}"));
            }
            if !unknown.is_empty() {
                problems.push(format!(
                    "the task did not make tool calls {unknown:?} (it waits on {:?})",
                    waiting
                        .tool_calls
                        .iter()
                        .map(|c| c.id.as_str())
                        .collect::<Vec<_>>()
                ));
            }
            return Err(StoreError::InvalidField(
                "tool_outputs",
                format!(
                    "every call of step {} needs one output: {}",
                    waiting.step,
                    problems.join("; ")
                ),
            ));
        }
        // In the order of the calls, after the last message of the transcript.
        let ordered: Vec<&ToolOutputInput> = waiting
            .tool_calls
            .iter()
            .filter_map(|call| outputs.iter().find(|o| o.call_id == call.id))
            .collect();
        // The transcript rows' key checks run at COMMIT (see the method).
        self.check_keys_at_commit().await?;
        let ids: Vec<Uuid> = ordered.iter().map(|_| Uuid::now_v7()).collect();
        let call_ids: Vec<&str> = ordered.iter().map(|o| o.call_id.as_str()).collect();
        let contents: Vec<&str> = ordered.iter().map(|o| o.output.as_str()).collect();
        let errors: Vec<bool> = ordered.iter().map(|o| o.is_error).collect();
        self.query(
            "INSERT INTO task_messages (tenant_id, id, task_id, position, role, content, \
                                        attempt, tool_call_id, is_error) \
             SELECT $1, o.id, $2, \
                    (SELECT coalesce(max(p.position), -1) FROM task_messages p \
                     WHERE p.tenant_id = $1 AND p.task_id = $2) + o.n, \
                    'tool', o.content, $3, o.call_id, o.is_error \
             FROM unnest($4::uuid[], $5::text[], $6::text[], $7::bool[]) \
                  WITH ORDINALITY AS o(id, call_id, content, is_error, n)",
        )
        .bind(id)
        .bind(task.attempt)
        .bind(&ids)
        .bind(&call_ids)
        .bind(&contents)
        .bind(&errors)
        .execute(self.executor())
        .await?;
        // The attempt that asked for the tools ended well: like a release, it does not count
        // against max_attempts.
        let resumed = self
            .query_as::<TaskRow>(concat!(
                "UPDATE tasks SET status = 'pending', required_action = NULL, run_at = now(), \
                        releases = releases + 1, worker_id = NULL, updated_at = now() \
                 WHERE tenant_id = $1 AND id = $2 AND status = 'requires_action' \
                 RETURNING ",
                columns!()
            ))
            .bind(id)
            .fetch_one(self.executor())
            .await?;
        self.append_event(NewEvent {
            actor,
            action: "task.tool_outputs_submitted",
            resource_type: "task",
            resource_id: id.0,
            request_id,
            data: serde_json::json!({
                "step": waiting.step,
                "tool_call_ids": call_ids,
                "errors": errors.iter().filter(|e| **e).count(),
            }),
        })
        .await?;
        let tenant = self.tenant();
        self.notify(&[
            Notification::TaskReady,
            Notification::TaskState { tenant, task: id },
        ])
        .await?;
        Ok(resumed)
    }

    /// Whether every output names a call whose output the transcript already holds.
    async fn all_answered(&mut self, id: TaskId, outputs: &[ToolOutputInput]) -> StoreResult<bool> {
        let call_ids: Vec<&str> = outputs.iter().map(|o| o.call_id.as_str()).collect();
        let answered: i64 = self
            .query_scalar(
                "SELECT count(DISTINCT tool_call_id) FROM task_messages \
                 WHERE tenant_id = $1 AND task_id = $2 AND role = 'tool' \
                   AND tool_call_id = ANY($3)",
            )
            .bind(id)
            .bind(&call_ids)
            .fetch_one(self.executor())
            .await?;
        Ok(usize::try_from(answered).is_ok_and(|n| n == call_ids.len()))
    }
}
