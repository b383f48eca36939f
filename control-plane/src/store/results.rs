//! Recording many attempts' endings in one transaction: a fixed number of set-based
//! statements per batch, whatever its size, so a worker's results cost a commit per batch
//! instead of a commit and about ten statements per task.

use std::collections::{HashMap, HashSet};

use agentplane_core::notify::Notification;
use agentplane_core::retry::{RetryDecision, decide_retry};
use uuid::Uuid;

use super::{LeaseCheck, StoreResult, TenantTx};
use crate::domain::worker::{Lease, ModelCallRecord, ResultOutcome};
use crate::ids::{AgentId, TaskId, WorkerId};

/// The fencing columns of an attempt a worker holds, locked for the batch.
#[derive(sqlx::FromRow)]
struct Held {
    id: TaskId,
    attempt: i32,
    agent_id: AgentId,
    releases: i32,
    max_attempts: i32,
}

/// Column arrays of the batch, filled in order and bound with `unnest`.
#[derive(Default)]
struct Columns<'a> {
    done_ids: Vec<TaskId>,
    outputs: Vec<&'a str>,
    finish_reasons: Vec<&'a str>,
    input_tokens: Vec<i64>,
    output_tokens: Vec<i64>,
    costs: Vec<i64>,
    message_ids: Vec<Uuid>,
    message_attempts: Vec<i32>,
    calls: Vec<(TaskId, i32, AgentId, &'a ModelCallRecord)>,
    failed_ids: Vec<TaskId>,
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
    /// Returns one check per ending, in order.
    pub async fn record_results(
        &mut self,
        worker: WorkerId,
        endings: &[(Lease, ResultOutcome)],
        actor: &str,
    ) -> StoreResult<Vec<LeaseCheck>> {
        if endings.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, attempts): (Vec<TaskId>, Vec<i32>) = endings
            .iter()
            .map(|(lease, _)| (lease.task, lease.attempt))
            .unzip();
        let held: HashMap<(TaskId, i32), Held> = self
            .query_as::<Held>(
                "SELECT id, attempt, agent_id, releases, max_attempts FROM tasks \
                 WHERE tenant_id = $1 AND (id, attempt) IN \
                       (SELECT * FROM unnest($2::uuid[], $3::int[])) \
                   AND status = 'running' AND worker_id = $4 \
                 ORDER BY id FOR UPDATE",
            )
            .bind(&ids)
            .bind(&attempts)
            .bind(worker)
            .fetch_all(self.executor())
            .await?
            .into_iter()
            .map(|held| ((held.id, held.attempt), held))
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
            columns.add(lease, held, outcome);
        }
        self.write_successes(&columns).await?;
        self.write_failures(&columns).await?;
        self.write_events(&columns, actor).await?;
        let finished: Vec<TaskId> = columns
            .done_ids
            .iter()
            .chain(&columns.failed_ids)
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

    async fn write_successes(&mut self, c: &Columns<'_>) -> StoreResult<()> {
        if c.done_ids.is_empty() {
            return Ok(());
        }
        self.query(
            "UPDATE tasks t SET status = 'succeeded', output = s.output, \
                    finish_reason = s.finish_reason, input_tokens = s.input_tokens, \
                    output_tokens = s.output_tokens, cost_micros = s.cost_micros, \
                    lease_expires_at = NULL, ended_at = now(), updated_at = now(), \
                    error_code = NULL, error_message = NULL \
             FROM unnest($2::uuid[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], \
                         $7::bigint[]) \
                  AS s(id, output, finish_reason, input_tokens, output_tokens, cost_micros) \
             WHERE t.tenant_id = $1 AND t.id = s.id",
        )
        .bind(&c.done_ids)
        .bind(&c.outputs)
        .bind(&c.finish_reasons)
        .bind(&c.input_tokens)
        .bind(&c.output_tokens)
        .bind(&c.costs)
        .execute(self.executor())
        .await?;
        self.query(
            "INSERT INTO task_messages (tenant_id, id, task_id, position, role, content, attempt) \
             SELECT $1, m.id, m.task_id, \
                    (SELECT coalesce(max(p.position), -1) + 1 FROM task_messages p \
                     WHERE p.tenant_id = $1 AND p.task_id = m.task_id), \
                    'assistant', m.content, m.attempt \
             FROM unnest($2::uuid[], $3::uuid[], $4::text[], $5::int[]) \
                  AS m(id, task_id, content, attempt)",
        )
        .bind(&c.message_ids)
        .bind(&c.done_ids)
        .bind(&c.outputs)
        .bind(&c.message_attempts)
        .execute(self.executor())
        .await?;
        if c.calls.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = c.calls.iter().map(|_| Uuid::now_v7()).collect();
        let tasks: Vec<TaskId> = c.calls.iter().map(|call| call.0).collect();
        let attempts: Vec<i32> = c.calls.iter().map(|call| call.1).collect();
        let agents: Vec<AgentId> = c.calls.iter().map(|call| call.2).collect();
        let steps: Vec<i32> = c.calls.iter().map(|call| call.3.step).collect();
        let models: Vec<&str> = c.calls.iter().map(|call| call.3.model.as_str()).collect();
        let request_ids: Vec<&str> = c
            .calls
            .iter()
            .map(|call| call.3.provider_request_id.as_str())
            .collect();
        let inputs: Vec<i64> = c.calls.iter().map(|call| call.3.input_tokens).collect();
        let outputs: Vec<i64> = c.calls.iter().map(|call| call.3.output_tokens).collect();
        let costs: Vec<i64> = c.calls.iter().map(|call| call.3.cost_micros).collect();
        self.query(
            "INSERT INTO usage_records (tenant_id, id, task_id, attempt, step, provider, \
             model, provider_request_id, input_tokens, output_tokens, cost_micros) \
             SELECT $1, c.id, c.task_id, c.attempt, c.step, a.provider, c.model, c.request_id, \
                    c.input_tokens, c.output_tokens, c.cost_micros \
             FROM unnest($2::uuid[], $3::uuid[], $4::int[], $5::uuid[], $6::int[], $7::text[], \
                         $8::text[], $9::bigint[], $10::bigint[], $11::bigint[]) \
                  AS c(id, task_id, attempt, agent_id, step, model, request_id, input_tokens, \
                       output_tokens, cost_micros) \
             JOIN agents a ON a.tenant_id = $1 AND a.id = c.agent_id \
             ON CONFLICT (tenant_id, provider_request_id) DO NOTHING",
        )
        .bind(&ids)
        .bind(&tasks)
        .bind(&attempts)
        .bind(&agents)
        .bind(&steps)
        .bind(&models)
        .bind(&request_ids)
        .bind(&inputs)
        .bind(&outputs)
        .bind(&costs)
        .execute(self.executor())
        .await?;
        Ok(())
    }

    async fn write_failures(&mut self, c: &Columns<'_>) -> StoreResult<()> {
        if c.failed_ids.is_empty() {
            return Ok(());
        }
        self.query(
            "UPDATE tasks t SET status = CASE WHEN f.retry THEN 'pending' ELSE 'failed' END, \
                    run_at = CASE WHEN f.retry THEN now() + make_interval(secs => f.delay) \
                                  ELSE t.run_at END, \
                    ended_at = CASE WHEN f.retry THEN NULL ELSE now() END, \
                    lease_expires_at = NULL, updated_at = now(), \
                    error_code = f.code, error_message = f.message \
             FROM unnest($2::uuid[], $3::text[], $4::text[], $5::bool[], $6::float8[]) \
                  AS f(id, code, message, retry, delay) \
             WHERE t.tenant_id = $1 AND t.id = f.id",
        )
        .bind(&c.failed_ids)
        .bind(&c.codes)
        .bind(&c.messages)
        .bind(&c.retries)
        .bind(&c.delays)
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
    /// Adds one held attempt's ending to the batch.
    fn add(&mut self, lease: &Lease, held: &Held, outcome: &'a ResultOutcome) {
        let data = match outcome {
            ResultOutcome::Success {
                output,
                finish_reason,
                calls,
            } => {
                let sum = |f: fn(&ModelCallRecord) -> i64| {
                    calls.iter().map(f).fold(0i64, i64::saturating_add)
                };
                let (input, output_tokens, cost) = (
                    sum(|c| c.input_tokens),
                    sum(|c| c.output_tokens),
                    sum(|c| c.cost_micros),
                );
                self.done_ids.push(lease.task);
                self.outputs.push(output);
                self.finish_reasons.push(finish_reason);
                self.input_tokens.push(input);
                self.output_tokens.push(output_tokens);
                self.costs.push(cost);
                self.message_ids.push(Uuid::now_v7());
                self.message_attempts.push(lease.attempt);
                self.calls.extend(
                    calls
                        .iter()
                        .map(|call| (lease.task, lease.attempt, held.agent_id, call)),
                );
                self.event_actions.push("task.succeeded");
                serde_json::json!({
                    "attempt": lease.attempt,
                    "finish_reason": finish_reason,
                    "input_tokens": input,
                    "output_tokens": output_tokens,
                    "cost_micros": cost,
                    "provider_request_ids": calls.iter().map(|c| &c.provider_request_id).collect::<Vec<_>>(),
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
