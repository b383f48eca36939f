//! Request ids: a retried create returns the first resource, and never makes a second one.

use agentplane_proto::v1 as pb;
use tonic::Code;

use crate::app::TestApp;
use crate::pg::TestDb;

fn agent_request(ws: &str, name: &str, request_id: &str) -> pb::CreateAgentRequest {
    pb::CreateAgentRequest {
        workspace_id: ws.to_owned(),
        agent: Some(pb::Agent {
            name: name.to_owned(),
            provider: pb::Provider::Echo.into(),
            model: "echo-1".into(),
            ..Default::default()
        }),
        request_id: request_id.to_owned(),
    }
}

#[tokio::test]
async fn create_agent_with_the_request_id_of_a_deleted_agent_answers_not_found() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let ws = c.workspace("idem").await;

    let first = c
        .agents
        .create_agent(agent_request(&ws, "coder", "agent-1"))
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    let retry = c
        .agents
        .create_agent(agent_request(&ws, "coder", "agent-1"))
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    assert_eq!(retry.id, first.id, "a retry returns the first agent");

    c.agents
        .delete_agent(pb::DeleteAgentRequest {
            workspace_id: ws.clone(),
            id: first.id.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    // Under another name too: the request id, not the name, identifies the call.
    for name in ["coder", "other"] {
        let status = c
            .agents
            .create_agent(agent_request(&ws, name, "agent-1"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert!(status.message().contains("agent"), "{status:?}");
    }
    let live = c
        .agents
        .list_agents(pb::ListAgentsRequest {
            workspace_id: ws.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(live.agents.is_empty(), "no second agent: {live:?}");
    app.stop().await;
}

#[tokio::test]
async fn create_workspace_with_the_request_id_of_a_deleted_workspace_answers_not_found() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let create = |name: &str| pb::CreateWorkspaceRequest {
        workspace: Some(pb::Workspace {
            display_name: name.to_owned(),
            ..Default::default()
        }),
        request_id: "workspace-1".into(),
    };

    let first = c
        .workspaces
        .create_workspace(create("acme"))
        .await
        .unwrap()
        .into_inner()
        .workspace
        .unwrap();
    let retry = c
        .workspaces
        .create_workspace(create("acme"))
        .await
        .unwrap()
        .into_inner()
        .workspace
        .unwrap();
    assert_eq!(retry.id, first.id, "a retry returns the first workspace");

    c.workspaces
        .delete_workspace(pb::DeleteWorkspaceRequest {
            id: first.id.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    for name in ["acme", "other"] {
        let status = c
            .workspaces
            .create_workspace(create(name))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert!(status.message().contains("workspace"), "{status:?}");
    }
    let live = c
        .workspaces
        .list_workspaces(pb::ListWorkspacesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(live.workspaces.is_empty(), "no second workspace: {live:?}");
    app.stop().await;
}
