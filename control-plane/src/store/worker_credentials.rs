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
    /// Stores a new worker credential. Changes to credentials are logged by the caller (the
    /// event log is per workspace; credentials belong to the platform), and each row keeps
    /// who created and who revoked it.
    pub async fn create_worker_credential(
        &self,
        id: WorkerId,
        name: &str,
        secret_hash: &[u8],
        actor: &str,
    ) -> StoreResult<WorkerCredentialRow> {
        sqlx::query_as::<_, WorkerCredentialRow>(concat!(
            "INSERT INTO worker_credentials (id, name, secret_hash, created_by) \
             VALUES ($1, $2, $3, $4) RETURNING ",
            columns!()
        ))
        .bind(id)
        .bind(name)
        .bind(secret_hash)
        .bind(actor)
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::from)
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
        sqlx::query_as::<_, WorkerCredentialRow>(concat!(
            "UPDATE worker_credentials SET revoked_at = coalesce(revoked_at, now()), \
             revoked_by = coalesce(revoked_by, $2) WHERE id = $1 RETURNING ",
            columns!()
        ))
        .bind(id)
        .bind(actor)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("worker credential"))
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
