//! Marking a batch's held attempts succeeded, failed or waiting: three UPDATEs of `tasks`
//! that fetch their rows only by the versions the held-attempt probe locked.

use super::Columns;
use crate::store::{StoreError, StoreResult, TenantTx};

impl TenantTx {
    /// Marks the batch's held attempts (each in exactly one of the three lists), with every
    /// scan but the TID scan disabled for these statements only.
    pub(super) async fn mark_tasks(&mut self, c: &Columns<'_>) -> StoreResult<()> {
        if c.done_ids.is_empty() && c.failed_ids.is_empty() && c.waiting_ids.is_empty() {
            return Ok(());
        }
        self.only_tid_scans().await?;
        self.write_successes(c).await?;
        self.write_failures(c).await?;
        self.write_waits(c).await?;
        self.all_scans().await
    }

    async fn write_successes(&mut self, c: &Columns<'_>) -> StoreResult<()> {
        if c.done_ids.is_empty() {
            return Ok(());
        }
        // The task's usage is every call it made, across attempts, steps and fallbacks
        // (metered as each call was reported, and in this transaction for the calls the
        // result itself carries). Each task is fetched by the row version the held-attempt
        // probe locked, joined to its entry of the batch's arrays (see `only_tid_scans`).
        let updated = self
            .query(
                "UPDATE tasks t SET status = 'succeeded', output = s.output, \
                    finish_reason = s.finish_reason, \
                    (input_tokens, output_tokens, cost_micros, cache_read_input_tokens, \
                     cache_write_input_tokens, reasoning_tokens) = ( \
                        SELECT least(coalesce(sum(r.input_tokens), 0), $5)::bigint, \
                               least(coalesce(sum(r.output_tokens), 0), $5)::bigint, \
                               least(coalesce(sum(r.cost_micros), 0), $5)::bigint, \
                               least(coalesce(sum(r.cache_read_input_tokens), 0), $5)::bigint, \
                               least(coalesce(sum(r.cache_write_input_tokens), 0), $5)::bigint, \
                               least(coalesce(sum(r.reasoning_tokens), 0), $5)::bigint \
                        FROM usage_records r \
                        WHERE r.tenant_id = (SELECT $1::uuid) AND r.task_id = t.id), \
                    lease_expires_at = NULL, ended_at = now(), updated_at = now(), \
                    error_code = NULL, error_message = NULL \
             FROM unnest($6::text[]::tid[], $2::uuid[], $3::text[], $4::text[]) \
                  AS s(version, id, output, finish_reason) \
             WHERE t.ctid = s.version AND t.tenant_id = (SELECT $1::uuid) AND t.id = s.id",
            )
            .bind(&c.done_ids)
            .bind(&c.outputs)
            .bind(&c.finish_reasons)
            .bind(i64::MAX)
            .bind(&c.done_versions)
            .execute(self.executor())
            .await?
            .rows_affected();
        all_updated("succeeded", updated, c.done_ids.len())
    }

    /// Disables every scan but the TID scan until `all_scans`, for the batch's
    /// UPDATEs of `tasks`. Each joins the batch's arrays to `tasks` by the row versions that
    /// the held-attempt probe locked (`t.ctid = s.version`), so the one plan left unpenalised
    /// reads each array row once and fetches its task by version (a nested loop over the
    /// arrays with a TID scan inside). Without this the planner may scan the workspace's
    /// whole key range instead, whenever the batch outnumbers its guess of the workspace's
    /// size (0.5 % of the table: `tenant_id` keeps no statistics; measured: 12 ms and 4,280
    /// buffers for a batch of 128 in a workspace of 60,000 tasks), or rescan the arrays for
    /// every task, copying each of their rows as a whole-row value for rechecks (quadratic
    /// in the batch: 2.1 ms for 87 tasks, against 1.3 ms). Row estimates belong to the
    /// table, not to the path, so the penalty a disabled scan adds inside a correlated
    /// subquery is the same for every outer plan and changes nothing in the choice. JIT is
    /// turned off too (the report transaction has it off already): the penalties push
    /// these statements far past `jit_above_cost`, and each would compile for ~150 ms.
    async fn only_tid_scans(&mut self) -> StoreResult<()> {
        sqlx::query(
            "SELECT set_config('jit', 'off', true), \
                    set_config('enable_seqscan', 'off', true), \
                    set_config('enable_indexscan', 'off', true), \
                    set_config('enable_indexonlyscan', 'off', true), \
                    set_config('enable_bitmapscan', 'off', true)",
        )
        .execute(self.executor())
        .await?;
        Ok(())
    }

