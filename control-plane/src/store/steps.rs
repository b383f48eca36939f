//! Durable steps: each completed model call joins its task's transcript as soon as the worker
//! reports it, so that a later attempt replays it instead of paying for it again; and every
//! call that consumed tokens is metered, whatever became of its attempt.

use std::collections::HashSet;

use uuid::Uuid;

use super::{StoreResult, TenantTx};
use crate::domain::worker::{Lease, ModelCallRecord, StepRecord};
use crate::ids::{TaskId, WorkerId};

impl TenantTx {
    /// Records completed model calls' steps (the assistant message, with its tool calls),
    /// only while `worker` holds the attempt; their usage is [`TenantTx::record_usage`]'s,
    /// which the caller runs first, with the batch's other calls. A transcript position is
    /// written once: the first record of it wins, a resend changes nothing. Returns the
    /// (task, position) of each step written now.
    pub async fn record_steps(
        &mut self,
        worker: WorkerId,
        steps: &[(Lease, &StepRecord)],
    ) -> StoreResult<HashSet<(TaskId, i32)>> {
        if steps.is_empty() {
            return Ok(HashSet::new());
        }
        let ids: Vec<Uuid> = steps.iter().map(|_| Uuid::now_v7()).collect();
        let tasks: Vec<TaskId> = steps.iter().map(|(lease, _)| lease.task).collect();
        let attempts: Vec<i32> = steps.iter().map(|(lease, _)| lease.attempt).collect();
        let positions: Vec<i32> = steps.iter().map(|(_, step)| step.position).collect();
        let numbers: Vec<i32> = steps.iter().map(|(_, step)| step.step).collect();
        let texts: Vec<&str> = steps.iter().map(|(_, step)| step.text.as_str()).collect();
        let finish_reasons: Vec<&str> = steps
            .iter()
            .map(|(_, step)| step.finish_reason.as_str())
            .collect();
        let tool_calls: Vec<Option<String>> = steps
            .iter()
            .map(|(_, step)| {
                (!step.tool_calls.is_empty())
                    .then(|| serde_json::to_string(&step.tool_calls).unwrap_or_default())
            })
            .collect();
        // Tasks are probed by primary key per step (a LATERAL with LIMIT is never flattened
        // into a join): a cached generic plan made while the table was young would otherwise
        // keep hash-joining the workspace's whole task list as it grows. The status comes
        // from an init plan so that the partial index of running tasks cannot serve the
        // probe: it holds an entry for every task that ran since `tasks` was last vacuumed,
        // which with a million finished tasks in the table is minutes of them (measured:
        // 5,800 buffers and 570 µs per task for this statement).
        let stored: Vec<(TaskId, i32)> = self
            .query_as(
                "INSERT INTO task_messages (tenant_id, id, task_id, position, role, content, \
                                        attempt, step, tool_calls, finish_reason) \
             SELECT $1, s.id, s.task_id, s.position, 'assistant', s.content, s.attempt, \
                    s.step, s.tool_calls::jsonb, nullif(s.finish_reason, '') \
             FROM unnest($2::uuid[], $3::uuid[], $4::int[], $5::int[], $6::int[], $7::text[], \
                         $8::text[], $10::text[]) AS s(id, task_id, attempt, position, step, \
                                                      content, tool_calls, finish_reason) \
             CROSS JOIN LATERAL (SELECT 1 FROM tasks t \
                                 WHERE t.tenant_id = (SELECT $1::uuid) AND t.id = s.task_id \
                                   AND t.attempt = s.attempt \
                                   AND t.status = (SELECT 'running'::text) \
                                   AND t.worker_id = $9 LIMIT 1) held \
             ON CONFLICT (tenant_id, task_id, position) DO NOTHING \
             RETURNING task_id, position",
            )
            .bind(&ids)
            .bind(&tasks)
            .bind(&attempts)
            .bind(&positions)
            .bind(&numbers)
            .bind(&texts)
            .bind(&tool_calls)
            .bind(worker)
            .bind(&finish_reasons)
            .fetch_all(self.executor())
            .await?;
        Ok(stored.into_iter().collect())
    }

