//! Workspace API keys: created and revoked in a tenant transaction with their event; found
//! for authentication by the id embedded in a secret, before the tenant is known.

use agentplane_core::columns::WorkspaceRole;
use chrono::{DateTime, Utc};

use super::{NewEvent, Store, StoreError, StoreResult, TenantTx};
use crate::ids::{ApiKeyId, TenantId};

/// An API key as stored, without its hash.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ApiKeyRow {
    /// Owning workspace.
    pub tenant_id: TenantId,
    /// Key id.
    pub id: ApiKeyId,
    /// Name.
    pub name: String,
    /// Role in the workspace.
    pub role: WorkspaceRole,
    /// Who created it.
    pub created_by: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// When it stops working.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Last recorded use.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// What authentication needs of a key.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ApiKeyCredential {
    /// The workspace it acts in.
    pub tenant_id: TenantId,
    /// Its role there.
    pub role: WorkspaceRole,
    /// SHA-256 of its secret.
    pub secret_hash: Vec<u8>,
    /// When it stops working.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A key to create.
#[derive(Debug)]
pub struct NewApiKey<'a> {
    /// Its id (embedded in the secret).
    pub id: ApiKeyId,
    /// Name.
    pub name: &'a str,
    /// Role.
    pub role: WorkspaceRole,
    /// SHA-256 of the secret.
    pub secret_hash: &'a [u8],
    /// When it stops working.
    pub expires_at: Option<DateTime<Utc>>,
    /// Idempotency key.
    pub request_id: Option<&'a str>,
}

macro_rules! columns {
    () => {
        "tenant_id, id, name, role, created_by, created_at, expires_at, revoked_at, last_used_at"
    };
}

impl Store {
    /// The key named by a presented secret, whatever its workspace. Row-level security
    /// shows this transaction only the row whose id it names (`app.api_key_id`).
    pub async fn api_key_for_authentication(
        &self,
        id: ApiKeyId,
    ) -> StoreResult<Option<ApiKeyCredential>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT set_config('app.api_key_id', $1, true)")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        let key = sqlx::query_as::<_, ApiKeyCredential>(
            "SELECT tenant_id, role, secret_hash, expires_at, revoked_at \
             FROM api_keys WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(key)
    }

    /// Records when keys of one workspace were last used (never moving a time back).
    pub async fn touch_api_keys(
        &self,
        tenant: TenantId,
        uses: &[(ApiKeyId, DateTime<Utc>)],
    ) -> StoreResult<()> {
        let (ids, times): (Vec<ApiKeyId>, Vec<DateTime<Utc>>) = uses.iter().copied().unzip();
        let mut tx = self.tenant_unchecked(tenant).await?;
        tx.query(
            "UPDATE api_keys k SET last_used_at = GREATEST(k.last_used_at, u.at) \
             FROM unnest($2::uuid[], $3::timestamptz[]) AS u(id, at) \
             WHERE k.tenant_id = $1 AND k.id = u.id",
        )
        .bind(ids)
        .bind(times)
        .execute(tx.executor())
        .await?;
        tx.commit().await
    }
}

impl TenantTx {
    /// Creates a key and its `api_key.created` event.
    pub async fn create_api_key(
        &mut self,
        key: NewApiKey<'_>,
        actor: &str,
    ) -> StoreResult<ApiKeyRow> {
        self.share_lock_workspace().await?;
        let row = self
            .query_as::<ApiKeyRow>(concat!(
                "INSERT INTO api_keys (tenant_id, id, name, role, secret_hash, created_by, \
                 expires_at, request_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ",
                columns!()
            ))
            .bind(key.id)
            .bind(key.name)
            .bind(key.role)
            .bind(key.secret_hash)
            .bind(actor)
            .bind(key.expires_at)
            .bind(key.request_id)
            .fetch_one(self.executor())
            .await?;
        self.append_event(NewEvent {
            actor,
            action: "api_key.created",
            resource_type: "api_key",
            resource_id: key.id.0,
            request_id: key.request_id,
            data: serde_json::json!({
                "name": key.name,
                "role": key.role.as_str(),
                "expires_at": key.expires_at.map(|at| at.to_rfc3339()),
            }),
        })
        .await?;
        Ok(row)
    }

    /// Keys of this workspace before `before` (keyset), newest first.
    pub async fn list_api_keys(
        &mut self,
        before: Option<ApiKeyId>,
        limit: i64,
    ) -> StoreResult<Vec<ApiKeyRow>> {
        self.query_as::<ApiKeyRow>(concat!(
            "SELECT ",
            columns!(),
            " FROM api_keys WHERE tenant_id = $1 AND ($2::uuid IS NULL OR id < $2) \
             ORDER BY id DESC LIMIT $3"
        ))
        .bind(before)
        .bind(limit)
        .fetch_all(self.executor())
        .await
        .map_err(StoreError::from)
    }

    /// Revokes a key and records `api_key.revoked`; a revoked key is returned as it is.
    pub async fn revoke_api_key(
        &mut self,
        id: ApiKeyId,
        actor: &str,
        request_id: Option<&str>,
    ) -> StoreResult<ApiKeyRow> {
        let revoked = self
            .query_as::<ApiKeyRow>(concat!(
                "UPDATE api_keys SET revoked_at = now() \
                 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL RETURNING ",
                columns!()
            ))
            .bind(id)
            .fetch_optional(self.executor())
            .await?;
        if let Some(row) = revoked {
            self.append_event(NewEvent {
                actor,
                action: "api_key.revoked",
                resource_type: "api_key",
                resource_id: id.0,
                request_id,
                data: serde_json::json!({ "name": row.name }),
            })
            .await?;
            return Ok(row);
        }
        self.query_as::<ApiKeyRow>(concat!(
            "SELECT ",
            columns!(),
            " FROM api_keys WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(id)
        .fetch_optional(self.executor())
        .await?
        .ok_or(StoreError::NotFound("api key"))
    }
}
