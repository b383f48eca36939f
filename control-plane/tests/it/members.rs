//! Users from the identity provider (JWT) and their memberships: a role per workspace, the
//! workspace named by the request, never implied by the token.

use std::time::Duration;

use agentplane_proto::v1 as pb;
use tonic::Code;

use crate::app::{Clients, JWT_ISSUER, TestApp, user_token};
use crate::pg::TestDb;

async fn add(c: &mut Clients, ws: &str, subject: &str, role: pb::WorkspaceRole) -> pb::Member {
    c.members
        .add_member(pb::AddMemberRequest {
            workspace_id: ws.to_owned(),
            member: Some(pb::Member {
                issuer: JWT_ISSUER.into(),
                subject: subject.into(),
                role: role.into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap()
}

async fn role_in(c: &mut Clients, ws: &str) -> Result<i32, Code> {
    c.identity
        .get_current_identity(pb::GetCurrentIdentityRequest {
            workspace_id: ws.to_owned(),
        })
        .await
        .map(|r| r.into_inner().role)
        .map_err(|s| s.code())
}

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Option<Code> {
    r.err().map(|s| s.code())
}

#[tokio::test]
async fn a_user_acts_only_where_a_member_with_the_role_it_has_there() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut platform = app.admin().await;
    let a = platform.create_workspace("a").await;
    let b = platform.create_workspace("b").await;
    let alice = add(&mut platform, &a, "alice", pb::WorkspaceRole::Admin).await;
    add(&mut platform, &b, "alice", pb::WorkspaceRole::Viewer).await;
    assert_eq!(alice.created_by, "platform-admin");

    let mut c = platform.with_token(&user_token("alice"));
    assert_eq!(
        role_in(&mut c, &a).await,
        Ok(pb::WorkspaceRole::Admin as i32)
    );
    assert_eq!(
        role_in(&mut c, &b).await,
        Ok(pb::WorkspaceRole::Viewer as i32)
    );
    let me = c
        .identity
        .get_current_identity(pb::GetCurrentIdentityRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (me.kind.as_str(), me.actor),
        ("user", format!("user:{}", alice.user_id))
    );

    // The request names the workspace; the role is the one held there.
    c.echo_agent(&a, "coder").await;
    let create_in_b = pb::CreateAgentRequest {
        workspace_id: b.clone(),
        agent: Some(pb::Agent {
            name: "coder".into(),
            provider: pb::Provider::Echo.into(),
            model: "echo-1".into(),
            ..Default::default()
        }),
        request_id: String::new(),
    };
    assert_eq!(
        code(c.agents.create_agent(create_in_b).await),
        Some(Code::PermissionDenied)
    );
    let mut listed: Vec<String> = c
        .workspaces
        .list_workspaces(pb::ListWorkspacesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workspaces
        .into_iter()
        .map(|w| w.id)
        .collect();
    listed.sort();
    let mut expected = vec![a.clone(), b.clone()];
    expected.sort();
    assert_eq!(listed, expected);

    // A user seen for the first time is recorded, and belongs nowhere.
    let mut bob = platform.with_token(&user_token("bob"));
    assert!(
        bob.workspaces
            .list_workspaces(pb::ListWorkspacesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .workspaces
            .is_empty()
    );
    assert_eq!(role_in(&mut bob, &a).await, Err(Code::NotFound));
    assert_eq!(
        code(
            bob.agents
                .list_agents(pb::ListAgentsRequest {
                    workspace_id: a.clone(),
                    ..Default::default()
                })
                .await
        ),
        Some(Code::NotFound)
    );
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE subject = 'bob'")
        .fetch_one(&db.owner_pool().await)
        .await
        .unwrap();
    assert_eq!(users, 1);

    // An expired token, or one for another audience, is refused like any bad credential.
    let expired = {
        let now = chrono::Utc::now().timestamp();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &serde_json::json!({"iss": JWT_ISSUER, "aud": crate::app::JWT_AUDIENCE,
                                "sub": "alice", "exp": now - 300}),
            &jsonwebtoken::EncodingKey::from_secret(crate::app::JWT_SECRET.as_bytes()),
        )
        .unwrap()
    };
    let status = platform
        .with_token(&expired)
        .identity
        .get_current_identity(pb::GetCurrentIdentityRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "invalid credentials")
    );
    app.stop().await;
}

#[tokio::test]
async fn a_workspace_never_loses_its_last_admin_and_changes_are_events() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut platform = app.admin().await;
    let ws = platform.create_workspace("admins").await;
    let alice = add(&mut platform, &ws, "alice", pb::WorkspaceRole::Admin).await;
    let mut c = platform.with_token(&user_token("alice"));

    let demote = |user: &str| pb::UpdateMemberRoleRequest {
        workspace_id: ws.clone(),
        user_id: user.to_owned(),
        role: pb::WorkspaceRole::Viewer.into(),
        request_id: "demote".into(),
    };
    let remove = |user: &str| pb::RemoveMemberRequest {
        workspace_id: ws.clone(),
        user_id: user.to_owned(),
        request_id: String::new(),
    };
    assert_eq!(
        code(c.members.update_member_role(demote(&alice.user_id)).await),
        Some(Code::FailedPrecondition)
    );
    assert_eq!(
        code(c.members.remove_member(remove(&alice.user_id)).await),
        Some(Code::FailedPrecondition)
    );
    // With a second admin, the first may step down, and then be removed.
    let carol = add(&mut c, &ws, "carol", pb::WorkspaceRole::Admin).await;
    assert_eq!(carol.created_by, format!("user:{}", alice.user_id));
    let demoted = c
        .members
        .update_member_role(demote(&alice.user_id))
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    assert_eq!(demoted.role, pb::WorkspaceRole::Viewer as i32);
    // Alice is a viewer now: she can no longer manage members.
    assert_eq!(
        code(c.members.remove_member(remove(&carol.user_id)).await),
        Some(Code::PermissionDenied)
    );
    let mut carol_c = platform.with_token(&user_token("carol"));
    carol_c
        .members
        .remove_member(remove(&alice.user_id))
        .await
        .unwrap();
    let members = carol_c
        .members
        .list_members(pb::ListMembersRequest {
            workspace_id: ws.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .members;
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].subject, "carol");

    let mut events = Vec::new();
    for _ in 0..100 {
        events = carol_c
            .events
            .list_events(pb::ListEventsRequest {
                workspace_id: ws.clone(),
                filter: Some(pb::EventFilter {
                    resource_type: "member".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        if events.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.action.as_str(), e.actor.as_str()))
        .collect();
    let alice_actor = format!("user:{}", alice.user_id);
    let carol_actor = format!("user:{}", carol.user_id);
    assert_eq!(
        seen,
        [
            ("member.added", "platform-admin"),
            ("member.added", alice_actor.as_str()),
            ("member.role_updated", alice_actor.as_str()),
            ("member.removed", carol_actor.as_str()),
        ]
    );
    app.stop().await;
}
