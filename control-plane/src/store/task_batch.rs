//! Creating many tasks of one workspace in one transaction with a fixed number of
//! statements, whatever the batch size: BatchCreateTasks, and the group commit of
//! concurrent CreateTask calls (`api/tasks/group_commit.rs`), whose tasks each keep their
//! own actor.

use std::collections::HashMap;

use agentplane_core::notify::Notification;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::tasks::columns;
use super::{StoreError, StoreResult, TaskRow, TenantTx};
use crate::domain::task::{NewTask, Role};
use crate::ids::{AgentId, TaskId};

/// What creating a task needs from its agent.
#[derive(sqlx::FromRow)]
struct AgentForTask {
    id: AgentId,
    system_prompt: String,
    max_attempts: i32,
    /// The agent's required worker labels, as JSON text: copied onto each task for the claim.
    required_labels: String,
}

impl TenantTx {
    /// Queues every task of `tasks` (all of this workspace), each created by its actor, or
    /// returns for an item with a request id the task an earlier call created with it.
    /// Returns one row per item, in order. All or none: a missing or deleted agent is
    /// NOT_FOUND and creates nothing. Request ids must be distinct among the items.
    pub async fn create_tasks(&mut self, tasks: &[(&NewTask, &str)]) -> StoreResult<Vec<TaskRow>> {
        let request_ids: Vec<&str> = tasks
            .iter()
            .filter_map(|(task, _)| task.request_id.as_deref())
            .collect();
        let mut existing: HashMap<String, TaskRow> = HashMap::new();
        if !request_ids.is_empty() {
            // One probe of `tasks_request_id` per id, whatever the statistics say. Written as
            // `request_id = ANY($2)`, the planner used that index for the tenant alone
            // whenever its statistics were older than the workspace's tasks, and filtered
            // every request id of the workspace: a cost per CreateTask group that grew with
            // the workspace's history (1.5-3 ms per group after 10,000 tasks). The LIMIT
            // (request ids are unique per workspace) keeps the subquery from being flattened
            // into a join the planner could again answer by scanning the workspace.
            let rows = self
                .query_as::<TaskRow>(concat!(
                    "SELECT t.* FROM unnest($2::text[]) AS r(request_id) \
                     CROSS JOIN LATERAL (SELECT ",
                    columns!(),
                    " FROM tasks WHERE tenant_id = $1 AND request_id = r.request_id \
                     LIMIT 1) AS t"
                ))
                .bind(&request_ids)
                .fetch_all(self.executor())
                .await?;
            for row in rows {
                if let Some(request_id) = row.request_id.clone() {
                    existing.insert(request_id, row);
                }
            }
        }
        let new: Vec<(TaskId, &NewTask, &str)> = tasks
            .iter()
            .filter(|(task, _)| {
                task.request_id
                    .as_ref()
                    .is_none_or(|id| !existing.contains_key(id))
            })
            .map(|&(task, actor)| (TaskId::generate(), task, actor))
            .collect();
        let mut created = if new.is_empty() {
            HashMap::new()
        } else {
            self.insert_tasks(&new).await?
        };
        let mut new_ids = new.iter().map(|(id, _, _)| *id);
        let mut rows = Vec::with_capacity(tasks.len());
        for (task, _) in tasks {
            let earlier = task.request_id.as_ref().and_then(|id| existing.get(id));
            let row = match earlier {
                Some(row) => row.clone(),
                None => new_ids
                    .next()
                    .and_then(|id| created.remove(&id))
                    .ok_or_else(|| {
                        StoreError::Database(sqlx::Error::Protocol(
                            "a batch-created task was not returned".to_owned(),
                        ))
                    })?,
            };
            rows.push(row);
        }
        Ok(rows)
    }

