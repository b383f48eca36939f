//! The claim transaction.
//!
//! 1. Lock up to `4 × max` pending, due tasks in claim order (`FOR UPDATE SKIP LOCKED`, served
//!    by the partial index `tasks_claim`). No per-row test of the agent's room: counting an
//!    agent's running tasks for every candidate row made the claim's cost grow with the
//!    backlog; step 4 passes over full agents instead.
//! 2. Take a transaction-scoped advisory lock per agent among them, in sorted order, so two
//!    claimers of one agent serialise; then read each agent and count its running tasks
//!    (READ COMMITTED: that statement sees claims committed while we waited for the lock).
//! 3. Choose, in claim order, the tasks whose agent is live and has room.
//! 4. If the window was full but the plan is not, look again past the agents that are out of
//!    room, so one busy agent cannot starve every other workspace (advisory locks are only
//!    tried on these later passes, as they are taken out of sorted order).
//! 5. Mark the chosen tasks running, append a `task.started` event each, load transcripts,
//!    notify, commit. Unchosen candidates are released by the commit.
//!
//! Lock waits are bounded to 5 s and statements to 30 s; a claim that times out claims
//! nothing (with a warning) and the loop tries again later.

use std::collections::HashMap;
use std::time::Duration;

use agentplane_core::ids::{AgentId, TaskId, TenantId};
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::choose::{AgentKey, AgentState, Candidate, ClaimPlan};
use super::{
    AgentSettings, ClaimedTask, Notifications, TranscriptMessage, bound_waits, is_wait_timeout,
    unzip_pairs,
};

/// Candidates looked at per task wanted.
const WINDOW_PER_TASK: usize = 4;
/// Candidate passes per claim; later passes skip the agents that are out of room.
const MAX_PASSES: usize = 3;

/// Claims up to `max` tasks for `worker_id` with a lease of `lease`, in one transaction.
/// Returns the tasks claimed (possibly none), each with its agent settings and transcript.
/// A claim that waited too long for a lock or a statement claims nothing.
pub async fn claim_tasks(
    pool: &PgPool,
    worker_id: Uuid,
    max: u32,
    lease: Duration,
) -> Result<Vec<ClaimedTask>, sqlx::Error> {
    match claim(pool, worker_id, max, lease).await {
        Err(error) if is_wait_timeout(&error) => {
            tracing::warn!(%error, "claim gave up waiting for a lock or statement; claimed nothing");
            Ok(Vec::new())
        }
        claimed => claimed,
    }
}

/// The claim transaction; an error rolls it back.
async fn claim(
    pool: &PgPool,
    worker_id: Uuid,
    max: u32,
    lease: Duration,
) -> Result<Vec<ClaimedTask>, sqlx::Error> {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    if max == 0 {
        return Ok(Vec::new());
    }
    let window = i64::try_from(max.saturating_mul(WINDOW_PER_TASK)).unwrap_or(i64::MAX);
    let mut tx = pool.begin().await?;
    bound_waits(&mut tx).await?;
    let mut plan = ClaimPlan::new(max);
    for pass in 0..MAX_PASSES {
        let candidates = select_candidates(&mut tx, window, &plan).await?;
        let window_was_full = i64::try_from(candidates.len()).is_ok_and(|len| len >= window);
        let unseen = plan.unseen_agents(&candidates);
        let locked = if pass == 0 {
            lock_agents(&mut tx, &unseen).await?;
            unseen.clone()
        } else {
            try_lock_agents(&mut tx, &unseen).await?
        };
        let states = read_agents(&mut tx, &locked).await?;
        plan.admit_agents(&unseen, states);
        plan.take(&candidates);
        if plan.is_full() || !window_was_full {
            break;
        }
    }
    if plan.chosen().is_empty() {
        tx.commit().await?;
        return Ok(Vec::new());
    }

    let started = mark_running(&mut tx, plan.chosen(), worker_id, lease).await?;
    record_started(&mut tx, &started, worker_id).await?;
    let mut transcripts = load_transcripts(&mut tx, &started).await?;
    Notifications::for_changed_tasks(
        started
            .iter()
            .map(|task| (TenantId(task.tenant_id), TaskId(task.id))),
    )
    .send(&mut tx)
    .await?;
    tx.commit().await?;

    Ok(started
        .into_iter()
        .filter_map(|task| {
            let Some(agent) = plan.settings((task.tenant_id, task.agent_id)).cloned() else {
                // Unreachable: only tasks of open agents are chosen. The lease runs out and
                // the reaper requeues the task.
                tracing::error!(task_id = %task.id, "claimed a task whose agent was not read");
                return None;
            };
            let messages = transcripts
                .remove(&(task.tenant_id, task.id))
                .unwrap_or_default();
            Some(ClaimedTask {
                tenant_id: TenantId(task.tenant_id),
                task_id: TaskId(task.id),
                agent_id: AgentId(task.agent_id),
                attempt: task.attempt,
                agent,
                messages,
                run_at: task.run_at,
                traceparent: task.traceparent,
            })
        })
        .collect())
}

