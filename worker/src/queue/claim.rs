//! The claim transaction.
//!
//! 1. List the workspaces with pending tasks, starting after the workspace the worker's
//!    previous claim ended with and wrapping around (a skip scan over the partial index
//!    `tasks_queue`, one probe per workspace), with each one's cap on running tasks.
//! 2. Lock up to `2 × max` candidates, split evenly among those workspaces, each workspace's
//!    in its claim order `(priority DESC, created_at, id)`: due (`run_at <= now()`), labels
//!    matched by the worker, `FOR UPDATE SKIP LOCKED`. No per-row test of the agent's room:
//!    counting an agent's running tasks for every candidate made the claim's cost grow with
//!    the backlog; step 5 passes over full agents instead.
//! 3. Deal them round robin: every workspace's first candidate, then every second one, so a
//!    workspace with 100,000 pending tasks gets one turn per round like one with three.
//! 4. Take a transaction-scoped advisory lock per agent and per capped workspace among them,
//!    in sorted order, so two claimers of one agent (or capped workspace) serialise; then
//!    read each agent, count its running tasks and each capped workspace's (READ COMMITTED:
//!    those statements see claims committed while we waited for the locks).
//! 5. Choose, in dealt order, the tasks whose agent is live and has room and whose workspace
//!    is under its cap.
//! 6. If the window was full but the plan is not, look again past the agents and workspaces
//!    that are out of room, so one busy agent cannot starve the others (advisory locks are
//!    only tried on these later passes, as they are taken out of sorted order).
//! 7. Mark the chosen tasks running, append a `task.started` event each, load transcripts,
//!    notify, commit. Unchosen candidates are released by the commit.
//!
//! Lock waits are bounded to 5 s and statements to 30 s; a claim that times out claims
//! nothing (with a warning) and the loop tries again later.

use std::collections::HashMap;
use std::time::Duration;

use agentplane_core::ids::{AgentId, TaskId, TenantId};
use agentplane_core::key_checks;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::choose::{AgentKey, AgentState, Candidate, ClaimPlan, round_robin};
use super::round::{list_workspaces, select_candidates};
use super::{
    AgentSettings, ClaimedTask, Notifications, TranscriptMessage, WorkerLabels, bound_waits,
    is_wait_timeout, unzip_pairs,
};

/// Candidates looked at (and locked) per task wanted. Each locked candidate costs a row lock
/// and its WAL; at 4 per task, the candidates a claim locked and released were three times
/// the tasks it took. The passes after the first look past full agents.
const WINDOW_PER_TASK: usize = 2;
/// Candidate passes per claim; later passes skip the agents that are out of room.
const MAX_PASSES: usize = 3;
/// Workspaces visited per task wanted, and at most per claim: enough to fill the claim when
/// some of them have nothing due or nothing this worker may run.
const WORKSPACES_PER_TASK: usize = 2;
const MAX_WORKSPACES: usize = 256;

/// What one claim asks for.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// The claiming worker, recorded on each task it takes.
    pub worker_id: Uuid,
    /// At most this many tasks.
    pub max: u32,
    /// The lease each task gets.
    pub lease: Duration,
    /// The worker's labels: only tasks whose agent requires a subset of them are taken.
    pub labels: WorkerLabels,
    /// The workspace the previous claim ended with ([`Claim::resume_after`]): this claim's
    /// round starts with the next one. `None` starts at the beginning.
    pub resume_after: Option<TenantId>,
}

/// What one claim took.
#[derive(Debug, Clone, Default)]
pub struct Claim {
    /// The tasks claimed, each with its agent settings and transcript.
    pub tasks: Vec<ClaimedTask>,
    /// Where the next claim's round should start.
    pub resume_after: Option<TenantId>,
    /// Whether workspaces were left unvisited because the round was full: a claim that took
    /// nothing should then be retried at once from [`Claim::resume_after`].
    pub more_workspaces: bool,
}

/// Claims up to `max` tasks for `worker_id` with a lease of `lease`, in one transaction,
/// for a worker without labels, starting the round at the first workspace.
pub async fn claim_tasks(
    pool: &PgPool,
    worker_id: Uuid,
    max: u32,
    lease: Duration,
) -> Result<Vec<ClaimedTask>, sqlx::Error> {
    let request = ClaimRequest {
        worker_id,
        max,
        lease,
        labels: WorkerLabels::default(),
        resume_after: None,
    };
    Ok(claim(pool, &request).await?.tasks)
}

