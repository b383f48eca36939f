//! Tests of the parent module.

use super::*;

fn headers(value: &str) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    if let Ok(value) = http::HeaderValue::from_str(value) {
        headers.insert(http::header::AUTHORIZATION, value);
    }
    headers
}

#[test]
fn only_bearer_headers_carry_a_token() {
    assert_eq!(bearer(&headers("Bearer abc")), Some("abc"));
    assert_eq!(bearer(&headers("bearer abc ")), Some("abc"));
    assert_eq!(bearer(&headers("Basic abc")), None);
    assert_eq!(bearer(&headers("abc")), None);
    assert_eq!(bearer(&http::HeaderMap::new()), None);
}

fn key(tenant: TenantId, role: WorkspaceRole) -> Principal {
    Principal::ApiKey {
        id: ApiKeyId::generate(),
        tenant,
        role,
    }
}

#[test]
fn credential_kinds_reach_only_their_methods() {
    let tenant = TenantId::generate();
    let access = |path| table::access(path).unwrap();
    let session = access("/agentplane.v1.WorkerService/Session");
    let create_task = access("/agentplane.v1.TaskService/CreateTask");
    let create_workspace = access("/agentplane.v1.WorkspaceService/CreateWorkspace");
    let worker = Principal::Worker {
        id: WorkerId::generate(),
    };
    let enrol = access("/agentplane.v1.WorkerCredentialService/EnrollWorker");
    assert!(worker.admits(session));
    assert!(!worker.admits(create_task));
    assert!(!worker.admits(enrol));
    assert!(!worker.admits(access("/agentplane.v1.IdentityService/GetCurrentIdentity")));
    // The enrolment token only enrols.
    assert!(Principal::Enrolment.admits(enrol));
    assert!(!Principal::Enrolment.admits(session));
    assert!(!Principal::Enrolment.admits(create_task));
    assert!(!Principal::PlatformAdmin.admits(enrol));
    assert!(!Principal::PlatformAdmin.admits(session));
    assert!(!Principal::PlatformAdmin.admits(create_task));
    assert!(Principal::PlatformAdmin.admits(create_workspace));
    let admin = key(tenant, WorkspaceRole::Admin);
    assert!(!admin.admits(session));
    assert!(!admin.admits(create_workspace));
    assert!(admin.admits(create_task));
    assert!(!key(tenant, WorkspaceRole::Viewer).admits(create_task));
    assert!(key(tenant, WorkspaceRole::Member).admits(create_task));
}

#[tokio::test]
async fn another_workspace_is_not_found_and_a_missing_permission_is_denied() {
    // API keys are decided without the database; the pool never connects.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://127.0.0.1:1/none")
        .unwrap();
    let store = Store::new(pool);
    let own = TenantId::generate();
    let caller = |role, path| Caller {
        principal: key(own, role),
        access: table::access(path).unwrap(),
    };
    let get = caller(WorkspaceRole::Viewer, "/agentplane.v1.TaskService/GetTask");
    assert!(get.authorize(&store, own).await.is_ok());
    assert!(matches!(
        get.authorize(&store, TenantId::generate()).await,
        Err(ApiError::NotFound(_))
    ));
    let create = caller(
        WorkspaceRole::Viewer,
        "/agentplane.v1.TaskService/CreateTask",
    );
    assert!(matches!(
        create.authorize(&store, own).await,
        Err(ApiError::PermissionDenied)
    ));
    let not_a_workspace_method = Caller {
        principal: Principal::PlatformAdmin,
        access: Access::Platform,
    };
    assert!(not_a_workspace_method.authorize(&store, own).await.is_err());
}
