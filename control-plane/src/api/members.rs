//! MemberService: users' memberships of a workspace, each with one role.

use agentplane_proto::v1 as pb;
use pb::member_service_server::MemberService;
use tonic::{Request, Response, Status};

use super::api_keys::role;
use super::paging::{page_after, split_page};
use super::{State, convert};
use crate::auth::caller;
use crate::domain::page;
use crate::domain::validate::Violations;
use crate::error::ApiError;
use crate::ids::{TenantId, UserId};

/// Longest token issuer kept for a user.
const MAX_ISSUER: usize = 1000;
/// Longest token subject kept for a user.
const MAX_SUBJECT: usize = 255;

fn members_page(tenant: TenantId) -> String {
    format!("members/{tenant}")
}

/// Handlers of MemberService.
#[derive(Clone, Debug)]
pub struct MemberApi {
    state: State,
}

impl MemberApi {
    /// Handlers over shared state.
    pub fn new(state: State) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl MemberService for MemberApi {
    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::AddMemberResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let mut v = Violations::new();
        let tenant: Option<TenantId> = v.id("workspace_id", &request.workspace_id);
        let member = request.member.unwrap_or_default();
        v.text("member.issuer", &member.issuer, 1, MAX_ISSUER);
        v.text("member.subject", &member.subject, 1, MAX_SUBJECT);
        let new_role = role(member.role);
        if new_role.is_none() {
            v.add("member.role", "must be VIEWER, MEMBER or ADMIN");
        }
        let request_id = v.request_id("request_id", &request.request_id);
        let (tenant, new_role) = v.finish_with(tenant.zip(new_role))?;
        let store = &self.state.store;
        let actor = caller.authorize(store, tenant).await?;
        if !caller.may_grant(store, tenant, new_role).await? {
            return Err(ApiError::PermissionDenied.into());
        }
        let user = store.user_id(&member.issuer, &member.subject).await?;
        let mut tx = store.tenant(tenant).await?;
        let row = tx
            .add_member(user, new_role, &actor, request_id.as_deref())
            .await?;
        tx.commit().await?;
        Ok(Response::new(pb::AddMemberResponse {
            member: Some(convert::member(&row)),
        }))
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let mut v = Violations::new();
        let tenant: Option<TenantId> = v.id("workspace_id", &request.workspace_id);
        let limit = v.page_size("page_size", request.page_size);
        let after = tenant
            .and_then(|tenant| page_after(&mut v, &members_page(tenant), &request.page_token));
        let tenant = v.finish_with(tenant)?;
        caller.authorize(&self.state.store, tenant).await?;
        let mut tx = self.state.store.tenant(tenant).await?;
        let rows = tx.list_members(after.map(UserId), limit + 1).await?;
        let (members, next_page_token) = split_page(rows, limit, convert::member, |row| {
            page::encode_id(&members_page(row.tenant_id), row.user_id.0)
        });
        Ok(Response::new(pb::ListMembersResponse {
            members,
            next_page_token,
        }))
    }

    async fn update_member_role(
        &self,
        request: Request<pb::UpdateMemberRoleRequest>,
    ) -> Result<Response<pb::UpdateMemberRoleResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let mut v = Violations::new();
        let tenant: Option<TenantId> = v.id("workspace_id", &request.workspace_id);
        let user: Option<UserId> = v.id("user_id", &request.user_id);
        let new_role = role(request.role);
        if new_role.is_none() {
            v.add("role", "must be VIEWER, MEMBER or ADMIN");
        }
        let request_id = v.request_id("request_id", &request.request_id);
        let ((tenant, user), new_role) = v.finish_with(tenant.zip(user).zip(new_role))?;
        let store = &self.state.store;
        let actor = caller.authorize(store, tenant).await?;
        if !caller.may_grant(store, tenant, new_role).await? {
            return Err(ApiError::PermissionDenied.into());
        }
        let mut tx = store.tenant(tenant).await?;
        let row = tx
            .update_member_role(user, new_role, &actor, request_id.as_deref())
            .await?;
        tx.commit().await?;
        Ok(Response::new(pb::UpdateMemberRoleResponse {
            member: Some(convert::member(&row)),
        }))
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let mut v = Violations::new();
        let tenant: Option<TenantId> = v.id("workspace_id", &request.workspace_id);
        let user: Option<UserId> = v.id("user_id", &request.user_id);
        let request_id = v.request_id("request_id", &request.request_id);
        let (tenant, user) = v.finish_with(tenant.zip(user))?;
        let actor = caller.authorize(&self.state.store, tenant).await?;
        let mut tx = self.state.store.tenant(tenant).await?;
        tx.remove_member(user, &actor, request_id.as_deref())
            .await?;
        tx.commit().await?;
        Ok(Response::new(pb::RemoveMemberResponse {}))
    }
}
