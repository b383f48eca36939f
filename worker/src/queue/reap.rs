//! Reaping: tasks whose lease expired (their worker died or lost the control plane) go back
//! to pending with a backoff, or fail once their attempts are used up.

use agentplane_core::ids::{TaskId, TenantId};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use agentplane_core::columns::TaskStatus;
use agentplane_core::notify::Notification;
use agentplane_core::retry::{LEASE_EXPIRED_CODE, RetryDecision, decide_retry};

use super::{Notifications, bound_waits, is_wait_timeout};

const LEASE_EXPIRED_MESSAGE: &str = "the worker holding the task stopped renewing its lease";

#[derive(sqlx::FromRow)]
struct ExpiredTask {
    tenant_id: Uuid,
    id: Uuid,
    attempt: i32,
    releases: i32,
    max_attempts: i32,
}

#[derive(sqlx::FromRow)]
struct ReapedTask {
    tenant_id: Uuid,
    id: Uuid,
    attempt: i32,
    status: TaskStatus,
}

/// Requeues or fails up to `limit` running tasks whose lease has expired, in one transaction
/// (rows another reaper holds are skipped). Returns how many tasks changed. Lock waits and
/// statements are bounded as in the claim; a reap that times out changes nothing.
pub async fn reap_expired_leases(pool: &PgPool, limit: i64) -> Result<u64, sqlx::Error> {
    match reap(pool, limit).await {
        Err(error) if is_wait_timeout(&error) => {
            tracing::warn!(%error, "reap gave up waiting for a lock or statement; reaped nothing");
            Ok(0)
        }
        reaped => reaped,
    }
}

/// The reap transaction; an error rolls it back.
async fn reap(pool: &PgPool, limit: i64) -> Result<u64, sqlx::Error> {
    if limit <= 0 {
        return Ok(0);
    }
    let mut tx = pool.begin().await?;
    bound_waits(&mut tx).await?;
    let expired: Vec<ExpiredTask> = sqlx::query_as(
        "SELECT tenant_id, id, attempt, releases, max_attempts FROM tasks \
         WHERE status = 'running' AND lease_expires_at < now() \
         ORDER BY lease_expires_at \
         LIMIT $1 \
         FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if expired.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }

    let reaped = settle(&mut tx, &expired).await?;
    record_reaped(&mut tx, &reaped).await?;
    let mut notifications = Notifications::for_changed_tasks(
        reaped
            .iter()
            .map(|task| (TenantId(task.tenant_id), TaskId(task.id))),
    );
    if reaped.iter().any(|task| task.status == TaskStatus::Pending) {
        notifications.push(Notification::TaskReady);
    }
    notifications.send(&mut tx).await?;
    tx.commit().await?;

    for task in &reaped {
        tracing::info!(
            tenant_id = %task.tenant_id,
            task_id = %task.id,
            attempt = task.attempt,
            status = %task.status,
            "reaped expired lease"
        );
    }
    Ok(u64::try_from(reaped.len()).unwrap_or(u64::MAX))
}

async fn settle(
    connection: &mut PgConnection,
    expired: &[ExpiredTask],
) -> Result<Vec<ReapedTask>, sqlx::Error> {
    let mut tenants = Vec::with_capacity(expired.len());
    let mut task_ids = Vec::with_capacity(expired.len());
    let mut fails = Vec::with_capacity(expired.len());
    let mut delays = Vec::with_capacity(expired.len());
    for task in expired {
        tenants.push(task.tenant_id);
        task_ids.push(task.id);
        // An expired lease is a retryable failure: the worker may come back, the task may not.
        match decide_retry(task.attempt, task.releases, task.max_attempts, true) {
            RetryDecision::Fail => {
                fails.push(true);
                delays.push(0.0);
            }
            RetryDecision::Retry { delay } => {
                fails.push(false);
                delays.push(delay.as_secs_f64());
            }
        }
    }
    sqlx::query_as(
        "UPDATE tasks AS t \
         SET status = CASE WHEN r.fail THEN 'failed' ELSE 'pending' END, \
             ended_at = CASE WHEN r.fail THEN now() ELSE t.ended_at END, \
             run_at = CASE WHEN r.fail THEN t.run_at \
                           ELSE now() + make_interval(secs => r.delay_secs) END, \
             worker_id = NULL, lease_expires_at = NULL, updated_at = now(), \
             error_code = $5, error_message = $6 \
         FROM unnest($1::uuid[], $2::uuid[], $3::bool[], $4::float8[]) \
              AS r(tenant_id, id, fail, delay_secs) \
         WHERE t.tenant_id = r.tenant_id AND t.id = r.id AND t.status = 'running' \
         RETURNING t.tenant_id, t.id, t.attempt, t.status",
    )
    .bind(tenants)
    .bind(task_ids)
    .bind(fails)
    .bind(delays)
    .bind(LEASE_EXPIRED_CODE)
    .bind(LEASE_EXPIRED_MESSAGE)
    .fetch_all(connection)
    .await
}

async fn record_reaped(
    connection: &mut PgConnection,
    reaped: &[ReapedTask],
) -> Result<(), sqlx::Error> {
    let tenants: Vec<Uuid> = reaped.iter().map(|task| task.tenant_id).collect();
    let event_ids: Vec<Uuid> = reaped.iter().map(|_| Uuid::now_v7()).collect();
    let task_ids: Vec<Uuid> = reaped.iter().map(|task| task.id).collect();
    let actions: Vec<&str> = reaped
        .iter()
        .map(|task| {
            if task.status == TaskStatus::Failed {
                "task.failed"
            } else {
                "task.retrying"
            }
        })
        .collect();
    let attempts: Vec<i32> = reaped.iter().map(|task| task.attempt).collect();
    sqlx::query(
        "INSERT INTO events (tenant_id, id, actor, action, resource_type, resource_id, data) \
         SELECT e.tenant_id, e.id, 'system', e.action, 'task', e.task_id, \
                jsonb_build_object('attempt', e.attempt, 'reason', $6::text) \
         FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::int4[]) \
              AS e(tenant_id, id, task_id, action, attempt)",
    )
    .bind(tenants)
    .bind(event_ids)
    .bind(task_ids)
    .bind(actions)
    .bind(attempts)
    .bind(LEASE_EXPIRED_CODE)
    .execute(connection)
    .await?;
    Ok(())
}