async fn select_candidates(
    connection: &mut PgConnection,
    window: i64,
    plan: &ClaimPlan,
) -> Result<Vec<Candidate>, sqlx::Error> {
    let (skip_agent_tenants, skip_agents) = unzip_pairs(plan.exhausted_agents());
    let (skip_task_tenants, skip_tasks) = unzip_pairs(
        plan.chosen()
            .iter()
            .map(|candidate| (candidate.tenant_id, candidate.task_id)),
    );
    let rows: Vec<(Uuid, Uuid, Uuid)> = sqlx::query_as(
        "SELECT tenant_id, id, agent_id FROM tasks \
         WHERE status = 'pending' AND run_at <= now() \
           AND NOT EXISTS (SELECT 1 FROM unnest($2::uuid[], $3::uuid[]) AS x(tenant_id, agent_id) \
                           WHERE x.tenant_id = tasks.tenant_id AND x.agent_id = tasks.agent_id) \
           AND NOT EXISTS (SELECT 1 FROM unnest($4::uuid[], $5::uuid[]) AS y(tenant_id, id) \
                           WHERE y.tenant_id = tasks.tenant_id AND y.id = tasks.id) \
         ORDER BY priority DESC, run_at \
         LIMIT $1 \
         FOR UPDATE OF tasks SKIP LOCKED",
    )
    .bind(window)
    .bind(skip_agent_tenants)
    .bind(skip_agents)
    .bind(skip_task_tenants)
    .bind(skip_tasks)
    .fetch_all(connection)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(tenant_id, task_id, agent_id)| Candidate {
            tenant_id,
            task_id,
            agent_id,
        })
        .collect())
}

/// Waits for the advisory lock of each agent, in the (sorted) order given.
async fn lock_agents(
    connection: &mut PgConnection,
    agents: &[AgentKey],
) -> Result<(), sqlx::Error> {
    if agents.is_empty() {
        return Ok(());
    }
    let (tenants, agent_ids) = unzip_pairs(agents.iter().copied());
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended(k.tenant_id::text || ':' || k.agent_id::text, 0)) \
         FROM (SELECT u.tenant_id, u.agent_id \
               FROM unnest($1::uuid[], $2::uuid[]) WITH ORDINALITY AS u(tenant_id, agent_id, n) \
               ORDER BY u.n) AS k",
    )
    .bind(tenants)
    .bind(agent_ids)
    .execute(connection)
    .await?;
    Ok(())
}

/// Takes the advisory locks that are free right now; returns the agents locked.
async fn try_lock_agents(
    connection: &mut PgConnection,
    agents: &[AgentKey],
) -> Result<Vec<AgentKey>, sqlx::Error> {
    if agents.is_empty() {
        return Ok(Vec::new());
    }
    let (tenants, agent_ids) = unzip_pairs(agents.iter().copied());
    sqlx::query_as(
        "SELECT k.tenant_id, k.agent_id \
         FROM (SELECT u.tenant_id, u.agent_id \
               FROM unnest($1::uuid[], $2::uuid[]) WITH ORDINALITY AS u(tenant_id, agent_id, n) \
               ORDER BY u.n) AS k \
         WHERE pg_try_advisory_xact_lock(hashtextextended(k.tenant_id::text || ':' || k.agent_id::text, 0))",
    )
    .bind(tenants)
    .bind(agent_ids)
    .fetch_all(connection)
    .await
}

#[derive(sqlx::FromRow)]
struct AgentRow {
    tenant_id: Uuid,
    id: Uuid,
    provider: String,
    model: String,
    generation: serde_json::Value,
    task_timeout_ms: i64,
    max_concurrency: i32,
    deleted: bool,
    running: i64,
}

