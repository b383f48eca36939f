//! Users (a platform table) and workspace memberships (a workspace table): who belongs to a
//! workspace with which role, and the rule that a workspace keeps at least one admin member.

use agentplane_core::columns::WorkspaceRole;
use chrono::{DateTime, Utc};

use super::{NewEvent, Store, StoreError, StoreResult, TenantTx, WorkspaceRow};
use crate::ids::{TenantId, UserId};

/// A membership with its user.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct MemberRow {
    /// The workspace.
    pub tenant_id: TenantId,
    /// The user.
    pub user_id: UserId,
    /// The user's token issuer.
    pub issuer: String,
    /// The user's token subject.
    pub subject: String,
    /// Role in the workspace.
    pub role: WorkspaceRole,
    /// Who added the member.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

macro_rules! member_columns {
    () => {
        "m.tenant_id, m.user_id, u.issuer, u.subject, m.role, m.created_by, m.created_at"
    };
}

impl Store {
    /// The id of the user with these token claims, recording the user on first sight.
    pub async fn user_id(&self, issuer: &str, subject: &str) -> StoreResult<UserId> {
        let find = || {
            sqlx::query_scalar::<_, UserId>(
                "SELECT id FROM users WHERE issuer = $1 AND subject = $2",
            )
            .bind(issuer)
            .bind(subject)
        };
        if let Some(id) = find().fetch_optional(&self.pool).await? {
            return Ok(id);
        }
        sqlx::query(
            "INSERT INTO users (id, issuer, subject) VALUES ($1, $2, $3) \
             ON CONFLICT (issuer, subject) DO NOTHING",
        )
        .bind(UserId::generate())
        .bind(issuer)
        .bind(subject)
        .execute(&self.pool)
        .await?;
        Ok(find().fetch_one(&self.pool).await?)
    }

    /// The user's role in `tenant`, if a member of it (the workspace must be live).
    pub async fn member_role(
        &self,
        tenant: TenantId,
        user: UserId,
    ) -> StoreResult<Option<WorkspaceRole>> {
        let mut tx = self.tenant(tenant).await?;
        let role = tx
            .query_scalar::<WorkspaceRole>(
                "SELECT role FROM memberships WHERE tenant_id = $1 AND user_id = $2",
            )
            .bind(user)
            .fetch_optional(tx.executor())
            .await?;
        tx.commit().await?;
        Ok(role)
    }

    /// The live workspaces `user` belongs to, after `after` (keyset), by id. Row-level
    /// security shows this transaction only the user's own memberships (`app.user_id`).
    pub async fn workspaces_of_user(
        &self,
        user: UserId,
        after: Option<TenantId>,
        limit: i64,
    ) -> StoreResult<Vec<WorkspaceRow>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT set_config('app.user_id', $1, true)")
            .bind(user.to_string())
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query_as::<_, WorkspaceRow>(
            "SELECT w.id, w.display_name, w.labels, w.max_running_tasks, w.created_at, w.updated_at \
             FROM memberships m JOIN workspaces w ON w.id = m.tenant_id \
             WHERE m.user_id = $1 AND w.deleted_at IS NULL AND ($2::uuid IS NULL OR w.id > $2) \
             ORDER BY w.id LIMIT $3",
        )
        .bind(user)
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows)
    }
}

impl TenantTx {
    async fn member(&mut self, user: UserId) -> StoreResult<MemberRow> {
        self.query_as::<MemberRow>(concat!(
            "SELECT ",
            member_columns!(),
            " FROM memberships m JOIN users u ON u.id = m.user_id \
             WHERE m.tenant_id = $1 AND m.user_id = $2"
        ))
        .bind(user)
        .fetch_optional(self.executor())
        .await?
        .ok_or(StoreError::NotFound("member"))
    }

    /// Adds `user` with `role` and records `member.added`.
    pub async fn add_member(
        &mut self,
        user: UserId,
        role: WorkspaceRole,
        actor: &str,
        request_id: Option<&str>,
    ) -> StoreResult<MemberRow> {
        self.share_lock_workspace().await?;
        self.query(
            "INSERT INTO memberships (tenant_id, user_id, role, created_by) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(user)
        .bind(role)
        .bind(actor)
        .execute(self.executor())
        .await
        .map_err(|error| match StoreError::from(error) {
            StoreError::AlreadyExists(_) => {
                StoreError::AlreadyExists("the user is already a member".to_owned())
            }
            other => other,
        })?;
        let row = self.member(user).await?;
        self.member_event("member.added", &row, actor, request_id)
            .await?;
        Ok(row)
    }

    /// Members after `after` (keyset), by user id.
    pub async fn list_members(
        &mut self,
        after: Option<UserId>,
        limit: i64,
    ) -> StoreResult<Vec<MemberRow>> {
        self.query_as::<MemberRow>(concat!(
            "SELECT ",
            member_columns!(),
            " FROM memberships m JOIN users u ON u.id = m.user_id \
             WHERE m.tenant_id = $1 AND ($2::uuid IS NULL OR m.user_id > $2) \
             ORDER BY m.user_id LIMIT $3"
        ))
        .bind(after)
        .bind(limit)
        .fetch_all(self.executor())
        .await
        .map_err(StoreError::from)
    }

    /// Locks the workspace's memberships and fails if `user`, an admin, is the last admin.
    async fn keep_an_admin(&mut self, user: UserId) -> StoreResult<()> {
        // Lock every membership of the workspace, so two concurrent demotions cannot both
        // see another admin left.
        let admins: Vec<UserId> = self
            .query_scalar::<UserId>(
                "SELECT user_id FROM memberships WHERE tenant_id = $1 AND role = 'admin' \
                 FOR UPDATE",
            )
            .fetch_all(self.executor())
            .await?;
        if admins == [user] {
            return Err(StoreError::FailedPrecondition(
                "a workspace keeps at least one admin member".to_owned(),
            ));
        }
        Ok(())
    }

    /// Changes a member's role and records `member.role_updated`.
    pub async fn update_member_role(
        &mut self,
        user: UserId,
        role: WorkspaceRole,
        actor: &str,
        request_id: Option<&str>,
    ) -> StoreResult<MemberRow> {
        if role != WorkspaceRole::Admin {
            self.keep_an_admin(user).await?;
        }
        let updated = self
            .query(
                "UPDATE memberships SET role = $3, updated_at = now() \
                 WHERE tenant_id = $1 AND user_id = $2",
            )
            .bind(user)
            .bind(role)
            .execute(self.executor())
            .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound("member"));
        }
        let row = self.member(user).await?;
        self.member_event("member.role_updated", &row, actor, request_id)
            .await?;
        Ok(row)
    }

    /// Removes a member and records `member.removed`.
    pub async fn remove_member(
        &mut self,
        user: UserId,
        actor: &str,
        request_id: Option<&str>,
    ) -> StoreResult<()> {
        self.keep_an_admin(user).await?;
        let row = self.member(user).await?;
        self.query("DELETE FROM memberships WHERE tenant_id = $1 AND user_id = $2")
            .bind(user)
            .execute(self.executor())
            .await?;
        self.member_event("member.removed", &row, actor, request_id)
            .await
    }

    async fn member_event(
        &mut self,
        action: &str,
        row: &MemberRow,
        actor: &str,
        request_id: Option<&str>,
    ) -> StoreResult<()> {
        self.append_event(NewEvent {
            actor,
            action,
            resource_type: "member",
            resource_id: row.user_id.0,
            request_id,
            data: serde_json::json!({
                "issuer": row.issuer,
                "subject": row.subject,
                "role": row.role.as_str(),
            }),
        })
        .await
    }
}
