//! The authorisation table: which access every RPC needs, and which permissions each
//! workspace role (and the platform admin) holds. This file is the whole policy; the layer
//! in `super` and [`super::Caller::authorize`] only apply it.
//!
//! Every check must pass and any one refuses (deny wins): the method must be in
//! [`METHODS`] (a method missing from it is refused, fail closed), the credential's kind must
//! fit the method's [`Access`], and for workspace methods the workspace must be the
//! credential's own and its role must hold the [`Permission`]. A test walks the service
//! descriptors and fails when a method of any service is missing here.

use agentplane_core::columns::WorkspaceRole;

/// What a workspace method needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// See the workspace itself (GetWorkspace, ListWorkspaces).
    ViewWorkspace,
    /// Read the workspace's agents, tasks, transcripts and events.
    Read,
    /// Create and cancel tasks.
    WriteTasks,
    /// Open live streams: WatchTask and WatchEvents.
    Watch,
    /// Create, change and delete agents.
    ManageAgents,
    /// Create, list and revoke API keys.
    ManageKeys,
    /// Add, list, change and remove members.
    ManageMembers,
    /// Change the workspace's settings (display name, labels).
    ManageSettings,
}

/// Who may call a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No credential needed (health checks, for load balancers and kubelets).
    Public,
    /// Any client credential (the platform admin or an API key); never a worker's.
    AnyClient,
    /// Only the platform admin.
    Platform,
    /// Only workers, each with its own credential.
    Worker,
    /// Only the fleet's enrolment token.
    Enrol,
    /// A permission in the workspace the request names.
    Workspace(Permission),
}

use Access::{AnyClient, Enrol, Platform, Public, Worker, Workspace};
use Permission::{
    ManageAgents, ManageKeys, ManageMembers, ManageSettings, Read, ViewWorkspace, Watch, WriteTasks,
};

/// Every RPC the server serves, by full gRPC path, and the access it needs.
pub const METHODS: &[(&str, Access)] = &[
    ("/grpc.health.v1.Health/Check", Public),
    ("/grpc.health.v1.Health/Watch", Public),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        AnyClient,
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        AnyClient,
    ),
    ("/agentplane.v1.WorkspaceService/CreateWorkspace", Platform),
    (
        "/agentplane.v1.WorkspaceService/GetWorkspace",
        Workspace(ViewWorkspace),
    ),
    // The platform admin lists every workspace, an API key only its own.
    (
        "/agentplane.v1.WorkspaceService/ListWorkspaces",
        Workspace(ViewWorkspace),
    ),
    (
        "/agentplane.v1.WorkspaceService/UpdateWorkspace",
        Workspace(ManageSettings),
    ),
    ("/agentplane.v1.WorkspaceService/DeleteWorkspace", Platform),
    (
        "/agentplane.v1.AgentService/CreateAgent",
        Workspace(ManageAgents),
    ),
    ("/agentplane.v1.AgentService/GetAgent", Workspace(Read)),
    ("/agentplane.v1.AgentService/ListAgents", Workspace(Read)),
    (
        "/agentplane.v1.AgentService/UpdateAgent",
        Workspace(ManageAgents),
    ),
    (
        "/agentplane.v1.AgentService/DeleteAgent",
        Workspace(ManageAgents),
    ),
    (
        "/agentplane.v1.TaskService/CreateTask",
        Workspace(WriteTasks),
    ),
    (
        "/agentplane.v1.TaskService/BatchCreateTasks",
        Workspace(WriteTasks),
    ),
    ("/agentplane.v1.TaskService/GetTask", Workspace(Read)),
    ("/agentplane.v1.TaskService/ListTasks", Workspace(Read)),
    (
        "/agentplane.v1.TaskService/CancelTask",
        Workspace(WriteTasks),
    ),
    (
        "/agentplane.v1.TaskService/RetryTask",
        Workspace(WriteTasks),
    ),
    (
        "/agentplane.v1.TaskService/SubmitToolOutputs",
        Workspace(WriteTasks),
    ),
    (
        "/agentplane.v1.TaskService/ListTaskMessages",
        Workspace(Read),
    ),
    ("/agentplane.v1.TaskService/WatchTask", Workspace(Watch)),
    ("/agentplane.v1.EventService/ListEvents", Workspace(Read)),
    ("/agentplane.v1.EventService/WatchEvents", Workspace(Watch)),
    ("/agentplane.v1.WorkerService/Session", Worker),
    (
        "/agentplane.v1.ApiKeyService/CreateApiKey",
        Workspace(ManageKeys),
    ),
    (
        "/agentplane.v1.ApiKeyService/ListApiKeys",
        Workspace(ManageKeys),
    ),
    (
        "/agentplane.v1.ApiKeyService/RevokeApiKey",
        Workspace(ManageKeys),
    ),
    (
        "/agentplane.v1.IdentityService/GetCurrentIdentity",
        AnyClient,
    ),
    (
        "/agentplane.v1.WorkerCredentialService/CreateWorkerCredential",
        Platform,
    ),
    (
        "/agentplane.v1.WorkerCredentialService/ListWorkerCredentials",
        Platform,
    ),
    (
        "/agentplane.v1.WorkerCredentialService/RevokeWorkerCredential",
        Platform,
    ),
    ("/agentplane.v1.WorkerCredentialService/EnrollWorker", Enrol),
    (
        "/agentplane.v1.MemberService/AddMember",
        Workspace(ManageMembers),
    ),
    (
        "/agentplane.v1.MemberService/ListMembers",
        Workspace(ManageMembers),
    ),
    (
        "/agentplane.v1.MemberService/UpdateMemberRole",
        Workspace(ManageMembers),
    ),
    (
        "/agentplane.v1.MemberService/RemoveMember",
        Workspace(ManageMembers),
    ),
];

