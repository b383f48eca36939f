//! Reaping: tasks whose lease expired (their worker died or lost the control plane) go back
//! to pending with a backoff, or fail once their attempts are used up.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{Notifications, TASK_READY_CHANNEL, bound_waits, is_wait_timeout};
use crate::backoff::retry_delay;

const LEASE_EXPIRED_CODE: &str = "lease_expired";
const LEASE_EXPIRED_MESSAGE: &str = "the worker holding the task stopped renewing its lease";

/// What becomes of a task whose lease expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseExpiryOutcome {
    /// Its attempts are used up: it fails for good.
    Fail,
    /// It goes back to pending, claimable after `delay`.
    Retry {
        /// How long until it may be claimed again.
        delay: Duration,
    },
}

/// Decides for a task at `attempt` with `releases` attempts given back (which do not count)
/// and `max_attempts` allowed.
pub fn lease_expiry_outcome(attempt: i32, releases: i32, max_attempts: i32) -> LeaseExpiryOutcome {
    if attempt.saturating_sub(releases) >= max_attempts {
        LeaseExpiryOutcome::Fail
    } else {
        LeaseExpiryOutcome::Retry {
            delay: retry_delay(attempt),
        }
    }
}

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
    status: String,
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
    let mut notifications =
        Notifications::for_changed_tasks(reaped.iter().map(|task| (task.tenant_id, task.id)));
    if reaped.iter().any(|task| task.status == "pending") {
        notifications.push(TASK_READY_CHANNEL, String::new());
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
        match lease_expiry_outcome(task.attempt, task.releases, task.max_attempts) {
            LeaseExpiryOutcome::Fail => {
                fails.push(true);
                delays.push(0.0);
            }
            LeaseExpiryOutcome::Retry { delay } => {
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
            if task.status == "failed" {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_until_counted_attempts_reach_the_limit() {
        assert_eq!(
            lease_expiry_outcome(1, 0, 3),
            LeaseExpiryOutcome::Retry {
                delay: Duration::from_secs(1)
            }
        );
        assert_eq!(
            lease_expiry_outcome(2, 0, 3),
            LeaseExpiryOutcome::Retry {
                delay: Duration::from_secs(2)
            }
        );
        assert_eq!(lease_expiry_outcome(3, 0, 3), LeaseExpiryOutcome::Fail);
        assert_eq!(lease_expiry_outcome(1, 0, 1), LeaseExpiryOutcome::Fail);
    }

    #[test]
    fn released_attempts_do_not_count() {
        assert!(matches!(
            lease_expiry_outcome(3, 1, 3),
            LeaseExpiryOutcome::Retry { .. }
        ));
        assert_eq!(lease_expiry_outcome(4, 1, 3), LeaseExpiryOutcome::Fail);
    }
}
