//! Progress events that workers report about their attempts (`task.model_call_started`, …),
//! appended for a batch of reports with one statement, whatever their number: a no-op task
//! reports one, and one statement per event (with its own lock and notification) was the
//! largest per-task cost of the worker session left in the database profile.

use agentplane_core::notify::Notification;
use uuid::Uuid;

use super::{StoreResult, TenantTx};
use crate::domain::worker::Lease;
use crate::ids::{TaskId, WorkerId};

/// A progress event a worker reported about one of its attempts.
#[derive(Debug)]
pub struct AttemptEvent {
    /// The attempt.
    pub lease: Lease,
    /// What happened, `task.<name>`.
    pub action: String,
    /// Details.
    pub data: serde_json::Value,
}

impl TenantTx {
    /// Appends, in the order given, the events of the attempts `worker` still holds (each
    /// task locked until commit, in id order, as everywhere several tasks are locked), and
    /// wakes event watchers on commit if any was appended. Events of attempts it does not
    /// hold are dropped. Returns how many were appended.
    pub async fn append_attempt_events(
        &mut self,
        worker: WorkerId,
        actor: &str,
        events: &[AttemptEvent],
    ) -> StoreResult<u64> {
        if events.is_empty() {
            return Ok(0);
        }
        // The tasks are probed and locked in id order (the order of the arrays; a subquery
        // that locks rows is never flattened into a join), the events inserted in the order
        // reported. A semi-join of the reports with the worker's running tasks compared
        // every pair, which grew with the square of the batch.
        let mut order: Vec<usize> = (0..events.len()).collect();
        order.sort_by_key(|&i| events[i].lease.task);
        let arrival_ids: Vec<Uuid> = events.iter().map(|_| Uuid::now_v7()).collect();
        let ids: Vec<Uuid> = order.iter().map(|&i| arrival_ids[i]).collect();
        let tasks: Vec<TaskId> = order.iter().map(|&i| events[i].lease.task).collect();
        let attempts: Vec<i32> = order.iter().map(|&i| events[i].lease.attempt).collect();
        let actions: Vec<&str> = order.iter().map(|&i| events[i].action.as_str()).collect();
        let data: Vec<String> = order.iter().map(|&i| events[i].data.to_string()).collect();
        let positions: Vec<i32> = order
            .iter()
            .map(|&i| i32::try_from(i).unwrap_or(i32::MAX))
            .collect();
        let appended = self
            .query(
                "INSERT INTO events (tenant_id, id, actor, action, resource_type, resource_id, \
                                     data) \
                 SELECT $1, r.id, $8, r.action, 'task', r.task_id, r.data::jsonb \
                 FROM unnest($2::uuid[], $3::uuid[], $4::int[], $5::text[], $6::text[], \
                             $9::int[]) AS r(id, task_id, attempt, action, data, n) \
                 CROSS JOIN LATERAL ( \
                     SELECT 1 FROM tasks t \
                     WHERE t.tenant_id = (SELECT $1::uuid) AND t.id = r.task_id \
                       AND t.attempt = r.attempt AND t.status = (SELECT 'running'::text) \
                       AND t.worker_id = $7 \
                     FOR UPDATE) held \
                 ORDER BY r.n",
            )
            .bind(&ids)
            .bind(&tasks)
            .bind(&attempts)
            .bind(&actions)
            .bind(&data)
            .bind(worker)
            .bind(actor)
            .bind(&positions)
            .execute(self.executor())
            .await?
            .rows_affected();
        if appended > 0 {
            let tenant = self.tenant();
            self.notify(&[Notification::Events { tenant }]).await?;
        }
        Ok(appended)
    }
}
