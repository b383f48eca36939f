//! Parsing of WorkspaceService requests: each protobuf request becomes a validated domain
//! value here, once, with every field violation collected.

use agentplane_proto::v1 as pb;

use crate::api::mask::update_paths;
use crate::api::paging::page_after;
use crate::domain::validate::Violations;
use crate::domain::workspace::{
    DeleteWorkspace, MAX_DISPLAY_NAME, MAX_RUNNING_TASKS_CAP, NewWorkspace, WorkspaceQuery,
    WorkspaceRef, WorkspaceUpdate,
};
use crate::error::ApiError;
use crate::ids::TenantId;

/// The page-token kind of the workspace list.
pub(super) const WORKSPACES_PAGE: &str = "workspaces";

/// Fields UpdateWorkspace may change.
const UPDATABLE: &[&str] = &["display_name", "labels", "max_running_tasks"];

impl TryFrom<pb::CreateWorkspaceRequest> for NewWorkspace {
    type Error = ApiError;

    fn try_from(request: pb::CreateWorkspaceRequest) -> Result<Self, ApiError> {
        let mut v = Violations::new();
        let workspace = request.workspace.unwrap_or_default();
        v.text(
            "workspace.display_name",
            &workspace.display_name,
            1,
            MAX_DISPLAY_NAME,
        );
        let labels = v.labels("workspace.labels", &workspace.labels);
        let max_running_tasks = running_cap(&mut v, workspace.max_running_tasks);
        let request_id = v.request_id("request_id", &request.request_id);
        v.finish()?;
        Ok(NewWorkspace {
            display_name: workspace.display_name,
            labels,
            max_running_tasks,
            request_id,
        })
    }
}

impl TryFrom<pb::GetWorkspaceRequest> for WorkspaceRef {
    type Error = ApiError;

    fn try_from(request: pb::GetWorkspaceRequest) -> Result<Self, ApiError> {
        let mut v = Violations::new();
        let tenant: Option<TenantId> = v.id("id", &request.id);
        v.finish_with(tenant.map(|tenant| WorkspaceRef { tenant }))
    }
}

impl TryFrom<pb::ListWorkspacesRequest> for WorkspaceQuery {
    type Error = ApiError;

    fn try_from(request: pb::ListWorkspacesRequest) -> Result<Self, ApiError> {
        let mut v = Violations::new();
        let limit = v.page_size("page_size", request.page_size);
        let after = page_after(&mut v, WORKSPACES_PAGE, &request.page_token);
        v.finish()?;
        Ok(WorkspaceQuery {
            after: after.map(TenantId),
            limit,
        })
    }
}

impl TryFrom<pb::UpdateWorkspaceRequest> for WorkspaceUpdate {
    type Error = ApiError;

    fn try_from(request: pb::UpdateWorkspaceRequest) -> Result<Self, ApiError> {
        let mut v = Violations::new();
        let workspace = request.workspace.unwrap_or_default();
        let tenant: Option<TenantId> = v.id("workspace.id", &workspace.id);
        let request_id = v.request_id("request_id", &request.request_id);
        let paths = update_paths(&mut v, request.update_mask.as_ref(), UPDATABLE);
        let masks = |field: &str| paths.iter().any(|p| p == field);
        let display_name = masks("display_name").then(|| {
            v.text(
                "workspace.display_name",
                &workspace.display_name,
                1,
                MAX_DISPLAY_NAME,
            );
            workspace.display_name
        });
        // Labels are checked even when the mask leaves them out.
        let labels = v.labels("workspace.labels", &workspace.labels);
        let labels = masks("labels").then_some(labels);
        let max_running_tasks =
            masks("max_running_tasks").then(|| running_cap(&mut v, workspace.max_running_tasks));
        v.finish_with(tenant.map(|tenant| WorkspaceUpdate {
            tenant,
            paths,
            display_name,
            labels,
            max_running_tasks,
            request_id,
        }))
    }
}

impl TryFrom<pb::DeleteWorkspaceRequest> for DeleteWorkspace {
    type Error = ApiError;

    fn try_from(request: pb::DeleteWorkspaceRequest) -> Result<Self, ApiError> {
        let mut v = Violations::new();
        let tenant: Option<TenantId> = v.id("id", &request.id);
        let request_id = v.request_id("request_id", &request.request_id);
        v.finish_with(tenant.map(|tenant| DeleteWorkspace { tenant, request_id }))
    }
}

/// A cap on running tasks: 0 is none.
fn running_cap(v: &mut Violations, value: i32) -> Option<i32> {
    match value {
        0 => None,
        1..=MAX_RUNNING_TASKS_CAP => Some(value),
        _ => {
            v.add(
                "workspace.max_running_tasks",
                format!("must be 0 (no cap) to {MAX_RUNNING_TASKS_CAP}"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use uuid::Uuid;

    use super::*;

    fn update(paths: &[&str], workspace: pb::Workspace) -> pb::UpdateWorkspaceRequest {
        pb::UpdateWorkspaceRequest {
            workspace: Some(pb::Workspace {
                id: Uuid::now_v7().to_string(),
                ..workspace
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            }),
            request_id: String::new(),
        }
    }

    #[test]
    fn an_update_carries_only_the_fields_its_mask_names() {
        let request = update(
            &["labels"],
            pb::Workspace {
                display_name: String::new(),
                labels: HashMap::from([("team".to_owned(), "infra".to_owned())]),
                ..Default::default()
            },
        );
        let parsed = WorkspaceUpdate::try_from(request).expect("an empty name is not changed");
        assert_eq!(parsed.display_name, None);
        assert_eq!(parsed.labels.map(|l| l.len()), Some(1));
    }

    #[test]
    fn an_update_checks_labels_even_when_its_mask_leaves_them_out() {
        let request = update(
            &["display_name"],
            pb::Workspace {
                display_name: "ops".to_owned(),
                labels: HashMap::from([("Bad Key".to_owned(), String::new())]),
                ..Default::default()
            },
        );
        match WorkspaceUpdate::try_from(request) {
            Err(ApiError::InvalidArgument(violations)) => {
                assert!(violations[0].field.starts_with("workspace.labels"));
            }
            other => panic!("expected invalid argument, got {other:?}"),
        }
    }
}
