//! WorkspaceService.

use agentplane_proto::v1 as pb;
use pb::workspace_service_server::WorkspaceService;
use tonic::{Request, Response, Status};

use super::mask::update_paths;
use super::paging::{page_after, split_page};
use super::{State, convert};
use crate::auth::principal;
use crate::domain::page;
use crate::domain::validate::Violations;
use crate::error::ApiError;
use crate::ids::TenantId;
use crate::store::NewEvent;

/// Longest display name.
const MAX_DISPLAY_NAME: usize = 200;

/// Handlers of WorkspaceService.
#[derive(Clone, Debug)]
pub struct WorkspaceApi {
    state: State,
}

impl WorkspaceApi {
    /// Handlers over shared state.
    pub fn new(state: State) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl WorkspaceService for WorkspaceApi {
    async fn create_workspace(
        &self,
        request: Request<pb::CreateWorkspaceRequest>,
    ) -> Result<Response<pb::CreateWorkspaceResponse>, Status> {
        let actor = principal(&request)?.actor();
        let request = request.into_inner();
        let mut v = Violations::new();
        let workspace = request.workspace.unwrap_or_default();
        v.text(
            "workspace.display_name",
            &workspace.display_name,
            1,
            MAX_DISPLAY_NAME,
        );
        let labels = v.labels("workspace.labels", &workspace.labels);
        let request_id = v.request_id("request_id", &request.request_id);
        v.finish()?;
        let row = self
            .state
            .store
            .create_workspace(
                &workspace.display_name,
                &labels,
                request_id.as_deref(),
                actor,
            )
            .await?;
        Ok(Response::new(pb::CreateWorkspaceResponse {
            workspace: Some(convert::workspace(&row)),
        }))
    }

    async fn get_workspace(
        &self,
        request: Request<pb::GetWorkspaceRequest>,
    ) -> Result<Response<pb::GetWorkspaceResponse>, Status> {
        let request = request.into_inner();
        let mut v = Violations::new();
        let id: Option<TenantId> = v.id("id", &request.id);
        v.finish()?;
        let Some(id) = id else {
            return Err(ApiError::invalid("id", "is required").into());
        };
        let row = self.state.store.get_workspace(id).await?;
        Ok(Response::new(pb::GetWorkspaceResponse {
            workspace: Some(convert::workspace(&row)),
        }))
    }

    async fn list_workspaces(
        &self,
        request: Request<pb::ListWorkspacesRequest>,
    ) -> Result<Response<pb::ListWorkspacesResponse>, Status> {
        let request = request.into_inner();
        let mut v = Violations::new();
        let limit = v.page_size("page_size", request.page_size);
        let after = page_after(&mut v, "workspaces", &request.page_token);
        v.finish()?;
        let rows = self
            .state
            .store
            .list_workspaces(after.map(TenantId), limit + 1)
            .await?;
        let (items, next) = split_page(rows, limit, convert::workspace, |row| {
            page::encode_id("workspaces", row.id.0)
        });
        Ok(Response::new(pb::ListWorkspacesResponse {
            workspaces: items,
            next_page_token: next,
        }))
    }

    async fn update_workspace(
        &self,
        request: Request<pb::UpdateWorkspaceRequest>,
    ) -> Result<Response<pb::UpdateWorkspaceResponse>, Status> {
        let actor = principal(&request)?.actor();
        let request = request.into_inner();
        let mut v = Violations::new();
        let workspace = request.workspace.unwrap_or_default();
        let id: Option<TenantId> = v.id("workspace.id", &workspace.id);
        let request_id = v.request_id("request_id", &request.request_id);
        let paths = update_paths(
            &mut v,
            request.update_mask.as_ref(),
            &["display_name", "labels"],
        );
        if paths.iter().any(|p| p == "display_name") {
            v.text(
                "workspace.display_name",
                &workspace.display_name,
                1,
                MAX_DISPLAY_NAME,
            );
        }
        let labels = v.labels("workspace.labels", &workspace.labels);
        v.finish()?;
        let Some(id) = id else {
            return Err(ApiError::invalid("workspace.id", "is required").into());
        };

        let mut tx = self.state.tenant(id).await?;
        let current = tx.lock_workspace().await?;
        let display_name = if paths.iter().any(|p| p == "display_name") {
            workspace.display_name
        } else {
            current.display_name
        };
        let labels = if paths.iter().any(|p| p == "labels") {
            labels
        } else {
            current.labels.0
        };
        let row = tx.save_workspace(&display_name, &labels).await?;
        tx.append_event(NewEvent {
            actor,
            action: "workspace.updated",
            resource_type: "workspace",
            resource_id: id.0,
            request_id: request_id.as_deref(),
            data: serde_json::json!({ "fields": paths }),
        })
        .await?;
        tx.commit().await?;
        Ok(Response::new(pb::UpdateWorkspaceResponse {
            workspace: Some(convert::workspace(&row)),
        }))
    }

    async fn delete_workspace(
        &self,
        request: Request<pb::DeleteWorkspaceRequest>,
    ) -> Result<Response<pb::DeleteWorkspaceResponse>, Status> {
        let actor = principal(&request)?.actor();
        let request = request.into_inner();
        let mut v = Violations::new();
        let id: Option<TenantId> = v.id("id", &request.id);
        let request_id = v.request_id("request_id", &request.request_id);
        v.finish()?;
        let Some(id) = id else {
            return Err(ApiError::invalid("id", "is required").into());
        };
        let mut tx = self.state.tenant(id).await?;
        tx.lock_workspace().await?;
        let canceled = tx
            .cancel_tasks_where(
                None,
                true,
                "workspace deleted",
                actor,
                request_id.as_deref(),
            )
            .await?;
        tx.soft_delete_workspace().await?;
        tx.append_event(NewEvent {
            actor,
            action: "workspace.deleted",
            resource_type: "workspace",
            resource_id: id.0,
            request_id: request_id.as_deref(),
            data: serde_json::json!({ "canceled_tasks": canceled }),
        })
        .await?;
        tx.commit().await?;
        Ok(Response::new(pb::DeleteWorkspaceResponse {}))
    }
}