/// Claims what `request` asks for, in one transaction. A claim that waited too long for a
/// lock or a statement claims nothing.
pub async fn claim(pool: &PgPool, request: &ClaimRequest) -> Result<Claim, sqlx::Error> {
    match claim_once(pool, request).await {
        Err(error) if is_wait_timeout(&error) => {
            tracing::warn!(%error, "claim gave up waiting for a lock or statement; claimed nothing");
            Ok(Claim {
                resume_after: request.resume_after,
                ..Claim::default()
            })
        }
        claimed => claimed,
    }
}

/// The claim transaction; an error rolls it back.
async fn claim_once(pool: &PgPool, request: &ClaimRequest) -> Result<Claim, sqlx::Error> {
    let max = usize::try_from(request.max).unwrap_or(usize::MAX);
    if max == 0 {
        return Ok(Claim {
            resume_after: request.resume_after,
            ..Claim::default()
        });
    }
    let window = max.saturating_mul(WINDOW_PER_TASK);
    let round_size = max.saturating_mul(WORKSPACES_PER_TASK).min(MAX_WORKSPACES);
    let mut tx = pool.begin().await?;
    bound_waits(&mut tx).await?;
    // One workspace more than the round takes says whether any was left for the next.
    let mut round = list_workspaces(&mut tx, request.resume_after, round_size + 1).await?;
    let more_workspaces = round.len() > round_size;
    round.truncate(round_size);
    if round.is_empty() {
        tx.commit().await?;
        return Ok(Claim::default());
    }
    let mut plan = ClaimPlan::new(
        max,
        round
            .iter()
            .filter_map(|w| w.max_running_tasks.map(|cap| (w.tenant_id, i64::from(cap)))),
    );
    for pass in 0..MAX_PASSES {
        let workspaces: Vec<Uuid> = round
            .iter()
            .map(|w| w.tenant_id)
            .filter(|tenant| plan.workspace_open(*tenant))
            .collect();
        let Some(per_workspace) = window.div_ceil(workspaces.len().max(1)).try_into().ok() else {
            break;
        };
        let ranked =
            select_candidates(&mut tx, &workspaces, per_workspace, &request.labels, &plan).await?;
        // A workspace that filled its share may have more behind it.
        let window_was_full = ranked
            .iter()
            .any(|c| i64::try_from(c.rank + 1).is_ok_and(|taken| taken >= per_workspace));
        let candidates = round_robin(ranked);
        let unseen = plan.unseen_locks(&candidates);
        let locked = if pass == 0 {
            lock_agents(&mut tx, &unseen).await?;
            unseen.clone()
        } else {
            try_lock_agents(&mut tx, &unseen).await?
        };
        let (workspace_locks, agent_locks): (Vec<AgentKey>, Vec<AgentKey>) =
            locked.iter().partition(|key| key.1.is_nil());
        let states = read_agents(&mut tx, &agent_locks).await?;
        let running = count_workspace_running(&mut tx, &workspace_locks).await?;
        plan.admit(&unseen, states, &running);
        plan.take(&candidates);
        if plan.is_full() || !window_was_full || workspaces.is_empty() {
            break;
        }
    }
    let last_visited = round.last().map(|w| TenantId(w.tenant_id));
    if plan.chosen().is_empty() {
        tx.commit().await?;
        return Ok(Claim {
            tasks: Vec::new(),
            resume_after: if more_workspaces { last_visited } else { None },
            more_workspaces,
        });
    }
    let resume_after = plan.chosen().last().map(|c| TenantId(c.tenant_id));

    // The `task.started` events' key checks (their workspace) wait for COMMIT, planned as
    // the control plane's report transactions plan theirs (`agentplane_core::key_checks`):
    // planned for every row in this transaction otherwise.
    sqlx::raw_sql(key_checks::DEFER).execute(&mut *tx).await?;
    let started = mark_running(&mut tx, plan.chosen(), request.worker_id, request.lease).await?;
    record_started(&mut tx, &started, request.worker_id).await?;
    let mut transcripts = load_transcripts(&mut tx, &started).await?;
    Notifications::for_changed_tasks(
        started
            .iter()
            .map(|task| (TenantId(task.tenant_id), TaskId(task.id))),
    )
    .send(&mut tx)
    .await?;
    sqlx::raw_sql(key_checks::PLAN_AT_COMMIT)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;

    let tasks = started
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
        .collect();
    Ok(Claim {
        tasks,
        resume_after,
        more_workspaces,
    })
}