    /// Inserts the tasks, their transcripts and their events; returns the rows by id.
    async fn insert_tasks(
        &mut self,
        new: &[(TaskId, &NewTask, &str)],
    ) -> StoreResult<HashMap<TaskId, TaskRow>> {
        // FOR SHARE: a concurrent DeleteAgent or DeleteWorkspace waits for these tasks to
        // commit and then cancels them, instead of leaving them pending forever.
        self.share_lock_workspace().await?;
        let mut agent_ids: Vec<AgentId> = new.iter().map(|(_, task, _)| task.agent_id).collect();
        agent_ids.sort_unstable();
        agent_ids.dedup();
        let agents: HashMap<AgentId, AgentForTask> = self
            .query_as::<AgentForTask>(
                "SELECT id, system_prompt, max_attempts, required_labels::text AS required_labels \
                 FROM agents \
                 WHERE tenant_id = $1 AND id = ANY($2) AND deleted_at IS NULL \
                 ORDER BY id FOR SHARE",
            )
            .bind(&agent_ids)
            .fetch_all(self.executor())
            .await?
            .into_iter()
            .map(|agent| (agent.id, agent))
            .collect();
        if agents.len() != agent_ids.len() {
            return Err(StoreError::NotFound("agent"));
        }
        // The transcript and event rows' key checks run at COMMIT with plans that cannot
        // scan `tasks` whole (see the method).
        self.check_keys_at_commit().await?;

        let ids: Vec<TaskId> = new.iter().map(|(id, _, _)| *id).collect();
        let mut columns = TaskColumns::default();
        for &(id, task, actor) in new {
            // Every agent id was found above.
            if let Some(agent) = agents.get(&task.agent_id) {
                columns.add(id, task, actor, agent);
            }
        }
        let rows = self
            .query_as::<TaskRow>(concat!(
                "INSERT INTO tasks (tenant_id, id, agent_id, priority, run_at, labels, \
                 max_attempts, request_id, required_labels, traceparent) \
                 SELECT $1, t.id, t.agent_id, t.priority, \
                        greatest(coalesce(t.run_at, now()), now()), t.labels::jsonb, \
                        t.max_attempts, t.request_id, t.required_labels::jsonb, t.traceparent \
                 FROM unnest($2::uuid[], $3::uuid[], $4::int[], $5::timestamptz[], \
                             $6::text[], $7::int[], $8::text[], $9::text[], $10::text[]) \
                      AS t(id, agent_id, priority, run_at, labels, max_attempts, request_id, \
                           required_labels, traceparent) \
                 RETURNING ",
                columns!()
            ))
            .bind(&ids)
            .bind(&columns.agent_ids)
            .bind(&columns.priorities)
            .bind(&columns.run_ats)
            .bind(&columns.labels)
            .bind(&columns.max_attempts)
            .bind(&columns.request_ids)
            .bind(&columns.required_labels)
            .bind(&columns.traceparents)
            .fetch_all(self.executor())
            .await?;
        self.query(
            "INSERT INTO task_messages (tenant_id, id, task_id, position, role, content) \
             SELECT $1, m.id, m.task_id, m.position, m.role, m.content \
             FROM unnest($2::uuid[], $3::uuid[], $4::int[], $5::text[], $6::text[]) \
                  AS m(id, task_id, position, role, content)",
        )
        .bind(&columns.message_ids)
        .bind(&columns.message_tasks)
        .bind(&columns.positions)
        .bind(&columns.roles)
        .bind(&columns.contents)
        .execute(self.executor())
        .await?;
        self.query(
            "INSERT INTO events (tenant_id, id, actor, action, resource_type, resource_id, \
             request_id, data) \
             SELECT $1, e.id, e.actor, 'task.created', 'task', e.task_id, e.request_id, \
                    e.data::jsonb \
             FROM unnest($2::text[], $3::uuid[], $4::uuid[], $5::text[], $6::text[]) \
                  AS e(actor, id, task_id, request_id, data)",
        )
        .bind(&columns.actors)
        .bind(&columns.event_ids)
        .bind(&ids)
        .bind(&columns.request_ids)
        .bind(&columns.event_data)
        .execute(self.executor())
        .await?;
        let tenant = self.tenant();
        self.notify(&[Notification::TaskReady, Notification::Events { tenant }])
            .await?;
        Ok(rows.into_iter().map(|row| (row.id, row)).collect())
    }
}

/// Column arrays of the batch, bound with `unnest`.
#[derive(Default)]
struct TaskColumns<'a> {
    agent_ids: Vec<AgentId>,
    priorities: Vec<i32>,
    run_ats: Vec<Option<DateTime<Utc>>>,
    labels: Vec<String>,
    max_attempts: Vec<i32>,
    request_ids: Vec<Option<&'a str>>,
    required_labels: Vec<&'a str>,
    traceparents: Vec<Option<&'a str>>,
    actors: Vec<&'a str>,
    message_ids: Vec<Uuid>,
    message_tasks: Vec<TaskId>,
    positions: Vec<i32>,
    roles: Vec<Role>,
    contents: Vec<&'a str>,
    event_ids: Vec<Uuid>,
    event_data: Vec<String>,
}

impl<'a> TaskColumns<'a> {
    fn add(&mut self, id: TaskId, task: &'a NewTask, actor: &'a str, agent: &'a AgentForTask) {
        self.agent_ids.push(task.agent_id);
        self.priorities.push(task.priority);
        self.run_ats.push(task.run_at);
        self.labels
            .push(serde_json::to_string(&task.labels).unwrap_or_else(|_| "{}".to_owned()));
        self.max_attempts.push(agent.max_attempts);
        self.required_labels.push(agent.required_labels.as_str());
        self.request_ids.push(task.request_id.as_deref());
        self.traceparents.push(task.traceparent.as_deref());
        self.actors.push(actor);
        let system = (!agent.system_prompt.is_empty())
            .then_some((Role::System, agent.system_prompt.as_str()));
        let messages = system
            .into_iter()
            .chain(task.input.iter().map(|m| (m.role, m.content.as_str())));
        for (position, (role, content)) in (0i32..).zip(messages) {
            self.message_ids.push(Uuid::now_v7());
            self.message_tasks.push(id);
            self.positions.push(position);
            self.roles.push(role);
            self.contents.push(content);
        }
        self.event_ids.push(Uuid::now_v7());
        self.event_data.push(
            serde_json::json!({
                "agent_id": task.agent_id,
                "priority": task.priority,
                "input_messages": task.input.len(),
            })
            .to_string(),
        );
    }
}
