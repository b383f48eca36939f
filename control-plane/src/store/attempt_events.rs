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
        let ids: Vec<Uuid> = events.iter().map(|_| Uuid::now_v7()).collect();
        let tasks: Vec<TaskId> = events.iter().map(|e| e.lease.task).collect();
        let attempts: Vec<i32> = events.iter().map(|e| e.lease.attempt).collect();
        let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
        let data: Vec<String> = events.iter().map(|e| e.data.to_string()).collect();
        let appended = self
            .query(
                "WITH reported AS ( \
                     SELECT * FROM unnest($2::uuid[], $3::uuid[], $4::int[], $5::text[], \
                                          $6::text[]) WITH ORDINALITY \
                          AS r(id, task_id, attempt, action, data, n)), \
                 held AS ( \
                     SELECT t.id, t.attempt FROM tasks t \
                     WHERE t.tenant_id = (SELECT $1::uuid) \
                       AND (t.id, t.attempt) IN (SELECT task_id, attempt FROM reported) \
                       AND t.status = 'running' AND t.worker_id = $7 \
                     ORDER BY t.id FOR UPDATE) \
                 INSERT INTO events (tenant_id, id, actor, action, resource_type, resource_id, \
                                     data) \
                 SELECT $1, r.id, $8, r.action, 'task', r.task_id, r.data::jsonb \
                 FROM reported r JOIN held h ON h.id = r.task_id AND h.attempt = r.attempt \
                 ORDER BY r.n",
            )
            .bind(&ids)
            .bind(&tasks)
            .bind(&attempts)
            .bind(&actions)
            .bind(&data)
            .bind(worker)
            .bind(actor)
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