    /// Gives back the scans `only_tid_scans` disabled (the session's defaults).
    async fn all_scans(&mut self) -> StoreResult<()> {
        sqlx::raw_sql(
            "RESET enable_seqscan; RESET enable_indexscan; RESET enable_indexonlyscan; \
             RESET enable_bitmapscan",
        )
        .execute(self.executor())
        .await?;
        Ok(())
    }

    /// Tasks whose model called tools wait for their outputs, holding no worker.
    async fn write_waits(&mut self, c: &Columns<'_>) -> StoreResult<()> {
        if c.waiting_ids.is_empty() {
            return Ok(());
        }
        let updated = self
            .query(
                "UPDATE tasks t SET status = 'requires_action', \
                        required_action = w.action::jsonb, \
                        lease_expires_at = NULL, updated_at = now(), \
                        error_code = NULL, error_message = NULL \
                 FROM unnest($4::text[]::tid[], $2::uuid[], $3::text[]) \
                      AS w(version, id, action) \
                 WHERE t.ctid = w.version AND t.tenant_id = (SELECT $1::uuid) AND t.id = w.id",
            )
            .bind(&c.waiting_ids)
            .bind(&c.waiting_actions)
            .bind(&c.waiting_versions)
            .execute(self.executor())
            .await?
            .rows_affected();
        all_updated("waiting", updated, c.waiting_ids.len())
    }

    async fn write_failures(&mut self, c: &Columns<'_>) -> StoreResult<()> {
        if c.failed_ids.is_empty() {
            return Ok(());
        }
        let updated = self
            .query(
                "UPDATE tasks t SET \
                        status = CASE WHEN f.retry THEN 'pending' ELSE 'failed' END, \
                        run_at = CASE WHEN f.retry THEN now() + make_interval(secs => f.delay) \
                                      ELSE t.run_at END, \
                        ended_at = CASE WHEN f.retry THEN NULL ELSE now() END, \
                        lease_expires_at = NULL, updated_at = now(), \
                        error_code = f.code, error_message = f.message \
                 FROM unnest($7::text[]::tid[], $2::uuid[], $3::text[], $4::text[], \
                             $5::bool[], $6::float8[]) \
                      AS f(version, id, code, message, retry, delay) \
                 WHERE t.ctid = f.version AND t.tenant_id = (SELECT $1::uuid) AND t.id = f.id",
            )
            .bind(&c.failed_ids)
            .bind(&c.codes)
            .bind(&c.messages)
            .bind(&c.retries)
            .bind(&c.delays)
            .bind(&c.failed_versions)
            .execute(self.executor())
            .await?
            .rows_affected();
        all_updated("failed", updated, c.failed_ids.len())
    }
}

/// Checks that a batch's UPDATE changed every row its held-attempt probe locked. The rows
/// are fetched by the versions that probe returned (`ctid`, see
/// `TenantTx::only_tid_scans`). Nothing else in the transaction updates those tasks, so
/// the versions still stand and a shortfall is a bug: the batch is refused (rolled back, and
/// the worker reports again) rather than acknowledged with tasks left unchanged.
fn all_updated(what: &str, updated: u64, expected: usize) -> StoreResult<()> {
    if usize::try_from(updated).is_ok_and(|updated| updated == expected) {
        return Ok(());
    }
    Err(StoreError::Database(sqlx::Error::Protocol(format!(
        "marking {expected} held attempts {what} changed {updated} rows"
    ))))
}
