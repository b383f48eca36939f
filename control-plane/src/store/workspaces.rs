//! The workspace registry (a platform table, not tenant-owned) and workspace lifecycle.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;

use super::{NewEvent, Store, StoreError, StoreResult, TenantTx};
use crate::ids::TenantId;

/// A workspace as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct WorkspaceRow {
    /// Workspace id (the tenant id of everything it owns).
    pub id: TenantId,
    /// Human-readable name.
    pub display_name: String,
    /// Labels.
    pub labels: Json<BTreeMap<String, String>>,
    /// Cap on running tasks, if any.
    pub max_running_tasks: Option<i32>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A workspace found by its request id, deleted or not.
#[derive(sqlx::FromRow)]
struct ByRequestId {
    #[sqlx(flatten)]
    workspace: WorkspaceRow,
    deleted: bool,
}

macro_rules! columns {
    () => {
        "id, display_name, labels, max_running_tasks, created_at, updated_at"
    };
}

impl Store {
    /// Creates a workspace, or returns the one an earlier call with `request_id` created.
    pub async fn create_workspace(
        &self,
        display_name: &str,
        labels: &BTreeMap<String, String>,
        max_running_tasks: Option<i32>,
        request_id: Option<&str>,
        actor: &str,
    ) -> StoreResult<WorkspaceRow> {
        if let Some(request_id) = request_id
            && let Some(existing) = self.workspace_by_request_id(request_id).await?
        {
            return Ok(existing);
        }
        let id = TenantId::generate();
        let mut tx = self.tenant_unchecked(id).await?;
        // The new workspace's id is the transaction's tenant, bound as $1.
        let inserted = tx
            .query_as::<WorkspaceRow>(concat!(
                "INSERT INTO workspaces (id, display_name, labels, request_id, max_running_tasks) \
                 VALUES ($1, $2, $3, $4, $5) RETURNING ",
                columns!()
            ))
            .bind(display_name)
            .bind(Json(labels))
            .bind(request_id)
            .bind(max_running_tasks)
            .fetch_one(tx.executor())
            .await
            .map_err(StoreError::from);
        let row = match (inserted, request_id) {
            (Ok(row), _) => row,
            // A concurrent call with the same request id won the race: return its workspace.
            (Err(StoreError::AlreadyExists(_)), Some(request_id)) => {
                drop(tx);
                return self
                    .workspace_by_request_id(request_id)
                    .await?
                    .ok_or(StoreError::NotFound("workspace"));
            }
            (Err(error), _) => return Err(error),
        };
        tx.append_event(NewEvent {
            actor,
            action: "workspace.created",
            resource_type: "workspace",
            resource_id: id.0,
            request_id,
            data: serde_json::json!({ "display_name": display_name }),
        })
        .await?;
        tx.commit().await?;
        Ok(row)
    }

    /// The workspace created with this idempotency key, if any; NOT_FOUND if that workspace
    /// has been deleted since (the key stays used, so a retry never creates a second one).
    async fn workspace_by_request_id(&self, request_id: &str) -> StoreResult<Option<WorkspaceRow>> {
        let found = sqlx::query_as::<_, ByRequestId>(concat!(
            "SELECT ",
            columns!(),
            ", deleted_at IS NOT NULL AS deleted FROM workspaces WHERE request_id = $1"
        ))
        .bind(request_id)
        .fetch_optional(&self.pool)
        .await?;
        match found {
            Some(ByRequestId { deleted: true, .. }) => Err(StoreError::NotFound("workspace")),
            Some(ByRequestId { workspace, .. }) => Ok(Some(workspace)),
            None => Ok(None),
        }
    }

    /// A live workspace.
    pub async fn get_workspace(&self, id: TenantId) -> StoreResult<WorkspaceRow> {
        sqlx::query_as::<_, WorkspaceRow>(concat!(
            "SELECT ",
            columns!(),
            " FROM workspaces WHERE id = $1 AND deleted_at IS NULL"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("workspace"))
    }

    /// Live workspaces after `after` (keyset), oldest first.
    pub async fn list_workspaces(
        &self,
        after: Option<TenantId>,
        limit: i64,
    ) -> StoreResult<Vec<WorkspaceRow>> {
        sqlx::query_as::<_, WorkspaceRow>(concat!(
            "SELECT ",
            columns!(),
            " FROM workspaces WHERE deleted_at IS NULL \
             AND ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2"
        ))
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from)
    }
}

impl TenantTx {
    /// Locks this transaction's workspace row for a change; NOT_FOUND if deleted.
    pub async fn lock_workspace(&mut self) -> StoreResult<WorkspaceRow> {
        self.query_as::<WorkspaceRow>(concat!(
            "SELECT ",
            columns!(),
            " FROM workspaces WHERE id = $1 AND deleted_at IS NULL FOR UPDATE"
        ))
        .fetch_optional(self.executor())
        .await?
        .ok_or(StoreError::NotFound("workspace"))
    }

    /// Share-locks this transaction's workspace while something is created in it, so a
    /// concurrent delete waits; NOT_FOUND if deleted.
    pub async fn share_lock_workspace(&mut self) -> StoreResult<()> {
        self.query_scalar::<i32>(
            "SELECT 1 FROM workspaces WHERE id = $1 AND deleted_at IS NULL FOR SHARE",
        )
        .fetch_optional(self.executor())
        .await?
        .map(|_| ())
        .ok_or(StoreError::NotFound("workspace"))
    }

    /// Saves a workspace's changeable fields.
    pub async fn save_workspace(
        &mut self,
        display_name: &str,
        labels: &BTreeMap<String, String>,
        max_running_tasks: Option<i32>,
    ) -> StoreResult<WorkspaceRow> {
        self.query_as::<WorkspaceRow>(concat!(
            "UPDATE workspaces SET display_name = $2, labels = $3, max_running_tasks = $4, \
             updated_at = now() \
             WHERE id = $1 AND deleted_at IS NULL RETURNING ",
            columns!()
        ))
        .bind(display_name)
        .bind(Json(labels))
        .bind(max_running_tasks)
        .fetch_optional(self.executor())
        .await?
        .ok_or(StoreError::NotFound("workspace"))
    }

    /// Marks this transaction's workspace deleted.
    pub async fn soft_delete_workspace(&mut self) -> StoreResult<()> {
        let deleted = self
            .query(
                "UPDATE workspaces SET deleted_at = now(), updated_at = now() \
             WHERE id = $1 AND deleted_at IS NULL",
            )
            .execute(self.executor())
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound("workspace"));
        }
        Ok(())
    }
}
