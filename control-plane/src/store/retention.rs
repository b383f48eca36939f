//! Retention of finished tasks: deleting tasks that ended long ago, with their transcript
//! and any live output left behind. Events and usage records stay (audit and billing; see
//! `migrations/20261124700000_task_retention.sql`).
//!
//! The deletion runs one workspace at a time through the tenant-scoped transaction, in
//! bounded batches whose rows are taken with `FOR UPDATE SKIP LOCKED`, so several replicas
//! can purge at once without waiting on each other or on a task being changed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use super::{Store, StoreResult, TenantTx};
use crate::ids::TenantId;

/// Rows one batch deleted, per table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    /// Finished tasks.
    pub tasks: u64,
    /// Their transcript messages.
    pub messages: u64,
    /// Live output rows left behind (a task failed by lease expiry keeps them).
    pub output_chunks: u64,
}

impl Store {
    /// Up to `limit` workspace ids after `after` in id order, deleted workspaces included
    /// (their history expires too).
    pub async fn workspace_ids_after(
        &self,
        after: Option<TenantId>,
        limit: i64,
    ) -> StoreResult<Vec<TenantId>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM workspaces WHERE $1::uuid IS NULL OR id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}

impl TenantTx {
    /// Deletes up to `limit` tasks of this workspace that ended more than `retention` ago
    /// (by the database's clock), with their messages and output rows. Tasks locked by
    /// another transaction are skipped, not waited for.
    ///
    /// The candidates are found through `tasks_by_status (tenant_id, status, id)`: a task
    /// ended after it was created, and its id (UUID v7) carries its creation time, so only
    /// ids older than the cutoff (by this process's clock, which made them) are read. A task
    /// whose id clock ran ahead is deleted a little later, never earlier.
    pub async fn purge_finished_tasks(
        &mut self,
        retention: Duration,
        limit: i64,
    ) -> StoreResult<Purged> {
        let (tasks, messages, output_chunks): (i64, i64, i64) = self
            .query_as(
                "WITH doomed AS ( \
                     SELECT id FROM tasks \
                     WHERE tenant_id = $1 AND status IN ('succeeded', 'failed', 'canceled') \
                       AND id < $2 AND ended_at < now() - make_interval(secs => $3) \
                     LIMIT $4 FOR UPDATE SKIP LOCKED), \
                 chunks AS ( \
                     DELETE FROM task_output_chunks c USING doomed d \
                     WHERE c.tenant_id = $1 AND c.task_id = d.id RETURNING 1), \
                 messages AS ( \
                     DELETE FROM task_messages m USING doomed d \
                     WHERE m.tenant_id = $1 AND m.task_id = d.id RETURNING 1), \
                 gone AS ( \
                     DELETE FROM tasks t USING doomed d \
                     WHERE t.tenant_id = $1 AND t.id = d.id RETURNING 1) \
                 SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM messages), \
                        (SELECT count(*) FROM chunks)",
            )
            .bind(newest_id_created_before(SystemTime::now(), retention))
            .bind(retention.as_secs_f64())
            .bind(limit)
            .fetch_one(self.executor())
            .await?;
        let count = |n: i64| u64::try_from(n).unwrap_or_default();
        Ok(Purged {
            tasks: count(tasks),
            messages: count(messages),
            output_chunks: count(output_chunks),
        })
    }
}

/// The greatest UUID v7 whose timestamp is at or before `now − retention`: every task id
/// made before that instant sorts below it (UUIDs compare as bytes, the first 48 bits of a
/// v7 are its milliseconds since the epoch).
fn newest_id_created_before(now: SystemTime, retention: Duration) -> Uuid {
    let cutoff = now
        .checked_sub(retention)
        .and_then(|cutoff| cutoff.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default();
    let millis = u64::try_from(cutoff.as_millis()).unwrap_or(u64::MAX) & 0xFFFF_FFFF_FFFF;
    let mut bytes = [0xFF; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    Uuid::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_bound_sorts_above_every_id_made_before_the_cutoff_and_below_later_ones() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let retention = Duration::from_secs(3600);
        let bound = newest_id_created_before(now, retention);
        let at = |time: SystemTime| {
            let since = time.duration_since(UNIX_EPOCH).unwrap();
            Uuid::new_v7(uuid::Timestamp::from_unix(
                uuid::NoContext,
                since.as_secs(),
                since.subsec_nanos(),
            ))
        };
        let cutoff = now - retention;
        assert!(at(cutoff) < bound);
        assert!(at(cutoff - Duration::from_secs(86_400)) < bound);
        assert!(at(cutoff + Duration::from_millis(1)) > bound);
        assert!(at(now) > bound);
    }

    #[test]
    fn a_retention_longer_than_the_epoch_bounds_nothing() {
        let bound = newest_id_created_before(UNIX_EPOCH, Duration::from_secs(1));
        assert_eq!(bound.as_bytes()[..6], [0; 6]);
    }
}
