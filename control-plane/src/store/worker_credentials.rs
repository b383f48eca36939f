//! Worker credentials: a platform table (no `tenant_id`), reached through the pool.

use chrono::{DateTime, Utc};

use super::{Store, StoreError, StoreResult};
use crate::ids::WorkerId;

/// A worker credential as stored, without its hash.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct WorkerCredentialRow {
    /// The worker id.
    pub id: WorkerId,
    /// Name.
    pub name: String,
    /// Who created it.
    pub created_by: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What authentication needs of a worker credential.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct WorkerSecret {
    /// SHA-256 of its secret.
    pub secret_hash: Vec<u8>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

macro_rules! columns {
    () => {
        "id, name, created_by, created_at, revoked_by, revoked_at"
    };
}

impl Store {
    /// Stores a new worker credential and its `worker_credential.created` platform event
    /// (credentials belong to the platform, not to a workspace), in one transaction. `action`
    /// says how it was issued: `worker_credential.created` or `worker_credential.enrolled`.
    pub async fn create_worker_credential(
        &self,
        id: WorkerId,
        name: &str,
        secret_hash: &[u8],
        actor: &str,
        action: &str,
    ) -> StoreResult<WorkerCredentialRow> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query_as::<_, WorkerCredentialRow>(concat!(
            "INSERT INTO worker_credentials (id, name, secret_hash, created_by) \
             VALUES ($1, $2, $3, $4) RETURNING ",
            columns!()
        ))
        .bind(id)
        .bind(name)
        .bind(secret_hash)
        .bind(actor)
        .fetch_one(&mut *tx)
        .await?;
        platform_event(
            &mut tx,
            actor,
            action,
            id,
            serde_json::json!({ "name": name }),
        )
        .await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Credentials before `before` (keyset), newest first.
    pub async fn list_worker_credentials(
        &self,
        before: Option<WorkerId>,
        limit: i64,
    ) -> StoreResult<Vec<WorkerCredentialRow>> {
        sqlx::query_as::<_, WorkerCredentialRow>(concat!(
            "SELECT ",
            columns!(),
            " FROM worker_credentials WHERE ($1::uuid IS NULL OR id < $1) \
             ORDER BY id DESC LIMIT $2"
        ))
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from)
    }

    /// Revokes a credential; a revoked one is returned as it is.
    pub async fn revoke_worker_credential(
        &self,
        id: WorkerId,
        actor: &str,
    ) -> StoreResult<WorkerCredentialRow> {
        let mut tx = self.pool.begin().await?;
        // Only the first revocation changes the row, and only it is an event.
        let revoked_now = sqlx::query_scalar::<_, WorkerId>(
            "UPDATE worker_credentials SET revoked_at = now(), revoked_by = $2 \
             WHERE id = $1 AND revoked_at IS NULL RETURNING id",
        )
        .bind(id)
        .bind(actor)
        .fetch_optional(&mut *tx)
        .await?;
        if revoked_now.is_some() {
            platform_event(
                &mut tx,
                actor,
                "worker_credential.revoked",
                id,
                serde_json::json!({}),
            )
            .await?;
        }
        let row = sqlx::query_as::<_, WorkerCredentialRow>(concat!(
            "SELECT ",
            columns!(),
            " FROM worker_credentials WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound("worker credential"))?;
        tx.commit().await?;
        Ok(row)
    }

    /// The credential of worker `id`, for authentication.
    pub async fn worker_secret(&self, id: WorkerId) -> StoreResult<Option<WorkerSecret>> {
        sqlx::query_as::<_, WorkerSecret>(
            "SELECT secret_hash, revoked_at FROM worker_credentials WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::from)
    }

    /// Ids of every revoked worker credential.
    pub async fn revoked_workers(&self) -> StoreResult<Vec<WorkerId>> {
        sqlx::query_scalar::<_, WorkerId>(
            "SELECT id FROM worker_credentials WHERE revoked_at IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from)
    }
}

/// Appends a platform event about worker credential `id` in `tx`.
async fn platform_event(
    tx: &mut sqlx::PgConnection,
    actor: &str,
    action: &str,
    id: WorkerId,
    data: serde_json::Value,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO platform_events (id, actor, action, resource_type, resource_id, data) \
         VALUES ($1, $2, $3, 'worker_credential', $4, $5)",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(actor)
    .bind(action)
    .bind(id)
    .bind(sqlx::types::Json(data))
    .execute(tx)
    .await?;
    Ok(())
}