    /// Meters model calls: one usage record per call id, however often it is reported, for
    /// an attempt `worker` holds or held (a worker that lost its lease still paid for its
    /// calls; its claim's `task.started` event says it held the attempt). Calls about any
    /// other attempt are ignored. The provider is the call's, else the agent's.
    pub async fn record_usage(
        &mut self,
        worker: WorkerId,
        calls: &[(Lease, &ModelCallRecord)],
    ) -> StoreResult<()> {
        if calls.is_empty() {
            return Ok(());
        }
        let column = |f: fn(&ModelCallRecord) -> i64| -> Vec<i64> {
            calls.iter().map(|(_, call)| f(call)).collect()
        };
        let ids: Vec<Uuid> = calls.iter().map(|(_, call)| call.id).collect();
        let tasks: Vec<TaskId> = calls.iter().map(|(lease, _)| lease.task).collect();
        let attempts: Vec<i32> = calls.iter().map(|(lease, _)| lease.attempt).collect();
        let steps: Vec<i32> = calls.iter().map(|(_, call)| call.step).collect();
        let providers: Vec<&str> = calls.iter().map(|(_, c)| c.provider.as_str()).collect();
        let models: Vec<&str> = calls.iter().map(|(_, c)| c.model.as_str()).collect();
        let request_ids: Vec<&str> = calls
            .iter()
            .map(|(_, c)| c.provider_request_id.as_str())
            .collect();
        let vendor_ids: Vec<Option<&str>> = calls
            .iter()
            .map(|(_, c)| c.vendor_request_id.as_deref())
            .collect();
        let latencies: Vec<Option<i64>> = calls.iter().map(|(_, c)| c.latency_ms).collect();
        let first_tokens: Vec<Option<i64>> = calls.iter().map(|(_, c)| c.first_token_ms).collect();
        let outcomes: Vec<&str> = calls.iter().map(|(_, c)| c.outcome.as_str()).collect();
        let unpriced: Vec<bool> = calls.iter().map(|(_, c)| c.unpriced).collect();
        self.query(
            "INSERT INTO usage_records (tenant_id, id, task_id, attempt, step, agent_id, \
                 provider, model, provider_request_id, input_tokens, output_tokens, \
                 cache_read_input_tokens, cache_write_input_tokens, reasoning_tokens, \
                 cost_micros, unpriced, vendor_request_id, latency_ms, first_token_ms, outcome) \
             SELECT $1, c.id, c.task_id, c.attempt, c.step, t.agent_id, \
                    coalesce(nullif(c.provider, ''), a.provider), c.model, c.request_id, \
                    c.input_tokens, c.output_tokens, c.cache_read, c.cache_write, \
                    c.reasoning, c.cost_micros, c.unpriced, c.vendor_id, c.latency_ms, \
                    c.first_token_ms, c.outcome \
             FROM unnest($2::uuid[], $3::uuid[], $4::int[], $5::int[], $6::text[], $7::text[], \
                         $8::text[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], \
                         $13::bigint[], $14::bigint[], $15::bool[], $16::text[], $17::bigint[], \
                         $18::bigint[], $19::text[]) \
                  AS c(id, task_id, attempt, step, provider, model, request_id, input_tokens, \
                       output_tokens, cache_read, cache_write, reasoning, cost_micros, \
                       unpriced, vendor_id, latency_ms, first_token_ms, outcome) \
             CROSS JOIN LATERAL (SELECT t.agent_id, t.attempt, t.worker_id FROM tasks t \
                                 WHERE t.tenant_id = (SELECT $1::uuid) AND t.id = c.task_id LIMIT 1) t \
             CROSS JOIN LATERAL (SELECT a.provider FROM agents a \
                                 WHERE a.tenant_id = (SELECT $1::uuid) AND a.id = t.agent_id LIMIT 1) a \
             WHERE c.attempt <= t.attempt \
               AND ((t.worker_id = $20 AND t.attempt = c.attempt) \
                OR EXISTS (SELECT 1 FROM events e \
                           WHERE e.tenant_id = (SELECT $1::uuid) AND e.resource_id = c.task_id \
                             AND e.action = 'task.started' \
                             AND e.actor = 'worker:' || $20::text \
                             AND e.data ->> 'attempt' = c.attempt::text)) \
             ON CONFLICT (tenant_id, id) DO NOTHING",
        )
        .bind(&ids)
        .bind(&tasks)
        .bind(&attempts)
        .bind(&steps)
        .bind(&providers)
        .bind(&models)
        .bind(&request_ids)
        .bind(column(|c| c.input_tokens))
        .bind(column(|c| c.output_tokens))
        .bind(column(|c| c.cache_read_input_tokens))
        .bind(column(|c| c.cache_write_input_tokens))
        .bind(column(|c| c.reasoning_tokens))
        .bind(column(|c| c.cost_micros))
        .bind(&unpriced)
        .bind(&vendor_ids)
        .bind(&latencies)
        .bind(&first_tokens)
        .bind(&outcomes)
        .bind(worker)
        .execute(self.executor())
        .await?;
        Ok(())
    }
}
