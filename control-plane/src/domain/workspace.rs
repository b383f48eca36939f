//! Workspaces: limits and the validated requests of WorkspaceService.

use std::collections::BTreeMap;

use crate::ids::TenantId;

/// Longest display name.
pub const MAX_DISPLAY_NAME: usize = 200;
/// Largest cap on a workspace's running tasks.
pub const MAX_RUNNING_TASKS_CAP: i32 = 1_000_000;

/// A validated CreateWorkspace request.
#[derive(Clone, Debug)]
pub struct NewWorkspace {
    /// Display name.
    pub display_name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Cap on running tasks; `None`: no cap.
    pub max_running_tasks: Option<i32>,
    /// Idempotency key.
    pub request_id: Option<String>,
}

/// One workspace: what GetWorkspace addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkspaceRef {
    /// The workspace.
    pub tenant: TenantId,
}

/// A validated ListWorkspaces request: a page of the live workspaces, oldest first.
#[derive(Clone, Debug)]
pub struct WorkspaceQuery {
    /// Only workspaces after this one (the page token); `None` starts at the oldest.
    pub after: Option<TenantId>,
    /// Most workspaces in the page.
    pub limit: i64,
}

/// A validated UpdateWorkspace request.
#[derive(Clone, Debug)]
pub struct WorkspaceUpdate {
    /// Workspace to change.
    pub tenant: TenantId,
    /// The update mask's paths as sent, recorded in the `workspace.updated` event.
    pub paths: Vec<String>,
    /// New display name, if the mask names it.
    pub display_name: Option<String>,
    /// New labels, if the mask names them.
    pub labels: Option<BTreeMap<String, String>>,
    /// New cap on running tasks (`Some(None)`: no cap), if the mask names it.
    pub max_running_tasks: Option<Option<i32>>,
    /// Idempotency key.
    pub request_id: Option<String>,
}

/// A validated DeleteWorkspace request.
#[derive(Clone, Debug)]
pub struct DeleteWorkspace {
    /// Workspace to delete.
    pub tenant: TenantId,
    /// Idempotency key.
    pub request_id: Option<String>,
}
