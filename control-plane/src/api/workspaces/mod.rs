//! WorkspaceService. `parse` turns its requests into domain values.

mod parse;

use agentplane_proto::v1 as pb;
use pb::workspace_service_server::WorkspaceService;
use tonic::{Request, Response, Status};

use super::paging::split_page;
use super::{State, convert};
use crate::auth::{Principal, caller};
use crate::domain::page;
use crate::domain::workspace::{
    DeleteWorkspace, NewWorkspace, WorkspaceQuery, WorkspaceRef, WorkspaceUpdate,
};
use crate::error::ApiError;
use crate::store::{NewEvent, StoreError};

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
        let actor = caller(&request)?.principal.actor();
        let new: NewWorkspace = request.into_inner().try_into()?;
        let row = self
            .state
            .store
            .create_workspace(
                &new.display_name,
                &new.labels,
                new.max_running_tasks,
                new.request_id.as_deref(),
                &actor,
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
        let caller = caller(&request)?;
        let request: WorkspaceRef = request.into_inner().try_into()?;
        caller.authorize(&self.state.store, request.tenant).await?;
        let row = self.state.store.get_workspace(request.tenant).await?;
        Ok(Response::new(pb::GetWorkspaceResponse {
            workspace: Some(convert::workspace(&row)),
        }))
    }

    async fn list_workspaces(
        &self,
        request: Request<pb::ListWorkspacesRequest>,
    ) -> Result<Response<pb::ListWorkspacesResponse>, Status> {
        let caller = caller(&request)?;
        let query: WorkspaceQuery = request.into_inner().try_into()?;
        let store = &self.state.store;
        let rows = match caller.principal {
            Principal::PlatformAdmin => store.list_workspaces(query.after, query.limit + 1).await?,
            // An API key sees only its own workspace.
            Principal::ApiKey { tenant, .. } => {
                caller.authorize(&self.state.store, tenant).await?;
                match store.get_workspace(tenant).await {
                    Ok(row) if query.after.is_none_or(|after| after < tenant) => vec![row],
                    Ok(_) | Err(StoreError::NotFound(_)) => Vec::new(),
                    Err(error) => return Err(error.into()),
                }
            }
            // A user sees the workspaces it is a member of.
            Principal::User { id } => {
                store
                    .workspaces_of_user(id, query.after, query.limit + 1)
                    .await?
            }
            Principal::Worker { .. } | Principal::Enrolment => {
                return Err(ApiError::PermissionDenied.into());
            }
        };
        let (workspaces, next_page_token) =
            split_page(rows, query.limit, convert::workspace, |row| {
                page::encode_id(parse::WORKSPACES_PAGE, row.id.0)
            });
        Ok(Response::new(pb::ListWorkspacesResponse {
            workspaces,
            next_page_token,
        }))
    }

    async fn update_workspace(
        &self,
        request: Request<pb::UpdateWorkspaceRequest>,
    ) -> Result<Response<pb::UpdateWorkspaceResponse>, Status> {
        let caller = caller(&request)?;
        let update: WorkspaceUpdate = request.into_inner().try_into()?;
        let actor = caller.authorize(&self.state.store, update.tenant).await?;
        // The cap shares the platform's capacity among workspaces: the platform sets it, not
        // the workspace's own admins.
        if update.max_running_tasks.is_some() && caller.principal != Principal::PlatformAdmin {
            return Err(ApiError::PermissionDenied.into());
        }
        let mut tx = self.state.store.tenant(update.tenant).await?;
        let current = tx.lock_workspace().await?;
        let display_name = update.display_name.unwrap_or(current.display_name);
        let labels = update.labels.unwrap_or(current.labels.0);
        let max_running_tasks = update
            .max_running_tasks
            .unwrap_or(current.max_running_tasks);
        let row = tx
            .save_workspace(&display_name, &labels, max_running_tasks)
            .await?;
        tx.append_event(NewEvent {
            actor: &actor,
            action: "workspace.updated",
            resource_type: "workspace",
            resource_id: update.tenant.0,
            request_id: update.request_id.as_deref(),
            data: serde_json::json!({ "fields": update.paths }),
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
        let actor = caller(&request)?.principal.actor();
        let DeleteWorkspace { tenant, request_id } = request.into_inner().try_into()?;
        let request_id = request_id.as_deref();
        let mut tx = self.state.store.tenant(tenant).await?;
        tx.lock_workspace().await?;
        let canceled = tx
            .cancel_tasks_where(None, true, "workspace deleted", &actor, request_id)
            .await?;
        tx.soft_delete_workspace().await?;
        tx.append_event(NewEvent {
            actor: &actor,
            action: "workspace.deleted",
            resource_type: "workspace",
            resource_id: tenant.0,
            request_id,
            data: serde_json::json!({ "canceled_tasks": canceled }),
        })
        .await?;
        tx.commit().await?;
        Ok(Response::new(pb::DeleteWorkspaceResponse {}))
    }
}