/// The permissions of each workspace role. Each role lists all of its permissions, so the
/// table reads on its own: a viewer reads; a member also creates, cancels and watches tasks;
/// an admin also manages agents, keys and settings.
const ROLES: &[(WorkspaceRole, &[Permission])] = &[
    (WorkspaceRole::Viewer, &[ViewWorkspace, Read]),
    (
        WorkspaceRole::Member,
        &[ViewWorkspace, Read, WriteTasks, Watch],
    ),
    (
        WorkspaceRole::Admin,
        &[
            ViewWorkspace,
            Read,
            WriteTasks,
            Watch,
            ManageAgents,
            ManageKeys,
            ManageMembers,
            ManageSettings,
        ],
    ),
];

/// What the platform admin may do in any workspace: see it, change its settings and give it
/// keys (how a new workspace gets its first admin). It neither reads nor runs the agents,
/// tasks and events inside (a key it creates for that is itself an event in the log).
const PLATFORM_ADMIN: &[Permission] = &[ViewWorkspace, ManageKeys, ManageMembers, ManageSettings];

/// The access `path` needs; `None` for a method the table does not know (refused).
pub fn access(path: &str) -> Option<Access> {
    METHODS
        .iter()
        .find(|(method, _)| *method == path)
        .map(|(_, access)| *access)
}

/// Whether `role` holds `permission`.
pub fn role_permits(role: WorkspaceRole, permission: Permission) -> bool {
    ROLES
        .iter()
        .find(|(r, _)| *r == role)
        .is_some_and(|(_, permissions)| permissions.contains(&permission))
}

/// Whether the platform admin holds `permission` in every workspace.
pub fn platform_admin_permits(permission: Permission) -> bool {
    PLATFORM_ADMIN.contains(&permission)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost::Message as _;

    use super::*;

    /// Every method of every service the server registers, from the descriptor sets.
    fn served_methods() -> BTreeSet<String> {
        let mut methods = BTreeSet::new();
        for set in [
            agentplane_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ] {
            let set = prost_types::FileDescriptorSet::decode(set).expect("descriptor set");
            for file in set.file {
                for service in &file.service {
                    for method in &service.method {
                        methods.insert(format!(
                            "/{}.{}/{}",
                            file.package(),
                            service.name(),
                            method.name()
                        ));
                    }
                }
            }
        }
        // Reflection has no descriptor set in the crate; its two methods are fixed.
        methods.insert("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".into());
        methods.insert("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo".into());
        methods
    }

    #[test]
    fn every_served_method_is_in_the_table_and_nothing_else_is() {
        let served = served_methods();
        let table: BTreeSet<String> = METHODS.iter().map(|(m, _)| (*m).to_owned()).collect();
        let missing: Vec<_> = served.difference(&table).collect();
        assert!(missing.is_empty(), "methods without a rule: {missing:?}");
        let stale: Vec<_> = table.difference(&served).collect();
        assert!(
            stale.is_empty(),
            "rules for methods nobody serves: {stale:?}"
        );
        assert_eq!(table.len(), METHODS.len(), "a method is listed twice");
    }

    #[test]
    fn unknown_methods_are_refused() {
        assert_eq!(access("/agentplane.v1.TaskService/DropTable"), None);
        assert_eq!(access("/agentplane.v1.TaskService/"), None);
        assert_eq!(access(""), None);
    }

    #[test]
    fn each_role_holds_what_the_roles_below_it_hold() {
        let all = [
            ViewWorkspace,
            Read,
            WriteTasks,
            Watch,
            ManageAgents,
            ManageKeys,
            ManageMembers,
            ManageSettings,
        ];
        for permission in all {
            for (lower, higher) in [
                (WorkspaceRole::Viewer, WorkspaceRole::Member),
                (WorkspaceRole::Member, WorkspaceRole::Admin),
            ] {
                assert!(!role_permits(lower, permission) || role_permits(higher, permission));
            }
            assert!(role_permits(WorkspaceRole::Admin, permission));
        }
        assert!(!role_permits(WorkspaceRole::Viewer, WriteTasks));
        assert!(!role_permits(WorkspaceRole::Member, ManageKeys));
        assert!(!platform_admin_permits(WriteTasks));
        assert!(!platform_admin_permits(Read));
    }
}
