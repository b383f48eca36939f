//! The worker registry: a platform table without `tenant_id`, so it is reached through the
//! pool rather than a tenant transaction.

use super::{Store, StoreResult};
use crate::ids::WorkerId;

impl Store {
    /// Records that a worker connected (or reconnected).
    pub async fn upsert_worker(
        &self,
        id: WorkerId,
        version: &str,
        capacity: i32,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO workers (id, version, capacity) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET version = $2, capacity = $3, last_seen_at = now()",
        )
        .bind(id)
        .bind(version)
        .bind(capacity)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records that a worker is alive.
    pub async fn touch_worker(&self, id: WorkerId) -> StoreResult<()> {
        sqlx::query("UPDATE workers SET last_seen_at = now() WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
