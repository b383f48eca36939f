//! Steps 1 to 3 of the claim (see `claim.rs`): the round of workspaces with pending tasks,
//! and each one's share of locked candidates, ranked for round-robin dealing.

use agentplane_core::ids::TenantId;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::WorkerLabels;
use super::choose::{Candidate, ClaimPlan, RankedCandidate};

/// A workspace with pending tasks, as the round visits it.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct RoundWorkspace {
    /// 0 for workspaces after the start, 1 for those the round wrapped around to.
    lap: i32,
    /// Position within its lap.
    n: i32,
    pub(super) tenant_id: Uuid,
    pub(super) max_running_tasks: Option<i32>,
}

/// Up to `limit` workspaces with pending tasks, in tenant id order starting after
/// `resume_after` and wrapping around to the first: one statement, a skip scan with one
/// probe of `tasks_queue` per workspace, however many tasks each has pending. The wrapped
/// part is only walked as far as the limit still needs.
pub(super) async fn list_workspaces(
    connection: &mut PgConnection,
    resume_after: Option<TenantId>,
    limit: usize,
) -> Result<Vec<RoundWorkspace>, sqlx::Error> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let start = resume_after.map_or(Uuid::nil(), |tenant| tenant.0);
    let mut round: Vec<RoundWorkspace> = sqlx::query_as(
        "WITH RECURSIVE after_start(tenant_id, n) AS ( \
             SELECT (SELECT t.tenant_id FROM tasks AS t \
                     WHERE t.status = 'pending' AND t.tenant_id > $1 \
                     ORDER BY t.tenant_id LIMIT 1), 1 \
           UNION ALL \
             SELECT (SELECT t.tenant_id FROM tasks AS t \
                     WHERE t.status = 'pending' AND t.tenant_id > r.tenant_id \
                     ORDER BY t.tenant_id LIMIT 1), r.n + 1 \
             FROM after_start AS r WHERE r.tenant_id IS NOT NULL AND r.n < $2), \
         up_to_start(tenant_id, n) AS ( \
             SELECT (SELECT t.tenant_id FROM tasks AS t \
                     WHERE t.status = 'pending' AND t.tenant_id <= $1 \
                     ORDER BY t.tenant_id LIMIT 1), 1 \
           UNION ALL \
             SELECT (SELECT t.tenant_id FROM tasks AS t \
                     WHERE t.status = 'pending' AND t.tenant_id > r.tenant_id \
                       AND t.tenant_id <= $1 \
                     ORDER BY t.tenant_id LIMIT 1), r.n + 1 \
             FROM up_to_start AS r WHERE r.tenant_id IS NOT NULL AND r.n < $2) \
         SELECT r.lap, r.n, r.tenant_id, w.max_running_tasks \
         FROM ((SELECT 0 AS lap, n, tenant_id FROM after_start WHERE tenant_id IS NOT NULL) \
               UNION ALL \
               (SELECT 1 AS lap, n, tenant_id FROM up_to_start WHERE tenant_id IS NOT NULL) \
               LIMIT $2) AS r \
         JOIN workspaces AS w ON w.id = r.tenant_id",
    )
    .bind(start)
    .bind(i32::try_from(limit).unwrap_or(i32::MAX))
    .fetch_all(connection)
    .await?;
    round.sort_by_key(|w| (w.lap, w.n));
    Ok(round)
}

#[derive(sqlx::FromRow)]
struct CandidateRow {
    round_position: i64,
    tenant_id: Uuid,
    id: Uuid,
    agent_id: Uuid,
    priority: i32,
    created_at: DateTime<Utc>,
    row_version: String,
}

/// Locks up to `per_workspace` candidates of each workspace in `workspaces`, skipping the
/// plan's exhausted agents and chosen tasks and the tasks whose required labels the worker
/// lacks; ranked within their workspace in claim order.
pub(super) async fn select_candidates(
    connection: &mut PgConnection,
    workspaces: &[Uuid],
    per_workspace: i64,
    labels: &WorkerLabels,
    plan: &ClaimPlan,
) -> Result<Vec<RankedCandidate>, sqlx::Error> {
    if workspaces.is_empty() {
        return Ok(Vec::new());
    }
    // Agents and tasks are skipped by id alone: the subquery is already limited to one
    // workspace, and ids are UUIDv7 made by the application, unique in practice across
    // workspaces too. Plain `<> ALL` filters (rather than anti-joins with `unnest`) keep the
    // planner on the ordered scan of `tasks_queue` that stops after the limit; with the
    // anti-joins it sorted each workspace's whole backlog (60 ms at 20,000 pending).
    let skip_agents: Vec<Uuid> = plan
        .exhausted_agents()
        .into_iter()
        .map(|(_, agent)| agent)
        .collect();
    let skip_tasks: Vec<Uuid> = plan.chosen().iter().map(|c| c.task_id).collect();
    // Sorting is disabled for this statement: the statistics of `tasks` expect almost no
    // pending task (ANALYZE last saw them finished), so the planner costed reading the
    // workspace's whole backlog through `tasks_by_status` and sorting it below walking
    // `tasks_queue` in claim order (measured: 25,000 pending tasks read and sorted, 21 ms,
    // for a window of 224). Only for this statement: elsewhere in the claim a plan that
    // avoids a sort can be worse (the transcripts' order by a scan of the whole index).
    sqlx::query("SELECT set_config('enable_sort', 'off', true)")
        .execute(&mut *connection)
        .await?;
    let mut rows: Vec<CandidateRow> = sqlx::query_as(
        "SELECT w.n AS round_position, c.tenant_id, c.id, c.agent_id, c.priority, c.created_at, \
                c.row_version \
         FROM unnest($1::uuid[]) WITH ORDINALITY AS w(tenant_id, n) \
         CROSS JOIN LATERAL ( \
             SELECT t.tenant_id, t.id, t.agent_id, t.priority, t.created_at, \
                    t.ctid::text AS row_version \
             FROM tasks AS t \
             WHERE t.tenant_id = w.tenant_id AND t.status = 'pending' AND t.run_at <= now() \
               AND t.required_labels <@ $3::jsonb \
               AND t.agent_id <> ALL ($4::uuid[]) AND t.id <> ALL ($5::uuid[]) \
             ORDER BY t.priority DESC, t.created_at, t.id \
             LIMIT $2 \
             FOR UPDATE OF t SKIP LOCKED) AS c",
    )
    .bind(workspaces)
    .bind(per_workspace)
    .bind(labels.as_json())
    .bind(skip_agents)
    .bind(skip_tasks)
    .fetch_all(&mut *connection)
    .await?;
    sqlx::query("RESET enable_sort").execute(connection).await?;
    // Claim order within each workspace, whatever order the rows arrived in.
    rows.sort_by(|a, b| {
        (
            a.round_position,
            std::cmp::Reverse(a.priority),
            a.created_at,
            a.id,
        )
            .cmp(&(
                b.round_position,
                std::cmp::Reverse(b.priority),
                b.created_at,
                b.id,
            ))
    });
    let mut ranked = Vec::with_capacity(rows.len());
    let mut previous: Option<(i64, usize)> = None;
    for row in rows {
        let rank = match previous {
            Some((position, rank)) if position == row.round_position => rank + 1,
            _ => 0,
        };
        previous = Some((row.round_position, rank));
        ranked.push(RankedCandidate {
            round_position: row.round_position,
            rank,
            candidate: Candidate {
                tenant_id: row.tenant_id,
                task_id: row.id,
                agent_id: row.agent_id,
                row_version: row.row_version,
            },
        });
    }
    Ok(ranked)
}
