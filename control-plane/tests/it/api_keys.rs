//! Workspace API keys: shown once, stored as a hash, bound to one workspace and one role,
//! revocable and expiring; the roles' permissions; bootstrap.

use std::time::Duration;

use agentplane_proto::v1 as pb;
use secrecy::ExposeSecret;
use tonic::Code;

use crate::app::{Clients, TestApp};
use crate::pg::TestDb;

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Option<Code> {
    r.err().map(|s| s.code())
}

async fn create_key(
    c: &mut Clients,
    ws: &str,
    role: pb::WorkspaceRole,
    expire_time: Option<prost_types::Timestamp>,
) -> Result<pb::CreateApiKeyResponse, tonic::Status> {
    c.api_keys
        .create_api_key(pb::CreateApiKeyRequest {
            workspace_id: ws.to_owned(),
            api_key: Some(pb::ApiKey {
                name: "ci".into(),
                role: role.into(),
                expire_time,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn identity(c: &mut Clients, ws: &str) -> Result<pb::GetCurrentIdentityResponse, Code> {
    c.identity
        .get_current_identity(pb::GetCurrentIdentityRequest {
            workspace_id: ws.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| s.code())
}

#[tokio::test]
async fn a_key_is_shown_once_acts_in_its_workspace_and_stops_at_revocation() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut platform = app.admin().await;
    let ws = platform.create_workspace("keys").await;
    let created = create_key(&mut platform, &ws, pb::WorkspaceRole::Admin, None)
        .await
        .unwrap();
    let key = created.api_key.unwrap();
    assert!(
        created
            .secret
            .starts_with(&format!("apk_{}_", key.id.replace('-', "")))
    );
    assert_eq!(key.created_by, "platform-admin");

    let mut c = platform.with_token(&created.secret);
    let me = identity(&mut c, &ws).await.unwrap();
    assert_eq!(me.kind, "api_key");
    assert_eq!(me.actor, format!("api_key:{}", key.id));
    assert_eq!(me.home_workspace_id, ws);
    assert_eq!(me.role, pb::WorkspaceRole::Admin as i32);
    c.echo_agent(&ws, "coder").await;

    // Only the hash is stored: the secret appears nowhere in the database.
    let owner = db.owner_pool().await;
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT secret_hash FROM api_keys WHERE id = $1::uuid")
            .bind(&key.id)
            .fetch_one(&owner)
            .await
            .unwrap();
    assert_eq!(stored.len(), 32);
    let dump: String = sqlx::query_scalar("SELECT string_agg(t::text, ' ') FROM api_keys t")
        .fetch_one(&owner)
        .await
        .unwrap();
    assert!(!dump.contains(&created.secret[20..]));

    // A key made by a key records that key as its creator.
    let second = create_key(&mut c, &ws, pb::WorkspaceRole::Viewer, None)
        .await
        .unwrap();
    assert_eq!(second.api_key.unwrap().created_by, me.actor);
    let listed = c
        .api_keys
        .list_api_keys(pb::ListApiKeysRequest {
            workspace_id: ws.clone(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.api_keys.len(), 1, "newest first, one per page");
    assert!(!listed.next_page_token.is_empty());

    let revoked = c
        .api_keys
        .revoke_api_key(pb::RevokeApiKeyRequest {
            workspace_id: ws.clone(),
            id: key.id.clone(),
            request_id: "rk-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .api_key
        .unwrap();
    assert!(revoked.revoke_time.is_some());
    // The revoking call itself was the key's last: the next one is refused.
    let status = c
        .agents
        .list_agents(pb::ListAgentsRequest {
            workspace_id: ws.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "invalid credentials");

    // Key changes are events, with the acting identity. An event shows once every older
    // transaction on the server has ended, so it may take a moment.
    let mut viewer = app.with_key(&ws, pb::WorkspaceRole::Viewer).await;
    let mut events = Vec::new();
    for _ in 0..100 {
        events = viewer
            .events
            .list_events(pb::ListEventsRequest {
                workspace_id: ws.clone(),
                filter: Some(pb::EventFilter {
                    resource_type: "api_key".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        if events.iter().any(|e| e.action == "api_key.revoked") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let revoke_event = events
        .iter()
        .find(|e| e.action == "api_key.revoked")
        .unwrap();
    assert_eq!(revoke_event.resource_id, key.id);
    assert_eq!(revoke_event.actor, me.actor);
    assert_eq!(revoke_event.request_id, "rk-1");
    assert!(events.iter().any(|e| e.action == "api_key.created"
        && e.resource_id == key.id
        && e.actor == "platform-admin"));
    app.stop().await;
}

#[tokio::test]
async fn roles_decide_what_a_key_may_do() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut admin = app.admin().await;
    let ws = admin.workspace("roles").await;
    let agent = admin.echo_agent(&ws, "coder").await;
    let task = admin.task(&ws, &agent.id, "hi").await;
    let mut viewer = app.with_key(&ws, pb::WorkspaceRole::Viewer).await;
    let mut member = app.with_key(&ws, pb::WorkspaceRole::Member).await;

    // Viewers read.
    viewer.get_task(&ws, &task.id).await;
    assert_eq!(
        identity(&mut viewer, &ws).await.unwrap().role,
        pb::WorkspaceRole::Viewer as i32
    );
    let create = pb::CreateTaskRequest {
        workspace_id: ws.clone(),
        agent_id: agent.id.clone(),
        input: vec![crate::app::user("x")],
        ..Default::default()
    };
    assert_eq!(
        code(viewer.tasks.create_task(create.clone()).await),
        Some(Code::PermissionDenied)
    );
    let watch = pb::WatchTaskRequest {
        workspace_id: ws.clone(),
        id: task.id.clone(),
    };
    assert_eq!(
        code(viewer.tasks.watch_task(watch.clone()).await),
        Some(Code::PermissionDenied)
    );
    // Members also create, cancel and watch tasks...
    assert!(member.tasks.create_task(create).await.is_ok());
    assert!(member.tasks.watch_task(watch).await.is_ok());
    // ...but manage neither agents nor keys.
    let status = member
        .agents
        .delete_agent(pb::DeleteAgentRequest {
            workspace_id: ws.clone(),
            id: agent.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    for role in [pb::WorkspaceRole::Viewer, pb::WorkspaceRole::Admin] {
        let status = create_key(&mut member, &ws, role, None).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
    }
    // No key may create a workspace.
    let secret = create_key(&mut admin, &ws, pb::WorkspaceRole::Admin, None)
        .await
        .unwrap()
        .secret;
    let status = admin
        .with_token(&secret)
        .workspaces
        .create_workspace(pb::CreateWorkspaceRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // The platform admin manages workspaces and keys but runs nothing inside them.
    let mut platform = app.admin().await;
    assert_eq!(
        code(
            platform
                .tasks
                .get_task(pb::GetTaskRequest {
                    workspace_id: ws.clone(),
                    id: task.id.clone(),
                })
                .await
        ),
        Some(Code::PermissionDenied)
    );
    app.stop().await;
}

#[tokio::test]
async fn expired_unknown_and_tampered_keys_fail_alike() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut platform = app.admin().await;
    let ws = platform.create_workspace("expiry").await;
    let soon = chrono::Utc::now() + chrono::Duration::seconds(2);
    let expiring = create_key(
        &mut platform,
        &ws,
        pb::WorkspaceRole::Viewer,
        Some(prost_types::Timestamp {
            seconds: soon.timestamp(),
            nanos: 0,
        }),
    )
    .await
    .unwrap()
    .secret;
    let mut c = platform.with_token(&expiring);
    assert!(identity(&mut c, &ws).await.is_ok());
    tokio::time::sleep(Duration::from_secs(3)).await;

    let valid = create_key(&mut platform, &ws, pb::WorkspaceRole::Viewer, None)
        .await
        .unwrap()
        .secret;
    let mut tampered = valid.clone();
    tampered.pop();
    tampered.push(if valid.ends_with('A') { 'B' } else { 'A' });
    let unknown = format!(
        "apk_{}_{}",
        uuid::Uuid::now_v7().simple(),
        &valid[valid.len() - 43..]
    );
    for token in [
        expiring.as_str(),
        &tampered,
        &unknown,
        "apk_garbage",
        "not-a-token-at-all",
    ] {
        let status = platform
            .with_token(token)
            .identity
            .get_current_identity(pb::GetCurrentIdentityRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{token}");
        assert_eq!(status.message(), "invalid credentials", "{token}");
    }
    // A past expiry is refused at creation.
    let status = create_key(
        &mut platform,
        &ws,
        pb::WorkspaceRole::Viewer,
        Some(prost_types::Timestamp {
            seconds: 1,
            nanos: 0,
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    app.stop().await;
}

#[tokio::test]
async fn last_use_is_recorded_in_batches_not_per_request() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut platform = app.admin().await;
    let ws = platform.create_workspace("usage").await;
    let created = create_key(&mut platform, &ws, pb::WorkspaceRole::Viewer, None)
        .await
        .unwrap();
    let id = created.api_key.unwrap().id;
    let mut c = platform.with_token(&created.secret);
    for _ in 0..3 {
        identity(&mut c, &ws).await.unwrap();
    }
    let owner = db.owner_pool().await;
    let last_used = || async {
        sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
            "SELECT last_used_at FROM api_keys WHERE id = $1::uuid",
        )
        .bind(&id)
        .fetch_one(&owner)
        .await
        .unwrap()
    };
    assert_eq!(last_used().await, None, "not written on the request path");
    // Shutdown writes what was noted.
    app.stop().await;
    assert!(last_used().await.is_some());
}

#[tokio::test]
async fn a_key_lists_only_its_own_workspace() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut platform = app.admin().await;
    let a = platform.create_workspace("a").await;
    let b = platform.create_workspace("b").await;
    let mut c = app.with_key(&a, pb::WorkspaceRole::Viewer).await;
    let listed = c
        .workspaces
        .list_workspaces(pb::ListWorkspacesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workspaces;
    assert_eq!(
        listed.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
        [a.as_str()]
    );
    let all = platform
        .workspaces
        .list_workspaces(pb::ListWorkspacesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workspaces;
    assert!(all.iter().any(|w| w.id == b));
    assert_eq!(identity(&mut c, &b).await.unwrap_err(), Code::NotFound);
    app.stop().await;
}

#[tokio::test]
async fn bootstrap_creates_a_workspace_and_an_admin_key_that_works() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let pool = sqlx::PgPool::connect(&db.app_url()).await.unwrap();
    let store = agentplane_control_plane::store::Store::new(pool.clone());
    let made = agentplane_control_plane::bootstrap::create(&store, "local", "first")
        .await
        .unwrap();
    pool.close().await;
    let mut c = app.admin().await.with_token(made.secret.expose_secret());
    let ws = made.workspace.to_string();
    let me = identity(&mut c, &ws).await.unwrap();
    assert_eq!(me.role, pb::WorkspaceRole::Admin as i32);
    c.echo_agent(&ws, "coder").await;
    app.stop().await;
}

/// Replicas remember keys for at most a second (`auth/key_cache.rs`): a key revoked on one
/// replica stops there at once, and on every other replica within that second.
#[tokio::test]
async fn a_revoked_key_stops_at_once_where_revoked_and_within_a_second_elsewhere() {
    let db = TestDb::new().await;
    let (one, two) = (TestApp::spawn(&db).await, TestApp::spawn(&db).await);
    let mut platform = one.admin().await;
    let ws = platform.create_workspace("keys-replicas").await;
    let created = create_key(&mut platform, &ws, pb::WorkspaceRole::Admin, None)
        .await
        .unwrap();
    let key = created.api_key.unwrap();
    let mut on_one = Clients::new(one.channel().await, &created.secret);
    let mut on_two = Clients::new(two.channel().await, &created.secret);
    // Both replicas have read the key.
    assert!(identity(&mut on_one, &ws).await.is_ok());
    assert!(identity(&mut on_two, &ws).await.is_ok());
    // A wrong secret for a remembered key is refused like any other.
    let (head, last) = created.secret.split_at(created.secret.len() - 1);
    let other = if last == "x" { "y" } else { "x" };
    let mut forged = Clients::new(two.channel().await, &format!("{head}{other}"));
    assert_eq!(
        identity(&mut forged, &ws).await.unwrap_err(),
        Code::Unauthenticated
    );

    on_one
        .api_keys
        .revoke_api_key(pb::RevokeApiKeyRequest {
            workspace_id: ws.clone(),
            id: key.id.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let revoked_at = std::time::Instant::now();
    assert_eq!(
        identity(&mut on_one, &ws).await.unwrap_err(),
        Code::Unauthenticated
    );
    // The other replica may still accept it while its read of the key (made before the
    // revocation) is less than a second old: so a call sent later than that is refused.
    loop {
        let sent = revoked_at.elapsed();
        match identity(&mut on_two, &ws).await {
            Err(code) => {
                assert_eq!(code, Code::Unauthenticated);
                break;
            }
            Ok(_) => assert!(
                sent < Duration::from_secs(1),
                "a call sent {sent:?} after the revocation was accepted"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