/// Reads agents (after their locks, so the running counts include committed claims).
async fn read_agents(
    connection: &mut PgConnection,
    agents: &[AgentKey],
) -> Result<Vec<AgentState>, sqlx::Error> {
    if agents.is_empty() {
        return Ok(Vec::new());
    }
    let (tenants, agent_ids) = unzip_pairs(agents.iter().copied());
    let rows: Vec<AgentRow> = sqlx::query_as(
        "SELECT a.tenant_id, a.id, a.provider, a.model, a.generation, a.task_timeout_ms, \
                a.max_concurrency, a.deleted_at IS NOT NULL AS deleted, \
                (SELECT count(*) FROM tasks AS t \
                 WHERE t.tenant_id = a.tenant_id AND t.agent_id = a.id \
                   AND t.status = 'running') AS running \
         FROM agents AS a \
         JOIN unnest($1::uuid[], $2::uuid[]) AS k(tenant_id, agent_id) \
           ON a.tenant_id = k.tenant_id AND a.id = k.agent_id",
    )
    .bind(tenants)
    .bind(agent_ids)
    .fetch_all(connection)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| AgentState {
            key: (row.tenant_id, row.id),
            settings: AgentSettings {
                provider: row.provider,
                model: row.model,
                generation: row.generation,
                task_timeout: Duration::from_millis(
                    u64::try_from(row.task_timeout_ms).unwrap_or(0),
                ),
            },
            max_concurrency: i64::from(row.max_concurrency),
            deleted: row.deleted,
            running: row.running,
        })
        .collect())
}

#[derive(sqlx::FromRow)]
struct StartedTask {
    tenant_id: Uuid,
    id: Uuid,
    agent_id: Uuid,
    attempt: i32,
    run_at: DateTime<Utc>,
    traceparent: Option<String>,
}

async fn mark_running(
    connection: &mut PgConnection,
    chosen: &[Candidate],
    worker_id: Uuid,
    lease: Duration,
) -> Result<Vec<StartedTask>, sqlx::Error> {
    let (tenants, task_ids) = unzip_pairs(chosen.iter().map(|c| (c.tenant_id, c.task_id)));
    sqlx::query_as(
        "UPDATE tasks AS t \
         SET status = 'running', attempt = t.attempt + 1, worker_id = $3, \
             lease_expires_at = now() + make_interval(secs => $4), \
             started_at = now(), updated_at = now() \
         FROM unnest($1::uuid[], $2::uuid[]) AS c(tenant_id, id) \
         WHERE t.tenant_id = c.tenant_id AND t.id = c.id AND t.status = 'pending' \
         RETURNING t.tenant_id, t.id, t.agent_id, t.attempt, t.run_at, t.traceparent",
    )
    .bind(tenants)
    .bind(task_ids)
    .bind(worker_id)
    .bind(lease.as_secs_f64())
    .fetch_all(connection)
    .await
}

/// Appends one `task.started` event per claimed task (no RETURNING: the worker role cannot
/// read events).
async fn record_started(
    connection: &mut PgConnection,
    started: &[StartedTask],
    worker_id: Uuid,
) -> Result<(), sqlx::Error> {
    let tenants: Vec<Uuid> = started.iter().map(|task| task.tenant_id).collect();
    let event_ids: Vec<Uuid> = started.iter().map(|_| Uuid::now_v7()).collect();
    let task_ids: Vec<Uuid> = started.iter().map(|task| task.id).collect();
    let attempts: Vec<i32> = started.iter().map(|task| task.attempt).collect();
    sqlx::query(
        "INSERT INTO events (tenant_id, id, actor, action, resource_type, resource_id, data) \
         SELECT e.tenant_id, e.id, $5, 'task.started', 'task', e.task_id, \
                jsonb_build_object('attempt', e.attempt, 'worker_id', $6::text) \
         FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::int4[]) \
              AS e(tenant_id, id, task_id, attempt)",
    )
    .bind(tenants)
    .bind(event_ids)
    .bind(task_ids)
    .bind(attempts)
    .bind(format!("worker:{worker_id}"))
    .bind(worker_id.to_string())
    .execute(connection)
    .await?;
    Ok(())
}

async fn load_transcripts(
    connection: &mut PgConnection,
    started: &[StartedTask],
) -> Result<HashMap<(Uuid, Uuid), Vec<TranscriptMessage>>, sqlx::Error> {
    let (tenants, task_ids) = unzip_pairs(started.iter().map(|task| (task.tenant_id, task.id)));
    let rows: Vec<(Uuid, Uuid, String, String)> = sqlx::query_as(
        "SELECT m.tenant_id, m.task_id, m.role, m.content \
         FROM task_messages AS m \
         JOIN unnest($1::uuid[], $2::uuid[]) AS k(tenant_id, task_id) \
           ON m.tenant_id = k.tenant_id AND m.task_id = k.task_id \
         ORDER BY m.tenant_id, m.task_id, m.position",
    )
    .bind(tenants)
    .bind(task_ids)
    .fetch_all(connection)
    .await?;
    let mut transcripts: HashMap<(Uuid, Uuid), Vec<TranscriptMessage>> = HashMap::new();
    for (tenant_id, task_id, role, content) in rows {
        transcripts
            .entry((tenant_id, task_id))
            .or_default()
            .push(TranscriptMessage { role, content });
    }
    Ok(transcripts)
}