/// Counts the running tasks of each capped workspace in `locks` (workspace locks, taken).
async fn count_workspace_running(
    connection: &mut PgConnection,
    locks: &[AgentKey],
) -> Result<HashMap<Uuid, i64>, sqlx::Error> {
    if locks.is_empty() {
        return Ok(HashMap::new());
    }
    let tenants: Vec<Uuid> = locks.iter().map(|key| key.0).collect();
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT w.tenant_id, \
         (SELECT count(*) FROM tasks AS t \
         WHERE t.tenant_id = w.tenant_id AND t.status = 'running') \
         FROM unnest($1::uuid[]) AS w(tenant_id)",
    )
    .bind(tenants)
    .fetch_all(connection)
    .await?;
    Ok(rows.into_iter().collect())
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
    tools: serde_json::Value,
    max_steps: i32,
    fallbacks: serde_json::Value,
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
                a.tools, a.max_steps, a.fallbacks, a.max_concurrency, a.deleted_at IS NOT NULL AS deleted, \
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
                tools: row.tools,
                max_steps: row.max_steps,
                fallbacks: row.fallbacks,
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

/// Marks the chosen tasks running, each by the row version its candidate lock returned
/// (`ctid`): PostgreSQL fetches those rows directly (TID Scan) whatever its statistics say.
/// The statistics of `status` describe pending tasks poorly (they come and go within
/// seconds of an ANALYZE), and a join of the chosen keys to `tasks` was planned from them:
/// with a stale partial index (`tasks_queue`) it walked every pending task of the workspace
/// (2,000 buffers per claim at a 40,000-task backlog), and with the worker's policy costed
/// at one visible row it compared every row of the table with every key (1 s for a claim of
/// 384). The rows are locked by this transaction since the candidate query, so their
/// versions cannot have moved; the ids given must match too, so a version that somehow held
/// another row would claim nothing rather than a task that was not chosen. The expected
/// status comes from an init plan, whose value the planner does not know, so no partial
/// index qualifies.
async fn mark_running(
    connection: &mut PgConnection,
    chosen: &[Candidate],
    worker_id: Uuid,
    lease: Duration,
) -> Result<Vec<StartedTask>, sqlx::Error> {
    let versions: Vec<&str> = chosen.iter().map(|c| c.row_version.as_str()).collect();
    let task_ids: Vec<Uuid> = chosen.iter().map(|c| c.task_id).collect();
    let wanted = task_ids.len();
    let started: Vec<StartedTask> = sqlx::query_as(
        "UPDATE tasks AS t \
         SET status = 'running', attempt = t.attempt + 1, worker_id = $3, \
             lease_expires_at = now() + make_interval(secs => $4), \
             started_at = now(), updated_at = now() \
         WHERE t.ctid = ANY($1::text[]::tid[]) AND t.id = ANY($2::uuid[]) \
           AND t.status = (SELECT 'pending'::text) \
         RETURNING t.tenant_id, t.id, t.agent_id, t.attempt, t.run_at, t.traceparent",
    )
    .bind(versions)
    .bind(task_ids)
    .bind(worker_id)
    .bind(lease.as_secs_f64())
    .fetch_all(connection)
    .await?;
    if started.len() != wanted {
        // Unreachable while the candidates stay locked: the tasks not marked stay pending
        // and are claimed later.
        tracing::error!(
            wanted,
            marked = started.len(),
            "the claim marked fewer tasks running than it chose"
        );
    }
    Ok(started)
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

#[derive(sqlx::FromRow)]
struct TranscriptRow {
    tenant_id: Uuid,
    task_id: Uuid,
    position: i32,
    role: String,
    content: String,
    step: Option<i32>,
    tool_calls: Option<serde_json::Value>,
    tool_call_id: Option<String>,
    is_error: bool,
    finish_reason: Option<String>,
}

async fn load_transcripts(
    connection: &mut PgConnection,
    started: &[StartedTask],
) -> Result<HashMap<(Uuid, Uuid), Vec<TranscriptMessage>>, sqlx::Error> {
    let (tenants, task_ids) = unzip_pairs(started.iter().map(|task| (task.tenant_id, task.id)));
    let rows: Vec<TranscriptRow> = sqlx::query_as(
        "SELECT m.tenant_id, m.task_id, m.position, m.role, m.content, m.step, m.tool_calls, \
                m.tool_call_id, m.is_error, m.finish_reason \
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
    for row in rows {
        transcripts
            .entry((row.tenant_id, row.task_id))
            .or_default()
            .push(TranscriptMessage {
                position: row.position,
                role: row.role,
                content: row.content,
                step: row.step,
                tool_calls: row.tool_calls,
                tool_call_id: row.tool_call_id,
                is_error: row.is_error,
                finish_reason: row.finish_reason,
            });
    }
    Ok(transcripts)
}
